"""Cross-validation: a run's K fold models trained side by side, one epoch of each in turn.

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
from collections.abc import Callable
from pathlib import Path
from typing import Any

from voxtune.config import TrainConfig, make_config, write_config
from voxtune.files import write_json
from voxtune.layout import TrainDir

_SUMMED = ("epoch_time_s", "train_s", "train_samples", "data_wait_s", "bn_stats_s")


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
            **{k: sum(r.get(k, 0) for r in folds) for k in _SUMMED},
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


def fit_folds(cfg: TrainConfig, cache_dir: str | Path, out_dir: str | Path, *, threads: int | None = None,
              report: Callable[[dict[str, Any]], bool] | None = None, log: Callable[[str], None] | None = None,
              abort: Callable[[], bool] | None = None) -> dict[str, Any]:
    """voxtune.train.loop.fit for cfg.folds K >= 2: K fold models, an epoch of each in turn; `report`
    gets each cross-validated record (cv_record) and may stop all K after it. Returns fit's summary of
    those records, best_val_dice being the last cv_dice, plus "folds": each fold model's summary."""
    from voxtune.train.loop import Training, everyone_stops

    out = TrainDir(out_dir)
    runs = [Training(make_config({"fold": i}, base=cfg), cache_dir, out.fold(i).path, threads=threads,
                     log=(lambda line, i=i: log(f"fold {i}: {line}")) if log else None, abort=abort)
            for i in range(cfg.folds)]
    rank0 = runs[0].rank == 0
    if rank0:
        out.path.mkdir(parents=True, exist_ok=True)
        write_config(cfg, out.config)
    stopped_early, finished = False, False
    try:
        # A run killed between two folds' saves resumes with its folds an epoch apart: the late ones catch up.
        for run in runs:
            while run.epoch < max(r.epoch for r in runs):
                run.train_epoch()
        records = cv_records([run.records for run in runs])
        while len(records) < cfg.epochs:
            for run in runs:
                run.train_epoch()
            records = cv_records([run.records for run in runs])
            if rank0:
                write_json(out.metrics, records)
            stop = rank0 and report is not None and bool(report(records[-1]))
            if everyone_stops(stop, runs[0].t.device):
                stopped_early = len(records) < cfg.epochs
                break
        finished = True
    finally:
        for run in runs:
            run.close(finished)
    if finished and rank0:
        write_json(out.metrics, records)
    last = records[-1] if records else {}
    return {"best_val_dice": last.get("cv_dice", -1.0), "best_epoch": last.get("fold_best_epoch", []),
            "epochs": len(records), "train_time_s": sum(r["epoch_time_s"] for r in records),
            "stopped_early": stopped_early, "metrics": records,
            "folds": [run.summary(stopped_early) | {"fold": i} for i, run in enumerate(runs)]}
