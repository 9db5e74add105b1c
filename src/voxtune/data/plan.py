"""The plan `voxtune prepare` makes from a dataset's fingerprint: what each case becomes in the cache.

Two presets. **brats** (MSD Task01, recognised by its labels edema / non-enhancing / enhancing, or
chosen with `--preset brats`): the paper's pipeline, unchanged: Z cropped [2:-1], no resampling (or
`--shape`), each channel z-scored over its non-zero voxels, labels as whole tumour (`binary`) or
WT/TC/ET (`regions`), whole volumes. **auto** (every other task, as nnU-Net v2 plans its 3d_fullres):

- target spacing: the median spacing of the labelled cases; where it is anisotropic (its largest
  over its smallest >= ANISOTROPY) the coarse axis takes the 10th percentile of that axis' spacings,
  never finer than the finest other axis;
- normalisation per channel from dataset.json's `modality`: CT is clipped to the training split's
  pooled foreground 0.5/99.5 percentiles and z-scored by their pooled mean/std, the same numbers for
  every case; any other modality is z-scored per case, over its non-zero voxels where a quarter or
  more of the channel is exactly 0 (a skull-stripped or masked background), else over every voxel;
- classes: one channel per foreground label value of dataset.json (softmax over background + them);
- patch: none (whole volumes, padded to the largest in a batch) where the largest resampled case
  fits PATCH_VOXELS; else the median resampled shape, shrunk along its longest physical axis until it
  holds at most PATCH_VOXELS voxels, rounded up to what the network's pooling needs (pool_strides);
- pooling: per level, only the axes whose spacing is within 2x of the finest (in-plane first on
  anisotropic data) and whose feature map stays >= MIN_EDGE voxels.

Differences from nnU-Net, by design: nnU-Net also asks that the coarse axis hold 3x fewer voxels
before it treats a dataset as anisotropic; it picks the patch from a GPU memory model (here a voxel
budget: the same plan must run on a laptop CPU and a GPU node) and always trains on patches (here
whole volumes where the largest case fits the budget); it transposes the coarse axis first (here the
NIfTI voxel order is kept, so a case's arrays read like its file).
"""
from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from voxtune.errors import VoxtuneError

ANISOTROPY = 3.0  # largest / smallest target spacing from which the coarse axis is planned apart
PATCH_VOXELS = 128**3  # the planned patch's voxel budget
MIN_EDGE = 4  # smallest feature-map side the pooling leaves
DEFAULT_DEPTH = 3  # the plan's patch is rounded for the default network (TrainConfig.depth)
ZERO_BACKGROUND = 0.25  # a channel with at least this fraction of exact zeros has a masked background
BRATS_CROP_Z = (2, 1)  # slices the paper drops at the start and the end of Z: [..., 2:-1]
PRESETS = ("auto", "brats")
LABEL_MODES = ("classes", "binary", "regions")
SCHEMES = ("ct", "brain", "volume")  # normalisation: --normalise auto picks one per channel
# BraTS's nested regions: a voxel is in a region when its label is at least this (WT {1, 2, 3},
# TC {2, 3}, ET {3}); predict paints them back with these values.
BRATS_REGIONS = {"whole_tumour": 1, "tumour_core": 2, "enhancing_tumour": 3}
_BRATS_NAMES = ("edema", "non enhancing", "enhancing")


def channel_name(label_name: str, value: int) -> str:
    """A label's name as a metric suffix: "Anterior" -> "anterior", "non-enhancing tumor" ->
    "non_enhancing_tumor" (lower case, runs of other characters -> "_"); "class_<value>" if none is left."""
    name = re.sub(r"[^a-z0-9]+", "_", label_name.lower()).strip("_")
    return name or f"class_{value}"


def is_brats(labels: dict[int, str]) -> bool:
    """dataset.json's labels are MSD Task01's: 0 background, 1 edema, 2 non-enhancing, 3 enhancing."""
    if sorted(labels) != [0, 1, 2, 3]:
        return False
    words = [re.sub(r"[^a-z]+", " ", labels[v].lower()).strip() for v in (1, 2, 3)]
    return all(w.startswith(n) for w, n in zip(words, _BRATS_NAMES))


