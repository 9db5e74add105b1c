"""A trial's state: RUN/trials/<folder>/trial.json, written here and nowhere else.

    (none) ──▶ running ──▶ finished | stopped | error | interrupted
                 ▲   │
                 └───┘  another attempt: Tune retries a trial whose worker died
    interrupted ──▶ running (--resume), or finished | stopped | error (it ended as the driver stopped)
    error ──▶ running (--resume retries a trial whose workers kept dying)
    finished, stopped: final; a resumed search reports them and trains nothing.

The trial (the Ray Tune trainable) moves itself through these states; the driver only settles
what the trial could not write itself: a trial that never started, one whose worker died for good,
one Tune ended while its actor was being torn down, and the search's own interruption. Every write
is atomic, so a reader sees the previous state or the next, never a mix.
"""
from __future__ import annotations

import re
import sys
import time
from pathlib import Path
from typing import Any

from voxtune.errors import VoxtuneError
from voxtune.files import read_json, write_json
from voxtune.layout import TrialDir

STATES = ("running", "finished", "stopped", "error", "interrupted")
FINAL = ("finished", "stopped")
_NEXT: dict[str | None, set[str]] = {
    None: {"running", "error"},
    "running": {"running", "finished", "stopped", "error", "interrupted"},
    "interrupted": {"running", "finished", "stopped", "error", "interrupted"},
    "error": {"running", "error"},
    "finished": set(),
    "stopped": set(),
}
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class InvalidTransition(RuntimeError):
    """A write that would move a trial along no arrow of the diagram above: a bug, not a user error."""


def plain(reason: str, limit: int = 300) -> str:
    """One plain line for the leaderboard: no terminal colour codes, no traceback, at most `limit` characters."""
    lines = [line.strip() for line in _ANSI.sub("", reason).splitlines() if line.strip()]
    return (lines[0] if lines else "")[:limit]


def reason_of(exc: BaseException) -> str:
    """The leaderboard's reason for an exception: the original error inside a Ray wrapper
    (RayTaskError.cause), as "Type: message" on one plain line; a VoxtuneError's message is that line."""
    inner = getattr(exc, "cause", None) or exc
    return plain(str(inner) if isinstance(inner, VoxtuneError) else f"{type(inner).__name__}: {inner}")


def path(trial_dir: Path) -> Path:
    return TrialDir(trial_dir).state


def read(trial_dir: Path) -> dict[str, Any]:
    """The trial's state ({} before its first write)."""
    return read_json(path(trial_dir), {})


def write(trial_dir: Path, status: str | None = None, **fields: Any) -> dict[str, Any]:
    """Merge `fields` into trial.json and, with `status`, move the trial to that state; returns the new
    state. A status outside STATES, or one the diagram has no arrow to, raises InvalidTransition."""
    info = read(trial_dir)
    if status is not None:
        if status not in STATES or status not in _NEXT[info.get("status")]:
            raise InvalidTransition(f"{path(trial_dir)}: {info.get('status')!r} -> {status!r}")
        info["status"] = status
    elif not info:
        raise InvalidTransition(f"{path(trial_dir)}: fields written before the trial has a state")
    if "reason" in fields:
        fields["reason"] = plain(str(fields["reason"]))
    info.update(fields)
    write_json(path(trial_dir), info)
    return info


def start_attempt(trial_dir: Path, trial_id: str, config: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """running, one more attempt, its start time (the first attempt's start is kept as start_ts)."""
    info = read(trial_dir)
    now = time.time()
    return write(trial_dir, "running", trial_id=trial_id, config=dict(config), reason="", final_in=None,
                 attempts=info.get("attempts", 0) + 1, attempt_start_ts=now, start_ts=info.get("start_ts", now),
                 **fields)


def end(trial_dir: Path, status: str, **fields: Any) -> dict[str, Any]:
    """A final state of this attempt (finished, stopped, error or interrupted) with its end time."""
    return write(trial_dir, status, end_ts=fields.pop("end_ts", time.time()), **fields)


def _quiet_unraisable(unraisable) -> None:
    """sys.unraisablehook of trial and rank processes: Ray ends an actor with SIGTERM, and its handler
    raises SystemExit wherever Python is, finalisers included, where Python can only print "Exception
    ignored in ..." and a traceback that the driver's stderr then shows. That exit is the actor's end,
    not an error: it is dropped; every other unraisable exception is printed as Python would."""
    if isinstance(unraisable.exc_value, SystemExit):
        return
    sys.__unraisablehook__(unraisable)


def quiet_exit_in_finalisers() -> None:
    sys.unraisablehook = _quiet_unraisable

