"""The prepared cache: `CACHE/manifest.json` plus three `.npy` files per case.

Layout (paths in the manifest are relative to the cache folder):

    CACHE/manifest.json                   settings, fingerprint, plan, one entry per case
    CACHE/cases/BRATS_001.image.npy       float16 (or float32) [C, x, y, z], normalised
    CACHE/cases/BRATS_001.label.npy       uint8 [R, x, y, z]: one 0/1 channel per label channel
    CACHE/cases/BRATS_001.foreground.npy  int32 [N, 3]: up to 10k foreground voxels, frame coordinates
    CACHE/cases/BRATS_001.json            per-case sidecar (the case's manifest entry), written last

Label channels (`regions` in the manifest, `label_values` the source value of each): BraTS's whole
tumour (binary) or nested WT/TC/ET (regions), or one exclusive channel per class of dataset.json
(classes: a voxel is in at most one; background where none is set; the network takes a softmax over
background + the R classes).

A case's *frame* is its preprocessed volume [C, X, Y, Z] (`image_shape`, voxel size `spacing` in mm);
only the box `bbox` (per axis [start, stop)) around its non-background and labelled voxels is stored,
as nnU-Net crops to the non-zero region: outside it the label is 0 and each image channel holds its
`background` value (0 for a masked z-score, the normalised 0 of a whole-volume z-score, the normalised
lower clip of CT), so `read_window` rebuilds any part of the frame exactly. With float16 a full-size BraTS case takes ~79 MB instead of 149 MB
(docs/benchmarks.md#storage-formats).

Reads go through memory maps opened per read and closed after it: a window costs the pages it
touches, and every process on a node shares one copy of the data, the OS page cache.

Integrity: prepare records each file's size, sha256 and a *probe* digest (size, first and last
64 KiB and eight 4 KiB blocks between). Datasets check sizes and probes when they open a case
list (milliseconds per case, whatever the case size); `voxtune verify` checks every sha256.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np

from voxtune.errors import VoxtuneError

CACHE_VERSION = 3  # 3: fingerprint, plan, classes, spacing (voxtune.data.plan)
MANIFEST = "manifest.json"
SPLITS = ("train", "val", "test")
KINDS = ("image", "label", "foreground")
IMAGE_DTYPES = ("float16", "float32")
_REDO = "re-run `voxtune prepare`"
_EDGE, _BLOCK, _INNER = 1 << 16, 1 << 12, 8  # probe: head and tail bytes, inner block size and count


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file, read in 4 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def probe_digest(path: str | Path) -> str:
    """Hex sha256 of a file's size, its first and last 64 KiB and eight evenly spaced 4 KiB blocks:
    a swapped, truncated or overwritten file almost surely changes it, at ~200 KiB read per file."""
    size = os.path.getsize(path)
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        if size <= 2 * _EDGE + _INNER * _BLOCK:
            digest.update(f.read())
            return digest.hexdigest()
        spots = [(0, _EDGE)] + [(_EDGE + i * (size - 2 * _EDGE - _BLOCK) // (_INNER - 1), _BLOCK)
                                for i in range(_INNER)] + [(size - _EDGE, _EDGE)]
        for offset, length in spots:
            f.seek(offset)
            digest.update(f.read(length))
    return digest.hexdigest()


def file_records(cache_dir: str | Path, files: dict[str, str]) -> dict[str, dict[str, object]]:
    """The manifest's record of a case's files {kind: relative path}: {"bytes", "sha256", "probe"},
    each a {kind: value} map."""
    paths = {kind: Path(cache_dir) / rel for kind, rel in files.items()}
    return {"bytes": {k: p.stat().st_size for k, p in paths.items()},
            "sha256": {k: sha256_file(p) for k, p in paths.items()},
            "probe": {k: probe_digest(p) for k, p in paths.items()}}


def read_manifest(cache_dir: str | Path) -> dict:
    """The cache's manifest. Missing, unreadable or another version -> VoxtuneError."""
    path = Path(cache_dir) / MANIFEST
    if not Path(cache_dir).is_dir():
        raise VoxtuneError(f"{cache_dir}: no such cache folder; {_REDO} --out {cache_dir}")
    if not path.is_file():
        raise VoxtuneError(f"{path}: missing, so {cache_dir} is not a prepared cache; {_REDO}")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as exc:
        raise VoxtuneError(f"{path}: unreadable ({exc}); {_REDO} into a new --out") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("cases"), list):
        raise VoxtuneError(f"{path}: not a voxtune manifest; {_REDO} into a new --out")
    if manifest.get("version") != CACHE_VERSION:
        raise VoxtuneError(f"{path}: cache version {manifest.get('version')!r}, this voxtune reads "
                           f"version {CACHE_VERSION}; {_REDO} into a new --out")
    return manifest


