"""The cost model behind `voxtune plan`: what one epoch of a trial costs, and where each constant comes from.

An epoch of a trial of K ranks, config c, while `busy` workers share its node:

    epoch = contention(busy) * cost(c) * (steps(K) * step(b(K)) + ceil(val / K) * val_case_s)
            + steps(K) * allreduce(K)
    steps(K)  = ceil(ceil(train / K) / b(K))     b(K): each rank's batch; batch under scale-lr/per-rank,
                                                 batch / K under global-batch (the steps do not shrink)
    step(b)   = step_s * batch_cost[b]           a step at each rank batch as `voxtune bench` timed it
                                                 before its runs; linear in b only where it timed none
    allreduce = 2 (K-1)/K * param_bytes * beta + ALPHA_S * (K-1)     (beta x INTER_NODE_FACTOR across nodes)

`cost(c)` is a config's per-epoch time over the mean (`bn` trials cost more than `gn`). A trial also pays
trial_overhead_s (+ group_overhead_s when K > 1) outside its loop; the search pays start-up once.
voxtune.bench.simulate plays these costs out over a schedule.

calibrate() fits each constant to one run of a bench.json and says which (`fitted`); what no run can
separate is `ASSUMED`. A prediction of a run that fitted a constant is not evidence: voxtune.bench.plan
reports errors only for runs that fitted nothing.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any

from voxtune.bench.record import FORMAT
from voxtune.errors import VoxtuneError

# A whole-volume validation case costs this fraction of one training step's per-case cost (forward only,
# ~1/3 of forward + backward, plus the Dice and loss on the full volume).
VAL_RATIO = 0.5
# Ring all-reduce latency per hop (s): NCCL/gloo launch + one network round trip.
ALPHA_S = 50e-6
# Inter-node links (InfiniBand EDR ~ 10 GB/s effective) vs intra-node NVLink (~ 80 GB/s effective).
INTER_NODE_FACTOR = 8.0
ASSUMED = {
    "VAL_RATIO": f"{VAL_RATIO}: a validation case costs this share of a training case's step cost "
                 "(not separable from one run's per-epoch time)",
    "ALPHA_S": f"{ALPHA_S:g} s per ring hop of an all-reduce",
    "INTER_NODE_FACTOR": f"{INTER_NODE_FACTOR:g}x the all-reduce cost per byte once a group spans nodes",
}


@dataclass
class MakespanModel:
    """Every constant of the cost model; times in seconds, sizes in cases and bytes."""

    train_cases: int
    val_cases: int
    batch_size: int
    epochs: int
    step_s: float  # one training step (forward + backward + Adam) at batch_size on one idle worker
    param_bytes: int
    beta_s_per_byte: float  # all-reduce cost per byte inside a node
    startup_s: float  # search start to the first trial's first epoch, one worker per trial
    group_startup_s: float  # extra start-up of a K > 1 DDP group (paid once per slot: groups are reused)
    trial_overhead_s: float  # per trial, outside the training loop (model build, checkpoints, Tune)
    group_overhead_s: float  # extra per trial for K > 1 (remote fit calls on every rank)
    contention: dict[int, float] = field(default_factory=lambda: {1: 1.0})
    # The same for start-up: w workers importing torch and building models at once share the node too.
    startup_contention: dict[int, float] = field(default_factory=lambda: {1: 1.0})
    batch_cost: dict[int, float] = field(default_factory=dict)  # step at rank batch b / step at batch_size
    config_cost: dict[str, float] = field(default_factory=dict)  # a config's per-epoch time / the mean
    source: str = "default"
    # DDP recipe: False = each rank takes batch_size (the paper's, lr x K); True = the global batch of
    # batch_size is split over the K ranks (voxtune's default: the 1-worker problem).
    global_batch: bool = False
    min_part: int = 1  # global-batch: a rank's part holds this many cases or none (CPU ranks: 2; GlobalBatchSampler)
    fitted: list[dict[str, Any]] = field(default_factory=list)  # [{constant, value, from: [run labels], how}]
    val_s: float | None = None  # one validation case; None: VAL_RATIO x a step's per-case cost at batch_size
    regroup_measured_s: float | None = None  # auto: the median regroup's critical path in the calibration's auto runs

    @property
    def val_case_s(self) -> float:
        """Validation takes one whole volume at a time, whatever the training batch."""
        return self.val_s if self.val_s is not None else VAL_RATIO * self.step_s / self.batch_size

    def slowdown(self, busy: int) -> float:
        """Compute slowdown with `busy` workers on a node."""
        return _interpolate(self.contention, busy)

    def startup(self, busy: int, k: int) -> float:
        """Start-up of `busy` workers at once on a node, in trials of k workers."""
        return self.startup_s * _interpolate(self.startup_contention, busy) + (self.group_startup_s if k > 1 else 0.0)

    def step(self, batch: int) -> float:
        """One step at rank batch `batch`: as timed where it was, else linear in the batch."""
        return self.step_s * self.batch_cost.get(batch, batch / self.batch_size)

    def cost(self, config: str | None) -> float:
        return self.config_cost.get(config, 1.0) if config is not None else 1.0

    @property
    def regroup_s(self) -> float:
        """--mode auto: what a regroup stops a trial for, from its last epoch end at the old K to its first
        at the new one: as measured in the calibration's auto runs (the median over their regroups; a
        growth warms its new ranks up beforehand, so this is the join, the rebuild and the resume), else
        the search's own start-up (startup_s), which a cold new rank pays."""
        return self.regroup_measured_s if self.regroup_measured_s is not None else self.startup_s

    @property
    def warmup_s(self) -> float:
        """--mode auto: a new rank's warm-up (its process and imports), which the growing trial spends
        training at its old K: a trial's start-up (startup_s), which is that and a little more."""
        return self.startup_s

    def overhead(self, k: int) -> float:
        return self.trial_overhead_s + (self.group_overhead_s if k > 1 else 0.0)


