"""Medical Segmentation Decathlon task folders: dataset.json, safe case paths, NIfTI cases.

The case list comes from dataset.json only (never a glob: the official tarball carries macOS
`._*` junk beside every case). Problems with the whole file raise `VoxtuneError`; problems with
one case raise `CaseError` so the caller can skip that case and go on with the others.
"""
from __future__ import annotations

import gzip
import json
import re
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from voxtune.errors import VoxtuneError

DATASET_JSON = "dataset.json"
AFFINE_TOLERANCE_MM = 1e-3  # image and label affines may differ by rounding, not by a voxel
_CASE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class CaseError(VoxtuneError):
    """One case cannot be used; `reason` says why in a few words naming the file."""

    def __init__(self, case_id: str, reason: str):
        super().__init__(f"case {case_id}: {reason}")
        self.case_id = case_id
        self.reason = reason


@dataclass(frozen=True)
class CaseEntry:
    """One `training` entry of dataset.json: paths exactly as written there ("./imagesTr/X.nii.gz")."""

    case_id: str
    image: str
    label: str


@dataclass(frozen=True)
class TaskInfo:
    """What voxtune needs from dataset.json."""

    root: Path
    modalities: list[str]          # in channel order, e.g. ["FLAIR", "T1w", "t1gd", "T2w"]
    labels: dict[int, str]         # label value -> name
    training: list[CaseEntry]
    test: list[str]


def case_id_from_path(rel: str) -> str:
    """`./imagesTr/BRATS_001.nii.gz` -> `BRATS_001`."""
    name = rel.replace("\\", "/").rsplit("/", 1)[-1]
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _bad(key: str, what: str) -> VoxtuneError:
    return VoxtuneError(f"{DATASET_JSON}: {key} {what}; fix the file or re-download the task")


def _str_dict(meta: dict, key: str) -> dict[str, str]:
    value = meta.get(key)
    if not isinstance(value, dict) or not value or not all(
            isinstance(k, str) and k.isdigit() and isinstance(v, str) for k, v in value.items()):
        raise _bad(f'"{key}"', 'must be a non-empty object like {"0": "name", ...}')
    return value


def read_task(root: str | Path) -> TaskInfo:
    """Read and validate `root/dataset.json`. Bad JSON, missing keys or wrong types -> VoxtuneError."""
    root = Path(root)
    path = root / DATASET_JSON
    if not root.is_dir():
        raise VoxtuneError(f"{root}: no such folder; --source must be an MSD task folder")
    if not path.is_file():
        raise VoxtuneError(f"{path}: missing; --source must be an MSD task folder holding {DATASET_JSON}")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise VoxtuneError(f"{path}: not valid JSON ({exc}); fix or re-download the file") from None
    if not isinstance(meta, dict):
        raise _bad("top level", "must be a JSON object")
    for key in ("modality", "labels", "training", "numTraining"):
        if key not in meta:
            raise _bad(f'key "{key}"', "is missing")

    modality = _str_dict(meta, "modality")
    modalities = [modality[k] for k in sorted(modality, key=int)]
    if sorted(int(k) for k in modality) != list(range(len(modality))):
        raise _bad('"modality"', "keys must be 0, 1, ... without gaps")
    labels = {int(k): v for k, v in _str_dict(meta, "labels").items()}

    training = meta["training"]
    if not isinstance(training, list) or not training:
        raise _bad('"training"', "must be a non-empty list of {\"image\": ..., \"label\": ...}")
    entries, seen = [], set()
    for i, item in enumerate(training):
        if not (isinstance(item, dict) and isinstance(item.get("image"), str)
                and isinstance(item.get("label"), str)):
            raise _bad(f'"training"[{i}]', 'must be {"image": "./imagesTr/...", "label": "./labelsTr/..."}')
        case_id = case_id_from_path(item["image"])
        if case_id in seen:
            raise _bad(f'"training"[{i}]', f"repeats case {case_id}")
        seen.add(case_id)
        entries.append(CaseEntry(case_id, item["image"], item["label"]))
    num = meta["numTraining"]
    if not isinstance(num, int) or isinstance(num, bool):
        raise _bad('"numTraining"', f"must be an integer, got {num!r}")
    if num != len(training):
        raise _bad('"numTraining"', f"is {num} but \"training\" lists {len(training)} cases")

    test = meta.get("test", [])
    if not isinstance(test, list) or not all(isinstance(t, str) for t in test):
        raise _bad('"test"', "must be a list of paths")
    return TaskInfo(root=root, modalities=modalities, labels=labels, training=entries, test=test)


