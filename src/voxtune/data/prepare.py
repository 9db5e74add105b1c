"""`voxtune prepare`: MSD task folder -> cache of preprocessed `.npy` arrays + manifest.json.

Per case, as in the paper (Berral et al. 2022): channels first [C, X, Y, Z] keeping the NIfTI
voxel order; Z cropped by `[..., 2:-1]` ALWAYS (155 -> 152 on BraTS; the paper's crop, applied
to any Z so every cache is made the same way); optional resize to `shape` (trilinear for the
image, nearest for the label); each channel z-scored over its non-zero (brain) voxels with the
background left exactly 0; labels as one whole-tumour channel ("binary") or WT/TC/ET ("regions").
Stored cropped to the box around the non-zero voxels, the image as float16 by default, with a
sample of tumour voxel coordinates for patch sampling (see voxtune.data.cache).

Resumable and safe to interrupt: every file is written to a temp file in the same folder and
renamed into place, and a case counts as done only when its sidecar exists (written last) and its
files pass the size and probe check against it.
"""
from __future__ import annotations

import multiprocessing
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from voxtune.data.cache import (CACHE_VERSION, IMAGE_DTYPES, KINDS, MANIFEST, REGION_LABEL, REGIONS, check_case,
                                file_records)
from voxtune.data.msd import CaseEntry, CaseError, TaskInfo, load_case as load_nifti_case, read_task
from voxtune.data.shape import check_shape
from voxtune.errors import VoxtuneError
from voxtune.files import TMP_MARK, atomic_write, write_json

CROP_Z = (2, 1)  # slices dropped at the start and the end of Z: [..., 2:-1]
CASES_DIR = "cases"
MAX_FOREGROUND = 10_000  # tumour voxel coordinates kept per case for patch centres
# Settings that decide the cache's content: a re-run must match them or go elsewhere.
_SETTINGS = ("version", "source", "labels", "regions", "modalities", "shape", "crop_z",
             "split_fractions", "seed", "image_dtype", "normalise")
NORMALISE = ("brain", "volume")


@dataclass
class PrepareResult:
    """Outcome of one `prepare` run; `failed` holds (case_id, reason) pairs."""

    manifest_path: Path
    prepared: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed

    def summary(self) -> str:
        return (f"prepared {len(self.prepared)} cases, skipped {len(self.skipped)} already done, "
                f"{len(self.failed)} failed; manifest: {self.manifest_path}")


def preprocess(image: np.ndarray, label: np.ndarray, shape: tuple[int, int, int] | None = None,
               labels: str = "binary", normalise: str = "brain") -> tuple[np.ndarray, np.ndarray, list[float]]:
    """image float32 [X, Y, Z, C], label uint8 [X, Y, Z] -> image float32 [C, X', Y', Z'],
    label uint8 [R, X', Y', Z'] and the value the background (source 0) has in each channel
    (crop Z [2:-1], optional resize, z-score, label channels).

    normalise "brain": each channel z-scored over its non-zero voxels, background left 0 (nnU-Net);
    "volume": over every voxel, background included (the paper's per-image standardisation).
    """
    lo, hi = CROP_Z
    image = np.moveaxis(image, -1, 0)[..., lo:-hi]
    label = label[..., lo:-hi]
    if shape is not None and tuple(label.shape) != tuple(shape):
        image, label = _resize(image, label, shape)
    image = np.array(image, dtype=np.float32)  # own, contiguous copy: z-scored in place below
    background = []
    for channel in image:
        if normalise == "volume":
            mean, std = channel.mean(dtype=np.float64), max(channel.std(dtype=np.float64), 1e-8)
            channel[...] = (channel - mean) / std
            background.append(float(np.float32((0.0 - mean) / std)))
        else:
            background.append(0.0)
            brain = channel != 0  # MSD skull-stripped background is exactly 0, and stays 0
            if brain.any():
                values = channel[brain]
                mean, std = values.mean(dtype=np.float64), values.std(dtype=np.float64)
                channel[brain] = (values - mean) / max(std, 1e-8)
    channels = [label >= REGION_LABEL[name] for name in REGIONS[labels]]  # nested BraTS regions
    return image, np.stack(channels).astype(np.uint8), background


def _resize(image: np.ndarray, label: np.ndarray, shape) -> tuple[np.ndarray, np.ndarray]:
    """Trilinear for image [C, X, Y, Z], nearest for label [X, Y, Z] (`nearest-exact`: no half-voxel shift)."""
    import torch
    import torch.nn.functional as F

    img = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None]
    lab = torch.from_numpy(np.ascontiguousarray(label, dtype=np.float32))[None, None]
    img = F.interpolate(img, size=tuple(shape), mode="trilinear", align_corners=False)[0]
    lab = F.interpolate(lab, size=tuple(shape), mode="nearest-exact")[0, 0]
    return img.numpy(), lab.numpy().astype(np.uint8)


