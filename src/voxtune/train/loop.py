"""One training run: the same loop on one worker or as one rank of a DDP group.

The caller decides where this runs and with how many workers (see voxtune.parallel); the loop
only asks torch.distributed whether a process group exists, nanoGPT-style. Rank 0 writes
everything under `out_dir` (voxtune.layout.TrainDir): the resolved config, one metrics record per
finished epoch, the last checkpoint (model, optimiser, scaler, epoch, RNG: the resume point), the
best checkpoint (self-describing, for predict) and TensorBoard events.

fit reads top to bottom: build, resume, then per epoch train, BatchNorm statistics, validate, save.
Re-running into an `out_dir` that holds a last checkpoint resumes after its epoch.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from monai.losses import DiceCELoss, DiceLoss
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, default_collate

from voxtune.config import TrainConfig, make_config, read_yaml, write_config
from voxtune.data.cache import case_ids, read_manifest, region_names
from voxtune.data.loader import CaseDataset, GlobalBatchSampler, collate_parts, loader_workers
from voxtune.errors import VoxtuneError
from voxtune.files import disk_full, is_disk_full, write_json
from voxtune.layout import TrainDir
from voxtune.machine import usable_cpus
from voxtune.models import build_model
from voxtune.train import syncbn
from voxtune.train.batchnorm import batchnorm_layers, recompute_bn_stats
from voxtune.train.checkpoint import load_checkpoint, save_checkpoint
from voxtune.train.evaluate import validate_cases as _validate  # tests spy on loop._validate

# report(record) -> True asks the loop to stop after this epoch (a scheduler's early stop).
Reporter = Callable[[dict[str, Any]], bool]

# Training cases (over all ranks) whose batch statistics become the BatchNorm running statistics
# before each validation and checkpoint (voxtune.train.batchnorm): every case of a small cache, a
# bounded forward-only pass on a large one (32 of the paper's 339 cases; the README estimates its share
# of an epoch from benchmarks/cpu_batch.py).
BN_STATS_CASES = 32


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


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _all_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum a few floats over all ranks (identity on one worker)."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if _world()[1] > 1:
        dist.all_reduce(t)
    return t.tolist()


def _check_same_run(cfg: TrainConfig, run: TrainDir, world: int, state: dict[str, Any], saved_world: int) -> None:
    """Refuse to resume a run whose saved config differs (other than a longer `epochs`). The ranks may
    change where the problem does not: the same global batch (batch_size x ranks: each rank takes its
    part of the same global batches, voxtune.data.loader.GlobalBatchSampler) and no lr x ranks."""
    out_dir, saved_path = run.path, run.config
    if "config" not in state and not saved_path.exists():
        return
    # The checkpoint's own config: rank 0 rewrites config.yaml as it starts, maybe before a peer reads it.
    saved = make_config(state.get("config") or read_yaml(saved_path)).to_dict()
    ours = cfg.to_dict()
    diff = [k for k in ours if k not in ("epochs", "batch_size") and saved.get(k) != ours[k]]
    if saved["batch_size"] * saved_world != cfg.batch_size * world:
        diff.append(f"batch_size: a global batch of {saved['batch_size'] * saved_world} there, "
                    f"{cfg.batch_size * world} here")
    elif saved_world != world and cfg.scale_lr:
        diff.append(f"scale_lr: lr x {saved_world} ranks there, x {world} here")
    if diff:
        raise VoxtuneError(f"{out_dir} holds a run with a different config ({', '.join(diff)}); "
                           "choose another --out or delete it")


@dataclass
class _Trainer:
    """Everything one training run holds between epochs (built by _build, once per run)."""

    cfg: TrainConfig
    device: torch.device
    amp: tuple[bool, torch.dtype]  # (autocast on, its dtype)
    model: torch.nn.Module  # the bare model: validation, statistics and checkpoints use it
    net: torch.nn.Module  # what trains: the model, or its DDP wrapper
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    loss_fn: Callable
    train_set: CaseDataset
    val_set: CaseDataset  # this rank's share of the val cases
    sampler: GlobalBatchSampler  # this rank's part of each global batch, as one worker would draw them
    loader: DataLoader
    bn_cases: int  # training cases of the statistics pass before each validation (0: no BatchNorm, or precise_bn off)
    manifest: dict[str, Any]
    regions: list[str]

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def to_device(self, image: torch.Tensor) -> torch.Tensor:
        """[B, C, X, Y, Z] in the cache's dtype -> float32 on the device (converted there: half the bytes move)."""
        image = image.to(self.device, non_blocking=True).float()
        return image.contiguous(memory_format=torch.channels_last_3d) if self.device.type == "cuda" else image


