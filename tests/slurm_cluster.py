"""A real two-node SLURM cluster on this machine, on loopback only, for tests.

Debian's slurm-wlm 22.05 runs several slurmd on one host: `slurmd -N n1` and `slurmd -N n2`, each
NodeName with NodeAddr=127.0.0.1 and its own Port. With munged and slurmctld that is a genuine
two-node cluster: sbatch, srun, scancel and squeue behave as on a site's cluster, except that both
nodes share this machine's CPUs (each node offers `cpus_per_node` of them).

Everything lives in one fresh folder: slurm.conf, the munge key and socket, slurmctld's state, each
slurmd's spool, logs and pid files. Every daemon runs in the foreground as a child of this process,
so it is stopped by the PID we started, never by name. Every process the cluster starts (daemons,
slurmstepd, job scripts, the Ray processes of a job) carries one environment variable naming that
folder, `VOXTUNE_TEST_SLURM`, which is how `job_processes` finds what a job left behind.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "scancel", "scontrol", "sinfo")
MARKER = "VOXTUNE_TEST_SLURM"
NODES = ("n1", "n2")
ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE",
         "PREEMPTED"}


class ClusterError(RuntimeError):
    """The cluster could not be started here; the message says why and quotes the daemon's log."""


def unavailable() -> str | None:
    """Why a cluster cannot run on this machine, or None."""
    if not sys.platform.startswith("linux"):
        return "a SLURM test cluster needs Linux"
    missing = [t for t in DAEMONS + CLIENTS if shutil.which(t) is None and not Path("/usr/sbin", t).exists()]
    if missing:
        return (f"SLURM or munge not installed ({', '.join(missing)} missing): "
                "apt-get install slurm-wlm munge, as .ci/run does")
    if os.geteuid() != 0:
        return "slurmd starts jobs as their user, so a test cluster needs root (CI runs as root)"
    return None


def free_port(low: int, high: int) -> int:
    """A TCP port in [low, high) that nothing on this machine listens on."""
    for port in range(low, high):
        with socket.socket() as s:
            try:
                s.bind(("0.0.0.0", port))
            except OSError:
                continue
            return port
    raise ClusterError(f"no free TCP port in {low}-{high - 1}")


def _which(tool: str) -> str:
    return shutil.which(tool) or str(Path("/usr/sbin", tool))


@dataclass
class Job:
    """A job that has left the queue: its final state, exit status (0-255), the signal that ended it, and output."""

    id: int
    state: str
    exit_code: int
    exit_signal: int
    output: str


