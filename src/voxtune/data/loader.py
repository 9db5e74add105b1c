"""Torch dataset over a prepared cache: whole volumes or random patches, optional flips.

A sample reads only what it returns: a patch is one window of the case read through a memory map
(voxtune.data.cache.read_window), so it costs its own bytes, not the volume's, and no process keeps
cases in RAM: concurrent trials, DDP ranks and DataLoader workers on a node share the page cache.

Randomness is a numpy Generator per sample seeded from (seed, epoch, index), so a sample is the
same whichever DataLoader worker, process or machine draws it. The epoch travels with the index:
`EpochSampler` yields (epoch, index) keys, so persistent DataLoader workers, which hold their own
copy of the dataset, draw each epoch's own patches and flips.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler, default_collate

from voxtune.data.cache import case_entry, check_case, foreground, read_manifest, read_window
from voxtune.errors import VoxtuneError

FOREGROUND_FRACTION = 1 / 3  # nnU-Net: a third of patches centred on a foreground voxel


def per_axis(divisor: int | Sequence[int]) -> tuple[int, int, int]:
    """A network's divisor as (x, y, z): one int (every axis alike) or one per axis."""
    d = (int(divisor),) * 3 if isinstance(divisor, (int, np.integer)) else tuple(int(v) for v in divisor)
    if len(d) != 3 or min(d) < 1:
        raise VoxtuneError(f"divisor {divisor}: must be >= 1 (one, or one per axis)")
    return d


