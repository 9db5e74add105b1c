"""`voxtune prepare`: MSD task folder -> cache of preprocessed `.npy` arrays + manifest.json.

First the dataset's fingerprint (voxtune.data.fingerprint: shapes, spacings, foreground intensities of
the training split), then the plan (voxtune.data.plan: the BraTS preset, which is the paper's pipeline,
or an nnU-Net-style plan of target spacing, normalisation per modality, classes and patch), printed
in a few lines and recorded in the manifest; then each case (voxtune.data.preprocess), stored cropped
to the box around its non-background voxels, the image as float16 by default, with a sample of
foreground voxel coordinates for patch sampling (see voxtune.data.cache).

Resumable and safe to interrupt: every file is written to a temp file in the same folder and
renamed into place, and a case counts as done only when its sidecar exists (written last) and its
files pass the size and probe check against it. A re-run reuses the manifest's fingerprint while
dataset.json, the listed files' sizes and times, and the split are unchanged.
"""
from __future__ import annotations

import multiprocessing
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from voxtune.data import plan as planning
from voxtune.data.cache import CACHE_VERSION, IMAGE_DTYPES, KINDS, MANIFEST, check_case, file_records
from voxtune.data.fingerprint import case_fingerprint, pool, source_key
from voxtune.data.msd import CaseEntry, CaseError, TaskInfo, load_case as load_nifti_case, read_task
from voxtune.data.preprocess import preprocess
from voxtune.data.shape import check_shape
from voxtune.errors import VoxtuneError
from voxtune.files import TMP_MARK, atomic_write, write_json

CROP_Z = planning.BRATS_CROP_Z
CASES_DIR = "cases"
MAX_FOREGROUND = 10_000  # foreground voxel coordinates kept per case for patch centres
# Settings that decide the cache's content: a re-run must match them or go elsewhere.
_SETTINGS = ("version", "source", "preset", "labels", "regions", "label_values", "source_labels", "modalities", "shape",
             "spacing", "coarse_axis", "crop_z", "split_fractions", "seed", "image_dtype", "normalise")


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


def frame_spacing(source_spacing, source_shape, frame_shape, prep: dict) -> list[float]:
    """The voxel spacing (mm) of a case in the cache: the target spacing, or for `--shape` the source's
    stretched to the new shape (Z cropped first), or the source's own."""
    if prep.get("shape"):
        cropped = list(source_shape)
        if prep.get("crop_z"):
            cropped[2] -= sum(prep["crop_z"])
        return [float(s) * n / m for s, n, m in zip(source_spacing, cropped, frame_shape)]
    return list(prep["spacing"]) if prep.get("spacing") else [float(s) for s in source_spacing]


def _prepare_case(task: TaskInfo, entry: CaseEntry, out: Path, split: str, prep: dict,
                  max_voxels: int) -> tuple[str, str, dict | str]:
    """Prepare one case. Returns (status, case_id, manifest entry or failure reason)."""
    cid = entry.case_id
    done = _finished(out, cid, split)
    if done is not None:
        return "skipped", cid, done
    try:
        image, label, spacing = load_nifti_case(task, entry, max_voxels=max_voxels)
        crop_z = prep.get("crop_z")
        if crop_z and image.shape[2] <= sum(crop_z):
            raise CaseError(cid, f"image {entry.image} has only {image.shape[2]} slices on Z; the "
                                 f"[{crop_z[0]}:-{crop_z[1]}] crop needs more than {sum(crop_z)}")
        source_shape = list(label.shape)
        image, label, background = preprocess(image, label, spacing, prep)
    except CaseError as exc:
        return "failed", cid, exc.reason
    cases = out / CASES_DIR
    (cases / f"{cid}.json").unlink(missing_ok=True)  # no stale sidecar may vouch for new files
    record = {"id": cid, "split": split, "image_shape": list(image.shape),
              "label_shape": list(label.shape), "source_shape": source_shape,
              "source_spacing": [float(s) for s in spacing],
              "spacing": frame_spacing(spacing, source_shape, image.shape[1:], prep),
              **store_case(out, cid, image, label, prep["image_dtype"], background)}
    write_json(cases / f"{cid}.json", record)  # written last: marks the case finished
    return "prepared", cid, record


def _fingerprint_case(task: TaskInfo, entry: CaseEntry, max_voxels: int, decode: bool):
    """case_fingerprint, or None for a case that cannot be read (the preparing pass reports it)."""
    try:
        return case_fingerprint(task, entry, max_voxels, decode)
    except CaseError:
        return None


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)  # `workers` processes already share the cores