def label_channels(labels: dict[int, str], mode: str) -> tuple[list[str], list[int]]:
    """(channel names, the label value each channel paints back) for a label mode.

    classes: one exclusive channel per foreground value, named after dataset.json; binary: one channel
    of every foreground voxel (BraTS: whole_tumour); regions: BraTS's nested WT, TC, ET."""
    foreground = sorted(v for v in labels if v != 0)
    if mode == "classes":
        names = [channel_name(labels[v], v) for v in foreground]
        names = [n if names.count(n) == 1 else f"{n}_{v}" for n, v in zip(names, foreground)]
        return names, foreground
    if mode == "binary":
        return ["whole_tumour" if is_brats(labels) else "foreground"], [1]
    return list(BRATS_REGIONS), list(BRATS_REGIONS.values())


def label_masks(label: np.ndarray, mode: str, values: Sequence[int]) -> np.ndarray:
    """Source label values [X, Y, Z] -> channel masks bool [R, X, Y, Z]: classes each value alone,
    binary and regions every value at least the channel's (nested)."""
    if mode == "classes":
        return np.stack([label == v for v in values])
    return np.stack([label >= v for v in values])


def target_spacing(spacings: np.ndarray) -> tuple[list[float], int | None]:
    """(target spacing [3] in mm, the coarse axis or None) from the cases' spacings [N, 3]."""
    spacings = np.asarray(spacings, dtype=np.float64)
    target = np.median(spacings, axis=0)
    coarse = int(np.argmax(target))
    others = [target[a] for a in range(3) if a != coarse]
    if target[coarse] < ANISOTROPY * min(target):
        return [float(s) for s in target], None
    target[coarse] = max(np.percentile(spacings[:, coarse], 10), max(others))
    return [float(s) for s in target], coarse


def coarse_axis(spacing: Sequence[float]) -> int | None:
    """The axis resampled on its own (nearest neighbour) when `spacing` is anisotropic, else None."""
    spacing = [float(s) for s in spacing]
    return int(np.argmax(spacing)) if max(spacing) >= ANISOTROPY * min(spacing) else None


def resampled_shape(shape: Sequence[int], spacing: Sequence[float], target: Sequence[float]) -> list[int]:
    """A case's shape [3] at the target spacing: its extent in mm over the target's, rounded (>= 1)."""
    return [max(1, int(round(n * s / t))) for n, s, t in zip(shape, spacing, target)]


