"""Live progress of a search: one line per finished epoch and per trial event, instead of Ray's tables."""
from __future__ import annotations

import sys
import time

from ray.tune import Callback


class ProgressLines(Callback):
    """Prints `[elapsed] done/total | trial id (hyperparameters) epoch e/E val_dice d` lines."""

    def __init__(self, total: int, epochs: int, searched: list[str]):
        # No stream attribute: Tune pickles its callbacks with the run config.
        self.total, self.epochs, self.searched = total, epochs, searched
        self.t0 = time.perf_counter()
        self.best = float("-inf")

    def setup(self, **info):
        self.t0 = time.perf_counter()  # also after a restore, which unpickles a stale t0

    def _line(self, trials, text: str) -> None:
        done = sum(t.status in ("TERMINATED", "ERROR") for t in trials)
        running = sum(t.status == "RUNNING" for t in trials)
        elapsed = time.perf_counter() - self.t0
        print(f"[{elapsed:7.1f}s] {done}/{self.total} done, {running} running | {text}", file=sys.stdout, flush=True)

    def _name(self, trial) -> str:
        params = " ".join(f"{k}={trial.config.get(k)}" for k in self.searched)
        return f"trial {trial.trial_id} ({params})"

    def on_trial_start(self, iteration, trials, trial, **info):
        self._line(trials, f"{self._name(trial)} started")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if "cv_dice" in result:  # --folds: this epoch's fold mean, and the mean of the folds' bests that ranks
            self.best = max(self.best, result["cv_dice"])
            self._line(trials, f"{self._name(trial)} epoch {result.get('epoch')}/{self.epochs} "
                               f"fold mean val_dice {result['val_dice']:.4f}, of the folds' best "
                               f"{result['cv_dice']:.4f} +- {result['cv_dice_std']:.4f} "
                               f"(best config so far {self.best:.4f})")
            return
        self.best = max(self.best, result.get("val_dice", float("-inf")))
        self._line(trials, f"{self._name(trial)} epoch {result.get('epoch')}/{self.epochs} "
                           f"val_dice {result.get('val_dice', float('nan')):.4f} (best so far {self.best:.4f})")

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._line(trials, f"{self._name(trial)} finished")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._line(trials, f"{self._name(trial)} failed; see its error in the leaderboard")