def run_cases(fn: Callable, jobs: list[tuple], workers: int, desc: str) -> Iterator:
    """fn(*job) for every job, in `workers` processes (1: here), as they finish, with a progress bar."""
    from tqdm import tqdm

    bar = tqdm(total=len(jobs), desc=desc, unit="case", disable=None)
    try:
        if workers == 1:
            for job in jobs:
                yield fn(*job)
                bar.update(1)
        else:
            # spawn, not fork: a forked child of a process that already ran torch/OpenMP can hang
            ctx = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker) as pool_:
                for fut in as_completed([pool_.submit(fn, *job) for job in jobs]):
                    yield fut.result()
                    bar.update(1)
    finally:
        bar.close()


def _check_args(shape, spacing, crop_z, split, workers, max_voxels, image_dtype):
    check_shape(shape)
    if shape is not None and spacing is not None:
        raise VoxtuneError("--shape resizes every case to one shape and --spacing resamples each to one voxel "
                           "size: give one of them")
    if spacing is not None and (len(spacing) != 3 or not all(np.isfinite(float(s)) and float(s) > 0 for s in spacing)):
        raise VoxtuneError(f"--spacing {' '.join(map(str, spacing))}: need three positive sizes in mm (X Y Z)")
    if crop_z is not None and (len(crop_z) != 2 or any(int(c) != c or c < 0 for c in crop_z)):
        raise VoxtuneError(f"--crop-z {' '.join(map(str, crop_z))}: need two whole numbers >= 0 (slices "
                           "dropped at the start and the end of Z)")
    if image_dtype not in IMAGE_DTYPES:
        raise VoxtuneError(f"--dtype {image_dtype!r}: must be one of {', '.join(IMAGE_DTYPES)}")
    split = tuple(float(f) for f in split)
    if len(split) != 3 or any(f < 0 for f in split) or abs(sum(split) - 1.0) > 1e-6:
        raise VoxtuneError(f"--split {' '.join(map(str, split))}: need three fractions >= 0 "
                           f"(train val test) summing to 1")
    if workers < 1:
        raise VoxtuneError(f"--workers {workers}: must be >= 1")
    if max_voxels < 1:
        raise VoxtuneError(f"--max-voxels {max_voxels}: must be >= 1")
    return split


def _preset_and_labels(task: TaskInfo, preset: str | None, labels: str | None) -> tuple[str, str]:
    """The preset (recognised from dataset.json's labels unless given) and label mode (its default unless
    given); a label mode the data cannot have -> VoxtuneError."""
    brats = planning.is_brats(task.labels)
    if preset is not None and preset not in planning.PRESETS:
        raise VoxtuneError(f"--preset {preset!r}: must be one of {', '.join(planning.PRESETS)}")
    if labels is not None and labels not in planning.LABEL_MODES:
        raise VoxtuneError(f"--labels {labels!r}: must be one of {', '.join(planning.LABEL_MODES)}")
    listed = ", ".join(f"{v} {n}" for v, n in sorted(task.labels.items()))
    if preset == "brats" and sorted(task.labels) != [0, 1, 2, 3]:
        raise VoxtuneError(f"--preset brats needs MSD Task01's labels 0-3 (background, edema, non-enhancing, "
                           f"enhancing); dataset.json lists {listed}")
    preset = preset or ("brats" if brats else "auto")
    labels = labels or ("binary" if preset == "brats" else "classes")
    if labels == "regions" and preset != "brats":
        raise VoxtuneError(f"--labels regions are BraTS's nested whole tumour, tumour core and enhancing tumour, "
                           f"and dataset.json lists {listed}; use --labels classes (one channel per label) or binary")
    if len(task.labels) < 2 or 0 not in task.labels:
        raise VoxtuneError(f"dataset.json: \"labels\" lists {listed}; it needs 0 (background) and at least one "
                           "foreground label")
    return preset, labels


def _fingerprint(task: TaskInfo, out: Path, splits: dict[str, str], workers: int, max_voxels: int) -> dict:
    """The dataset's fingerprint: the manifest's when it is of the same source and split, else read."""
    from voxtune.data.cache import read_manifest

    key = source_key(task, splits)
    if (out / MANIFEST).is_file():
        try:
            old = read_manifest(out).get("fingerprint")
        except VoxtuneError:
            old = None
        if old and old.get("key") == key:
            return old
    jobs = [(task, e, max_voxels, splits[e.case_id] == "train") for e in task.training]
    found = [r for r in run_cases(_fingerprint_case, jobs, workers, "fingerprint") if r is not None]
    return {"key": key, **pool(found, len(task.modalities))}


