"""Cross-validation: a run's K fold models trained side by side, one epoch of each in turn
(voxtune.train.loop.fit_folds), and the records of their means (here).

With cfg.folds K >= 2 (and no cfg.fold) the train and val cases are pooled and cut into K seeded
folds (voxtune.data.cache.train_val_ids; the test split is never touched). Fold i's model trains on
the other folds and validates on fold i, in out_dir/folds/<i>/, a TrainDir of its own (config.yaml
with fold i, metrics, checkpoints, TensorBoard; resumed from its own last.pt). After each epoch of all
K models the run reports one record of fold means, and out_dir/metrics.json holds those records.

Why K models in one run (one Tune trial per config) rather than K trials: a search must judge a
config by its fold mean. Tune has no trial groups (ray issues #23654, #53581), so K fold-trials would
need a scheduler and a searcher of our own to wait for a config's K results, judge them together at
each ASHA rung and stop them together. As one trial, the fold mean is simply the trial's metric: ASHA
judges and stops a config's folds together, Optuna gets one observation per config, and retries,
resume, DDP (every rank trains every fold model, each its own DDP model over the one process group)
and --mode auto's growth work unchanged. The cost: one config's folds share its trial's workers, so
they run at once only as far as the trial has workers (data, hybrid, or auto's growth); across
configs, experiment mode keeps every worker busy as before.
"""
from __future__ import annotations

import statistics
from typing import Any


_SUMMED = ("epoch_time_s", "train_s", "train_samples", "data_wait_s", "bn_stats_s", "build_s")


def cv_record(folds: list[dict[str, Any]], bests: list[dict[str, Any]]) -> dict[str, Any]:
    """One cross-validated epoch from `folds`, the K fold models' records of that epoch, and `bests`,
    each fold's best record up to it.

    val_loss, val_dice, val_dice_<region>, train_loss: means over the folds at this epoch (what a
    search's scheduler judges). cv_dice (and cv_dice_<region>): the mean of each fold's best val Dice so
    far, each fold model at its own best epoch (what ranks configs; best.pt holds that model);
    cv_dice_std: their spread (sample standard deviation). Times and samples: summed over the folds."""
    regions = [k for k in folds[0] if k.startswith("val_dice_")]
    mean = lambda records, key: statistics.fmean(r[key] for r in records)  # noqa: E731
    best_dice = [b["val_dice"] for b in bests]
    return {"epoch": folds[0]["epoch"], "train_loss": mean(folds, "train_loss"), "val_loss": mean(folds, "val_loss"),
            "val_dice": mean(folds, "val_dice"), **{k: mean(folds, k) for k in regions},
            **{k: sum(r.get(k, 0) for r in folds) for k in _SUMMED if any(k in r for r in folds)},
            "end_ts": max(r["end_ts"] for r in folds), "workers": folds[0]["workers"],
            "cv_dice": statistics.fmean(best_dice), "cv_dice_std": statistics.stdev(best_dice),
            **{"cv_dice_" + k[len("val_dice_"):]: mean(bests, k) for k in regions},
            "fold_val_dice": [r["val_dice"] for r in folds], "fold_best_dice": best_dice,
            "fold_best_epoch": [b["epoch"] for b in bests]}


def cv_records(fold_records: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The cross-validated records of the epochs every fold has finished."""
    out = []
    for e in range(min(len(r) for r in fold_records)):
        bests = [max(r[:e + 1], key=lambda x: x["val_dice"]) for r in fold_records]  # (the first of equals)
        out.append(cv_record([r[e] for r in fold_records], bests))
    return out