def divisible(shape: Sequence[int], divisor: int | Sequence[int]) -> list[int]:
    """Each size rounded up to a multiple of `divisor` (one, or one per axis: a U-Net of depth d pooling
    by 2 on an axis at every level needs 2**d there)."""
    return [-(-int(n) // d) * d for n, d in zip(shape, per_axis(divisor))]


def pad_to_divisor(array: np.ndarray, divisor: int | Sequence[int], background: Sequence[float] | None = None
                   ) -> np.ndarray:
    """Pad the last three axes of [C, X, Y, Z] at the end to multiples of `divisor`, each channel with
    its `background` value (default 0), as CaseDataset pads whole volumes (read_window fills past the
    frame with the background); predict pads its input the same way."""
    extra = [t - n for t, n in zip(divisible(array.shape[-3:], divisor), array.shape[-3:])]
    if not any(extra):
        return array
    fill = background if background is not None else [0.0] * len(array)
    return np.stack([np.pad(c, [(0, e) for e in extra], constant_values=v) for c, v in zip(array, fill)])


class CaseDataset(Dataset):
    """Cases of a prepared cache as (image [C, X, Y, Z], label uint8 [R, X, Y, Z]) tensors, the image in
    the cache's dtype (float16 by default: half the bytes to move; convert on the device).

    patch_size None: whole volumes, padded at the end of each spatial axis to a multiple of `divisor`
    (with `common`, all to the largest case's size: cases that differ in size then batch). patch_size (x, y, z): one random window per sample, a third of them centred on a
    foreground voxel, zero-padded where the volume is smaller. augment: random flips of the three
    spatial axes. check: size-and-probe check every case's files now (voxtune.data.cache.check_case),
    so a damaged or swapped file is refused before training, in milliseconds per case.
    """

    def __init__(self, cache_dir: str | Path, case_ids: list[str], patch_size=None, augment: bool = False,
                 seed: int = 0, divisor: int | Sequence[int] = 1, check: bool = True, common: bool = False):
        self.cache_dir = Path(cache_dir)
        manifest = read_manifest(cache_dir)
        self.image_dtype = manifest["image_dtype"]
        self.case_ids = list(case_ids)
        self.entries = [case_entry(manifest, cid) for cid in self.case_ids]  # unknown id -> VoxtuneError
        if patch_size is not None:
            patch_size = tuple(int(p) for p in patch_size)
            if len(patch_size) != 3 or min(patch_size) < 1:
                raise VoxtuneError(f"patch_size {patch_size}: need three positive sizes or null")
        self.patch_size = patch_size
        self.augment = augment
        self.seed = int(seed)
        self.divisor = per_axis(divisor)
        self.common = divisible(np.max([e["image_shape"][1:] for e in self.entries], axis=0), self.divisor) \
            if common and self.entries else None
        self.epoch = 0
        if check:
            for entry in {e["id"]: e for e in self.entries}.values():
                check_case(self.cache_dir, entry)

    def __len__(self) -> int:
        return len(self.case_ids)

    def set_epoch(self, epoch: int) -> None:
        """The epoch of samples asked for by a plain index (EpochSampler's keys carry their own)."""
        self.epoch = int(epoch)

    def _patch_start(self, entry: dict, rng: np.random.Generator) -> list[int]:
        patch = self.patch_size
        dims = [max(n, p) for n, p in zip(entry["image_shape"][1:], patch)]  # padded up to the patch
        coords = foreground(self.cache_dir, entry) if rng.random() < FOREGROUND_FRACTION else None
        if coords is not None and len(coords):
            centre = coords[rng.integers(len(coords))]
            return [int(np.clip(c - p // 2, 0, d - p)) for c, p, d in zip(centre, patch, dims)]
        return [int(rng.integers(0, d - p + 1)) for p, d in zip(patch, dims)]

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, index = key if isinstance(key, tuple) else (self.epoch, key)
        entry = self.entries[index]
        rng = np.random.default_rng([self.seed, epoch, index])
        if self.patch_size is not None:
            start, size = self._patch_start(entry, rng), self.patch_size
        else:
            start, size = (0, 0, 0), self.common or divisible(entry["image_shape"][1:], self.divisor)
        flip = tuple(bool(rng.random() < 0.5) for _ in range(3)) if self.augment else (False, False, False)
        image, label = read_window(self.cache_dir, entry, self.image_dtype, start, size, flip)
        return torch.from_numpy(image), torch.from_numpy(label)


class EpochSampler(Sampler):
    """(epoch, index) keys of another sampler's indices: call set_epoch before each epoch."""

    def __init__(self, sampler: Sampler):
        self.sampler = sampler
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return ((self.epoch, int(i)) for i in self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)


class GlobalBatchSampler(EpochSampler):
    """This rank's part of each global batch one worker would draw, as lists of (epoch, index) keys
    (a DataLoader's batch_sampler).

    Each epoch one seeded permutation of the n training cases (randperm seeded seed + epoch: the order
    DistributedSampler gives a single replica, so one worker trains as before) is cut into global
    batches of `global_batch`. A batch of s cases goes to the first m = min(K, max(1, s // min_part))
    ranks, rank r < m taking elements r, r + m, ... of it: every part holds at least `min_part` cases
    where the batch has them. Nothing is padded: the parts may differ in size, some may be empty, and
    `weight(step)` is how much this rank's mean loss must count for DDP's average of the K gradients to
    be the mean over the global batch. DistributedSampler instead repeats cases to even the shards, so
    a K-rank trial would train on n + (K - n mod K) cases an epoch.

    min_part 2 is for CPU ranks: torch 2.13 runs a batch-1 Conv3d of this net outside oneDNN, and a
    batch-1 step costs 2-6x a batch-2 step per case (benchmarks/cpu_batch.py: 0.267 against 0.043 s at
    32^3, 0.95 against 0.47 s at 64^3), so one rank of 2 cases finishes no later than 2 ranks of 1 case each, and leaves a core free.
    """

    def __init__(self, n: int, global_batch: int, world: int, rank: int, seed: int, min_part: int = 1):
        if not 0 <= rank < world or global_batch < 1 or n < 1 or min_part < 1:
            raise ValueError(f"GlobalBatchSampler: n {n}, global batch {global_batch}, rank {rank} of {world}, "
                             f"min part {min_part}")
        super().__init__(sampler=None)
        self.n, self.global_batch, self.world, self.rank, self.seed = n, global_batch, world, rank, seed
        self.min_part = min_part

    def ranks_used(self, size: int) -> int:
        """How many ranks a global batch of `size` cases is split over (the first ones)."""
        return min(self.world, max(1, size // self.min_part))

    def _part(self, batch: list) -> list:
        m = self.ranks_used(len(batch))
        return batch[self.rank::m] if self.rank < m else []

    def order(self) -> list[int]:
        generator = torch.Generator()
        generator.manual_seed(self.seed + self.epoch)
        return torch.randperm(self.n, generator=generator).tolist()

    def parts(self, cases: int | None = None) -> Iterator[list[tuple[int, int]]]:
        """This rank's part of each global batch of the epoch's first `cases` cases (all by default)."""
        order = self.order()[:cases]
        for start in range(0, len(order), self.global_batch):
            yield [(self.epoch, i) for i in self._part(order[start:start + self.global_batch])]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        return self.parts()

    def __len__(self) -> int:
        return -(-self.n // self.global_batch)

    def weight(self, step: int) -> float:
        """K x this rank's share of global batch `step` (1.0 when the parts are equal)."""
        size = min(self.global_batch, self.n - step * self.global_batch)
        return len(self._part(list(range(size)))) * self.world / size


def collate_parts(items: list):
    """default_collate, or None for a rank's empty part of a global batch."""
    return default_collate(items) if items else None


def loader_workers(cfg, cpus: int, cuda: bool) -> int:
    """DataLoader processes per training worker: a TrainConfig's num_workers, else derived from its
    CPUs. A GPU rank keeps one CPU for itself and lets up to 8 prepare batches; on CPUs that also
    train, one loader process once there are 4 CPUs, none below (it would take cores from the network)."""
    if cfg.num_workers is not None:
        return cfg.num_workers
    if cuda:
        return max(0, min(8, cpus - 1))
    return 1 if cpus >= 4 else 0