def case_entry(manifest: dict, case_id: str) -> dict:
    """The manifest entry of `case_id`; unknown id -> VoxtuneError listing a few known ones."""
    for case in manifest["cases"]:
        if case["id"] == case_id:
            return case
    known = [c["id"] for c in manifest["cases"]]
    hint = ", ".join(known[:5]) + (", ..." if len(known) > 5 else "")
    raise VoxtuneError(f"case {case_id}: not in the cache manifest (cases: {hint or 'none'})")


def case_ids(manifest: dict, split: str | None = None) -> list[str]:
    """Case ids of one split ("train", "val", "test"), or of all cases when split is None."""
    if split is not None and split not in SPLITS:
        raise VoxtuneError(f"split {split!r}: must be one of {', '.join(SPLITS)}")
    return [c["id"] for c in manifest["cases"] if split is None or c["split"] == split]


def train_val_ids(manifest: dict, folds: int = 1, fold: int | None = None) -> tuple[list[str], list[str]]:
    """(train ids, val ids) of a run: the cache's own split when folds == 1, else fold `fold` of the
    train and val cases pooled and cut into `folds` folds (every case validates in exactly one fold;
    the test split is never touched). The cut is seeded by the cache's split seed, not a run's: every
    config and training seed of a search, and a resumed search, meet the same folds (as nnU-Net's
    fixed split seed does)."""
    if folds == 1:
        return case_ids(manifest, "train"), case_ids(manifest, "val")
    pool = case_ids(manifest, "train") + case_ids(manifest, "val")
    shuffled = sorted(pool)
    np.random.default_rng(int(manifest.get("seed", 0))).shuffle(shuffled)
    val = set(shuffled[fold::folds])
    return [c for c in pool if c not in val], [c for c in pool if c in val]


def region_names(manifest: dict) -> list[str]:
    """Label channel names, e.g. ["whole_tumour"], ["whole_tumour", "tumour_core", "enhancing_tumour"] or
    a dataset's classes, ["anterior", "posterior"]."""
    return list(manifest["regions"])


def exclusive(manifest_or_prep: dict) -> bool:
    """The label channels are a dataset's classes, one per voxel at most (softmax), not BraTS's
    overlapping regions (a sigmoid each). Takes a manifest or a checkpoint's prepare settings."""
    return manifest_or_prep.get("labels") == "classes"


def _file(cache_dir: str | Path, entry: dict, kind: str) -> Path:
    path = Path(cache_dir) / entry["files"][kind]
    if not path.is_file():
        raise VoxtuneError(f"{path}: missing from the cache; {_REDO}")
    return path


def check_case(cache_dir: str | Path, entry: dict) -> None:
    """Cheap integrity check of a case's files (size and probe digest); a mismatch -> VoxtuneError
    naming the file. Reads ~200 KiB per file whatever its size; `verify_case` reads everything."""
    for kind in KINDS:
        path = _file(cache_dir, entry, kind)
        if path.stat().st_size != entry["bytes"][kind] or probe_digest(path) != entry["probe"][kind]:
            raise VoxtuneError(f"{path}: does not match the manifest (file changed, swapped or damaged); "
                               f"{_REDO}, or `voxtune verify --cache {cache_dir}` to check every file")


def verify_case(cache_dir: str | Path, entry: dict) -> None:
    """Check every file of a case against its manifest sha256; mismatch -> VoxtuneError naming the file."""
    for kind in KINDS:
        path = _file(cache_dir, entry, kind)
        if sha256_file(path) != entry["sha256"][kind]:
            raise VoxtuneError(f"{path}: checksum does not match the manifest (file changed or "
                               f"damaged); {_REDO}")


def verify_cache(cache_dir: str | Path) -> tuple[int, list[tuple[str, str]]]:
    """Check every file of every case against its sha256, with a progress bar.
    Returns (cases checked, [(case_id, reason)] of those that failed)."""
    from tqdm import tqdm

    manifest = read_manifest(cache_dir)
    failed = []
    for entry in tqdm(manifest["cases"], desc="verify", unit="case", disable=None):
        try:
            verify_case(cache_dir, entry)
        except VoxtuneError as exc:
            failed.append((entry["id"], str(exc)))
            tqdm.write(f"case {entry['id']}: {exc}", file=sys.stderr)
    return len(manifest["cases"]), failed