def make_plan(task: TaskInfo, fingerprint: dict, preset: str, labels: str, shape, spacing, crop_z,
              normalise) -> tuple[dict, dict]:
    """(the settings each case is prepared with, the plan's other facts) from the fingerprint and flags."""
    names, values = planning.label_channels(task.labels, labels)
    brats = preset == "brats"
    crop_z = list(planning.BRATS_CROP_Z) if crop_z is None and brats else (list(crop_z) if crop_z and any(crop_z)
                                                                             else None)
    normalise = tuple(normalise) if normalise else (("brain",) if brats else ("auto",))
    coarse = None
    if spacing is not None:
        spacing = [float(s) for s in spacing]
        coarse = planning.coarse_axis(spacing)
    elif not brats and shape is None and fingerprint["cases"]:
        spacing, coarse = planning.target_spacing([c["spacing"] for c in fingerprint["cases"].values()])
    settings = {"preset": preset, "labels": labels, "regions": names, "label_values": values,
                "source_labels": sorted(task.labels),
                "modalities": task.modalities, "shape": None if shape is None else [int(s) for s in shape],
                "spacing": spacing, "coarse_axis": coarse, "crop_z": crop_z,
                "normalise": planning.normalisation(task.modalities, fingerprint["intensity"], normalise)}
    shapes = []
    for case in fingerprint["cases"].values():
        cropped = list(case["shape"])
        if crop_z:
            cropped[2] = max(1, cropped[2] - sum(crop_z))
        shapes.append(settings["shape"] or (planning.resampled_shape(cropped, case["spacing"], spacing)
                                            if spacing else cropped))
    median = [int(round(v)) for v in np.median(shapes, axis=0)] if shapes else None
    largest = [int(v) for v in np.max(shapes, axis=0)] if shapes else None
    patch = None
    if not brats and median is not None:
        patch = planning.plan_patch(spacing or fingerprint["spacing_median"], median, largest=largest)
    return settings, {"median_shape": median, "max_shape": largest, "patch_size": patch, "coarse_axis": coarse}


def _open_cache(out: Path, settings: dict, facts: dict) -> None:
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
        write_json(out / MANIFEST, {**settings, **facts, "cases": []})
    (out / CASES_DIR).mkdir(exist_ok=True)
    for stale in (out / CASES_DIR).glob(f"*{TMP_MARK}*"):  # partial files of an interrupted run
        stale.unlink(missing_ok=True)


def prepare(source: str | Path, out: str | Path, shape: tuple[int, int, int] | None = None,
            labels: str | None = None, split: tuple[float, float, float] = (0.7, 0.15, 0.15),
            seed: int = 0, workers: int = 1, max_voxels: int = 64_000_000,
            image_dtype: str = "float16", normalise: str | tuple[str, ...] | None = None,
            spacing: tuple[float, float, float] | None = None, crop_z: tuple[int, int] | None = None,
            preset: str | None = None, log: Callable[[str], None] | None = None) -> PrepareResult:
    """Preprocess the `training` cases of the MSD task at `source` into the cache folder `out`.

    preset None: brats when dataset.json's labels are MSD Task01's, else auto (voxtune.data.plan);
    labels None: the preset's (binary for brats, classes otherwise); normalise None: the preset's
    (brain for brats, auto otherwise: by modality), or one scheme for every channel or one per channel;
    crop_z None: the preset's ([2:-1] for brats). `log` gets the plan's lines before cases are prepared.
    Failed cases are reported on stderr (`case ID: reason`) and left out of the manifest; the others are
    still prepared. Bad arguments, a bad dataset.json or a cache made with other settings raise VoxtuneError.
    """
    from tqdm import tqdm

    split = _check_args(shape, spacing, crop_z, split, workers, max_voxels, image_dtype)
    normalise = (normalise,) if isinstance(normalise, str) else normalise
    task = read_task(source)
    preset, labels = _preset_and_labels(task, preset, labels)
    out = Path(out)
    splits = assign_splits([e.case_id for e in task.training], split, seed)
    fingerprint = _fingerprint(task, out, splits, workers, max_voxels)
    prep, plan = make_plan(task, fingerprint, preset, labels, shape, spacing, crop_z, normalise)
    settings = {"version": CACHE_VERSION, "source": str(Path(source).resolve()), **prep,
                "split_fractions": list(split), "seed": int(seed), "image_dtype": image_dtype}
    _open_cache(out, settings, {"fingerprint": fingerprint, "plan": plan})
    result = PrepareResult(manifest_path=out / MANIFEST)
    if log:
        log(planning.describe({**settings, "fingerprint": fingerprint, "plan": plan}))

    jobs = [(task, e, out, splits[e.case_id], settings, max_voxels) for e in task.training]
    records = []
    for status, cid, payload in run_cases(_prepare_case, jobs, workers, "prepare"):
        if status == "failed":
            result.failed.append((cid, payload))
            tqdm.write(f"case {cid}: {payload}", file=sys.stderr)
        else:
            getattr(result, status).append(cid)
            records.append(payload)
    # Only a run that got through every case rewrites the manifest; an interrupted one leaves the
    # previous manifest, and its finished cases are found by checksum on the re-run.
    write_json(out / MANIFEST, {**settings, "fingerprint": fingerprint, "plan": plan,
                                "cases": sorted(records, key=lambda r: r["id"])})
    return result
