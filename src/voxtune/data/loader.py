"""Torch dataset over a prepared cache: whole volumes or random patches, optional flips.

Randomness is a numpy Generator per sample seeded from (seed, epoch, index), so a sample is the
same whichever DataLoader worker, process or machine draws it; call `set_epoch` each epoch.
(With `persistent_workers=True` the workers hold their own copy of the dataset and do not see
`set_epoch`; keep it False, the default, when patches or augmentation should change per epoch.)
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from voxtune.data.cache import case_entry, load_case, read_manifest
from voxtune.errors import VoxtuneError

FOREGROUND_FRACTION = 1 / 3  # nnU-Net: a third of patches centred on a foreground voxel
MEMORY_CACHE_LIMIT = 2 * 1024 ** 3  # bytes; keep decoded cases in RAM below this
_MAX_FG_COORDS = 10_000  # foreground voxels remembered per case for patch centres


def _case_bytes(entry: dict) -> int:
    return int(np.prod(entry["image_shape"])) * 4 + int(np.prod(entry["label_shape"]))


def pad_to(array: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Zero-pad the last three axes of [C, X, Y, Z] at the end up to `shape` (no-op where already >=)."""
    extra = [max(0, s - n) for s, n in zip(shape, array.shape[-3:])]
    if not any(extra):
        return array
    return np.pad(array, [(0, 0)] + [(0, e) for e in extra])


class CaseDataset(Dataset):
    """Cases of a prepared cache as (image float32 [C, X, Y, Z], label float32 [R, X, Y, Z]) tensors.

    patch_size None: whole volumes, zero-padded at the end of each spatial axis to a multiple of
    `divisor` (a U-Net of depth d needs 2**d). patch_size (x, y, z): one random crop per sample,
    a third of them centred on a foreground voxel. augment: random flips of the three spatial axes.
    verify: sha256-check each case the first time this object loads it.
    cache_in_memory: keep loaded cases in RAM; None = only when all of them fit in 2 GB.
    """

    def __init__(self, cache_dir: str | Path, case_ids: list[str], patch_size=None, augment: bool = False,
                 seed: int = 0, divisor: int = 1, verify: bool = True, cache_in_memory: bool | None = None):
        self.cache_dir = Path(cache_dir)
        self.manifest = read_manifest(cache_dir)
        self.case_ids = list(case_ids)
        entries = [case_entry(self.manifest, cid) for cid in self.case_ids]  # unknown id -> VoxtuneError
        if patch_size is not None:
            patch_size = tuple(int(p) for p in patch_size)
            if len(patch_size) != 3 or min(patch_size) < 1:
                raise VoxtuneError(f"patch_size {patch_size}: need three positive sizes or null")
        if int(divisor) < 1:
            raise VoxtuneError(f"divisor {divisor}: must be >= 1")
        self.patch_size = patch_size
        self.augment = augment
        self.seed = int(seed)
        self.divisor = int(divisor)
        self.verify = verify
        if cache_in_memory is None:
            cache_in_memory = sum(_case_bytes(e) for e in entries) < MEMORY_CACHE_LIMIT
        self.cache_in_memory = cache_in_memory
        self.epoch = 0
        self._verified: set[str] = set()
        self._memory: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._foreground: dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.case_ids)

    def set_epoch(self, epoch: int) -> None:
        """Change the random patches and flips for the next pass (call before each epoch)."""
        self.epoch = int(epoch)

    def _load(self, case_id: str) -> tuple[np.ndarray, np.ndarray]:
        if case_id in self._memory:
            return self._memory[case_id]
        verify = self.verify and case_id not in self._verified
        image, label = load_case(self.cache_dir, case_id, verify=verify, manifest=self.manifest)
        self._verified.add(case_id)
        if self.cache_in_memory:
            self._memory[case_id] = (image, label)
        return image, label

    def _foreground_coords(self, case_id: str, label: np.ndarray) -> np.ndarray:
        """Up to 10k foreground voxel coordinates [N, 3] of a case, computed once (argwhere is slow)."""
        if case_id not in self._foreground:
            coords = np.argwhere(label.any(axis=0))
            if len(coords) > _MAX_FG_COORDS:  # fixed subsample so every epoch draws from the same set
                keep = np.random.default_rng(0).choice(len(coords), _MAX_FG_COORDS, replace=False)
                coords = coords[np.sort(keep)]
            self._foreground[case_id] = coords
        return self._foreground[case_id]

    def _crop(self, case_id, image, label, rng: np.random.Generator):
        patch = self.patch_size
        image, label = pad_to(image, patch), pad_to(label, patch)
        dims = image.shape[-3:]
        coords = self._foreground_coords(case_id, label) if rng.random() < FOREGROUND_FRACTION else None
        if coords is not None and len(coords):
            centre = coords[rng.integers(len(coords))]
            start = [int(np.clip(c - p // 2, 0, d - p)) for c, p, d in zip(centre, patch, dims)]
        else:
            start = [int(rng.integers(0, d - p + 1)) for p, d in zip(patch, dims)]
        window = (slice(None),) + tuple(slice(s, s + p) for s, p in zip(start, patch))
        return image[window], label[window]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        case_id = self.case_ids[index]
        image, label = self._load(case_id)
        rng = np.random.default_rng([self.seed, self.epoch, index])
        if self.patch_size is not None:
            image, label = self._crop(case_id, image, label, rng)
        else:
            target = [-(-n // self.divisor) * self.divisor for n in image.shape[-3:]]
            image, label = pad_to(image, target), pad_to(label, target)
        if self.augment:
            axes = [1 + a for a in range(3) if rng.random() < 0.5]
            if axes:
                image, label = np.flip(image, axes), np.flip(label, axes)
        return (torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)),
                torch.from_numpy(np.ascontiguousarray(label, dtype=np.float32)))
