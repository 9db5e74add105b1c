"""`tune --stage DIR` on Ray: one stager per node, before the first trial; every process reads its node's copy.

The driver asks Ray for its alive nodes (ray.nodes(): no cluster view of our own) and runs one task
pinned to each (NodeAffinitySchedulingStrategy, soft=False), all at once, so nodes stage in parallel;
the task expands DIR's $VARS on its node ($TMPDIR, $SLURM_TMPDIR) and calls voxtune.data.stage. The
nodes' answers ({node id: staged folder}) travel in the TrialPlan; a trial's rank 0 and every DDP peer
look up their own node (ray.get_runtime_context().get_node_id()) and read the shared cache where their
node has no copy (a node that joined later, or one short of space: its note says so in summary.json).
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from voxtune.data.stage import stage_cache, unstage
from voxtune.errors import VoxtuneError
from voxtune.parallel.cluster import init_ray


def _on_each_node(fn, *args) -> dict[str, Any]:
    """fn(*args) once on every alive node, in parallel: {node id: its result}. Errors are raised."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    task = ray.remote(num_cpus=0, max_retries=0)(fn)
    nodes = sorted(n["NodeID"] for n in ray.nodes() if n.get("Alive"))
    futures = [task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote(*args)
               for node in nodes]
    try:
        return dict(zip(nodes, ray.get(futures)))
    except ray.exceptions.RayTaskError as exc:  # its own one line (a damaged shared file), not Ray's traceback
        if isinstance(exc.cause, VoxtuneError):
            raise VoxtuneError(str(exc.cause)) from None
        raise


def _stage_here(cache_dir: str, dest: str, quick: bool = False) -> dict[str, Any]:
    import ray

    return stage_cache(cache_dir, dest, node=ray.util.get_node_ip_address(), quick=quick).to_dict()


def stage_nodes(cache_dir: str, dest: str, log=print, quick: bool = False) -> dict[str, dict[str, Any]]:
    """Stage the cache on every node; {node id: Staged as a dict}, one line per node logged. quick: reuse
    a copy by its verified record (a bench's searches, after the bench staged it)."""
    log(f"staging {cache_dir} into {dest} on every node (one copy per node, each file checked as it lands)")
    done = _on_each_node(_stage_here, cache_dir, dest, quick)
    for staged in done.values():
        log(_stage_line(staged))
    return done


def _stage_line(staged: dict[str, Any]) -> str:
    return f"stage {staged['node']}: {staged['note']} in {staged['seconds']:.1f}s"


def unstage_nodes(cache_dir: str, dest: str, log=print) -> None:
    """Remove the staged copies on every node (--keep-stage skips this); one line for what a node could
    not remove."""
    for node, left in _on_each_node(unstage, cache_dir, dest).items():
        if left:
            log(f"stage: could not remove {', '.join(left)} on node {node}; remove it by hand")


def staged_paths(staging: dict[str, dict[str, Any]]) -> dict[str, str]:
    """{node id: staged folder} of the nodes that staged."""
    return {node: s["path"] for node, s in staging.items() if s.get("path")}


def local_cache(shared: str, staged: dict[str, str] | None) -> str:
    """The cache this process reads: its node's staged copy, or the shared one."""
    if not staged:
        return shared
    import ray

    return staged.get(ray.get_runtime_context().get_node_id(), shared)


@contextmanager
def _joined(address: str) -> Iterator[None]:
    import ray

    init_ray(address, 0, 0)
    try:
        yield
    finally:
        ray.shutdown()


@contextmanager
def cluster_staged(cache_dir: str, dest: str, address: str | None, keep: bool, log=print) -> Iterator[dict[str, Any]]:
    """`bench --stage`: stage once on every node before the bench's first search ({node: Staged as a dict}),
    outside every timed search, whose own staging then reuses the copy by its verified record (quick); the
    copies are removed when the bench ends well, unless keep. Without --address the one node is this
    machine, and no Ray is started for it."""
    if address is None:
        done = stage_cache(cache_dir, dest).to_dict()
        log(_stage_line(done))
        yield {done["node"]: done}
        if not keep:
            unstage(cache_dir, dest)
        return
    with _joined(address):
        staging = stage_nodes(cache_dir, dest, log)
    yield staging
    if not keep:
        with _joined(address):
            unstage_nodes(cache_dir, dest)
