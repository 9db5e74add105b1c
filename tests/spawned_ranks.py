"""For tests that train in gloo ranks they spawn themselves (torch.multiprocessing.spawn)."""
from __future__ import annotations

import os
import sys

import torch.distributed as dist


def leave_together() -> None:
    """The spawned rank's last call: tear the process group down on every rank together, then end the
    process at once. CI saw ranks abort (SIGABRT, "terminate called without an active exception": a C++
    thread destroyed while still joinable) without the barrier, and once with it (not reproduced in 20
    runs alone). Where a process ends is where such threads are destroyed, so the rank skips that with
    os._exit: its results are on disk (or flushed through its queue) by now, and C++ static destructors
    and Python's finalisers have nothing left to do for the test."""
    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