def assign_splits(case_ids: list[str], fractions: tuple[float, float, float], seed: int) -> dict[str, str]:
    """Seeded split of case ids into train/val/test with the given fractions (rounded per split).

    Uses every case listed in dataset.json, so a case's split does not depend on which others fail.
    """
    ids = sorted(case_ids)
    n = len(ids)
    order = np.random.default_rng(seed).permutation(n)
    n_val = int(round(fractions[1] * n))
    n_test = min(int(round(fractions[2] * n)), n - n_val)
    n_train = n - n_val - n_test
    names = ["train"] * n_train + ["val"] * n_val + ["test"] * n_test
    return {ids[i]: names[k] for k, i in enumerate(order)}


def nonzero_box(image: np.ndarray, label: np.ndarray, background=None) -> list[list[int]]:
    """[[start, stop]] per spatial axis of the voxels where any image channel differs from its
    background value (default 0) or any label is set (one voxel at the origin for an empty case, so
    every stored array has a size)."""
    fill = np.zeros(len(image), np.float32) if background is None else np.asarray(background, np.float32)
    mask = (image != fill[:, None, None, None]).any(axis=0) | label.any(axis=0)
    if not mask.any():
        return [[0, 1]] * 3
    box = []
    for axis in range(3):
        hits = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
        box.append([int(hits[0]), int(hits[-1]) + 1])
    return box


def foreground_sample(label: np.ndarray) -> np.ndarray:
    """Up to MAX_FOREGROUND tumour voxel coordinates int32 [N, 3] (a fixed subsample, in voxel order)."""
    coords = np.argwhere(label.any(axis=0))
    if len(coords) > MAX_FOREGROUND:
        keep = np.random.default_rng(0).choice(len(coords), MAX_FOREGROUND, replace=False)
        coords = coords[np.sort(keep)]
    return coords.astype(np.int32)


def store_case(out: Path, cid: str, image: np.ndarray, label: np.ndarray, image_dtype: str,
               background: list[float]) -> dict:
    """Write a preprocessed case's arrays atomically; returns its manifest entry's storage fields."""
    box = nonzero_box(image, label, background)
    inner = (slice(None),) + tuple(slice(b0, b1) for b0, b1 in box)
    arrays = {"image": image[inner].astype(image_dtype), "label": label[inner], "foreground": foreground_sample(label)}
    files = {kind: f"{CASES_DIR}/{cid}.{kind}.npy" for kind in KINDS}
    for kind in KINDS:
        atomic_write(out / files[kind], lambda f, a=arrays[kind]: np.save(f, a, allow_pickle=False))
    return {"bbox": box, "background": [float(v) for v in background], "files": files, **file_records(out, files)}


def _finished(out: Path, case_id: str, split: str) -> dict | None:
    """The sidecar entry if the case's files exist and pass the cheap check against it, else None."""
    import json

    sidecar = out / CASES_DIR / f"{case_id}.json"
    try:
        entry = json.loads(sidecar.read_text(encoding="utf-8"))
        if entry.get("split") != split:
            return None
        check_case(out, entry)
    except (VoxtuneError, OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return entry


def _prepare_case(task: TaskInfo, entry: CaseEntry, out: Path, split: str, shape, labels: str,
                  max_voxels: int, image_dtype: str, normalise: str) -> tuple[str, str, dict | str]:
    """Prepare one case. Returns (status, case_id, manifest entry or failure reason)."""
    cid = entry.case_id
    done = _finished(out, cid, split)
    if done is not None:
        return "skipped", cid, done
    try:
        image, label = load_nifti_case(task, entry, max_voxels=max_voxels)
        if image.shape[2] <= sum(CROP_Z):
            raise CaseError(cid, f"image {entry.image} has only {image.shape[2]} slices on Z; "
                                 f"the [2:-1] crop needs more than {sum(CROP_Z)}")
        source_shape = list(label.shape)
        image, label, background = preprocess(image, label, shape=shape, labels=labels, normalise=normalise)
    except CaseError as exc:
        return "failed", cid, exc.reason
    cases = out / CASES_DIR
    (cases / f"{cid}.json").unlink(missing_ok=True)  # no stale sidecar may vouch for new files
    record = {"id": cid, "split": split, "image_shape": list(image.shape),
              "label_shape": list(label.shape), "source_shape": source_shape,
              **store_case(out, cid, image, label, image_dtype, background)}
    write_json(cases / f"{cid}.json", record)  # written last: marks the case finished
    return "prepared", cid, record


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)  # `workers` processes already share the cores


