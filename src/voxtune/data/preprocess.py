"""One case from its source arrays to what the cache stores, and the geometry predict undoes.

    image float32 [X, Y, Z, C], label uint8 [X, Y, Z] (source label values), spacing (mm)
      -> channels first                              [C, X, Y, Z]
      -> Z cropped (crop_z: the BraTS preset's [2:-1])
      -> resized to `shape`, or resampled to the target `spacing`   [C, X', Y', Z']
      -> each channel normalised by its scheme (ct, brain, volume)
      -> label channels (classes, binary or regions)  uint8 [R, X', Y', Z']

`prep` is the cache manifest's settings (voxtune.data.plan makes them; predict reads them back from a
checkpoint). Resampling: images trilinear; labels per value, linearly, then the likeliest value
(nnU-Net's order-1 segmentation resampling); on anisotropic data the coarse axis apart, by nearest
neighbour, so slices are never blended across the large gap (nnU-Net's separate-z).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from voxtune.data.plan import coarse_axis, label_masks, resampled_shape


def crop(volume: np.ndarray, crop_z) -> np.ndarray:
    """[..., Z] without crop_z = (start, end) slices (None or (0, 0): unchanged)."""
    if not crop_z or not any(crop_z):
        return volume
    lo, hi = crop_z
    return volume[..., lo:volume.shape[-1] - hi]


def resize(image: np.ndarray, label: np.ndarray | None, shape) -> tuple[np.ndarray, np.ndarray | None]:
    """`--shape`: trilinear for image [C, X, Y, Z], nearest for label [X, Y, Z] (`nearest-exact`: no
    half-voxel shift), whatever the spacing."""
    import torch
    import torch.nn.functional as F

    img = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None]
    img = F.interpolate(img, size=tuple(shape), mode="trilinear", align_corners=False)[0].numpy()
    if label is None:
        return img, None
    lab = torch.from_numpy(np.ascontiguousarray(label, dtype=np.float32))[None, None]
    return img, F.interpolate(lab, size=tuple(shape), mode="nearest-exact")[0, 0].numpy().astype(np.uint8)


def resample(volume, shape: Sequence[int], coarse: int | None):
    """float [C, X, Y, Z] (numpy or torch) -> torch float32 [C, *shape]: trilinear, or with `coarse` an
    axis index, bilinear over the two other axes then nearest along the coarse one."""
    import torch
    import torch.nn.functional as F

    t = volume.float() if isinstance(volume, torch.Tensor) else torch.from_numpy(
        np.ascontiguousarray(volume, dtype=np.float32))
    shape = tuple(int(n) for n in shape)
    if tuple(t.shape[1:]) == shape:
        return t
    if coarse is None:
        return F.interpolate(t[None], size=shape, mode="trilinear", align_corners=False)[0]
    plane = [a for a in range(3) if a != coarse]
    slices = t.movedim(1 + coarse, 0)  # [n_coarse, C, a, b]: each slice on its own
    slices = F.interpolate(slices, size=tuple(shape[a] for a in plane), mode="bilinear", align_corners=False)
    t = slices.movedim(0, 1 + coarse)
    return F.interpolate(t[None], size=shape, mode="nearest-exact")[0]


def resample_label(label: np.ndarray, shape: Sequence[int], coarse: int | None) -> np.ndarray:
    """Label values uint8 [X, Y, Z] -> [*shape]: each present value's mask resampled as `resample`
    does, then the likeliest value per voxel."""
    values = np.unique(label)
    if len(values) == 1 or tuple(label.shape) == tuple(shape):
        return np.full(shape, values[0], np.uint8) if len(values) == 1 else label
    masks = resample(np.stack([label == v for v in values]).astype(np.float32), shape, coarse)
    return values[masks.argmax(0).numpy()].astype(np.uint8)


def normalise(channel: np.ndarray, rule: dict) -> float:
    """Normalise one channel float32 [X, Y, Z] in place; returns the value its background (source 0,
    or for CT anything at or below the lower clip) has afterwards.

    brain: z-score over the non-zero voxels, which stay exactly 0 (nnU-Net's masked z-score);
    volume: over every voxel (the paper's per-image standardisation); ct: clip to rule["clip"] and
    z-score by rule["mean"], rule["std"] (the training split's pooled foreground: nnU-Net's CTNormalization)."""
    scheme = rule["scheme"]
    if scheme == "brain":
        brain = channel != 0  # MSD skull-stripped background is exactly 0, and stays 0
        if brain.any():
            values = channel[brain]
            mean, std = values.mean(dtype=np.float64), values.std(dtype=np.float64)
            channel[brain] = (values - mean) / max(std, 1e-8)
        return 0.0
    if scheme == "volume":
        mean, std = channel.mean(dtype=np.float64), max(channel.std(dtype=np.float64), 1e-8)
        channel[...] = (channel - mean) / std
        return float(np.float32((0.0 - mean) / std))
    lo, hi = rule["clip"]
    mean, std = np.float32(rule["mean"]), np.float32(max(rule["std"], 1e-8))
    np.clip(channel, np.float32(lo), np.float32(hi), out=channel)
    channel -= mean
    channel /= std
    return float((np.float32(lo) - mean) / std)  # the same float32 steps as the voxels took


def target_shape(shape: Sequence[int], spacing: Sequence[float], prep: dict) -> list[int]:
    """The shape [3] a case of source `shape` (already Z-cropped) and `spacing` has in the cache."""
    if prep.get("shape"):
        return list(prep["shape"])
    if prep.get("spacing") is None:
        return list(shape)
    return resampled_shape(shape, spacing, prep["spacing"])


def preprocess(image: np.ndarray, label: np.ndarray | None, spacing: Sequence[float], prep: dict
               ) -> tuple[np.ndarray, np.ndarray | None, list[float]]:
    """image float32 [X, Y, Z, C], label uint8 [X, Y, Z] (or None: predict) and the source spacing ->
    image float32 [C, X', Y', Z'], label channels uint8 [R, X', Y', Z'] (or None) and the value each
    image channel's background has (what pads a window past the frame)."""
    image = crop(np.moveaxis(image, -1, 0), prep.get("crop_z"))
    label = None if label is None else crop(label, prep.get("crop_z"))
    shape = target_shape(image.shape[1:], spacing, prep)
    if prep.get("shape"):
        if tuple(image.shape[1:]) != tuple(shape):
            image, label = resize(image, label, shape)
    elif tuple(image.shape[1:]) != tuple(shape):
        coarse = prep.get("coarse_axis")
        coarse = coarse_axis(spacing) if coarse is None else coarse
        image = resample(image, shape, coarse).numpy()
        label = None if label is None else resample_label(label, shape, coarse)
    image = np.array(image, dtype=np.float32)  # own, contiguous copy: normalised in place below
    background = [normalise(channel, rule) for channel, rule in zip(image, prep["normalise"])]
    if label is None:
        return image, None, background
    channels = label_masks(label, prep["labels"], prep["label_values"])
    return image, channels.astype(np.uint8), background
