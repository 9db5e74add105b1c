"""One training run: the same loop on one worker or as one rank of a DDP group.

The caller decides where this runs and with how many workers (see voxtune.parallel); the loop
only asks torch.distributed whether a process group exists, nanoGPT-style. Rank 0 writes
everything under `out_dir`:

    config.yaml                 the resolved TrainConfig
    metrics.json                one record per finished epoch
    checkpoints/last.pt         model, optimiser, scaler, epoch, RNG: resume point
    checkpoints/best.pt         best validation Dice, self-describing for predict
    tb/                         TensorBoard events

Re-running into an `out_dir` that holds `last.pt` resumes after its epoch.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from monai.losses import DiceCELoss, DiceLoss
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from voxtune.config import TrainConfig, make_config, read_yaml, write_config
from voxtune.data.cache import case_ids, read_manifest, region_names
from voxtune.data.loader import CaseDataset, EpochSampler
from voxtune.errors import VoxtuneError
from voxtune.files import disk_full, is_disk_full, write_json
from voxtune.machine import usable_cpus
from voxtune.models import build_model
from voxtune.train.batchnorm import batchnorm_layers, recompute_bn_stats
from voxtune.train.checkpoint import load_checkpoint, save_checkpoint
from voxtune.train.metrics import dice_per_region, infer, soft_dice_per_region

# report(record) -> True asks the loop to stop after this epoch (a scheduler's early stop).
Reporter = Callable[[dict[str, Any]], bool]

# Training cases (over all ranks) whose batch statistics become the BatchNorm running statistics
# before each validation and checkpoint (voxtune.train.batchnorm): every case of a small cache, a
# bounded forward-only pass on a large one (32 of the paper's 339 cases, forward only, is about
# 32 / 339 / 3 = 3 % of an epoch's training compute).
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


def loader_workers(cfg: TrainConfig, cpus: int, cuda: bool) -> int:
    """DataLoader processes per training worker: the config's, else derived from its CPUs. A GPU
    rank keeps one CPU for itself and lets up to 8 prepare batches; on CPUs that also train, one
    loader process once there are 4 CPUs, none below (it would take cores from the network)."""
    if cfg.num_workers is not None:
        return cfg.num_workers
    if cuda:
        return max(0, min(8, cpus - 1))
    return 1 if cpus >= 4 else 0


def _check_same_run(cfg: TrainConfig, out_dir: Path) -> None:
    """Refuse to resume a run whose saved config differs (other than a longer `epochs`)."""
    saved_path = out_dir / "config.yaml"
    if not saved_path.exists():
        return
    saved = make_config(read_yaml(saved_path)).to_dict()
    ours = cfg.to_dict()
    diff = [k for k in ours if k != "epochs" and saved.get(k) != ours[k]]
    if diff:
        raise VoxtuneError(f"{out_dir} holds a run with a different config ({', '.join(diff)}); "
                           "choose another --out or delete it")


def fit(cfg: TrainConfig, cache_dir: str | Path, out_dir: str | Path, *, threads: int | None = None,
        report: Reporter | None = None, log: Callable[[str], None] | None = None,
        abort: Callable[[], bool] | None = None) -> dict[str, Any]:
    """Train `cfg` on the cache's train split, validate on its val split every epoch.

    Returns {"best_val_dice", "best_epoch", "epochs", "train_time_s", "stopped_early", "metrics"}.
    Under DDP every rank calls this with the same arguments; ranks shard cases and reduce metrics.
    abort() is asked before every step, statistics batch and validation case; True raises Aborted.
    """

    def check() -> None:
        if abort is not None and abort():
            raise Aborted("stopped: another rank of this trial failed")

    rank, world = _world()
    out_dir = Path(out_dir)
    torch.set_num_threads(max(1, threads or usable_cpus()))
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    if cfg.amp and device.type != "cuda":
        raise VoxtuneError("config key 'amp': true needs a CUDA device and this worker has none; leave it "
                           "unset (on wherever CUDA is) or set it false")
    use_amp = device.type == "cuda" if cfg.amp is None else cfg.amp
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16

    manifest = read_manifest(cache_dir)
    regions = region_names(manifest)
    train_ids, val_ids = case_ids(manifest, "train"), case_ids(manifest, "val")
    if not train_ids or not val_ids:
        raise VoxtuneError(f"{cache_dir}: the cache needs at least one train and one val case "
                           f"(has {len(train_ids)} and {len(val_ids)}); prepare more cases or change --split")
    in_channels = manifest["cases"][0]["image_shape"][0]

    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    model = build_model(cfg, in_channels, len(regions)).to(device)
    if world > 1 and dist.get_backend() == "nccl":
        # Batch statistics over the global batch, as one worker would see it. gloo (CPU, or ranks
        # packed on one GPU) has no SyncBatchNorm: there each rank normalises its own batch, and the
        # running statistics used for validation and checkpoints are reduced over ranks instead.
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
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
    shard = DistributedSampler(train_set, num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed)
    sampler = EpochSampler(shard)  # (epoch, index) keys: workers draw each epoch's patches and flips
    workers = loader_workers(cfg, threads or usable_cpus(), device.type == "cuda")
    loader = DataLoader(train_set, batch_size=cfg.batch_size, sampler=sampler, num_workers=workers,
                        pin_memory=device.type == "cuda", persistent_workers=workers > 0,
                        prefetch_factor=2 if workers else None)
    has_bn = bool(batchnorm_layers(model))
    # As many statistics batches on every rank (SyncBatchNorm's forward is a collective).
    bn_cases = min(math.ceil(min(BN_STATS_CASES, len(train_set)) / world), shard.num_samples)

    def to_device(image: torch.Tensor) -> torch.Tensor:
        """[B, C, X, Y, Z] in the cache's dtype -> float32 on the device (converted there: half the bytes move)."""
        image = image.to(device, non_blocking=True).float()
        return image.contiguous(memory_format=torch.channels_last_3d) if device.type == "cuda" else image

    ckpt_dir = out_dir / "checkpoints"
    records: list[dict[str, Any]] = []
    start_epoch, best, best_epoch = 1, -1.0, 0
    last = ckpt_dir / "last.pt"
    if last.exists():
        _check_same_run(cfg, out_dir)
        state = load_checkpoint(last, map_location=device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["torch_rng"].cpu())
        start_epoch, best, best_epoch = state["epoch"] + 1, state["best_val_dice"], state["best_epoch"]
        records = [r for r in state["metrics"] if r["epoch"] < start_epoch]
        if log and rank == 0:
            log(f"resuming {out_dir} after epoch {state['epoch']}")

    writer = None
    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_config(cfg, out_dir / "config.yaml")
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(out_dir / "tb"))

    stopped_early = False
    epoch = start_epoch
    try:
        for epoch in range(start_epoch, cfg.epochs + 1):
            t_epoch = time.perf_counter()
            net.train()
            sampler.set_epoch(epoch)
            loss_sum = torch.zeros((), device=device, dtype=torch.float64)
            seen, wait = 0, 0.0
            t_wait = time.perf_counter()
            for image, label in loader:
                wait += time.perf_counter() - t_wait
                check()
                image, label = to_device(image), label.to(device, non_blocking=True).float()
                with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
                    loss = loss_fn(net(image), label)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                loss_sum += loss.detach().double() * image.shape[0]
                seen += image.shape[0]
                t_wait = time.perf_counter()
            train_loss_sum, train_seen = _all_sum([loss_sum.item(), seen], device)
            train_s = time.perf_counter() - t_epoch
            train_loss = train_loss_sum / max(train_seen, 1)
            if not math.isfinite(train_loss):
                raise TrainingDiverged(f"training loss became {train_loss} at epoch {epoch} "
                                       f"(lr={lr}); lower lr or enable a different norm")

            t_bn = time.perf_counter()
            if has_bn:  # statistics of these weights, not momentum averages over past ones
                keys = list(sampler)[:bn_cases]  # this epoch's shuffled shard of this rank
                batches = DataLoader(train_set, batch_size=cfg.batch_size, sampler=keys)
                with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
                    recompute_bn_stats(model, (check() or to_device(image) for image, _ in batches))
            bn_stats_s = time.perf_counter() - t_bn

            val = _validate(model, val_set, loss_fn, cfg, device, use_amp, amp_dtype, len(regions), check)
            val_loss_sum, n_val, *dice_sums = _all_sum(val, device)
            dice = [d / max(n_val, 1) for d in dice_sums]
            epoch_time = time.perf_counter() - t_epoch
            record = {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss_sum / max(n_val, 1),
                      "val_dice": sum(dice) / len(dice),
                      **{f"val_dice_{name}": d for name, d in zip(regions, dice)},
                      "epoch_time_s": epoch_time, "train_s": train_s, "train_samples": int(train_seen),
                      "data_wait_s": wait, "bn_stats_s": bn_stats_s, "end_ts": time.time(),
                      "workers": world}
            records.append(record)

            stop = False
            if rank == 0:
                if record["val_dice"] > best:
                    best, best_epoch = record["val_dice"], epoch
                    save_checkpoint(ckpt_dir / "best.pt", _best_state(model, cfg, manifest, regions, record))
                save_checkpoint(last, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                       "scaler": scaler.state_dict(), "epoch": epoch, "best_val_dice": best,
                                       "best_epoch": best_epoch, "torch_rng": torch.get_rng_state(),
                                       "metrics": records})
                write_json(out_dir / "metrics.json", records)
                for key, value in record.items():
                    if key not in ("epoch", "workers", "end_ts"):
                        writer.add_scalar(key, value, epoch)
                try:
                    writer.flush()
                except OSError as exc:  # TensorBoard writes from its own thread and re-raises here
                    if is_disk_full(exc):
                        raise disk_full(out_dir / "tb") from None
                    raise
                if log:
                    log(f"epoch {epoch}/{cfg.epochs}  train_loss {train_loss:.4f}  "
                        f"val_loss {record['val_loss']:.4f}  val_dice {record['val_dice']:.4f}  "
                        f"({epoch_time:.1f}s)")
                if report is not None:
                    stop = bool(report(record))
            if world > 1:  # every rank follows rank 0's stop decision
                flag = torch.tensor([1.0 if stop else 0.0], device=device)
                dist.broadcast(flag, src=0)
                stop = bool(flag.item())
            if stop:
                stopped_early = epoch < cfg.epochs
                break
    except (RuntimeError, MemoryError) as exc:
        if not _out_of_memory(exc):
            raise
        patch = "the whole volume" if cfg.patch_size is None else f"patch_size {list(cfg.patch_size)}"
        raise OutOfMemory(f"{out_dir.name}: out of memory on {device} in epoch {epoch} at batch_size {cfg.batch_size} "
                          f"over {world} rank(s), {patch}; lower batch_size, train on patches (--set "
                          "patch_size=[96,96,96]) or give each worker more memory") from None
    finally:
        if writer is not None:
            writer.close()
    best = max(best, -1.0)
    if rank == 0 and not records:
        write_json(out_dir / "metrics.json", records)
    train_time = sum(r["epoch_time_s"] for r in records)
    return {"best_val_dice": best, "best_epoch": best_epoch, "epochs": len(records), "train_time_s": train_time,
            "stopped_early": stopped_early, "metrics": records}