def resolve_case_path(root: str | Path, rel: str, case_id: str) -> Path:
    """`rel` (as written in dataset.json) under `root`; anything resolving outside root -> CaseError.

    Symlinks are followed before the check, so a link pointing out of the dataset is refused too.
    """
    if not _CASE_ID.match(case_id):
        raise CaseError(case_id, f"{rel!r}: file name is not a usable case id")
    if Path(rel).is_absolute() or rel.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", rel):
        raise CaseError(case_id, f"{rel!r}: absolute path in {DATASET_JSON}; paths must be relative (./imagesTr/...)")
    base = Path(root).resolve()
    path = (base / rel).resolve()
    if not path.is_relative_to(base):
        raise CaseError(case_id, f"{rel!r} resolves outside the dataset folder; refused")
    return path


def open_nifti(path: Path, what: str):
    """nibabel image of `path` (header read, data not yet); a missing or unreadable file ->
    VoxtuneError starting with `what` (e.g. "image file ./imagesTr/BRATS_001.nii.gz")."""
    import nibabel as nib

    if not path.is_file():
        raise VoxtuneError(f"{what} is missing")
    try:
        return nib.load(str(path))
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile, nib.filebasedimages.ImageFileError,
            ValueError) as exc:
        raise VoxtuneError(f"{what} is unreadable ({type(exc).__name__}: {exc})") from None


def image_shape(img, channels: int, what: str) -> tuple[int, int, int, int]:
    """The (X, Y, Z, C) shape of a 4D image header (3D when there is one channel), checked against the
    expected channel count without decoding any data."""
    shape = tuple(img.shape)
    if len(shape) == 3 and channels == 1:
        shape = (*shape, 1)
    elif len(shape) == 3:
        raise VoxtuneError(f"{what} has shape {shape}: 3D, one channel, where dataset.json's \"modality\" lists "
                           f"{channels}; expected (X, Y, Z, {channels})")
    if len(shape) != 4:
        raise VoxtuneError(f"{what} has shape {tuple(img.shape)}, not 4D; expected (X, Y, Z, {channels})")
    if shape[3] != channels:
        raise VoxtuneError(f"{what} has {shape[3]} channels where {channels} are expected (shape {shape}; "
                           f"expected (X, Y, Z, {channels}): dataset.json's \"modality\" lists {channels})")
    return shape


def label_shape(img, what: str) -> tuple[int, int, int]:
    """The (X, Y, Z) shape of a label header ((X, Y, Z, 1) is accepted)."""
    shape = tuple(img.shape)
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise VoxtuneError(f"{what} has shape {tuple(img.shape)}; expected 3D (X, Y, Z)")
    return shape


def nifti_data(img, shape: tuple[int, ...], what: str) -> np.ndarray:
    """The decoded float32 voxels, reshaped; a truncated or corrupt file or non-finite values -> VoxtuneError."""
    try:
        data = np.asarray(img.dataobj, dtype=np.float32).reshape(shape)
    except (OSError, EOFError, zlib.error, ValueError) as exc:
        raise VoxtuneError(f"{what} is truncated or corrupt ({type(exc).__name__}: {exc}); re-download "
                           "it") from None
    if not np.isfinite(data).all():
        raise VoxtuneError(f"{what} holds NaN or infinite values")
    return data


