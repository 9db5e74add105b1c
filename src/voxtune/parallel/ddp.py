"""A DDP worker group that lives as long as the Tune actor holding it, so data-parallel trials pay
for worker start-up once per search, not once per trial.

Rank 0 is the Tune trial actor itself; ranks 1..K-1 are Ray actors placed in the other bundles of
the trial's placement group (Tune reserves all K bundles for the trial, gang-scheduled). With
`reuse_actors=True` Tune hands the same actor, placement group and therefore the same initialised
process group to the next trial. Each trial builds a fresh model and DDP wrapper over that
process group; the training loop itself is voxtune.train.loop.fit, unchanged.

Invariants:
- The rendezvous port is bound by rank 0's TCP store from the moment it is chosen (port 0: the OS
  picks a free one), so groups starting together on one node cannot take each other's port.
- A rank that fails ends the trial within seconds: while rank 0 trains, a watcher waits on the
  peers' results; the first failure kills the other peers (their collectives, and rank 0's, return
  at once) and stops rank 0's loop at its next step, and the trial fails with that rank's reason.
- This module imports neither torch nor MONAI at import time: a new rank's process starts with it
  and imports them while rank 0 does the same, in parallel instead of one after the other.
"""
from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ray
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from voxtune.config import TrainConfig, make_config
from voxtune.errors import VoxtuneError
from voxtune.parallel.state import quiet_exit_in_finalisers, reason_of
from voxtune.parallel.state import write as write_state

if TYPE_CHECKING:
    from voxtune.train.loop import Reporter

# Collectives give up after this long; a failed or dead peer is noticed by the watcher long before.
_TIMEOUT = timedelta(minutes=10)


class RankFailed(RuntimeError):
    """A rank raised something other than a VoxtuneError (out of memory, a bug) or its process or node
    is gone: like the same failure on rank 0, Tune retries the trial from its last checkpoint."""


def master_store(host: str, world: int):
    """Rank 0's rendezvous store, listening from now on; its `.port` goes to the peers."""
    import torch.distributed as dist

    return dist.TCPStore(host, 0, world, True, timeout=_TIMEOUT, wait_for_workers=False)


def import_loop() -> float:
    """Import the training loop (torch and MONAI: most of a new process's start-up) and torch._dynamo,
    which torch.optim's Optimizer imports at its first construction (torch/_compile.py, ~1 s on a CPU
    core: benchmarks/startup_parts.py); paid here, a start-up's breakdown counts it as the import it is,
    not as the model's build. Returns the seconds it took (0 when this process has them already)."""
    t0 = time.perf_counter()
    import voxtune.train.loop  # noqa: F401
    import torch._dynamo  # noqa: F401

    return time.perf_counter() - t0


def _join(store, rank: int, world: int, backend: str) -> float:
    """Join the process group; returns the seconds spent importing torch and MONAI first."""
    imports_s = import_loop()  # pay the imports now, beside the other ranks'
    import torch.distributed as dist

    dist.init_process_group(backend, store=store, rank=rank, world_size=world, timeout=_TIMEOUT)
    return imports_s


@ray.remote
class Rank:
    """One non-zero rank of the group: joins the process group, then runs `fit` when asked."""

    def warm(self) -> float:
        """--mode auto's warm growth: pay this process's start-up (torch, MONAI, torch._dynamo) while the
        trial still trains on its old K; `setup` then only joins. Returns the seconds it took."""
        quiet_exit_in_finalisers()
        return import_loop()

    def setup(self, addr: str, port: int, rank: int, world: int, backend: str) -> tuple[str, str, int]:
        import torch.distributed as dist

        quiet_exit_in_finalisers()
        if dist.is_initialized():  # a rank kept through a warm growth leaves its old group for the new one
            dist.destroy_process_group()
        _join(dist.TCPStore(addr, port, world, False, timeout=_TIMEOUT), rank, world, backend)
        return ray.util.get_node_ip_address(), ray.get_runtime_context().get_node_id(), os.getpid()

    def fit(self, cfg: dict[str, Any], cache_dir: str, out_dir: str, threads: int,
            staged: dict[str, str] | None = None) -> int:
        from voxtune.train.loop import fit

        return fit(make_config(cfg), self.local_cache(cache_dir, staged), out_dir, threads=threads)["epochs"]

    def local_cache(self, cache_dir: str, staged: dict[str, str] | None) -> str:
        """The cache this rank reads: its node's staged copy (--stage), or the shared one."""
        from voxtune.parallel.staging import local_cache

        return local_cache(cache_dir, staged)