def _check_args(shape, labels, split, workers, max_voxels, image_dtype, normalise):
    if labels not in REGIONS:
        raise VoxtuneError(f"--labels {labels!r}: must be one of {', '.join(REGIONS)}")
    if normalise not in NORMALISE:
        raise VoxtuneError(f"--normalise {normalise!r}: must be one of {', '.join(NORMALISE)}")
    if image_dtype not in IMAGE_DTYPES:
        raise VoxtuneError(f"--dtype {image_dtype!r}: must be one of {', '.join(IMAGE_DTYPES)}")
    check_shape(shape)
    split = tuple(float(f) for f in split)
    if len(split) != 3 or any(f < 0 for f in split) or abs(sum(split) - 1.0) > 1e-6:
        raise VoxtuneError(f"--split {' '.join(map(str, split))}: need three fractions >= 0 "
                           f"(train val test) summing to 1")
    if workers < 1:
        raise VoxtuneError(f"--workers {workers}: must be >= 1")
    if max_voxels < 1:
        raise VoxtuneError(f"--max-voxels {max_voxels}: must be >= 1")
    return split


def _open_cache(out: Path, settings: dict) -> None:
    """Create the cache, or check an existing one was made with the same settings."""
    from voxtune.data.cache import read_manifest

    if (out / MANIFEST).exists():
        old = read_manifest(out)
        diff = [k for k in _SETTINGS if old.get(k) != settings[k]]
        if diff:
            was = ", ".join(f"{k}={old.get(k)!r}" for k in diff)
            now = ", ".join(f"{k}={settings[k]!r}" for k in diff)
            raise VoxtuneError(f"{out} holds a cache made with {was}; this run asks {now}. Choose "
                               f"another --out (mixing settings in one cache is refused)")
    elif out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise VoxtuneError(f"{out} exists and is not a voxtune cache (no {MANIFEST}); choose another --out")
    else:
        (out / CASES_DIR).mkdir(parents=True, exist_ok=True)
        write_json(out / MANIFEST, {**settings, "cases": []})
    (out / CASES_DIR).mkdir(exist_ok=True)
    for stale in (out / CASES_DIR).glob(f"*{TMP_MARK}*"):  # partial files of an interrupted run
        stale.unlink(missing_ok=True)


def prepare(source: str | Path, out: str | Path, shape: tuple[int, int, int] | None = None,
            labels: str = "binary", split: tuple[float, float, float] = (0.7, 0.15, 0.15),
            seed: int = 0, workers: int = 1, max_voxels: int = 64_000_000,
            image_dtype: str = "float16", normalise: str = "brain") -> PrepareResult:
    """Preprocess the `training` cases of the MSD task at `source` into the cache folder `out`.

    Failed cases are reported on stderr (`case ID: reason`) and left out of the manifest; the
    others are still prepared. Bad arguments, a bad dataset.json or a cache made with other
    settings raise VoxtuneError.
    """
    from tqdm import tqdm

    split = _check_args(shape, labels, split, workers, max_voxels, image_dtype, normalise)
    shape = None if shape is None else [int(s) for s in shape]
    task = read_task(source)
    out = Path(out)
    settings = {"version": CACHE_VERSION, "source": str(Path(source).resolve()), "labels": labels,
                "regions": REGIONS[labels], "modalities": task.modalities, "shape": shape,
                "crop_z": list(CROP_Z), "split_fractions": list(split), "seed": int(seed),
                "image_dtype": image_dtype, "normalise": normalise}
    _open_cache(out, settings)

    splits = assign_splits([e.case_id for e in task.training], split, seed)
    jobs = [(task, e, out, splits[e.case_id], shape, labels, max_voxels, image_dtype, normalise)
            for e in task.training]
    result = PrepareResult(manifest_path=out / MANIFEST)
    records = []
    bar = tqdm(total=len(jobs), desc="prepare", unit="case", disable=None)

    def collect(status: str, cid: str, payload) -> None:
        if status == "failed":
            result.failed.append((cid, payload))
            tqdm.write(f"case {cid}: {payload}", file=sys.stderr)
        else:
            getattr(result, status).append(cid)
            records.append(payload)
        bar.update(1)

    try:
        if workers == 1:
            for job in jobs:
                collect(*_prepare_case(*job))
        else:
            # spawn, not fork: a forked child of a process that already ran torch/OpenMP can hang
            ctx = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker) as pool:
                for fut in as_completed([pool.submit(_prepare_case, *job) for job in jobs]):
                    collect(*fut.result())
    finally:
        bar.close()
    # Only a run that got through every case rewrites the manifest; an interrupted one leaves the
    # previous manifest, and its finished cases are found by checksum on the re-run.
    write_json(out / MANIFEST, {**settings, "cases": sorted(records, key=lambda r: r["id"])})
    return result