def label_data(img, shape: tuple[int, int, int], allowed, what: str) -> np.ndarray:
    """The decoded labels uint8 [X, Y, Z]; values that are not integers in `allowed` -> VoxtuneError."""
    raw = nifti_data(img, shape, what)
    label = np.rint(raw)
    unknown = set(np.unique(label).astype(int).tolist()) - set(allowed)
    if unknown or not np.array_equal(label, raw):
        raise VoxtuneError(f"{what} holds values {sorted(unknown) or 'not integers'}, which dataset.json's \"labels\" "
                           f"does not list (it lists {', '.join(map(str, sorted(allowed)))}); fix the label file or "
                           "dataset.json")
    return label.astype(np.uint8)


def spacing_of(img, what: str) -> tuple[float, float, float]:
    """The voxel spacing in mm (X, Y, Z) of a NIfTI image: the lengths of its affine's columns, what
    places the voxels in the world (nibabel's affine: sform, else qform, else pixdim). Zero, NaN or
    infinite -> VoxtuneError."""
    affine = np.asarray(img.affine, dtype=np.float64)
    zooms = tuple(float(z) for z in np.sqrt((affine[:3, :3] ** 2).sum(axis=0)))
    if not all(np.isfinite(z) and z > 0 for z in zooms):
        raise VoxtuneError(f"{what} has voxel spacing {tuple(round(z, 6) for z in zooms)}; every spacing must be a "
                           "positive number (fix the header's sform/qform or pixdim)")
    return zooms


@dataclass(frozen=True)
class CaseHeader:
    """What a labelled case's headers say, before any voxel is decoded."""

    image: object  # the nibabel images, data not yet read
    label: object
    shape: tuple[int, int, int, int]  # (X, Y, Z, C)
    spacing: tuple[float, float, float]  # mm per voxel along X, Y, Z


def read_header(task: TaskInfo, entry: CaseEntry, max_voxels: int = 64_000_000) -> CaseHeader:
    """Open a labelled case and check its headers: channels against `modality`, image and label of one
    shape and one affine, a usable spacing, the voxel cap. Every problem raises CaseError(case_id, reason)."""
    cid = entry.case_id
    try:
        img = open_nifti(resolve_case_path(task.root, entry.image, cid), f"image file {entry.image}")
        lab = open_nifti(resolve_case_path(task.root, entry.label, cid), f"label file {entry.label}")
        ishape = image_shape(img, len(task.modalities), f"image {entry.image}")
        lshape = label_shape(lab, f"label {entry.label}")
        if ishape[:3] != lshape:
            raise VoxtuneError(f"image {entry.image} is {ishape[:3]} but label {entry.label} is {lshape}")
        spacing = spacing_of(img, f"image {entry.image}")
        if not np.allclose(img.affine, lab.affine, rtol=0, atol=AFFINE_TOLERANCE_MM):
            raise VoxtuneError(f"image {entry.image} and label {entry.label} have different affines (voxel to "
                               f"world: {_affine_text(img.affine)} vs {_affine_text(lab.affine)}); the label must "
                               "lie on the image's grid")
        voxels = int(np.prod(lshape))
        if voxels > max_voxels:
            raise VoxtuneError(f"image {entry.image} has {voxels} voxels per channel, over the cap of "
                               f"{max_voxels} (--max-voxels)")
    except CaseError:
        raise
    except VoxtuneError as exc:
        raise CaseError(cid, str(exc)) from None
    return CaseHeader(img, lab, ishape, spacing)


def _affine_text(affine) -> str:
    return np.array2string(np.asarray(affine)[:3], precision=3, separator=",", suppress_small=True).replace("\n", "")


def load_case(task: TaskInfo, entry: CaseEntry, max_voxels: int = 64_000_000
              ) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """Load one labelled case. Returns image float32 [X, Y, Z, C], label uint8 [X, Y, Z] and the voxel
    spacing in mm (X, Y, Z).

    Shapes, affines, spacing and the voxel cap are checked from the headers (read_header) before any
    data is decompressed. Every problem raises CaseError(case_id, reason).
    """
    head = read_header(task, entry, max_voxels)
    try:
        image = nifti_data(head.image, head.shape, f"image file {entry.image}")
        label = label_data(head.label, head.shape[:3], task.labels, f"label {entry.label}")
    except VoxtuneError as exc:
        raise CaseError(entry.case_id, str(exc)) from None
    return image, label, head.spacing
