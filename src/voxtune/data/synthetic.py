"""Synthetic phantoms written in the exact layout of an MSD task: brain tumour here, three more in `phantoms`.

Lets every command, test and benchmark run without the 7 GB download. `make_dataset(task=...)` writes
one of TASKS; "brats" (Task01_BrainTumour) is made here: each case is a head ellipsoid (scalp shell +
brain with smooth texture and noise, background exactly 0) holding one tumour: edema (label 1) around an
enhancing ring (label 3) around a non-enhancing core (label 2). Sub-regions differ per modality the way
they do in BraTS: FLAIR and T2w show bright edema, T1w a dark core, t1gd a bright enhancing ring. Same
seed -> byte-identical arrays.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from voxtune.data.phantoms import HIPPOCAMPUS, PROSTATE, SPLEEN_CT, MsdTask
from voxtune.data.shape import check_shape
from voxtune.errors import VoxtuneError

MODALITIES = {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"}
LABELS = {"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"}

# Relative intensity per tissue, rows = modality (FLAIR, T1w, t1gd, T2w),
# columns = (scalp, brain, edema, non-enhancing core, enhancing ring).
_TISSUE = np.array([
    [0.55, 1.00, 1.85, 1.25, 1.45],
    [1.30, 1.00, 0.80, 0.45, 0.75],
    [1.25, 1.00, 0.85, 0.50, 2.10],
    [0.50, 1.00, 1.90, 1.70, 1.50],
], dtype=np.float32)
# Raw scanner-like scale per modality, so the z-scoring in `prepare` has real work to do.
_SCALE = np.array([420.0, 610.0, 780.0, 530.0], dtype=np.float32)

# Bytes at the start of a real macOS AppleDouble `._` file; the MSD tarball ships them.
_APPLEDOUBLE = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        \x00\x02"


def _smooth_field(rng: np.random.Generator, grid: list[np.ndarray], waves: int) -> np.ndarray:
    """Sum of low-frequency random plane waves on the unit grid: smooth texture in [-1, 1]."""
    field = np.zeros(np.broadcast_shapes(*(g.shape for g in grid)), dtype=np.float32)
    for _ in range(waves):
        freq = rng.normal(0.0, 2.5, size=3)
        phase = rng.uniform(0, 2 * np.pi)
        # cos(a + b + c) as the real part of a product of per-axis complex exponentials: one complex
        # multiply per voxel instead of a cosine (a full-size case is 9M voxels, many waves).
        e = [np.exp(1j * (2 * np.pi * f * g + p)).astype(np.complex64) for f, g, p in zip(freq, grid, (phase, 0, 0))]
        field += (e[0] * e[1] * e[2]).real
    return field / waves


def _blob_radius(rng: np.random.Generator, unit: list[np.ndarray], lumps: int = 3) -> np.ndarray:
    """Direction-dependent radius factor (about 0.75-1.25) that makes a sphere an irregular blob."""
    factor = 1.0
    for _ in range(lumps):
        axis = rng.normal(size=3)
        axis /= np.linalg.norm(axis)
        axis = axis.astype(np.float32)
        cos = unit[0] * axis[0] + unit[1] * axis[1] + unit[2] * axis[2]
        k, phase = np.float32(rng.uniform(1.5, 3.5)), np.float32(rng.uniform(0, 2 * np.pi))
        factor = factor + np.float32(0.25 / lumps) * np.cos(k * cos + phase)
    return factor


def make_case(rng: np.random.Generator, shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """One phantom. Returns image float32 [X, Y, Z, 4] (FLAIR, T1w, t1gd, T2w), label uint8 [X, Y, Z]."""
    # Unit-scaled coordinates in [-1, 1] per axis, broadcast shapes [X,1,1], [1,Y,1], [1,1,Z].
    grid = [np.linspace(-1, 1, n, dtype=np.float32).reshape([-1 if a == i else 1 for a in range(3)])
            for i, n in enumerate(shape)]
    # float32 throughout (numpy 2 would promote with float64 radii): a full-size case is 9M voxels
    head_r = rng.uniform(0.86, 0.94, size=3).astype(np.float32)
    head = sum((g / r) ** 2 for g, r in zip(grid, head_r)) <= 1.0
    brain_r = head_r - np.float32(rng.uniform(0.08, 0.12))
    brain_d = np.sqrt(sum((g / r) ** 2 for g, r in zip(grid, brain_r)))
    brain = brain_d <= 1.0

    # Tumour: outer (edema) radius 0.28-0.45 of the half-width, centred well inside the brain.
    r_edema = float(rng.uniform(0.28, 0.45))
    centre = (rng.uniform(-1, 1, size=3) * (brain_r - r_edema * 1.3) * 0.85).astype(np.float32)
    offset = [g - c for g, c in zip(grid, centre)]
    dist = np.sqrt(sum(o ** 2 for o in offset)) + 1e-6
    unit = [o / dist for o in offset]
    r_ring = r_edema * rng.uniform(0.50, 0.68)
    r_core = r_ring * rng.uniform(0.45, 0.65)
    label = np.zeros(shape, dtype=np.uint8)
    label[dist <= r_edema * _blob_radius(rng, unit)] = 1
    label[dist <= r_ring * _blob_radius(rng, unit)] = 3
    label[dist <= r_core * _blob_radius(rng, unit)] = 2
    label[~brain] = 0

    tissue = np.where(brain, 1, 0).astype(np.int64)  # 0 scalp, 1 brain, then 2/3/4 tumour parts
    tissue[label == 1], tissue[label == 2], tissue[label == 3] = 2, 3, 4
    texture = _smooth_field(rng, grid, waves=6)
    image = np.zeros((*shape, 4), dtype=np.float32)
    for m in range(4):
        base = _TISSUE[m][tissue]
        # Grey/white-matter-like texture inside the brain; tumour gets its own, weaker texture.
        base = base * (1.0 + 0.16 * texture * brain + 0.05 * _smooth_field(rng, grid, waves=3))
        noise = rng.normal(0.0, 0.04, size=shape).astype(np.float32)
        value = np.clip(base + noise, 0.02, None) * _SCALE[m]
        image[..., m] = np.where(head, value, 0.0)
    return image, label


def _brats_case(rng: np.random.Generator, shape: tuple[int, int, int]
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`make_case` plus its affine: 1 mm isotropic with a non-zero origin, the same for every case."""
    image, label = make_case(rng, shape)
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    affine[:3, 3] = [-(shape[0] // 2) - 0.5, -(shape[1] // 2) + 17.0, -(shape[2] // 2) - 12.0]
    return image, label, affine


BRATS = MsdTask("BRATS", "Task01_BrainTumour", "4D", MODALITIES, LABELS, (48, 48, 48), "BRATS_{n:03d}.nii.gz", 1,
                _brats_case)
_KINDS = {"brats": BRATS, "spleen-ct": SPLEEN_CT, "hippocampus": HIPPOCAMPUS, "prostate": PROSTATE}
TASKS = tuple(_KINDS)


def msd_task(task: str) -> MsdTask:
    """The synthetic task named `task` (one of TASKS); anything else -> VoxtuneError naming the valid ones."""
    if task not in _KINDS:
        raise VoxtuneError(f"--task {task!r}: no such synthetic task; choose one of {', '.join(TASKS)}")
    return _KINDS[task]


def _write_nifti(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    import nibabel as nib

    nib.save(nib.Nifti1Image(array, affine), str(path))
    # macOS AppleDouble junk beside each case, as in the official tarball: readers must not glob.
    (path.parent / f"._{path.name}").write_bytes(_APPLEDOUBLE)


def make_dataset(out: str | Path, cases: int = 12, shape: tuple[int, int, int] | None = None,
                 seed: int = 0, test_cases: int = 2, task: str = "brats") -> Path:
    """Write `cases` labelled and `test_cases` unlabelled phantoms of `task` as an MSD task folder; return it.

    `shape` is the base shape (X, Y, Z); None -> the task's default (brats 48^3, spleen-ct 48x48x32,
    hippocampus 32x40x32, prostate 64x64x16). brats cases all have exactly that shape and a 1 mm affine;
    the other tasks vary each case's matrix (0.85-1.15x per axis) and spacing (see `phantoms`). Images are
    NIfTI [X, Y, Z] for one modality, [X, Y, Z, C] for several (brats float32 [X, Y, Z, 4]); labels uint8
    [X, Y, Z]. Case `i` uses its own generator seeded from (seed, i); test cases continue the numbering.
    """
    from tqdm import tqdm

    kind = msd_task(task)
    shape = check_shape(shape) or kind.shape
    if cases < 1:
        raise VoxtuneError(f"--cases {cases}: need at least 1 labelled case")
    if test_cases < 0:
        raise VoxtuneError(f"--test-cases {test_cases}: must be >= 0")
    shape = tuple(int(s) for s in shape)
    root = Path(out)
    if root.exists() and any(root.iterdir()):
        raise VoxtuneError(f"{root} exists and is not empty: choose another --out")
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (root / sub).mkdir(parents=True, exist_ok=True)

    training, test = [], []
    for i in tqdm(range(cases + test_cases), desc="synth", unit="case", disable=None):
        name = kind.case_file(i)
        image, label, affine = kind.make_case(np.random.default_rng([seed, i]), shape)
        if i < cases:
            _write_nifti(image, affine, root / "imagesTr" / name)
            _write_nifti(label, affine, root / "labelsTr" / name)
            training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
        else:
            _write_nifti(image, affine, root / "imagesTs" / name)
            test.append(f"./imagesTs/{name}")

    meta = {
        "name": kind.name,
        "description": f"Synthetic phantoms in the layout of MSD {kind.folder} (voxtune synth)",
        "reference": "voxtune synthetic data; layout of http://medicaldecathlon.com",
        "licence": "CC-BY-SA 4.0",
        "release": "synthetic 1.0",
        "tensorImageSize": kind.tensor_size,
        "modality": kind.modality,
        "labels": kind.labels,
        "numTraining": len(training),
        "numTest": len(test),
        "training": training,
        "test": test,
    }
    (root / "dataset.json").write_text(json.dumps(meta, indent=4) + "\n")
    return root
