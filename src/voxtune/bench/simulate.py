"""A search's schedule played out with the cost model (voxtune.bench.model): when each trial starts
and ends on W workers, K per trial, and the worker-seconds left idle.

Tune starts a queued trial the moment a slot of K workers frees, not in waves, so a slot runs its
trials back to back and a wave of unequal configs ends with its slowest. Every trial runs its
epochs at the speed of the moment: an epoch's compute slows with the number of workers training on
the node (contention) and speeds up again when a neighbour finishes; the all-reduce does not share
that slowdown. Between trials a slot pays the per-trial overhead, idle for contention.
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Any

from voxtune.bench.model import MakespanModel, epoch_s
from voxtune.parallel.modes import GOODPUT_GAIN, Running, auto_sizes, decide

_DONE = 1e-9  # share of an epoch (or seconds) left below which it has ended: float sums never land on 0 exactly


@dataclass(frozen=True)
class Trial:
    config: str | None = None  # its config's key in MakespanModel.config_cost (None: the mean config)
    epochs: int | None = None  # None: the model's epochs
    quality: float = 0.0  # what ASHA ranks it by (higher is better), the same at every rung


@dataclass(frozen=True)
class Asha:
    """Ray Tune's ASHAScheduler as voxtune sets it: rungs at grace x eta^i epochs below max_t; a trial
    reaching a rung stops if its value is below the (1 - 1/eta) quantile of those recorded there before it."""

    grace: int
    eta: int = 2

    def rungs(self, max_t: int) -> list[int]:
        out, t = [], self.grace
        while t < max_t:
            out.append(t)
            t *= self.eta
        return out

    @staticmethod
    def of(epochs: int) -> "Asha":
        return Asha(grace=max(1, epochs // 4), eta=2)  # voxtune.parallel.tune's setting


def _cutoff(values: list[float], eta: int) -> float | None:
    """numpy.nanpercentile(values, (1 - 1/eta) x 100), linear interpolation, as Ray's ASHA takes it."""
    if not values:
        return None
    ordered, q = sorted(values), (1 - 1 / eta) * (len(values) - 1)
    low = int(q)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (q - low)


def schedule(m: MakespanModel, workers: int, k: int, trials: list[Trial], gpus_per_node: int | None = None,
             asha: Asha | None = None, auto: bool = False) -> dict[str, Any]:
    """{"wall_s", "training_worker_s", "idle_worker_s", "ends" (each trial's, in queue order), "epochs"
    (each trial's, fewer where ASHA stopped it), "concurrent_trials", "waves", "grown" (trials that
    grew)}. auto: trials start on one worker each (k is 1) and regrow at epoch ends as
    voxtune.parallel.auto decides (grow_to): a growth reserves its workers at once, the trial trains on
    at its old K for warmup_s (the new ranks' warm-up) and joins them at the next epoch end after it,
    stopping for regroup_s; a waiting trial cancels a warm-up; a shrink stops for regroup_s."""
    slots = workers // k
    on_node = (lambda w: w) if gpus_per_node is None else (lambda w: min(w, gpus_per_node))
    queue = deque(enumerate(trials))
    now = m.startup(on_node(min(slots, len(trials)) * k), k)
    # [phase ("train": share of this epoch left; "over", "regroup": seconds left), left, index, trial,
    #  epochs done, K, a warm growth under way: (its K, when its ranks are ready) or None]
    running: list[list[Any]] = []
    ends, trained = [0.0] * len(trials), [0] * len(trials)
    rungs: dict[int, list[float]] = {}
    training = 0.0
    grown: set[int] = set()

    def start_next() -> None:
        while queue and (sum(reserved(r) for r in running) < workers if auto else len(running) < slots):
            i, trial = queue.popleft()
            running.append(["train", 1.0, i, trial, 0, k, None])

    def reserved(r: list[Any]) -> int:
        return max(r[5], r[6][0]) if r[6] is not None else r[5]

    def next_epoch(r: list[Any]) -> None:
        """After an epoch: ASHA's verdict at a rung, then the next epoch (auto: on the K grow_to gives)
        or the trial's overhead."""
        r[4] += 1
        last = r[3].epochs or m.epochs
        stop = r[4] >= last
        if asha is not None and not stop and r[4] in asha.rungs(last):
            recorded = rungs.setdefault(r[4], [])
            cutoff = _cutoff(recorded, asha.eta)
            recorded.append(r[3].quality)
            stop = cutoff is not None and r[3].quality < cutoff
        if stop:
            r[0], r[1] = "over", m.overhead(r[5])
            return
        if not auto:
            r[0], r[1] = "train", 1.0
        elif _auto_step(m, r, now, len(queue), lambda: grow_to(m, r, running, workers, len(queue), gpus_per_node)):
            grown.add(r[2])

    start_next()
    while running:
        busy = on_node(sum(r[5] for r in running if r[0] == "train"))
        seconds = [r[1] * epoch_s(m, r[5], busy, r[3].config, gpus_per_node) if r[0] == "train" else r[1]
                   for r in running]
        dt = min(seconds)
        now += dt
        for r, sec in zip(running, seconds):
            if r[0] == "train":
                training += r[5] * dt
                r[1] = 0.0 if sec - dt <= _DONE * max(1.0, sec) else r[1] * (sec - dt) / sec
            else:
                r[1] = max(0.0, r[1] - dt)
        for r in list(running):
            if r[1] > _DONE:
                continue
            if r[0] == "regroup":
                r[0], r[1] = "train", 1.0
                continue
            if r[0] == "train":
                next_epoch(r)
                start_next()  # (auto: workers a trial gave back go to the waiting trials)
                if r[0] != "over" or r[1] > _DONE:
                    continue
            running.remove(r)
            ends[r[2]], trained[r[2]] = now, r[4]
            start_next()
    concurrent = workers if auto else slots
    return {"wall_s": now, "training_worker_s": training, "idle_worker_s": workers * now - training, "ends": ends,
            "epochs": trained, "concurrent_trials": concurrent, "waves": math.ceil(len(trials) / concurrent),
            "grown": len(grown)}


