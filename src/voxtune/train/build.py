"""What one training run is built from: its device, model (SyncBatchNorm and DDP over a process group
of more than one rank), optimiser, loss and data, identical on every rank but for its share of the cases."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from voxtune.config import TrainConfig
from voxtune.data.cache import exclusive, read_manifest, region_names, train_val_ids
from voxtune.data.loader import CaseDataset, GlobalBatchSampler, collate_parts, divisible, loader_workers
from voxtune.data.plan import divisor as pooling, pool_strides
from voxtune.errors import VoxtuneError
from voxtune.machine import usable_cpus
from voxtune.models import build_model
from voxtune.train import syncbn
from voxtune.train.batchnorm import batchnorm_layers
from voxtune.train.metrics import make_loss

# Training cases (over all ranks) whose batch statistics become the BatchNorm running statistics
# before each validation and checkpoint (voxtune.train.batchnorm): every case of a small cache, a
# bounded forward-only pass on a large one (32 of the paper's 339 cases; docs/training.md#precise-batchnorm-statistics estimates its share
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
    layout: Layout  # what the cache's plan made of cfg's "auto" values

    @property
    def patch(self) -> list[int] | None:
        return self.layout.patch_size

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def to_device(self, image: torch.Tensor) -> torch.Tensor:
        """[B, C, X, Y, Z] in the cache's dtype -> float32 on the device (converted there: half the bytes move)."""
        image = image.to(self.device, non_blocking=True).float()
        return image.contiguous(memory_format=torch.channels_last_3d) if self.device.type == "cuda" else image


@dataclass(frozen=True)
class Layout:
    """A config's network and sampling on one cache: what its `auto` values resolved to (voxtune.data.plan)."""

    patch_size: list[int] | None  # None: whole volumes
    strides: list[tuple[int, int, int]]  # pooling per level
    softmax: bool  # classes (background + R channels) rather than BraTS's sigmoid regions
    loss: str
    regions: int  # label channels R

    @property
    def out_channels(self) -> int:
        return self.regions + 1 if self.softmax else self.regions

    def checkpoint(self) -> dict[str, Any]:
        """What best.pt records so that predict and evaluation rebuild the same network."""
        return {"patch_size": self.patch_size, "strides": [list(s) for s in self.strides], "softmax": self.softmax}


def layout(cfg: TrainConfig, manifest: dict[str, Any]) -> Layout:
    """cfg's `auto` values on this cache: patch_size from the plan (rounded up to the pooling), loss by
    the label kind (dice for sigmoid regions, dicece for classes); the pooling per level from the plan's
    target spacing and the size the network sees (2 on every axis where the cache has no spacing plan,
    as for BraTS). A given patch the pooling cannot divide -> VoxtuneError naming patch_size."""
    plan = manifest.get("plan") or {}
    softmax = exclusive(manifest)
    patch = plan.get("patch_size") if cfg.patch_size == "auto" else cfg.patch_size
    size = patch or plan.get("max_shape") or manifest["cases"][0]["image_shape"][1:]
    strides = pool_strides(manifest.get("spacing"), size, cfg.depth)
    step = pooling(strides)
    if patch is not None:
        if cfg.patch_size == "auto":
            patch = divisible(patch, step)
        elif any(p % d for p, d in zip(patch, step)):
            raise VoxtuneError(f"config key 'patch_size': {list(patch)} is not divisible by this cache's pooling, "
                               f"{list(step)} per axis at depth {cfg.depth}")
    loss = cfg.loss if cfg.loss != "auto" else ("dicece" if softmax else "dice")
    return Layout(patch_size=None if patch is None else [int(p) for p in patch], strides=strides, softmax=softmax,
                  loss=loss, regions=len(region_names(manifest)))


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
    plan = layout(cfg, manifest)

    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    model = build_model(cfg, in_channels, plan.out_channels, strides=plan.strides, softmax=plan.softmax)
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
    loss_fn = make_loss(plan.loss, plan.softmax)

    # Whole volumes of different sizes batch at the largest one's size; patches are all of one size.
    train_set = CaseDataset(cache_dir, train_ids, patch_size=plan.patch_size, augment=cfg.augment, seed=cfg.seed,
                            divisor=model.divisor, common=True)
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
                    sampler, loader, bn_cases, manifest, regions, plan)


