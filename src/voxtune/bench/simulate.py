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

_DONE = 1e-9  # epochs (or seconds) left below which a phase has ended: float sums never land on 0 exactly


@dataclass(frozen=True)
class Trial:
    config: str | None = None  # its config's key in MakespanModel.config_cost (None: the mean config)
    epochs: int | None = None  # None: the model's epochs


def schedule(m: MakespanModel, workers: int, k: int, trials: list[Trial], gpus_per_node: int | None = None) -> dict[str, Any]:
    """{"wall_s", "training_worker_s", "idle_worker_s", "ends": each trial's end, in queue order}."""
    slots = workers // k
    on_node = (lambda w: w) if gpus_per_node is None else (lambda w: min(w, gpus_per_node))
    queue = deque(enumerate(trials))
    now = m.startup(on_node(min(slots, len(trials)) * k), k)
    running: list[list[Any]] = []  # [phase ("train": epochs left, "over": seconds left), left, index, trial]
    ends: list[float] = [0.0] * len(trials)
    training = 0.0

    def start_next() -> None:
        if queue:
            i, trial = queue.popleft()
            running.append(["train", float(trial.epochs or m.epochs), i, trial])

    for _ in range(slots):
        start_next()
    while running:
        busy = on_node(k * sum(r[0] == "train" for r in running))
        seconds = [r[1] * epoch_s(m, k, busy, r[3].config, gpus_per_node) if r[0] == "train" else r[1]
                   for r in running]
        dt = min(seconds)
        now += dt
        for r, s in zip(running, seconds):
            if r[0] == "train":
                training += k * dt
                r[1] = 0.0 if s - dt <= _DONE * max(1.0, s) else r[1] * (s - dt) / s
            else:
                r[1] = max(0.0, r[1] - dt)
        for r in list(running):
            if r[1] > _DONE:
                continue
            if r[0] == "train":
                r[0], r[1] = "over", m.overhead(k)
                if r[1] > _DONE:
                    continue
            running.remove(r)
            ends[r[2]] = now
            start_next()
    return {"wall_s": now, "training_worker_s": training, "idle_worker_s": workers * now - training, "ends": ends,
            "concurrent_trials": slots, "waves": math.ceil(len(trials) / slots)}


def queue_of(m: MakespanModel, trials: int) -> list[Trial]:
    """M trials over the calibration's configs in turn (its sorted keys), or M mean configs."""
    configs = sorted(m.config_cost) or [None]
    return [Trial(configs[i % len(configs)]) for i in range(trials)]
