"""--mode auto: every worker that no waiting trial can use goes to a trial that is still running.

Trials start as in experiment mode: one worker each, W at once, Tune placing and scheduling them.
Who grows is decided in one place that sees the whole search, the Pool, a named Ray actor of the
driver's (not a Tune scheduler: Tune's ResourceChangingScheduler regrows a trial by pausing it and
starting a new actor with a new placement group, which `reuse_actors` cannot have, so it would
throw away the DDP groups voxtune keeps across trials; and not the driver's own thread, which the
trials could not ask). The driver's Feed tells the Pool how many trials wait for a worker; each trial
asks it at every epoch end which K to train its next epoch on (voxtune.parallel.trial):

    - a trial waits (a retry, a new Optuna suggestion, the next grid point): a trial holding lent
      workers gives them back at this epoch end, so a waiting trial is delayed by at most one epoch;
    - no trial waits and workers are free (the last trials of a search, trials ASHA stopped): the most
      promising running trial that can still grow (best validation Dice so far: HyperSched's order)
      takes them, up to the largest K that global-batch can split its batch over (modes.auto_sizes),
      where the gain expected over its remaining epochs exceeds a regroup's cost, measured on an epoch
      that ran while no trial started, ended or regrouped (Running.steady: an epoch slowed by a trial
      that has since ended promises a gain the trial cannot have);
    - growth that did not pay (its first steady epoch at the new K was not faster than the last at the
      old one: Pollux's goodput, measured) is undone at once, and no trial of the search grows to that
      rank batch again.

The rule itself (Running, decide) lives in voxtune.parallel.modes, Ray-free, so that `voxtune plan`'s
simulation (voxtune.bench.simulate) plays the very same rule. This module imports Ray's core only, not Tune: the Pool's process starts beside the first trials'
and must not slow them (importing Tune took ~1 s of a 2-core machine's start-up). The driver's side,
the Feed, is a Tune callback in voxtune.parallel.trial.

The lent workers are Ray resources: the trial reserves them as a placement group (WorkerGroup.resize),
so Tune, which starts a waiting trial only on free resources, can never lose a worker to a lender it
does not know of; the group fate-shares with the trial's actor.
"""
from __future__ import annotations

import math
import time
from typing import Any

import ray

from voxtune.parallel.modes import GOODPUT_GAIN, Running, decide

# A warm regroup's critical path before one is measured: the join, the rebuild and the resume from the
# checkpoint (measured 0.1-0.3 s on 2 CPU cores at 24^3-32^3; docs/benchmarks-auto.md#warm-growth-where-two-ranks-pay).
REGROUP_PRIOR_S = 1.0