def _map(path: Path) -> np.ndarray:
    """np.load(path, mmap_mode="r") with one open, not two: the header is read and the data mapped from
    the same file object (np.load opens the file for the header, then np.memmap opens it again). Every
    sample read opens its image and label, so on a shared filesystem this halves the metadata server's
    opens (docs/cluster.md#node-local-staging)."""
    fmt = np.lib.format
    with open(path, "rb") as f:
        version = fmt.read_magic(f)
        shape, fortran, dtype = (fmt.read_array_header_1_0(f) if version == (1, 0) else fmt.read_array_header_2_0(f))
        if dtype.hasobject:
            raise ValueError("object arrays are not stored in a cache")
        return np.memmap(f, dtype=dtype, mode="r", shape=shape, order="F" if fortran else "C", offset=f.tell())


def _open(cache_dir: str | Path, entry: dict, kind: str, dtype: str) -> np.ndarray:
    """Memory-map one stored array, checking its dtype and shape against the manifest."""
    path = _file(cache_dir, entry, kind)
    try:
        array = _map(path)
    except (ValueError, OSError, EOFError) as exc:
        raise VoxtuneError(f"{path}: unreadable ({exc}); {_REDO}") from None
    shape = stored_shape(entry, kind)
    if array.dtype != np.dtype(dtype) or (shape is not None and list(array.shape) != shape):
        raise VoxtuneError(f"{path}: {array.dtype} {list(array.shape)} but the manifest says "
                           f"{np.dtype(dtype)} {shape}; {_REDO}")
    return array


def stored_shape(entry: dict, kind: str) -> list[int] | None:
    """Shape of the stored array: the frame's channels by the bbox's size (None for foreground)."""
    if kind == "foreground":
        return None
    return [entry[f"{kind}_shape"][0]] + [b1 - b0 for b0, b1 in entry["bbox"]]


def read_window(cache_dir: str | Path, entry: dict, image_dtype: str, start, size,
                flip=(False, False, False)) -> tuple[np.ndarray, np.ndarray]:
    """A window of the case's frame: image [C, *size] in the stored dtype and label uint8 [R, *size].

    `start` and `size` are per spatial axis in frame voxels; the window may reach past the frame
    (the background value there, which pads: 0 unless prepare normalised over the whole volume). `flip` mirrors each axis of the window. Only the stored voxels inside
    the window are read, in one copy.
    """
    image_src = _open(cache_dir, entry, "image", image_dtype)
    label_src = _open(cache_dir, entry, "label", "uint8")
    if any(entry["background"]):  # outside the box: each channel's background value
        image = np.empty((image_src.shape[0], *size), image_src.dtype)
        image[...] = np.asarray(entry["background"], dtype=image_src.dtype)[:, None, None, None]
    else:  # zeros from the OS: pages the copy below does not reach cost nothing
        image = np.zeros((image_src.shape[0], *size), image_src.dtype)
    label = np.zeros((label_src.shape[0], *size), np.uint8)
    src, dst = [slice(None)], [slice(None)]
    for s, n, (b0, b1), f in zip(start, size, entry["bbox"], flip):
        lo, hi = max(s, b0), min(s + n, b1)
        if lo >= hi:  # the window misses the stored box: background only
            return image, label
        src.append(slice(lo - b0, hi - b0))
        a, b = lo - s, hi - s
        dst.append(slice(n - b, n - a) if f else slice(a, b))
    axes = tuple(1 + i for i, f in enumerate(flip) if f)
    for out, array in ((image, image_src), (label, label_src)):
        part = array[tuple(src)]
        out[tuple(dst)] = np.flip(part, axes) if axes else part
    return image, label


def foreground(cache_dir: str | Path, entry: dict) -> np.ndarray:
    """Up to 10k tumour voxel coordinates int32 [N, 3] in the case's frame (memory-mapped)."""
    return _open(cache_dir, entry, "foreground", "int32")


def load_case(cache_dir: str | Path, case_id: str, verify: bool = False, *,
              manifest: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Load a prepared case's whole frame: image float32 [C, X, Y, Z], label uint8 [R, X, Y, Z].

    verify=True checks the sha256 of its files first. `manifest` saves re-reading it per call.
    """
    manifest = manifest if manifest is not None else read_manifest(cache_dir)
    entry = case_entry(manifest, case_id)
    if verify:
        verify_case(cache_dir, entry)
    image, label = read_window(cache_dir, entry, manifest["image_dtype"], (0, 0, 0), entry["image_shape"][1:])
    return image.astype(np.float32, copy=False), label
