"""For tests that train in gloo ranks they spawn themselves (torch.multiprocessing.spawn)."""
from __future__ import annotations

import os
import sys

import torch.distributed as dist


def leave_together() -> None:
    """The spawned rank's last call: tear the process group down on every rank together, then end the
    process at once. Two aborts seen in CI (SIGABRT, "terminate called without an active exception": a
    C++ thread still joinable when it is destroyed): a gloo peer gone mid-teardown (hence the barrier),
    and, with the barrier, one rank after it had destroyed its group, in the process's own exit (hence
    os._exit: the rank's results are on disk by now, and C++ static destructors and Python's finalisers
    have nothing left to do but that)."""
    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
