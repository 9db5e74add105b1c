"""`voxtune tune` and `voxtune bench` from the command line: the Ray driver runs in a child process, and
this one only waits for it, so that a search stopped together with its Ray cluster still ends as an
interrupt.

Why: a plain `scancel` sends TERM to every process of a SLURM job at once. The driver saves its state
on TERM (voxtune.parallel.cluster.interrupt_on_stop), but the raylet next to it stops under the same
signal, and Ray ends a driver whose object store went away within tens of milliseconds (exit 1),
often before the save. This parent, which holds no Ray connection, then writes what the driver could
not: the trials still running are interrupted, the leaderboard and summary say so, and the command
exits 130 with the line that resumes it (voxtune.parallel.tune.settle_orphaned).

Signals: the child stays in this process group, so killing the group kills both. The
first SIGINT or SIGTERM that reaches this process is passed on to the child, which ignores any
copy after its first (a Ctrl-C at a terminal reaches both); a second one kills the child at once.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

CHILD_ENV = "VOXTUNE_DRIVER"  # set in the child: it is the driver, not a supervisor
STOPS = (signal.SIGINT, signal.SIGTERM)


def _die_with_parent() -> None:
    """In the child, before exec: TERM when this supervisor dies (a SIGKILL leaves no one to wait)."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, ctypes.c_ulong(signal.SIGTERM))  # PR_SET_PDEATHSIG


def supervise(argv: list[str], run_dirs: Callable[[], list[Path]], stopped: Callable[[], str]) -> int:
    """Run `voxtune ARGV...` (a tune or bench command line) as the child driver; returns its exit code.
    When the driver died without writing its outputs, they are written here for the searches `run_dirs()`
    names; if a stop signal reached this process, that was an interrupt: `stopped()` is printed and the
    code is 130."""
    verb = argv[0]
    t_command = time.perf_counter()
    stops: list[int] = []
    child: subprocess.Popen | None = None

    def on_stop(signum, frame):
        stops.append(signum)
        if child is None or child.poll() is not None:
            return
        if len(stops) == 1:
            child.send_signal(signum)
        else:
            print(f"voxtune {verb}: stopping now (a second stop signal); the search state is written "
                  "from its files", file=sys.stderr, flush=True)
            child.kill()

    # The child starts with these at their default; one this process was started ignoring (as a shell
    # starts background jobs) stays ignored here and in the child, as Python itself keeps it.
    previous = {sig: signal.signal(sig, on_stop) for sig in STOPS if signal.getsignal(sig) != signal.SIG_IGN}
    try:  # the handlers stay until the end: a stop that comes while the outputs are written only counts
        child = subprocess.Popen([sys.executable, "-m", "voxtune.cli", *argv],
                                 env={**os.environ, CHILD_ENV: "1"}, preexec_fn=_die_with_parent)
        if stops:  # a stop that came before the child existed
            child.send_signal(stops[0])
        rc = child.wait()
        rc = 128 - rc if rc < 0 else rc  # killed by signal N: 128 + N, as a shell reports it
        if rc in (0, 2, 130):  # done, refused with its one line, or interrupted with its outputs written
            return rc
        settled = [summary for run_dir in run_dirs() if (summary := _settle_orphaned(run_dir, t_command))]
        if verb == "tune" and settled:
            from voxtune.parallel.outputs import format_leaderboard

            print(format_leaderboard(settled[0]["rows"], settled[0]["searched"]))
        if stops:
            print(stopped(), file=sys.stderr)
            return 130
        if settled:
            print(f"voxtune {verb}: the driver ended with exit {rc}; the trials it was running are marked "
                  f"interrupted. {stopped()}", file=sys.stderr)
        return rc
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _settle_orphaned(run_dir: Path, t_command: float) -> dict | None:
    from voxtune.errors import VoxtuneError
    from voxtune.parallel.tune import settle_orphaned

    try:
        return settle_orphaned(run_dir, t_command)
    except VoxtuneError as exc:  # unreadable search.json: nothing this process can settle
        print(f"voxtune: {exc}", file=sys.stderr)
        return None
