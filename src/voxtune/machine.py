"""What this process may use of the machine, known without importing torch."""
from __future__ import annotations

import os


def usable_cpus() -> int:
    """CPUs this process may use (affinity-aware, so a SLURM or taskset limit is honoured): the torch
    thread count that never oversubscribes."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
