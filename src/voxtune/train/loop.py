"""One training run: the same loop on one worker or as one rank of a DDP group.

The caller decides where this runs and with how many workers (see voxtune.parallel); the loop
only asks torch.distributed whether a process group exists, nanoGPT-style. Rank 0 writes
everything under `out_dir` (voxtune.layout.TrainDir): the resolved config, one metrics record per
finished epoch, the last checkpoint (model, optimiser, scaler, epoch, RNG: the resume point), the
best checkpoint (self-describing, for predict) and TensorBoard events.

fit reads top to bottom: build (voxtune.train.build), resume (voxtune.train.checkpoint), then per
epoch train, BatchNorm statistics, validate, save; a Training holds one model's run between epochs.
Re-running into an `out_dir` that holds a last checkpoint resumes after its epoch. With cfg.folds K,
fit_folds steps K Trainings side by side (voxtune.train.crossval says why).
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import default_collate

from voxtune.config import TrainConfig, make_config, write_config
from voxtune.errors import VoxtuneError
from voxtune.files import write_json
from voxtune.layout import TrainDir
from voxtune.machine import usable_cpus
from voxtune.train.batchnorm import recompute_bn_stats
from voxtune.train.build import Trainer, build, rank_and_world
from voxtune.train.checkpoint import best_state, resume, save_checkpoint, save_epoch
from voxtune.train.crossval import cv_records
from voxtune.train.evaluate import validate_cases as _validate  # tests spy on loop._validate

# report(record) -> True asks the loop to stop after this epoch (a scheduler's early stop).
Reporter = Callable[[dict[str, Any]], bool]


class TrainingDiverged(VoxtuneError):
    """The loss became NaN or infinite; the run cannot continue."""


class OutOfMemory(VoxtuneError):
    """A step, statistics pass or validation needed more memory than the worker has."""


def _out_of_memory(exc: BaseException) -> bool:
    """torch's own out-of-memory error (CUDA, MPS, XPU), or the CPU allocator's."""
    return isinstance(exc, (torch.OutOfMemoryError, MemoryError)) or (
        isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc))


class Aborted(RuntimeError):
    """The caller's `abort` check said stop (another rank failed); the caller knows why."""


def _all_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum a few floats over all ranks (identity on one worker)."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if rank_and_world()[1] > 1:
        dist.all_reduce(t)
    return t.tolist()


class Training:
    """One model's run, an epoch at a time: built (or resumed from out_dir's last checkpoint) on
    creation; each train_epoch trains, recomputes BatchNorm statistics, validates and (rank 0) saves.
    fit drives one; voxtune.train.crossval drives a cross-validation's K fold models side by side."""

    def __init__(self, cfg: TrainConfig, cache_dir: str | Path, out_dir: str | Path, *, threads: int | None = None,
                 log: Callable[[str], None] | None = None, abort: Callable[[], bool] | None = None):
        self.rank, self.world = rank_and_world()
        self.cfg, self.run, self.abort = cfg, TrainDir(out_dir), abort
        self.log = log if self.rank == 0 else None
        torch.set_num_threads(max(1, threads or usable_cpus()))
        t0 = time.perf_counter()
        self.t = build(cfg, cache_dir, self.rank, self.world, threads)
        self.records, self.best, self.best_epoch = resume(self.t, self.run, self.world, self.log)
        self.writer = _open_writer(self.t, self.run) if self.rank == 0 else None
        self.build_s: float | None = time.perf_counter() - t0  # reported with the first epoch, then None

    @property
    def epoch(self) -> int:
        """The last finished epoch (0 before the first)."""
        return self.records[-1]["epoch"] if self.records else 0

    def stop_if_aborted(self) -> None:
        if self.abort is not None and self.abort():
            raise Aborted("stopped: another rank of this trial failed")

    def train_epoch(self) -> dict[str, Any]:
        """Train the next epoch; returns its metrics record (the same on every rank)."""
        t, cfg, epoch = self.t, self.cfg, self.epoch + 1
        try:
            t_epoch = time.perf_counter()
            trained = _train_epoch(t, epoch, self.stop_if_aborted)
            t_bn = time.perf_counter()
            _recompute_bn_statistics(t, self.stop_if_aborted)
            bn_stats_s = time.perf_counter() - t_bn
            record = {"epoch": epoch, "train_loss": trained.pop("train_loss"),
                      **_validate_epoch(t, self.stop_if_aborted), "epoch_time_s": time.perf_counter() - t_epoch,
                      **trained, "bn_stats_s": bn_stats_s, "end_ts": time.time(), "workers": self.world}
            if self.build_s is not None:  # the first epoch after this process built (or resumed) the run
                record["build_s"], self.build_s = self.build_s, None
            self.records.append(record)
            if self.rank == 0:
                if record["val_dice"] > self.best:
                    self.best, self.best_epoch = record["val_dice"], epoch
                    save_checkpoint(self.run.best_checkpoint, best_state(t, record))
                save_epoch(t, self.run, self.writer, self.records, self.best, self.best_epoch)
        except (RuntimeError, MemoryError) as exc:
            if not _out_of_memory(exc):
                raise
            raise _out_of_memory_line(cfg, t.patch, self.run, t.device, epoch, self.world) from None
        if self.log:
            self.log(f"epoch {epoch}/{cfg.epochs}  train_loss {record['train_loss']:.4f}  "
                     f"val_loss {record['val_loss']:.4f}  val_dice {record['val_dice']:.4f}  "
                     f"({record['epoch_time_s']:.1f}s)")
        return record

    def close(self, finished: bool) -> None:
        """Close TensorBoard; a finished run that trained nothing still leaves its (empty) metrics.json."""
        if self.writer is not None:
            self.writer.close()
        if finished and self.rank == 0 and not self.records:
            write_json(self.run.metrics, self.records)

    def summary(self, stopped_early: bool) -> dict[str, Any]:
        return {"best_val_dice": max(self.best, -1.0), "best_epoch": self.best_epoch, "epochs": len(self.records),
                "train_time_s": sum(r["epoch_time_s"] for r in self.records), "stopped_early": stopped_early,
                "metrics": self.records}


