"""The prepared cache: `CACHE/manifest.json` plus one `.npy` pair per case.

Layout (paths in the manifest are relative to the cache folder):

    CACHE/manifest.json
    CACHE/cases/BRATS_001.image.npy   float32 [C, X, Y, Z], z-scored per channel, background 0
    CACHE/cases/BRATS_001.label.npy   uint8   [R, X, Y, Z], R = 1 (whole tumour) or 3 (WT, TC, ET)
    CACHE/cases/BRATS_001.json        per-case sidecar (the case's manifest entry), written last

Plain `.npy` was chosen by measurement (benchmarks/cache_format.md): it loads an order of
magnitude faster than decoding NIfTI and can be memory-mapped.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from voxtune.errors import VoxtuneError

CACHE_VERSION = 1
MANIFEST = "manifest.json"
SPLITS = ("train", "val", "test")
REGIONS = {"binary": ["whole_tumour"],
           "regions": ["whole_tumour", "tumour_core", "enhancing_tumour"]}
_REDO = "re-run `voxtune prepare`"


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file, read in 4 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


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


def region_names(manifest: dict) -> list[str]:
    """Label channel names, e.g. ["whole_tumour"] or ["whole_tumour", "tumour_core", "enhancing_tumour"]."""
    return list(manifest["regions"])


def verify_case(cache_dir: str | Path, entry: dict) -> None:
    """Check both files of a case against the manifest sha256; mismatch -> VoxtuneError naming the file."""
    for kind in ("image", "label"):
        path = Path(cache_dir) / entry["files"][kind]
        if not path.is_file():
            raise VoxtuneError(f"{path}: missing from the cache; {_REDO}")
        if sha256_file(path) != entry["sha256"][kind]:
            raise VoxtuneError(f"{path}: checksum does not match the manifest (file changed or "
                               f"damaged); {_REDO}")


def load_case(cache_dir: str | Path, case_id: str, verify: bool = False, *,
              manifest: dict | None = None, mmap: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Load a prepared case: image float32 [C, X, Y, Z], label uint8 [R, X, Y, Z].

    verify=True checks the sha256 of both files first. `manifest` saves re-reading it per call;
    `mmap` returns read-only memory-mapped arrays (pages load on first touch).
    """
    manifest = manifest if manifest is not None else read_manifest(cache_dir)
    entry = case_entry(manifest, case_id)
    if verify:
        verify_case(cache_dir, entry)
    arrays = []
    for kind, dtype in (("image", np.float32), ("label", np.uint8)):
        path = Path(cache_dir) / entry["files"][kind]
        try:
            array = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
        except FileNotFoundError:
            raise VoxtuneError(f"{path}: missing from the cache; {_REDO}") from None
        except (ValueError, OSError, EOFError) as exc:
            raise VoxtuneError(f"{path}: unreadable ({exc}); {_REDO}") from None
        if array.dtype != dtype or list(array.shape) != list(entry[f"{kind}_shape"]):
            raise VoxtuneError(f"{path}: {array.dtype} {list(array.shape)} but the manifest says "
                               f"{np.dtype(dtype)} {entry[f'{kind}_shape']}; {_REDO}")
        arrays.append(array)
    return arrays[0], arrays[1]