def _interpolate(points: dict[int, float], x: int) -> float:
    """Linear between measured points, flat beyond them (a calibration says nothing past its last point)."""
    pts = sorted(points.items())
    if x <= pts[0][0]:
        return pts[0][1]
    for (w0, f0), (w1, f1) in zip(pts, pts[1:]):
        if x <= w1:
            return f0 + (f1 - f0) * (x - w0) / (w1 - w0)
    return pts[-1][1]


def ranks_used(m: MakespanModel, k: int) -> int:
    """The ranks of a k-worker trial that take cases: all, but under global-batch only as many as have
    min_part cases of the batch each (the others join the all-reduce with nothing)."""
    return min(k, max(1, m.batch_size // m.min_part)) if m.global_batch else k


def rank_batch(m: MakespanModel, k: int) -> int:
    """The batch of each rank that takes cases in a k-worker trial."""
    return math.ceil(m.batch_size / ranks_used(m, k)) if m.global_batch and k > 1 else m.batch_size


def steps(m: MakespanModel, k: int) -> int:
    """Optimiser steps (and all-reduces) per epoch of a k-worker trial."""
    return math.ceil(m.train_cases / (rank_batch(m, k) * ranks_used(m, k)))


def allreduce_s(m: MakespanModel, k: int, gpus_per_node: int | None = None) -> float:
    """One gradient all-reduce over k ranks (ring: each rank sends and receives 2(k-1)/k of the bytes)."""
    if k <= 1:
        return 0.0
    beta = m.beta_s_per_byte * (INTER_NODE_FACTOR if gpus_per_node and k > gpus_per_node else 1.0)
    return 2 * (k - 1) / k * m.param_bytes * beta + ALPHA_S * (k - 1)


def compute_epoch_s(m: MakespanModel, k: int, busy: int, config: str | None = None) -> float:
    """Per-epoch compute of one rank of a k-worker trial while `busy` workers share its node."""
    work = steps(m, k) * m.step(rank_batch(m, k)) + math.ceil(m.val_cases / k) * m.val_case_s
    return m.slowdown(busy) * m.cost(config) * work


def epoch_s(m: MakespanModel, k: int, busy: int, config: str | None = None, gpus_per_node: int | None = None) -> float:
    return compute_epoch_s(m, k, busy, config) + steps(m, k) * allreduce_s(m, k, gpus_per_node)


# The paper's setting: 3D U-Net filter_start 8, depth 3 on 240x240x152x4, batch 2 per replica, 20
# epochs, 70/15/15 of 484 cases (339 train, 72 val), one V100 per worker, 4 per node. step_s: the
# net is ~730 GFLOP forward+backward per sample (torch FlopCounter), 1.46 TFLOP a batch-2 step, at an
# assumed ~2.5 TFLOPS effective fp32 on a V100 (small-channel 3D convs are memory-bound) -> 0.6 s.
# Start-up and overheads are typical Ray-on-SLURM values, not measurements.
DEFAULTS = MakespanModel(train_cases=339, val_cases=72, batch_size=2, epochs=20, step_s=0.6, param_bytes=351_457 * 4,
                 beta_s_per_byte=1 / 80e9, startup_s=15.0, group_startup_s=20.0, trial_overhead_s=5.0,
                 group_overhead_s=5.0, source="default constants for the paper's setting (3D U-Net filter_start 8"
                 " on 240x240x152x4, V100, batch 2, 20 epochs, 339 train / 72 val cases); not measured")


def run_label(r: dict[str, Any]) -> str:
    """How plan and bench.md name a bench run: mode, workers, K and recipe."""
    if r["workers"] == 1:
        return "1 worker"
    recipe = f", {r['ddp_recipe']}" if r.get("ddp_recipe") else ""
    return f"{r['mode']} W={r['workers']} K={r['workers_per_trial']}{recipe}"


def repeat_costs(r: dict[str, Any]) -> dict[str, float]:
    """{config: median per-epoch seconds over the repeats} of a bench run (empty for an older bench.json)."""
    seen: dict[str, list[float]] = {}
    for rep in r.get("repeats") or []:
        for config, s in (rep.get("trial_epoch_s") or {}).items():
            seen.setdefault(config, []).append(s)
    return {c: statistics.median(v) for c, v in seen.items()}


def calibrate(bench: dict[str, Any]) -> MakespanModel:
    """Fit the model's constants to a bench.json; `fitted` names the run each came from."""
    if bench.get("format") != FORMAT:
        raise VoxtuneError(f"not a usable bench.json: format {bench.get('format')!r}, this voxtune reads format "
                           f"{FORMAT}; run `voxtune bench` again")
    try:
        return _fit(bench)
    except (KeyError, TypeError, ValueError, StopIteration, ZeroDivisionError) as exc:
        raise VoxtuneError(f"not a usable bench.json: needs settings and runs with a 1-worker run "
                           f"({type(exc).__name__}: {exc})") from None


def _fit(bench: dict[str, Any]) -> MakespanModel:
    s, runs = bench["settings"], bench["runs"]
    one = next(r for r in runs if r["workers"] == 1)
    recipe = (s.get("ddp_recipes") or ["scale-lr"])[0]  # the all-reduce cost is fitted on the bench's first
    m = MakespanModel(train_cases=int(s["train_cases"]), val_cases=int(s["val_cases"]),
                      batch_size=int(s["batch_size"]), epochs=int(s["epochs"]), step_s=0.0,
                      param_bytes=int(s["param_bytes"]), beta_s_per_byte=0.0, startup_s=0.0,
                      group_startup_s=0.0, trial_overhead_s=0.0, group_overhead_s=0.0, source="calibrated",
                      global_batch=recipe == "global-batch", min_part=int(s.get("min_part", 1)))
    fitted = m.fitted

    def fit(constant: str, value: Any, run: str | list[str], how: str) -> None:
        fitted.append({"constant": constant, "value": value, "from": [run] if isinstance(run, str) else run,
                       "how": how})

    timed = {int(b): float(v) for b, v in (s.get("step_s_by_batch") or {}).items()}
    if m.batch_size in timed:
        m.batch_cost = {b: v / timed[m.batch_size] for b, v in sorted(timed.items())}
        fit("batch_cost", m.batch_cost, "settings.step_s_by_batch",
            "steps timed at each rank batch before the runs, over the step at the bench's batch")
    trials, base = int(s["trials"]), run_label(one)
    m.step_s = one["per_epoch_s"] / (steps(m, 1) + m.val_cases * VAL_RATIO / m.batch_size)
    fit("step_s", m.step_s, base, "per-epoch time / (steps + val cases x VAL_RATIO / batch)")
    costs = repeat_costs(one)
    if costs:
        mean = statistics.fmean(costs.values())
        m.config_cost = {c: v / mean for c, v in sorted(costs.items())}
        fit("config_cost", m.config_cost, base, "each config's per-epoch time over the mean")
    m.startup_s = one["startup_s"] or 0.0
    fit("startup_s", m.startup_s, base, "Ray up to the first epoch")
    m.trial_overhead_s = max(0.0, (one["wall_s"] - m.startup_s - trials * one["trial_compute_s"]) / trials)
    fit("trial_overhead_s", m.trial_overhead_s, base, "wall time outside start-up and training loops, per trial")
    for r in runs:  # busy workers in an experiment run: W, or M when there are fewer trials than workers
        if r["mode"] == "experiment" and r["workers"] > 1:
            busy = min(r["workers"], trials)
            m.contention[busy] = max(1.0, r["per_epoch_s"] / one["per_epoch_s"])
            fit(f"contention[{busy}]", m.contention[busy], run_label(r), "per-epoch time over the 1-worker run's")
            if m.startup_s > 0:
                m.startup_contention[busy] = max(1.0, (r["startup_s"] or 0.0) / m.startup_s)
                fit(f"startup_contention[{busy}]", m.startup_contention[busy], run_label(r),
                    "start-up over the 1-worker run's")
    regroups = [g["critical_s"] for r in runs if r["mode"] == "auto" for rep in r.get("repeats", [])
                for g in rep.get("regroups", []) if "critical_s" in g]
    if regroups:
        m.regroup_measured_s = statistics.median(regroups)
        fit("regroup_s", m.regroup_measured_s, [run_label(r) for r in runs if r["mode"] == "auto"],
            "the median regroup's critical path (trial.json regroups: last epoch end at the old K to the first at the new)")
    groups = [r for r in runs if r["workers_per_trial"] > 1 and r.get("ddp_recipe") == recipe]
    if not groups:
        m.beta_s_per_byte = DEFAULTS.beta_s_per_byte
        return m
    xs, ys, starts, overheads = [], [], [], []
    for r in groups:
        k = r["workers_per_trial"]
        xs.append(2 * (k - 1) / k * m.param_bytes)
        ys.append((r["per_epoch_s"] - compute_epoch_s(m, k, r["workers"])) / steps(m, k) - ALPHA_S * (k - 1))
        starts.append((r["startup_s"] or 0.0) - m.startup(r["workers"], 1))
        waves = math.ceil(trials / r["concurrent_trials"])
        per_wave = (r["wall_s"] - (r["startup_s"] or 0.0) - waves * r["trial_compute_s"]) / waves
        overheads.append(per_wave - m.trial_overhead_s)
    names = [run_label(r) for r in groups]
    m.beta_s_per_byte = max(0.0, sum(x * y for x, y in zip(xs, ys)) / sum(x * x for x in xs))
    fit("beta_s_per_byte", m.beta_s_per_byte, names, "per-epoch time the compute term leaves, per step and "
        "byte moved (least squares): everything a DDP epoch costs beyond its compute, not a link speed")
    m.group_startup_s = max(0.0, statistics.fmean(starts))
    fit("group_startup_s", m.group_startup_s, names, "start-up beyond the experiment run's")
    m.group_overhead_s = max(0.0, statistics.fmean(overheads))
    fit("group_overhead_s", m.group_overhead_s, names, "per-trial time outside the loop beyond a 1-worker trial's")
    return m


def fitted_runs(m: MakespanModel) -> set[str]:
    """Labels of the runs some constant of `m` was fitted to."""
    return {name for f in m.fitted for name in f["from"] if not name.startswith("settings.")}