def failure_of(rank: int, exc: BaseException) -> BaseException:
    """The error a rank's failed `fit` stands for: its own VoxtuneError, named by rank (not retried, as
    on rank 0), or RankFailed (retried)."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, VoxtuneError):
        return VoxtuneError(f"rank {rank}: {cause}")
    if isinstance(exc, ray.exceptions.RayTaskError):
        return RankFailed(f"rank {rank}: {reason_of(exc)}")
    return RankFailed(f"rank {rank}'s worker died: {reason_of(exc)}")


class _Watch(threading.Thread):
    """Waits on the peers' `fit` results while rank 0 trains; on the first failure, records it and
    kills the other peers, so no rank waits in a collective for one that will never come."""

    def __init__(self, group: WorkerGroup, futures: list):
        super().__init__(daemon=True, name="voxtune-peer-watch")
        self.group, self.futures = group, futures
        self.failure: BaseException | None = None
        self.done = threading.Event()

    def run(self) -> None:
        pending = list(self.futures)
        while pending and not self.done.is_set():
            ready, pending = ray.wait(pending, num_returns=1, timeout=0.5)
            for ref in ready:
                try:
                    ray.get(ref)
                except Exception as exc:  # noqa: BLE001  (whatever ended the rank, its reason is kept)
                    if self.done.is_set():
                        return
                    self.failure = failure_of(self.futures.index(ref) + 1, exc)
                    self.group.kill_peers()
                    return


class WorkerGroup:
    """K ranks for data-parallel training; K == 1 is a plain single-worker run."""

    def __init__(self, workers: int, cpus: float, gpus: float):
        self.workers, self.cpus, self.gpus = workers, cpus, gpus
        self.group_id = uuid.uuid4().hex[:12]  # lets tests and logs see which trials shared a group
        self.ranks: list[Any] = []
        self.lent: list[Any] | None = None  # --mode auto: the placement groups of the ranks lent to this trial
        self.warming: dict[str, Any] | None = None  # --mode auto: a warm growth under way (warm)
        self.last_resize: dict[str, float] = {}  # --mode auto: the last resize's K and seconds
        self.imports_s = 0.0  # what importing torch and MONAI cost this process (start-up, once per process)
        here = ray.is_initialized()
        self.nodes = [ray.util.get_node_ip_address()] if here else [socket.gethostname()]  # rank order
        self.node_ids = [ray.get_runtime_context().get_node_id()] if here else [socket.gethostname()]
        self.pids = [os.getpid()]  # rank order; lets an operator (or a test) find a rank's process
        self.caches: dict[str, list[str]] = {}  # {out_dir: the caches its fits' ranks read} (--stage)
        if workers > 1:
            pg = ray.util.get_current_placement_group()
            self._start_peers([(pg, i) for i in range(1, workers)])

    def _new_ranks(self, bundles: list[tuple[Any, int]]) -> list[Any]:
        """Rank actors, one in each of `bundles` ((placement group, bundle index) each)."""
        return [Rank.options(num_cpus=self.cpus, num_gpus=self.gpus, scheduling_strategy=PlacementGroupSchedulingStrategy(
                    placement_group=pg, placement_group_bundle_index=i)).remote() for pg, i in bundles]

    def _start_peers(self, bundles: list[tuple[Any, int]]) -> None:
        """Ranks 1..K-1 as Rank actors in `bundles`, joined with this process as rank 0 in a new process
        group of K = len(bundles) + 1."""
        self._join_peers(self._new_ranks(bundles))

    def _join_peers(self, ranks: list[Any]) -> None:
        """`ranks` (new, warm or kept) become ranks 1..K-1 of a new process group with this process as rank 0."""
        workers = len(ranks) + 1
        # NCCL wants one rank per GPU; ranks packed onto a shared GPU (fractions) fall back to gloo.
        # Ray tells whether this actor holds a GPU without importing torch (which would delay the peers).
        backend = ("nccl" if self.gpus >= 1 and ray.get_runtime_context().get_accelerator_ids().get("GPU")
                   else "gloo")
        addr = ray.util.get_node_ip_address()
        store = master_store(addr, workers)
        self.ranks = ranks
        joined = [r.setup.remote(addr, store.port, i, workers, backend) for i, r in enumerate(self.ranks, start=1)]
        self.imports_s += _join(store, 0, workers, backend)  # imports torch and MONAI while the peers do too
        self.nodes, self.node_ids, self.pids = self.nodes[:1], self.node_ids[:1], self.pids[:1]
        for node, node_id, pid in ray.get(joined):
            self.nodes.append(node)
            self.node_ids.append(node_id)
            self.pids.append(pid)
        self.workers = workers

    def _reserve(self, ranks: int):
        """A placement group of `ranks` workers' bundles (PACK: one node where it can, several where it
        must), asked of Ray now; it fate-shares with this actor."""
        from ray.util.placement_group import placement_group

        bundle = {"CPU": self.cpus} | ({"GPU": self.gpus} if self.gpus else {})
        return placement_group([bundle] * ranks, strategy="PACK")

    def resize(self, workers: int, wait_s: float = 10.0) -> int:
        """--mode auto, between two fits of a trial: rank 0 (this process, in the trial's own one-bundle
        placement group) and workers - 1 ranks in a placement group reserved now from Ray (PACK: one
        node where it can, several where it must). Returns the K the group has: the old one when Ray
        cannot reserve the bundles within wait_s (a waiting trial took them first). The placement group
        fate-shares with this actor: a trial that dies gives its lent workers back with it."""
        if workers == self.workers:
            return workers
        from ray.util.placement_group import remove_placement_group

        lent, t0 = None, time.perf_counter()
        if workers > 1:
            lent = self._reserve(workers - 1)
            ready, _ = ray.wait([lent.ready()], timeout=wait_s)
            if not ready:
                remove_placement_group(lent)
                return self.workers
        t1 = time.perf_counter()
        self.close()
        self.lent, self.workers = ([lent] if lent is not None else None), 1
        if lent is not None:
            self._start_peers([(lent, i) for i in range(workers - 1)])
        # Where a regroup's seconds go (the rest, until the next epoch starts, is the fit's build and resume).
        self.last_resize = {"to": self.workers, "reserve_s": t1 - t0, "peers_s": time.perf_counter() - t1}
        return self.workers

    def fit(self, cfg: TrainConfig, cache_dir: str | Path, out_dir: str | Path, report: Reporter,
            staged: dict[str, str] | None = None) -> dict[str, Any]:
        """Every rank trains `cfg`, each on its node's staged copy of the cache where `staged` names one;
        rank 0 (this process) reports and writes. Returns rank 0's summary; raises the first failing
        rank's error (see failure_of)."""
        self.imports_s += import_loop()
        from voxtune.parallel.staging import local_cache
        from voxtune.train.loop import fit

        threads = max(1, int(self.cpus))
        read = [local_cache(str(cache_dir), staged)] + (
            ray.get([r.local_cache.remote(str(cache_dir), staged) for r in self.ranks]) if staged
            else [str(cache_dir)] * len(self.ranks))
        self.caches = {str(out_dir): sorted({*self.caches.get(str(out_dir), []), *read})}  # this trial's only
        write_state(out_dir, caches=self.caches[str(out_dir)])  # every cache its ranks read, before they read it
        futures = [r.fit.remote(cfg.to_dict(), str(cache_dir), str(out_dir), threads, staged) for r in self.ranks]
        cache_dir = read[0]
        watch = _Watch(self, futures)
        if futures:  # (ray.wait would start a Ray instance in a process that has none)
            watch.start()
        try:
            summary = fit(cfg, cache_dir, out_dir, threads=threads, report=report,
                          abort=lambda: watch.failure is not None)
            if futures:
                watch.join()  # every peer finished its fit, or failed and was recorded
        except BaseException as exc:
            watch.done.set()  # from here on, peers killed by close() are not failures of their own
            failure = watch.failure
            self.close()  # peers may be blocked in a collective rank 0 will never make
            if failure is not None:
                raise failure from None
            raise exc
        if watch.failure is not None:
            self.close()
            raise watch.failure
        return summary

    def warm(self, workers: int) -> None:
        """--mode auto's warm growth to `workers`: reserve the added workers' bundles and start their Rank
        actors with a warm-up call (their process and imports) now, without waiting; the trial trains on
        meanwhile and joins them (join_warm) at the first epoch end after warm_ready() says so."""
        pg = self._reserve(workers - self.workers)
        ranks = self._new_ranks([(pg, i) for i in range(workers - self.workers)])
        self.warming = {"to": workers, "pg": pg, "ranks": ranks, "futures": [r.warm.remote() for r in ranks],
                        "t0": time.time()}

    def warm_ready(self) -> bool:
        """Without blocking: every warming rank has started and imported. A warm-up that failed (its
        process or node died) is cancelled and counts as never ready; the trial trains on at its K."""
        futures = self.warming["futures"]
        ready, _ = ray.wait(futures, num_returns=len(futures), timeout=0)
        if len(ready) < len(futures):
            return False
        try:
            ray.get(futures)
        except Exception:  # noqa: BLE001  (a warm rank that died is replaced by none: the growth is dropped)
            self.cancel_warm()
            return False
        self.warming["ready_ts"] = time.time()
        return True

    def cancel_warm(self) -> None:
        """Give the warming ranks' workers back (a trial started waiting, or this one ended)."""
        if self.warming is None:
            return
        from ray.util.placement_group import remove_placement_group

        for r in self.warming["ranks"]:
            ray.kill(r)
        remove_placement_group(self.warming["pg"])
        self.warming = None

    def join_warm(self) -> int:
        """Between two fits: the warm ranks join this group's ranks in a new process group (no process
        starts, no import on this path). Returns the new K."""
        warm, self.warming = self.warming, None
        t0 = time.perf_counter()
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
        self.lent = [*(self.lent or []), warm["pg"]]
        self._join_peers([*self.ranks, *warm["ranks"]])
        self.last_resize = {"to": self.workers, "warm": True, "warm_s": warm["ready_ts"] - warm["t0"],
                            "join_s": time.perf_counter() - t0}
        return self.workers

    def kill_peers(self) -> None:
        for r in self.ranks:
            ray.kill(r)

    def close(self) -> None:
        """Ends the peers and the process group, and gives back the lent placement group (auto)."""
        self.cancel_warm()
        self.kill_peers()
        self.ranks = []
        self.nodes, self.node_ids, self.pids = self.nodes[:1], self.node_ids[:1], self.pids[:1]
        if self.lent:
            from ray.util.placement_group import remove_placement_group

            for pg in self.lent:
                remove_placement_group(pg)
            self.lent = None
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