def pool_strides(spacing: Sequence[float] | None, size: Sequence[int], depth: int) -> list[tuple[int, int, int]]:
    """The network's pooling per level, [(sx, sy, sz)] * depth. spacing None: 2 on every axis at every
    level (the paper's net). Otherwise an axis is pooled at a level when its spacing there is under twice
    the finest (so anisotropic data pools in-plane first, until the spacings meet) and its feature map
    keeps at least MIN_EDGE voxels; `size` is the input the network is planned for (its patch)."""
    if spacing is None:
        return [(2, 2, 2)] * depth
    spacing, size = [float(s) for s in spacing], [int(n) for n in size]
    strides = []
    for _ in range(depth):
        finest = min(spacing)
        level = tuple(2 if spacing[a] < 2 * finest and size[a] // 2 >= MIN_EDGE else 1 for a in range(3))
        strides.append(level)
        spacing = [s * k for s, k in zip(spacing, level)]
        size = [n // k for n, k in zip(size, level)]
    return strides


def divisor(strides: Sequence[Sequence[int]]) -> tuple[int, int, int]:
    """What each input side must be a multiple of for a network with these strides."""
    return tuple(int(np.prod([s[a] for s in strides])) for a in range(3)) if strides else (1, 1, 1)


def plan_patch(spacing: Sequence[float], median_shape: Sequence[int], budget: int = PATCH_VOXELS,
               depth: int = DEFAULT_DEPTH, largest: Sequence[int] | None = None) -> list[int] | None:
    """The patch [3], or None (whole volumes) where the `largest` case, rounded up to the pooling, holds
    at most `budget` voxels: a network that sees every case whole needs no sliding window and never
    has to tell a structure's ends apart from a crop of it (measured on the hippocampus phantom: whole
    volumes 0.84 val Dice after 40 epochs, median-shape patches 0.34-0.63). Otherwise the median shape, its
    longest physical side cut by 10% at a time while it holds more than `budget` voxels, then rounded up
    to the pooling's divisor."""
    if largest is not None:
        whole = [-(-int(n) // d) * d for n, d in zip(largest, divisor(pool_strides(spacing, largest, depth)))]
        if np.prod(whole) <= budget:
            return None
    patch = [float(n) for n in median_shape]
    while np.prod(patch) > budget:
        longest = int(np.argmax([p * s for p, s in zip(patch, spacing)]))
        patch[longest] = max(float(MIN_EDGE), patch[longest] * 0.9)
    patch = [max(MIN_EDGE, int(round(p))) for p in patch]
    step = divisor(pool_strides(spacing, patch, depth))
    return [-(-p // d) * d for p, d in zip(patch, step)]


def normalisation(modalities: list[str], intensity: list[dict] | None, choice: Sequence[str]) -> list[dict]:
    """Each channel's normalisation {"scheme", and for ct "clip", "mean", "std"} from `--normalise`
    (one value for every channel or one per channel; "auto": ct for a CT modality, brain where the
    fingerprint found a zero background, volume otherwise)."""
    choice = list(choice)
    if len(choice) not in (1, len(modalities)):
        raise VoxtuneError(f"--normalise {' '.join(choice)}: give one scheme, or one per channel "
                           f"({len(modalities)}: {', '.join(modalities)})")
    for value in choice:
        if value not in ("auto", *SCHEMES):
            raise VoxtuneError(f"--normalise {value!r}: must be auto or one of {', '.join(SCHEMES)}")
    choice = choice * len(modalities) if len(choice) == 1 else choice
    out = []
    for c, (modality, scheme) in enumerate(zip(modalities, choice)):
        stats = intensity[c] if intensity else None
        if scheme == "auto":
            scheme = ("ct" if modality.strip().upper() == "CT" else
                      "brain" if stats is not None and stats["zero_fraction"] >= ZERO_BACKGROUND else "volume")
        if scheme != "ct":
            out.append({"scheme": scheme})
            continue
        if stats is None or stats.get("mean") is None:
            raise VoxtuneError(f"--normalise ct (channel {c}, {modality}): the training split has no labelled "
                               "voxels to take the foreground intensities from; label some cases or use volume")
        out.append({"scheme": "ct", "clip": [stats["p00_5"], stats["p99_5"]], "mean": stats["mean"],
                    "std": stats["std"]})
    return out


def brats_settings(channels: int = 4, labels: str = "binary", normalise: str = "brain", shape=None) -> dict:
    """The settings the BraTS preset prepares a case with (voxtune.data.preprocess's `prep`), for code
    that preprocesses without a dataset.json (benchmarks, tests)."""
    names, values = label_channels({0: "background", 1: "edema", 2: "non-enhancing tumor", 3: "enhancing tumour"},
                                   labels)
    return {"preset": "brats", "labels": labels, "regions": names, "label_values": values,
            "source_labels": [0, 1, 2, 3], "shape": None if shape is None else list(shape), "spacing": None,
            "coarse_axis": None, "crop_z": list(BRATS_CROP_Z), "normalise": [{"scheme": normalise}] * channels}


def describe(manifest: dict) -> str:
    """The plan in a few lines, as prepare prints it."""
    plan, fp = manifest["plan"], manifest["fingerprint"]
    spacing = manifest["spacing"]
    norms = ", ".join(f"{m} {n['scheme']}" + (f" (clip {n['clip'][0]:.0f}..{n['clip'][1]:.0f}, mean {n['mean']:.1f}, "
                                               f"std {n['std']:.1f})" if n["scheme"] == "ct" else "")
                      for m, n in zip(manifest["modalities"], manifest["normalise"]))
    grid = (f"resized to {manifest['shape']}" if manifest["shape"] else
            "each case's own grid" if spacing is None else
            f"{_mm(spacing)} mm" + (f" (anisotropic: axis {plan['coarse_axis']} apart)"
                                    if plan["coarse_axis"] is not None else ""))
    lines = [f"plan ({manifest['preset']}): {len(fp['cases'])} labelled cases, median spacing "
             f"{_mm(fp['spacing_median'])} mm, median shape {fp['shape_median']}",
             f"  spacing    {grid}" + (f"; Z cropped [{manifest['crop_z'][0]}:-{manifest['crop_z'][1]}]"
                                       if manifest["crop_z"] else ""),
             f"  shape      median {plan['median_shape']}, largest {plan.get('max_shape')} in the cache",
             f"  patch      {plan['patch_size'] or 'whole volumes (padded to the largest in a batch)'}",
             f"  normalise  {norms}",
             f"  labels     {manifest['labels']}: " + ", ".join(
                 f"{n} ({v})" for n, v in zip(manifest["regions"], manifest["label_values"]))]
    return "\n".join(lines)


def _mm(values) -> str:
    return " x ".join(f"{v:.3g}" for v in values)