def fit(cfg: TrainConfig, cache_dir: str | Path, out_dir: str | Path, *, threads: int | None = None,
        report: Reporter | None = None, log: Callable[[str], None] | None = None,
        abort: Callable[[], bool] | None = None) -> dict[str, Any]:
    """Train `cfg` on the cache's train split (or its fold, cfg.folds), validate every epoch.

    Returns {"best_val_dice", "best_epoch", "epochs", "train_time_s", "stopped_early", "metrics"}.
    Under DDP every rank calls this with the same arguments; ranks shard cases and reduce metrics.
    abort() is asked before every step, statistics batch and validation case; True raises Aborted.
    cfg.folds K >= 2 with no cfg.fold: the K fold models side by side (voxtune.train.crossval).
    """
    if cfg.folds > 1 and cfg.fold is None:
        return fit_folds(cfg, cache_dir, out_dir, threads=threads, report=report, log=log, abort=abort)
    run = Training(cfg, cache_dir, out_dir, threads=threads, log=log, abort=abort)
    stopped_early, finished = False, False
    try:
        while run.epoch < cfg.epochs:
            record = run.train_epoch()
            stop = run.rank == 0 and report is not None and bool(report(record))
            if everyone_stops(stop, run.t.device):
                stopped_early = record["epoch"] < cfg.epochs
                break
        finished = True
    finally:
        run.close(finished)
    return run.summary(stopped_early)


def fit_folds(cfg: TrainConfig, cache_dir: str | Path, out_dir: str | Path, *, threads: int | None = None,
              report: Reporter | None = None, log: Callable[[str], None] | None = None,
              abort: Callable[[], bool] | None = None) -> dict[str, Any]:
    """voxtune.train.loop.fit for cfg.folds K >= 2: K fold models, an epoch of each in turn; `report`
    gets each cross-validated record (cv_record) and may stop all K after it. Returns fit's summary of
    those records, best_val_dice being the last cv_dice, plus "folds": each fold model's summary."""
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
        for i, run in enumerate(runs):
            while run.epoch < max(r.epoch for r in runs):
                _fold_epoch(run, i, cfg.folds)
        records = cv_records([run.records for run in runs])
        while len(records) < cfg.epochs:
            for i, run in enumerate(runs):
                _fold_epoch(run, i, cfg.folds)
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


def _fold_epoch(run: Training, fold: int, folds: int) -> dict[str, Any]:
    """run.train_epoch(); a fold's own error (diverged, out of memory, a damaged case) names the fold."""
    try:
        return run.train_epoch()
    except VoxtuneError as exc:
        raise type(exc)(f"fold {fold} of {folds}: {exc}") from None


def _open_writer(t: Trainer, run: TrainDir):
    """Rank 0 writes the resolved config and opens the TensorBoard writer."""
    from torch.utils.tensorboard import SummaryWriter

    run.path.mkdir(parents=True, exist_ok=True)
    write_config(t.cfg, run.config)
    return SummaryWriter(str(run.tensorboard))


