"""A dataset's fingerprint: what `prepare` reads from the data before it plans anything.

Per labelled case (headers only): its shape and voxel spacing (mm, from the NIfTI pixdim). Per case of
the training split (decoded): up to FOREGROUND_SAMPLES intensities per channel drawn from its
labelled voxels, and each channel's fraction of exact zeros. Pooled: the median spacing and shape,
and per channel the foreground mean, std, 0.5/99.5 percentiles, min, max (nnU-Net v2's fingerprint),
plus the median zero fraction, which tells a masked background (skull-stripped MRI) from none.

Only the training split's intensities are pooled: validation and test cases never inform the
normalisation they are scored through. Draws are seeded by case id, so the fingerprint is the same
whatever the number of worker processes or the order they finish in.
"""
from __future__ import annotations

import hashlib
import os
import zlib
from pathlib import Path

import numpy as np

from voxtune.data.msd import CaseEntry, TaskInfo, load_case, read_header, resolve_case_path
from voxtune.errors import VoxtuneError

FOREGROUND_SAMPLES = 10_000  # intensities per channel and case (nnU-Net samples as many)


def case_fingerprint(task: TaskInfo, entry: CaseEntry, max_voxels: int, decode: bool) -> dict:
    """{"id", "shape", "spacing"} of one labelled case, and with `decode` its foreground "samples"
    float32 [C, n] and per-channel "zero_fraction". Raises CaseError for an unusable case."""
    if not decode:
        head = read_header(task, entry, max_voxels)
        return {"id": entry.case_id, "shape": list(head.shape[:3]), "spacing": list(head.spacing)}
    image, label, spacing = load_case(task, entry, max_voxels)
    rng = np.random.default_rng(zlib.crc32(entry.case_id.encode()))
    voxels = np.flatnonzero(label.ravel() > 0)
    if len(voxels) > FOREGROUND_SAMPLES:
        voxels = np.sort(rng.choice(voxels, FOREGROUND_SAMPLES, replace=False))
    channels = image.reshape(-1, image.shape[-1])
    return {"id": entry.case_id, "shape": list(label.shape), "spacing": list(spacing),
            "samples": np.ascontiguousarray(channels[voxels].T, dtype=np.float32),
            "zero_fraction": [float(np.mean(channels[:, c] == 0)) for c in range(channels.shape[1])]}


def pool(cases: list[dict], channels: int) -> dict:
    """The dataset's fingerprint from case_fingerprint results (any order): {"cases": {id: {"shape",
    "spacing"}}, "spacing_median", "shape_median", "intensity": per channel {"mean", "std", "p00_5",
    "p99_5", "min", "max", "zero_fraction"} (None values where no case was decoded or labelled),
    "train_cases", "foreground_samples"}."""
    cases = sorted(cases, key=lambda c: c["id"])
    decoded = [c for c in cases if "samples" in c]
    intensity = []
    for c in range(channels):
        values = np.concatenate([d["samples"][c] for d in decoded]) if decoded else np.zeros(0, np.float32)
        zero = float(np.median([d["zero_fraction"][c] for d in decoded])) if decoded else None
        if values.size:
            v = values.astype(np.float64)
            stats = {"mean": float(v.mean()), "std": float(v.std()), "p00_5": float(np.percentile(v, 0.5)),
                     "p99_5": float(np.percentile(v, 99.5)), "min": float(v.min()), "max": float(v.max())}
        else:
            stats = dict.fromkeys(("mean", "std", "p00_5", "p99_5", "min", "max"))
        intensity.append({**stats, "zero_fraction": zero})
    spacings = np.array([c["spacing"] for c in cases], dtype=np.float64).reshape(-1, 3)
    shapes = np.array([c["shape"] for c in cases], dtype=np.float64).reshape(-1, 3)
    return {"cases": {c["id"]: {"shape": c["shape"], "spacing": c["spacing"]} for c in cases},
            "spacing_median": [float(s) for s in np.median(spacings, axis=0)] if len(cases) else None,
            "shape_median": [int(round(s)) for s in np.median(shapes, axis=0)] if len(cases) else None,
            "intensity": intensity, "train_cases": len(decoded),
            "foreground_samples": int(sum(d["samples"].shape[1] for d in decoded))}


def source_key(task: TaskInfo, split: dict[str, str]) -> str:
    """A digest of what a fingerprint depends on: dataset.json, the size and modification time of every
    listed file, and the split. A re-run of prepare reuses the manifest's fingerprint while it matches."""
    digest = hashlib.sha256((Path(task.root) / "dataset.json").read_bytes())
    for entry in task.training:
        for rel in (entry.image, entry.label):
            try:
                st = os.stat(resolve_case_path(task.root, rel, entry.case_id))
                digest.update(f"{rel}:{st.st_size}:{st.st_mtime_ns};".encode())
            except (OSError, VoxtuneError):
                digest.update(f"{rel}:missing;".encode())
    digest.update(repr(sorted(split.items())).encode())
    return digest.hexdigest()