@torch.no_grad()
def _validate(model, val_set, loss_fn, cfg, device, use_amp, amp_dtype, n_regions, check=lambda: None) -> list[float]:
    """[val_loss_sum, n_cases, dice_sum_region_0, ...] over this rank's share of the val cases.

    Runs on the bare model, never the DDP wrapper: ranks hold different numbers of val cases
    and DDP's forward would wait for collectives the other ranks never make.
    """
    model.eval()
    loss_sum, n, dice_sum = 0.0, 0, torch.zeros(n_regions, dtype=torch.float64)
    for i in range(len(val_set)):
        check()
        image, label = val_set[i]
        image, label = image[None].to(device).float(), label[None].to(device).float()
        with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
            logits = infer(model, image, cfg.patch_size)
        loss_sum += float(loss_fn(logits.float(), label))
        score = soft_dice_per_region if cfg.val_metric == "soft_dice" else dice_per_region
        dice_sum += score(logits, label)[0].double().cpu()
        n += 1
    return [loss_sum, n, *dice_sum.tolist()]


def _best_state(model, cfg: TrainConfig, manifest: dict, regions: list[str], record: dict) -> dict[str, Any]:
    """Everything predict needs: weights, the config, and how the cache was preprocessed."""
    prep = {k: manifest.get(k) for k in ("labels", "regions", "shape", "crop_z", "modalities",
                                         "image_dtype", "normalise")}
    return {"model": model.state_dict(), "config": cfg.to_dict(), "regions": regions,
            "in_channels": manifest["cases"][0]["image_shape"][0], "prepare": prep,
            "epoch": record["epoch"], "val": {k: v for k, v in record.items() if k.startswith("val_")}}