class SlurmCluster:
    """munged, slurmctld and slurmd n1, n2 in `root`; `start()`, submit with `sbatch`, then `stop()`.

    KillWait is SLURM's default, 30 s: the SIGKILL that follows a plain scancel's TERM must come after
    the driver's own 10 s deadline to save and exit (with 10 s the job script was once killed before
    it deleted its token).
    """

    def __init__(self, root: Path, cpus_per_node: int = 1, kill_wait_s: int = 30):
        self.root = root
        self.cpus_per_node = cpus_per_node
        self.kill_wait_s = kill_wait_s
        self.conf = root / "slurm.conf"
        self.socket = root / "munge.sock"
        self.daemons: dict[str, subprocess.Popen] = {}
        # Clients and daemons see only this cluster's config (without SLURM_CONF, SLURM clients look
        # for a controller in DNS) and none of an outer job's settings (a developer's allocation).
        outer = ("SLURM_", "SBATCH_", "SRUN_", "SALLOC_")
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(outer)}
        self.env.update(SLURM_CONF=str(self.conf), **{MARKER: str(root)})

    # ---- start and stop -------------------------------------------------------------------------

    def start(self, timeout_s: float = 60) -> None:
        """Start every daemon and wait until sinfo shows both nodes idle; ClusterError if not."""
        try:
            self._start(timeout_s)
        except BaseException:
            self.stop()
            raise

    def _start(self, timeout_s: float) -> None:
        self.root.chmod(0o755)  # munged serves its socket here to every user; the key stays 0600
        for sub in ("state", "log", *(f"spool/{n}" for n in NODES)):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        key = self.root / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        self._daemon("munged", [_which("munged"), "--foreground", f"--socket={self.socket}",
                                f"--key-file={key}", f"--pid-file={self.root / 'munged.pid'}",
                                f"--log-file={self.root / 'log' / 'munged.log'}",
                                f"--seed-file={self.root / 'munged.seed'}", "--origin=127.0.0.1"])
        self._wait(lambda: self.socket.exists(), 10, "munged did not create its socket", "munged")
        # Each node's own temporary directory, as a site's prolog or job_container/tmpfs gives one: the
        # launcher stages the cache there (a TaskProlog's `export` lines reach every task of the node).
        prolog = self.root / "task_prolog.sh"
        prolog.write_text(f'#!/bin/sh\nd="{self.root}/node-tmp/$SLURMD_NODENAME"\nmkdir -p "$d"\n'
                          'echo "export SLURM_TMPDIR=$d"\n')
        prolog.chmod(0o755)
        self.conf.write_text(self._slurm_conf())
        self._daemon("slurmctld", [_which("slurmctld"), "-D", "-i"])
        for node in NODES:
            self._daemon(f"slurmd-{node}", [_which("slurmd"), "-D", "-N", node])
        self._wait(self._nodes_idle, timeout_s, "the nodes did not become idle", "slurmctld", "slurmd-n1")

    def _slurm_conf(self) -> str:
        ports = []  # slurmctld's, then one per slurmd
        for _ in range(1 + len(NODES)):
            ports.append(free_port(ports[-1] + 1 if ports else 16800, 17000))
        r = self.root
        lines = [
            "ClusterName=voxtunetest",
            "SlurmctldHost=localhost(127.0.0.1)",
            f"SlurmctldPort={ports[0]}",
            "AuthType=auth/munge",
            f"AuthInfo=socket={self.socket}",
            "CredType=cred/munge",
            "SlurmUser=root",
            "SlurmdUser=root",
            f"StateSaveLocation={r}/state",
            f"SlurmdSpoolDir={r}/spool/%n",
            f"SlurmctldPidFile={r}/slurmctld.pid",
            f"SlurmdPidFile={r}/slurmd-%n.pid",
            f"SlurmctldLogFile={r}/log/slurmctld.log",
            f"SlurmdLogFile={r}/log/slurmd-%n.log",
            # No systemd, no cgroups: processes are tracked by parentage, tasks are not bound.
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            f"TaskProlog={r}/task_prolog.sh",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "JobCompType=jobcomp/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_CPU",
            "SchedulerType=sched/backfill",
            "MpiDefault=none",
            "ReturnToService=2",
            # Each node offers the CPUs written below, not the machine's: two nodes share its cores.
            "SlurmdParameters=config_overrides",
            "MailProg=/bin/true",
            f"KillWait={self.kill_wait_s}",
            "InactiveLimit=0",
            "MinJobAge=600",
            *(f"NodeName={n} NodeAddr=127.0.0.1 NodeHostname=localhost Port={p} CPUs={self.cpus_per_node} "
              "State=UNKNOWN" for n, p in zip(NODES, ports[1:])),
            f"PartitionName=test Nodes={','.join(NODES)} Default=YES MaxTime=INFINITE State=UP",
        ]
        return "\n".join(lines) + "\n"

    def node_tmp(self, node: str) -> Path:
        """The node's $SLURM_TMPDIR (see the TaskProlog in _start)."""
        return self.root / "node-tmp" / node

    def _daemon(self, name: str, argv: list[str]) -> None:
        with open(self.root / "log" / f"{name}.out", "wb") as out:
            # Own session: a Ctrl-C of the test run reaches pytest, which then stops them in order.
            self.daemons[name] = subprocess.Popen(argv, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                                  stdin=subprocess.DEVNULL, start_new_session=True)

    def _wait(self, ready, timeout_s: float, what: str, *logs: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not ready():
            dead = [n for n, p in self.daemons.items() if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                why = f"{', '.join(dead)} exited" if dead else f"after {timeout_s:.0f}s"
                raise ClusterError(f"{what} ({why}); {self._log_tail(*(dead or logs))}")
            time.sleep(0.2)

    def _log_tail(self, *names: str) -> str:
        tails = []
        for name in names:
            path = self.root / "log" / f"{name}.out"
            lines = path.read_text(errors="replace").splitlines() if path.exists() else []
            errors = [ln for ln in lines if "error" in ln.lower() or "fatal" in ln.lower()] or lines
            tails.append(f"{name}: " + " | ".join(errors[-3:]))
        return "; ".join(tails)

    def _nodes_idle(self) -> bool:
        out = self.client("sinfo", "-h", "-N", "-o", "%N %t", check=False).stdout
        return sorted(out.split()) == sorted(w for n in NODES for w in (n, "idle"))

    def stop(self) -> list[str]:
        """Cancel every job, stop every daemon by PID, end what the jobs left; returns what had to be killed.

        An empty list means the jobs and daemons ended by themselves. The folder is removed.
        """
        if "slurmctld" in self.daemons and self.daemons["slurmctld"].poll() is None:
            ids = self.client("squeue", "-h", "-o", "%i", check=False).stdout.split()
            if ids:
                self.client("scancel", *ids, check=False)
                deadline = time.monotonic() + self.kill_wait_s + 20
                while self.client("squeue", "-h", "-o", "%i", check=False).stdout.split() and \
                        time.monotonic() < deadline:
                    time.sleep(0.5)
        killed = []
        for name in [f"slurmd-{n}" for n in NODES] + ["slurmctld", "munged"]:
            proc = self.daemons.pop(name, None)
            if proc is None or proc.poll() is not None:
                continue
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                killed.append(f"{name} (pid {proc.pid}, ignored SIGTERM)")
        for pid, cmd in self.job_processes(wait_s=5):
            try:
                os.kill(pid, signal.SIGKILL)
                killed.append(f"{cmd} (pid {pid})")
            except ProcessLookupError:
                pass
        shutil.rmtree(self.root, ignore_errors=True)
        return killed

    # ---- using it -------------------------------------------------------------------------------

    def client(self, tool: str, *args: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
        """Run a SLURM client command against this cluster."""
        return subprocess.run([_which(tool), *args], env=kwargs.pop("env", self.env), capture_output=True,
                              text=True, timeout=60, check=check, **kwargs)

    def sbatch(self, args: list[str], env: dict[str, str], cwd: Path) -> int:
        """Submit; returns the job id. `env` is the job's environment (sbatch exports all of it)."""
        env = {**env, "SLURM_CONF": str(self.conf), MARKER: str(self.root)}
        out = self.client("sbatch", "--parsable", *args, env=env, cwd=cwd).stdout
        return int(out.strip().split(";")[0])

    def state(self, job_id: int) -> str:
        """PENDING, RUNNING, COMPLETING, COMPLETED, CANCELLED, ... from scontrol."""
        out = self.client("scontrol", "show", "job", "-o", str(job_id)).stdout
        return re.search(r"\bJobState=(\S+)", out).group(1)

    def wait(self, job_id: int, timeout_s: float, output: Path) -> Job:
        """Wait until the job has left the queue (ended and no longer completing); its Job."""
        deadline = time.monotonic() + timeout_s
        while self.client("squeue", "-h", "-j", str(job_id), "-o", "%T", check=False).stdout.strip():
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {self.state(job_id)} after {timeout_s:.0f}s")
            time.sleep(0.5)
        out = self.client("scontrol", "show", "job", "-o", str(job_id)).stdout
        code, sig = re.search(r"\bExitCode=(\d+):(\d+)", out).groups()
        text = output.read_text(errors="replace") if output.exists() else ""
        return Job(job_id, re.search(r"\bJobState=(\S+)", out).group(1), int(code), int(sig), text)

    def job_processes(self, wait_s: float = 0) -> list[tuple[int, str]]:
        """(pid, command) of live processes this cluster started, other than its daemons: what jobs left.

        Waits up to `wait_s` for them to end (slurmstepd outlives its job by a moment).
        """
        daemons = {p.pid for p in self.daemons.values()}
        deadline = time.monotonic() + wait_s
        while True:
            found = []
            for entry in Path("/proc").iterdir():
                if not entry.name.isdigit() or int(entry.name) in daemons or int(entry.name) == os.getpid():
                    continue
                try:
                    if f"{MARKER}={self.root}".encode() not in (entry / "environ").read_bytes().split(b"\0"):
                        continue
                    state, ppid = (entry / "stat").read_text().rsplit(")", 1)[1].split()[:2]
                    if state == "Z" or int(ppid) in daemons:
                        continue  # a zombie (ended; only its exit status is left), or slurmctld's slurmscriptd
                    cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
                except OSError:
                    continue
                found.append((int(entry.name), cmd[:200]))
            if not found or time.monotonic() >= deadline:
                return found
            time.sleep(0.5)


def make_cluster(cpus_per_node: int = 1) -> SlurmCluster:
    """A cluster in a fresh, short-named folder (the munge socket path must stay under 108 bytes)."""
    return SlurmCluster(Path(tempfile.mkdtemp(prefix="voxtune-slurm-")), cpus_per_node=cpus_per_node)


if __name__ == "__main__":  # by hand: `python tests/slurm_cluster.py`, a cluster until Enter or Ctrl-C
    if reason := unavailable():
        sys.exit(reason)
    cluster = make_cluster()
    cluster.start()
    print(f"export SLURM_CONF={cluster.conf}\ntwo nodes up, n1 and n2; Enter or Ctrl-C stops them", flush=True)
    try:
        input()
    except (KeyboardInterrupt, EOFError):
        pass
    finally:
        left = cluster.stop()
        print(f"stopped; killed by PID: {left}" if left else "stopped")