class PoolState:
    """The search's one view of who trains on how many workers (see the module's docstring); the Pool
    actor holds one."""

    def __init__(self, workers: int, sizes: list[int], regroup_s: float | None = None, min_part: int = 1):
        """regroup_s: what a growth costs until a regroup is measured (--auto-regroup-s; None: the warm-up
        and REGROUP_PRIOR_S, see worth); min_part: the fewest cases a rank's part of a global batch holds."""
        self.workers, self.sizes, self.assumed, self.min_part = workers, sizes, regroup_s, min_part
        self.waiting = 0
        self.running: dict[str, Running] = {}
        self.slow: set[tuple[int, int]] = set()
        self.gain: dict[tuple[int, int], float] = {}  # (batch_size, K): share of an epoch growth to K saved
        # A regroup's critical path (the last epoch end at the old K to the first epoch's start at the new):
        # the longest measured; before any, the one assumed or REGROUP_PRIOR_S.
        self.regroup_s = REGROUP_PRIOR_S if regroup_s is None else regroup_s
        self.measured = False
        # The longest a trial took from its process's start to its first epoch: what a new rank's warm-up
        # takes too, epochs the growing trial trains at its old K.
        self.warmup_s = 0.0
        self.log: list[dict[str, Any]] = []  # every change of K, for the tests and the curious
        self.occupancy_ts = 0.0  # when a trial last started, ended or changed its K
        # {trial: the K a growth reserved} while its new ranks warm up and it trains on at the old K: the
        # workers count as the trial's (trial.k), and its epochs at the old K do not judge the growth.
        self.warming: dict[str, int] = {}

    def worth(self, trial: Running, k: int) -> bool:
        """Growing `trial` to K saves more than it costs: at the gain measured for (batch, K) where a trial
        grew so before, else at the ideal 1 - K_now/K, over the epochs left once the new ranks are warm
        (the trial trains its epochs at the old K meanwhile), against a regroup's critical path. Before
        any regroup is measured, an --auto-regroup-s given stands for the whole cost."""
        now_s = trial.epoch_s.get(trial.k)
        if now_s is None or not trial.steady:
            return False
        share = self.gain.get((trial.batch_size, k), 1 - trial.k / k)
        if self.assumed is not None and not self.measured:
            return share * now_s * trial.epochs_left > self.assumed
        warm_epochs = math.ceil(self.warmup_s / now_s) if now_s > 0 else 0
        return share * now_s * max(0, trial.epochs_left - warm_epochs) > self.regroup_s

    def set_waiting(self, waiting: int, running: list[str] | None = None) -> None:
        """From the driver: trials waiting for a worker, and the trials Tune runs (a trial Tune has
        started holds its worker before its own `started` call reaches the Pool)."""
        self.waiting = waiting
        for trial_id in running or []:
            if trial_id not in self.running:
                self.running[trial_id] = Running(started=time.time())
                self.occupancy_ts = time.time()

    def started(self, trial_id: str, batch_size: int) -> None:
        self.running[trial_id] = Running(started=time.time(), batch_size=batch_size)
        self.occupancy_ts = time.time()

    def ended(self, trial_id: str) -> None:
        self.warming.pop(trial_id, None)
        if self.running.pop(trial_id, None) is not None:
            self.occupancy_ts = time.time()

    def epoch_end(self, trial_id: str, k: int, batch_size: int, val_dice: float, epoch_s: float,
                  epochs_left: int = 0, regroup_s: float = 0.0, startup_s: float = 0.0) -> int:
        """Trial `trial_id` trained an epoch of global batch `batch_size` on K = k, `epochs_left` to go, after
        a regroup of `regroup_s` (0: none) or, its first, a start-up of `startup_s`: the K of its next epoch."""
        trial = self.running.setdefault(trial_id, Running(started=time.time()))
        trial.batch_size, trial.best = batch_size, max(trial.best, val_dice)
        trial.epoch_s[k], trial.epochs_left = epoch_s, epochs_left
        trial.steady = time.time() - epoch_s >= self.occupancy_ts
        if regroup_s > 0:
            self.regroup_s = max(self.regroup_s, regroup_s) if self.measured else regroup_s
            self.measured = True
        self.warmup_s = max(self.warmup_s, startup_s)
        pending = self.warming.get(trial_id)
        if pending is not None and k < pending:  # an epoch still at the old K while its new ranks warm up
            if self.waiting == 0:
                return pending  # the workers stay reserved for it (trial.k); nothing to judge yet
            trial.grew_from = None  # a trial waits: the warm ranks are cancelled, their workers go to it
            self._change(trial_id, trial, k, "warm growth cancelled: waiting trials")
        self.warming.pop(trial_id, None)
        trial.k = k
        if trial.grew_from is not None and trial.steady:  # judged on an epoch no other change slowed or sped
            before = trial.grew_from
            trial.grew_from = None
            before_s = trial.epoch_s.get(before, math.inf)
            self.gain[(batch_size, k)] = 1 - epoch_s / before_s
            if epoch_s > GOODPUT_GAIN * before_s:
                self.slow.add((trial.batch_size, k))
                return self._change(trial_id, trial, before, "did not pay")
        target = decide(trial_id, self.running, self.workers, self.waiting, self.sizes, self.slow, self.worth,
                        self.min_part)
        if target > trial.k:
            trial.grew_from = trial.k
            self.warming[trial_id] = target  # the trial warms the new ranks up while it trains on (WorkerGroup.warm)
        return self._change(trial_id, trial, target, "waiting trials" if target < trial.k else "idle workers")

    def _change(self, trial_id: str, trial: Running, k: int, why: str) -> int:
        if k != trial.k:
            self.log.append({"trial_id": trial_id, "from": trial.k, "to": k, "why": why, "ts": time.time()})
            trial.k = k  # reserved now: another trial asking before this one regroups sees them taken
            self.occupancy_ts = time.time()
        return k

    def resized(self, trial_id: str, k: int) -> None:
        """The K a trial got (less than asked when Ray could not reserve the bundles in time)."""
        trial = self.running.get(trial_id)
        self.warming.pop(trial_id, None)
        if trial is not None and k != trial.k:  # it did not get the K asked for: no growth to judge
            trial.k, trial.grew_from = k, None
            self.occupancy_ts = time.time()

    def changes(self) -> list[dict[str, Any]]:
        return list(self.log)


Pool = ray.remote(num_cpus=0)(PoolState)


def start_pool(name: str, workers: int, batch_sizes: list[int], train_cases: int, regroup_s: float | None = None,
               min_part: int = 1):
    """The search's Pool, named so every trial finds it: K from every batch the space can give, at most
    one rank per training case (the loop refuses an empty rank) and min_part cases per rank."""
    from voxtune.parallel.modes import auto_sizes

    sizes = sorted({k for b in batch_sizes for k in auto_sizes(min(workers, train_cases), b, min_part)})
    return Pool.options(name=name).remote(workers, sizes, regroup_s, min_part)
