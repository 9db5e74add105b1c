"""A DDP worker group that lives as long as the Tune actor holding it, so data-parallel trials
pay for worker start-up once per search, not once per trial.

Rank 0 is the Tune trial actor itself; ranks 1..K-1 are Ray actors placed in the other bundles
of the trial's placement group (Tune reserves all K bundles for the trial, gang-scheduled).
With `reuse_actors=True` Tune hands the same actor, placement group and therefore the same
initialised process group to the next trial. Each trial builds a fresh model and DDP wrapper
over that process group; the training loop itself is voxtune.train.loop.fit, unchanged.

This module imports neither torch nor MONAI at import time: a new rank's process starts with it
and then imports them (~6 s on a laptop CPU) while rank 0 does the same, in parallel, instead of
one after the other.
"""
from __future__ import annotations

import os
import socket
import uuid
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ray
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from voxtune.config import TrainConfig, make_config

if TYPE_CHECKING:
    from voxtune.train.loop import Reporter

# Collectives give up after this long: a dead peer turns into an error Tune can retry, not a hang.
_TIMEOUT = timedelta(minutes=10)


def _init(addr: str, port: int, rank: int, world: int, backend: str) -> None:
    import torch.distributed as dist

    import voxtune.train.loop  # noqa: F401  # pay the MONAI import now, beside the other ranks'

    dist.init_process_group(backend, init_method=f"tcp://{addr}:{port}", rank=rank, world_size=world,
                            timeout=_TIMEOUT)


@ray.remote
class Rank:
    """One non-zero rank of the group: joins the process group, then runs `fit` when asked."""

    def setup(self, addr: str, port: int, rank: int, world: int, backend: str) -> tuple[str, int]:
        _init(addr, port, rank, world, backend)
        return ray.util.get_node_ip_address(), os.getpid()

    def fit(self, cfg: dict[str, Any], cache_dir: str, out_dir: str, threads: int) -> int:
        from voxtune.train.loop import fit

        return fit(make_config(cfg), cache_dir, out_dir, threads=threads)["epochs"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


class WorkerGroup:
    """K ranks for data-parallel training; K == 1 is a plain single-worker run."""

    def __init__(self, workers: int, cpus: float, gpus: float):
        self.workers, self.cpus, self.gpus = workers, cpus, gpus
        self.group_id = uuid.uuid4().hex[:12]  # lets tests and logs see which trials shared a group
        self.ranks: list[Any] = []
        self.nodes = [ray.util.get_node_ip_address()] if ray.is_initialized() else [socket.gethostname()]
        self.pids = [os.getpid()]  # rank order; lets an operator (or a test) find a rank's process
        if workers == 1:
            return
        pg = ray.util.get_current_placement_group()
        # NCCL wants one rank per GPU; ranks packed onto a shared GPU (fractions) fall back to gloo.
        # Ray tells whether this actor holds a GPU without importing torch (which would delay the peers).
        backend = "nccl" if gpus >= 1 and ray.get_runtime_context().get_accelerator_ids().get("GPU") else "gloo"
        addr, port = ray.util.get_node_ip_address(), _free_port()
        self.ranks = [
            Rank.options(num_cpus=cpus, num_gpus=gpus, scheduling_strategy=PlacementGroupSchedulingStrategy(
                placement_group=pg, placement_group_bundle_index=i)).remote()
            for i in range(1, workers)
        ]
        joined = [r.setup.remote(addr, port, i, workers, backend) for i, r in enumerate(self.ranks, start=1)]
        _init(addr, port, 0, workers, backend)  # imports torch and MONAI here while the peers do too
        for node, pid in ray.get(joined):
            self.nodes.append(node)
            self.pids.append(pid)

    def fit(self, cfg: TrainConfig, cache_dir: str | Path, out_dir: str | Path, report: Reporter) -> dict[str, Any]:
        """Every rank trains `cfg`; rank 0 (this process) reports and writes. Returns rank 0's summary."""
        from voxtune.train.loop import fit

        threads = max(1, int(self.cpus))
        others = [r.fit.remote(cfg.to_dict(), str(cache_dir), str(out_dir), threads) for r in self.ranks]
        try:
            summary = fit(cfg, cache_dir, out_dir, threads=threads, report=report)
        except BaseException:
            self.close()  # peers may be blocked in a collective rank 0 will never make
            raise
        if others:  # (ray.get would start a Ray instance in a process that has none)
            ray.get(others)
        return summary

    def close(self) -> None:
        for r in self.ranks:
            ray.kill(r)
        self.ranks = []
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
