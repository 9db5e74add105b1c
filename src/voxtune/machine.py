"""What this process may use of the machine, known without importing torch."""
from __future__ import annotations

import os


def usable_cpus() -> int:
    """CPUs this process may use (affinity-aware, so a SLURM or taskset limit is honoured): the torch
    thread count that never oversubscribes."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def process_started() -> float | None:
    """When this process started (seconds since the epoch, as time.time()), from Linux's /proc; None
    where that cannot be read."""
    try:
        with open("/proc/self/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22, starttime, after "pid (comm)"
        with open("/proc/stat") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime "))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None