def fit(cfg: TrainConfig, cache_dir: str | Path, out_dir: str | Path, *, threads: int | None = None,
        report: Reporter | None = None, log: Callable[[str], None] | None = None,
        abort: Callable[[], bool] | None = None) -> dict[str, Any]:
    """Train `cfg` on the cache's train split, validate on its val split every epoch.

    Returns {"best_val_dice", "best_epoch", "epochs", "train_time_s", "stopped_early", "metrics"}.
    Under DDP every rank calls this with the same arguments; ranks shard cases and reduce metrics.
    abort() is asked before every step, statistics batch and validation case; True raises Aborted.
    """

    def stop_if_aborted() -> None:
        if abort is not None and abort():
            raise Aborted("stopped: another rank of this trial failed")

    rank, world = _world()
    run = TrainDir(out_dir)
    torch.set_num_threads(max(1, threads or usable_cpus()))
    t = _build(cfg, cache_dir, rank, world, threads)
    records, best, best_epoch = _resume(t, run, world, log if rank == 0 else None)
    writer = _open_writer(t, run) if rank == 0 else None
    epoch = first = records[-1]["epoch"] + 1 if records else 1
    stopped_early = False  # (a scheduler's stop before the last epoch)
    try:
        for epoch in range(first, cfg.epochs + 1):
            t_epoch = time.perf_counter()
            trained = _train_epoch(t, epoch, stop_if_aborted)
            t_bn = time.perf_counter()
            _recompute_bn_statistics(t, stop_if_aborted)
            bn_stats_s = time.perf_counter() - t_bn
            record = {"epoch": epoch, "train_loss": trained.pop("train_loss"), **_validate_epoch(t, stop_if_aborted),
                      "epoch_time_s": time.perf_counter() - t_epoch, **trained, "bn_stats_s": bn_stats_s,
                      "end_ts": time.time(), "workers": world}
            records.append(record)
            stop = False
            if rank == 0:
                if record["val_dice"] > best:
                    best, best_epoch = record["val_dice"], epoch
                    save_checkpoint(run.best_checkpoint, _best_state(t.model, cfg, t.manifest, t.regions, record))
                _save_epoch(t, run, writer, records, best, best_epoch)
                if log:
                    log(f"epoch {epoch}/{cfg.epochs}  train_loss {record['train_loss']:.4f}  "
                        f"val_loss {record['val_loss']:.4f}  val_dice {record['val_dice']:.4f}  "
                        f"({record['epoch_time_s']:.1f}s)")
                stop = report is not None and bool(report(record))
            if _everyone_stops(stop, t.device):
                stopped_early = epoch < cfg.epochs
                break
    except (RuntimeError, MemoryError) as exc:
        if not _out_of_memory(exc):
            raise
        raise _out_of_memory_line(cfg, run, t.device, epoch, world) from None
    finally:
        if writer is not None:
            writer.close()
    if rank == 0 and not records:
        write_json(run.metrics, records)
    return {"best_val_dice": max(best, -1.0), "best_epoch": best_epoch, "epochs": len(records),
            "train_time_s": sum(r["epoch_time_s"] for r in records), "stopped_early": stopped_early,
            "metrics": records}


def _device(cfg: TrainConfig) -> tuple[torch.device, tuple[bool, torch.dtype]]:
    """This worker's device and its autocast setting: on wherever CUDA is, unless the config says."""
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    if cfg.amp and device.type != "cuda":
        raise VoxtuneError("config key 'amp': true needs a CUDA device and this worker has none; leave it "
                           "unset (on wherever CUDA is) or set it false")
    use_amp = device.type == "cuda" if cfg.amp is None else cfg.amp
    return device, (use_amp, torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16)


