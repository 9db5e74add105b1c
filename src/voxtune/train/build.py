"""What one training run is built from: its device, model (SyncBatchNorm and DDP over a process group
of more than one rank), optimiser, loss and data, identical on every rank but for its share of the cases."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from monai.losses import DiceCELoss, DiceLoss
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from voxtune.config import TrainConfig
from voxtune.data.cache import read_manifest, region_names, train_val_ids
from voxtune.data.loader import CaseDataset, GlobalBatchSampler, collate_parts, loader_workers
from voxtune.errors import VoxtuneError
from voxtune.machine import usable_cpus
from voxtune.models import build_model
from voxtune.train import syncbn
from voxtune.train.batchnorm import batchnorm_layers

# Training cases (over all ranks) whose batch statistics become the BatchNorm running statistics
# before each validation and checkpoint (voxtune.train.batchnorm): every case of a small cache, a
# bounded forward-only pass on a large one (32 of the paper's 339 cases; the README estimates its share
# of an epoch from benchmarks/cpu_batch.py).
BN_STATS_CASES = 32


def rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1



@dataclass
class Trainer:
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


def _device(cfg: TrainConfig) -> tuple[torch.device, tuple[bool, torch.dtype]]:
    """This worker's device and its autocast setting: on wherever CUDA is, unless the config says."""
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    if cfg.amp and device.type != "cuda":
        raise VoxtuneError("config key 'amp': true needs a CUDA device and this worker has none; leave it "
                           "unset (on wherever CUDA is) or set it false")
    use_amp = device.type == "cuda" if cfg.amp is None else cfg.amp
    return device, (use_amp, torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16)


def build(cfg: TrainConfig, cache_dir: str | Path, rank: int, world: int, threads: int | None) -> Trainer:
    """Model, optimiser, loss and data of a run, identical on every rank but for its share of the cases."""
    device, (use_amp, amp_dtype) = _device(cfg)
    manifest = read_manifest(cache_dir)
    regions = region_names(manifest)
    train_ids, val_ids = train_val_ids(manifest, cfg.folds, cfg.fold)
    if not train_ids or not val_ids:
        where = f"fold {cfg.fold} of {cfg.folds}" if cfg.folds > 1 else "the cache"
        raise VoxtuneError(f"{cache_dir}: {where} needs at least one train and one val case "
                           f"(has {len(train_ids)} and {len(val_ids)}); prepare more cases, change --split"
                           + (" or use fewer folds" if cfg.folds > 1 else ""))
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
    min_part = cfg.min_rank_batch or (1 if device.type == "cuda" else 2)  # GlobalBatchSampler says why
    sampler = GlobalBatchSampler(len(train_set), cfg.batch_size * world, world, rank, cfg.seed, min_part)
    workers = loader_workers(cfg, threads or usable_cpus(), device.type == "cuda")
    loader = DataLoader(train_set, batch_sampler=sampler, collate_fn=collate_parts, num_workers=workers,
                        pin_memory=device.type == "cuda", persistent_workers=workers > 0,
                        prefetch_factor=2 if workers else None)
    # One statistics forward per global batch on every rank (SyncBatchNorm's forward is a collective).
    bn_cases = min(BN_STATS_CASES, len(train_set)) if cfg.precise_bn and batchnorm_layers(model) else 0
    return Trainer(cfg, device, (use_amp, amp_dtype), model, net, optimizer, scaler, loss_fn, train_set, val_set,
                    sampler, loader, bn_cases, manifest, regions)


