"""For tests that train in gloo ranks they spawn themselves (torch.multiprocessing.spawn)."""
from __future__ import annotations

import torch.distributed as dist


def leave_together() -> None:
    """Tear the process group down on every rank together: a gloo peer gone mid-teardown can abort the
    other rank (SIGABRT, "terminate called without an active exception"; CI saw it in spawned tests)."""
    dist.barrier()
    dist.destroy_process_group()