def _build(cfg: TrainConfig, cache_dir: str | Path, rank: int, world: int, threads: int | None) -> _Trainer:
    """Model, optimiser, loss and data of a run, identical on every rank but for its share of the cases."""
    device, (use_amp, amp_dtype) = _device(cfg)
    manifest = read_manifest(cache_dir)
    regions = region_names(manifest)
    train_ids, val_ids = case_ids(manifest, "train"), case_ids(manifest, "val")
    if not train_ids or not val_ids:
        raise VoxtuneError(f"{cache_dir}: the cache needs at least one train and one val case "
                           f"(has {len(train_ids)} and {len(val_ids)}); prepare more cases or change --split")
    in_channels = manifest["cases"][0]["image_shape"][0]

    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    model = build_model(cfg, in_channels, len(regions))
    if world > 1:
        # BatchNorm over the global batch, as one worker would see it: torch's SyncBatchNorm where it
        # runs (NCCL), voxtune's on gloo (CPU, or ranks packed on one GPU), which torch's refuses.
        nccl = dist.get_backend() == "nccl"
        model = (torch.nn.SyncBatchNorm if nccl else syncbn).convert_sync_batchnorm(model)
    model = model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last_3d)
    net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) \
        if world > 1 else model
    lr = cfg.lr * world if cfg.scale_lr else cfg.lr
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, cfg.beta2), amsgrad=cfg.amsgrad)
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
    if cfg.loss == "batch_dice":  # the paper's: one soft Dice over the whole batch, smooth 0.01
        loss_fn = DiceLoss(sigmoid=True, batch=True, smooth_nr=0.01, smooth_dr=0.01)
    else:
        loss_fn = (DiceCELoss if cfg.loss == "dicece" else DiceLoss)(sigmoid=True)

    train_set = CaseDataset(cache_dir, train_ids, patch_size=cfg.patch_size, augment=cfg.augment, seed=cfg.seed,
                            divisor=model.divisor)
    val_set = CaseDataset(cache_dir, val_ids[rank::world], patch_size=None, augment=False, seed=cfg.seed,
                          divisor=model.divisor)
    if len(train_set) < world:
        raise VoxtuneError(f"{cache_dir}: {len(train_set)} training case(s) for {world} DDP ranks: every rank needs "
                           "at least one; use fewer workers per trial or prepare more cases")
    # (epoch, index) keys: loader workers draw each epoch's patches and flips from them.
    sampler = GlobalBatchSampler(len(train_set), cfg.batch_size * world, world, rank, cfg.seed)
    workers = loader_workers(cfg, threads or usable_cpus(), device.type == "cuda")
    loader = DataLoader(train_set, batch_sampler=sampler, collate_fn=collate_parts, num_workers=workers,
                        pin_memory=device.type == "cuda", persistent_workers=workers > 0,
                        prefetch_factor=2 if workers else None)
    # One statistics forward per global batch on every rank (SyncBatchNorm's forward is a collective).
    bn_cases = min(BN_STATS_CASES, len(train_set)) if cfg.precise_bn and batchnorm_layers(model) else 0
    return _Trainer(cfg, device, (use_amp, amp_dtype), model, net, optimizer, scaler, loss_fn, train_set, val_set,
                    sampler, loader, bn_cases, manifest, regions)


def _resume(t: _Trainer, run: TrainDir, world: int,
            log: Callable[[str], None] | None) -> tuple[list[dict[str, Any]], float, int]:
    """(records, best val Dice, its epoch) of the epochs a run folder's last.pt holds, its weights,
    optimiser and RNG loaded into `t`; ([], -1, 0) for a new run."""
    if not run.last_checkpoint.exists():
        return [], -1.0, 0
    state = load_checkpoint(run.last_checkpoint, map_location=t.device)
    records = [r for r in state["metrics"] if r["epoch"] <= state["epoch"]]
    _check_same_run(t.cfg, run, world, state, saved_world=(records or [{}])[-1].get("workers", 1))
    t.model.load_state_dict(state["model"])
    t.optimizer.load_state_dict(state["optimizer"])
    t.scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["torch_rng"].cpu())
    if log:
        log(f"resuming {run.path} after epoch {state['epoch']}")
    return records, state["best_val_dice"], state["best_epoch"]