def _train_epoch(t: Trainer, epoch: int, stop_if_aborted: Callable[[], None]) -> dict[str, Any]:
    """One pass over this rank's shard: train_loss (averaged over every rank's samples), train_s,
    train_samples, data_wait_s. A NaN or infinite loss raises TrainingDiverged on every rank at once
    (the sum is all-reduced)."""
    t_start = time.perf_counter()
    use_amp, amp_dtype = t.amp
    t.net.train()
    t.sampler.set_epoch(epoch)
    loss_sum = torch.zeros((), device=t.device, dtype=torch.float64)
    seen, wait = 0, 0.0
    t_wait = time.perf_counter()
    for step, batch in enumerate(t.loader):
        wait += time.perf_counter() - t_wait
        stop_if_aborted()
        image, label = batch if batch is not None else _no_cases(t, epoch)
        image, label = t.to_device(image), label.to(t.device, non_blocking=True).float()
        with torch.autocast(t.device.type, dtype=amp_dtype, enabled=use_amp):
            logits = t.net(image)
            # An empty part still runs forward and backward: DDP's all-reduce and SyncBatchNorm wait for it.
            loss = t.loss_fn(logits, label) if len(image) else logits.sum() * 0.0
        weight = t.sampler.weight(step)
        t.optimizer.zero_grad(set_to_none=True)
        t.scaler.scale(loss if weight == 1.0 else loss * weight).backward()
        t.scaler.step(t.optimizer)
        t.scaler.update()
        loss_sum += loss.detach().double() * image.shape[0]
        seen += image.shape[0]
        t_wait = time.perf_counter()
    train_loss_sum, train_seen = _all_sum([loss_sum.item(), seen], t.device)
    train_loss = train_loss_sum / max(train_seen, 1)
    if not math.isfinite(train_loss):
        raise TrainingDiverged(f"training loss became {train_loss} at epoch {epoch} "
                               f"(lr={t.lr}); lower lr or enable a different norm")
    return {"train_loss": train_loss, "train_s": time.perf_counter() - t_start, "train_samples": int(train_seen),
            "data_wait_s": wait}


def _no_cases(t: Trainer, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of no cases, shaped as this run's: this rank's part of a short last global batch."""
    image, label = t.train_set[(epoch, 0)]
    return image[None][:0], label[None][:0]


def _recompute_bn_statistics(t: Trainer, stop_if_aborted: Callable[[], None]) -> None:
    """BatchNorm running statistics of these weights, not momentum averages over past ones
    (voxtune.train.batchnorm), from the epoch's first bn_cases cases in the global batches one worker would
    draw, this rank's part of each."""
    if not t.bn_cases:
        return
    use_amp, amp_dtype = t.amp
    epoch = t.sampler.epoch

    def images():  # the global batches of the epoch's first bn_cases cases, this rank's part of each
        for part in t.sampler.parts(t.bn_cases):
            stop_if_aborted()
            image = default_collate([t.train_set[key][0] for key in part]) if part else _no_cases(t, epoch)[0]
            yield t.to_device(image)

    with torch.autocast(t.device.type, dtype=amp_dtype, enabled=use_amp):
        recompute_bn_stats(t.model, images())


def _validate_epoch(t: Trainer, stop_if_aborted: Callable[[], None]) -> dict[str, Any]:
    """val_loss, val_dice (mean over regions) and val_dice_<region>, over every rank's val cases."""
    use_amp, amp_dtype = t.amp
    val = _validate(t.model, t.val_set, t.loss_fn, t.cfg.val_metric, t.layout, t.device, use_amp, amp_dtype,
                    stop_if_aborted)
    val_loss_sum, n_val, *dice_sums = _all_sum(val, t.device)
    dice = [d / max(n_val, 1) for d in dice_sums]
    return {"val_loss": val_loss_sum / max(n_val, 1), "val_dice": sum(dice) / len(dice),
            **{f"val_dice_{name}": d for name, d in zip(t.regions, dice)}}


def everyone_stops(stop: bool, device: torch.device) -> bool:
    """Rank 0's stop decision (a scheduler's early stop), followed by every rank."""
    if rank_and_world()[1] == 1:
        return stop
    flag = torch.tensor([1.0 if stop else 0.0], device=device)
    dist.broadcast(flag, src=0)
    return bool(flag.item())


def _out_of_memory_line(cfg: TrainConfig, patch_size, run: TrainDir, device: torch.device, epoch: int,
                        world: int) -> OutOfMemory:
    patch = "the whole volume" if patch_size is None else f"patch_size {list(patch_size)}"
    return OutOfMemory(f"{run.name}: out of memory on {device} in epoch {epoch} at batch_size {cfg.batch_size} "
                       f"over {world} rank(s), {patch}; lower batch_size, train on patches (--set "
                       "patch_size=[96,96,96]) or give each worker more memory")