def _auto_step(m: MakespanModel, r: list[Any], now: float, waiting: int, new_k) -> bool:
    """auto, at trial r's epoch end (not its last): a warm growth joins once its ranks are ready (stopping
    regroup_s), or the trial trains on at its K; a waiting trial cancels it; else the K new_k() gives: a
    growth starts warming (its workers reserved), a shrink stops regroup_s. True where a growth joined."""
    if r[6] is not None and not waiting:
        if now >= r[6][1]:
            r[0], r[1], r[5], r[6] = "regroup", m.regroup_s, r[6][0], None
            return True
        r[0], r[1] = "train", 1.0
        return False
    r[6] = None
    k = new_k()
    if k > r[5]:
        r[0], r[1], r[6] = "train", 1.0, (k, now + m.warmup_s)
    else:
        r[0], r[1], r[5] = ("regroup", m.regroup_s, k) if k != r[5] else ("train", 1.0, r[5])
    return False


def grow_to(m: MakespanModel, r: list[Any], running: list[list[Any]], workers: int, waiting: int,
            gpus_per_node: int | None = None) -> int:
    """The K trial r trains its next epoch on: voxtune.parallel.modes.decide, the Pool's own rule, on the
    simulated search (each trial's best Dice is its Trial.quality, its start its queue index). Growth to K
    pays where the model says: an epoch faster by GOODPUT_GAIN (so no (batch, K) is ever judged slow
    after the fact), saving more over the epochs left once the new ranks are warm (warmup_s) than a
    regroup costs (regroup_s)."""
    training = [x for x in running if x[0] != "over"]
    busy = sum(x[5] for x in training)
    view = {x[2]: Running(started=float(x[2]), k=max(x[5], x[6][0]) if x[6] is not None else x[5], batch_size=m.batch_size,
                          best=x[3].quality if x[0] != "over" else -math.inf) for x in running}
    owner = {id(view[x[2]]): x for x in running}

    def worth(trial: Running, n: int) -> bool:
        x = owner[id(trial)]
        if x[0] == "over" or n > m.train_cases:
            return False
        now_s, left = epoch_s(m, x[5], busy, x[3].config, gpus_per_node), (x[3].epochs or m.epochs) - x[4]
        grown_s = epoch_s(m, n, busy + n - x[5], x[3].config, gpus_per_node)
        warm = math.ceil(m.warmup_s / now_s) if now_s > 0 else 0
        return grown_s < GOODPUT_GAIN * now_s and (now_s - grown_s) * max(0, left - warm) > m.regroup_s

    return decide(r[2], view, workers, waiting, auto_sizes(workers, m.batch_size, m.min_part), set(), worth,
                  m.min_part)


def queue_of(m: MakespanModel, trials: int) -> list[Trial]:
    """M trials over the calibration's configs in turn (its sorted keys), or M mean configs."""
    configs = sorted(m.config_cost) or [None]
    return [Trial(configs[i % len(configs)]) for i in range(trials)]