def _open_writer(t: _Trainer, run: TrainDir):
    """Rank 0 writes the resolved config and opens the TensorBoard writer."""
    from torch.utils.tensorboard import SummaryWriter

    run.path.mkdir(parents=True, exist_ok=True)
    write_config(t.cfg, run.config)
    return SummaryWriter(str(run.tensorboard))


def _train_epoch(t: _Trainer, epoch: int, stop_if_aborted: Callable[[], None]) -> dict[str, Any]:
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


def _no_cases(t: _Trainer, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of no cases, shaped as this run's: this rank's part of a short last global batch."""
    image, label = t.train_set[(epoch, 0)]
    return image[None][:0], label[None][:0]


def _recompute_bn_statistics(t: _Trainer, stop_if_aborted: Callable[[], None]) -> None:
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


def _validate_epoch(t: _Trainer, stop_if_aborted: Callable[[], None]) -> dict[str, Any]:
    """val_loss, val_dice (mean over regions) and val_dice_<region>, over every rank's val cases."""
    use_amp, amp_dtype = t.amp
    val = _validate(t.model, t.val_set, t.loss_fn, t.cfg, t.device, use_amp, amp_dtype, len(t.regions), stop_if_aborted)
    val_loss_sum, n_val, *dice_sums = _all_sum(val, t.device)
    dice = [d / max(n_val, 1) for d in dice_sums]
    return {"val_loss": val_loss_sum / max(n_val, 1), "val_dice": sum(dice) / len(dice),
            **{f"val_dice_{name}": d for name, d in zip(t.regions, dice)}}


def _save_epoch(t: _Trainer, run: TrainDir, writer, records: list[dict[str, Any]], best: float,
                best_epoch: int) -> None:
    """Rank 0, after every epoch: last.pt (the resume point), metrics.json and TensorBoard scalars."""
    record = records[-1]
    save_checkpoint(run.last_checkpoint, {"model": t.model.state_dict(), "optimizer": t.optimizer.state_dict(),
                                          "scaler": t.scaler.state_dict(), "epoch": record["epoch"],
                                          "best_val_dice": best, "best_epoch": best_epoch,
                                          "torch_rng": torch.get_rng_state(), "metrics": records,
                                          "config": t.cfg.to_dict()})
    write_json(run.metrics, records)
    for key, value in record.items():
        if key not in ("epoch", "workers", "end_ts"):
            writer.add_scalar(key, value, record["epoch"])
    try:
        writer.flush()
    except OSError as exc:  # TensorBoard writes from its own thread and re-raises here
        if is_disk_full(exc):
            raise disk_full(run.tensorboard) from None
        raise


def _everyone_stops(stop: bool, device: torch.device) -> bool:
    """Rank 0's stop decision (a scheduler's early stop), followed by every rank."""
    if _world()[1] == 1:
        return stop
    flag = torch.tensor([1.0 if stop else 0.0], device=device)
    dist.broadcast(flag, src=0)
    return bool(flag.item())


def _out_of_memory_line(cfg: TrainConfig, run: TrainDir, device: torch.device, epoch: int, world: int) -> OutOfMemory:
    patch = "the whole volume" if cfg.patch_size is None else f"patch_size {list(cfg.patch_size)}"
    return OutOfMemory(f"{run.name}: out of memory on {device} in epoch {epoch} at batch_size {cfg.batch_size} "
                       f"over {world} rank(s), {patch}; lower batch_size, train on patches (--set "
                       "patch_size=[96,96,96]) or give each worker more memory")


def _best_state(model, cfg: TrainConfig, manifest: dict, regions: list[str], record: dict) -> dict[str, Any]:
    """Everything predict needs: weights, the config, and how the cache was preprocessed."""
    prep = {k: manifest.get(k) for k in ("labels", "regions", "shape", "crop_z", "modalities",
                                         "image_dtype", "normalise")}
    return {"model": model.state_dict(), "config": cfg.to_dict(), "regions": regions,
            "in_channels": manifest["cases"][0]["image_shape"][0], "prepare": prep,
            "epoch": record["epoch"], "val": {k: v for k, v in record.items() if k.startswith("val_")}}
