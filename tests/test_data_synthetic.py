"""voxtune.data.synthetic and .phantoms: MSD layout, dtypes, spacing, contrasts, determinism, bad arguments."""
import hashlib
import json
import time

import nibabel as nib
import numpy as np
import pytest

from voxtune.data.phantoms import hippocampus_case, prostate_case, spleen_ct_case
from voxtune.data.synthetic import TASKS, make_case, make_dataset
from voxtune.errors import VoxtuneError

KEYS = {"name", "description", "reference", "licence", "release", "tensorImageSize", "modality",
        "labels", "numTraining", "numTest", "training", "test"}


def test_layout_and_dataset_json(msd_dir):
    meta = json.loads((msd_dir / "dataset.json").read_text())
    assert KEYS <= set(meta)
    assert meta["modality"] == {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"}
    assert meta["tensorImageSize"] == "4D"
    assert meta["numTraining"] == len(meta["training"]) == 8
    assert meta["numTest"] == len(meta["test"]) == 2
    assert meta["training"][0] == {"image": "./imagesTr/BRATS_001.nii.gz",
                                   "label": "./labelsTr/BRATS_001.nii.gz"}
    assert meta["test"][0] == "./imagesTs/BRATS_009.nii.gz"
    for entry in meta["training"]:
        assert (msd_dir / entry["image"]).is_file() and (msd_dir / entry["label"]).is_file()
    # AppleDouble junk beside cases, as in the real tarball
    assert (msd_dir / "imagesTr" / "._BRATS_001.nii.gz").stat().st_size < 100
    assert (msd_dir / "labelsTr" / "._BRATS_001.nii.gz").exists()
    assert (msd_dir / "imagesTs" / "BRATS_010.nii.gz").is_file()


def test_nifti_dtypes_shapes_affine(msd_dir):
    img = nib.load(str(msd_dir / "imagesTr" / "BRATS_001.nii.gz"))
    lab = nib.load(str(msd_dir / "labelsTr" / "BRATS_001.nii.gz"))
    assert img.shape == (24, 24, 24, 4) and img.get_data_dtype() == np.float32
    assert lab.shape == (24, 24, 24) and lab.get_data_dtype() == np.uint8
    assert np.allclose(np.diag(img.affine)[:3], 1.0) and np.any(img.affine[:3, 3] != 0)
    values = set(np.unique(np.asarray(lab.dataobj)).tolist())
    assert values == {0, 1, 2, 3}


def test_phantom_contrasts():
    image, label = make_case(np.random.default_rng(3), (40, 40, 40))
    head = image[..., 0] > 0
    assert image[0, 0, 0].tolist() == [0, 0, 0, 0] and (image[~head] == 0).all()
    brain = head & (label == 0)
    mean = lambda m, region: image[..., m][region].mean() / image[..., m][brain].mean()
    assert mean(0, label == 1) > 1.4 and mean(3, label == 1) > 1.4   # FLAIR, T2 bright edema
    assert mean(1, label == 2) < 0.7                                 # T1 dark core
    assert mean(2, label == 3) > 1.6                                 # t1gd bright enhancing ring
    assert (label > 0).sum() > 0.01 * label.size                     # clearly visible tumour


def test_deterministic_per_seed(tmp_path):
    a = make_dataset(tmp_path / "a", cases=2, shape=(16, 16, 16), seed=5, test_cases=0)
    b = make_dataset(tmp_path / "b", cases=2, shape=(16, 16, 16), seed=5, test_cases=0)
    c = make_dataset(tmp_path / "c", cases=2, shape=(16, 16, 16), seed=6, test_cases=0)
    arr = lambda root, sub: np.asarray(nib.load(str(root / sub / "BRATS_002.nii.gz")).dataobj)
    assert arr(a, "imagesTr").tobytes() == arr(b, "imagesTr").tobytes()
    assert arr(a, "labelsTr").tobytes() == arr(b, "labelsTr").tobytes()
    assert arr(a, "imagesTr").tobytes() != arr(c, "imagesTr").tobytes()


def test_tumour_size_varies():
    sizes = {int((make_case(np.random.default_rng([0, i]), (24, 24, 24))[1] > 0).sum()) for i in range(4)}
    assert len(sizes) == 4 and min(sizes) > 50


@pytest.mark.parametrize("kwargs", [{"cases": 0}, {"shape": (4, 16, 16)}, {"shape": (16, 16)},
                                    {"test_cases": -1}])
def test_bad_arguments(tmp_path, kwargs):
    with pytest.raises(VoxtuneError):
        make_dataset(tmp_path / "x", **kwargs)


def test_refuses_non_empty_out(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "file").write_text("keep me")
    with pytest.raises(VoxtuneError, match="not empty"):
        make_dataset(tmp_path / "x", cases=1, shape=(16, 16, 16))


# --- task="brats" is pinned; the other MSD tasks (voxtune.data.phantoms) ------------------------------
# sha256 of the arrays of make_dataset(cases=2, shape=(16, 16, 16), seed=0, test_cases=0), taken before
# the other tasks were added: brats must never change.
BRATS_PIN = {
    ("imagesTr", "BRATS_001"): "23322b4ff4dbc967f2125a20367bdd9c2197bb9551cb4ce998fa9d86fde1356d",
    ("labelsTr", "BRATS_001"): "0d8f70fd2d30a0a3ed053878eb4472edc917b6b9b7576a4ee38247d58fe2bbb0",
    ("imagesTr", "BRATS_002"): "5742785fe1b70764b66df9e367a0d8aa5be2f6343cf647f62c6bc4d62ff51720",
    ("labelsTr", "BRATS_002"): "6a31c15ae534ab260d02febffc1669565f3f8b24ca51b4e13091565d84e85997",
}
BRATS_JSON_SHA256 = "169b64ddb8501a51cc0852008fe30094162900b171c00a9bc59d4d58d61acfaa"

# name, tensorImageSize, modality, labels, case files (3 training + 1 test), image dtype, channels (0: 3D)
EXPECTED = {
    "spleen-ct": ("Spleen", "3D", {"0": "CT"}, {"0": "background", "1": "spleen"},
                  ["spleen_1", "spleen_2", "spleen_3", "spleen_4"], np.int16, 0),
    "hippocampus": ("Hippocampus", "3D", {"0": "MRI"}, {"0": "background", "1": "Anterior", "2": "Posterior"},
                    ["hippocampus_001", "hippocampus_002", "hippocampus_003", "hippocampus_004"], np.float32, 0),
    "prostate": ("Prostate", "4D", {"0": "T2", "1": "ADC"}, {"0": "background", "1": "PZ", "2": "TZ"},
                 ["prostate_00", "prostate_01", "prostate_02", "prostate_03"], np.float32, 2),
}
BASE = {"spleen-ct": (48, 48, 32), "hippocampus": (32, 40, 32), "prostate": (64, 64, 16)}
# per-axis spacing ranges in mm, and each class's share of a case's voxels
SPACING = {"spleen-ct": ((0.7, 0.9), (0.7, 0.9), (1.5, 2.5)), "hippocampus": ((0.95, 1.05),) * 3,
           "prostate": ((0.55, 0.7), (0.55, 0.7), (3.6, 4.0))}
FRACTION = {"spleen-ct": (0.015, 0.06), "hippocampus": (0.03, 0.10), "prostate": (0.01, 0.5)}


def _load(path):
    img = nib.load(str(path))
    return img, np.asarray(img.dataobj)


@pytest.fixture(scope="module", params=list(EXPECTED))
def task_dir(request, tmp_path_factory):
    """(task, folder): 3 labelled + 1 test case at the task's default base shape, seed 0."""
    task = request.param
    return task, make_dataset(tmp_path_factory.mktemp(task) / "msd", cases=3, shape=None, seed=0, test_cases=1,
                              task=task)


def test_tasks_listed():
    assert TASKS == ("brats", "spleen-ct", "hippocampus", "prostate")


def test_brats_arrays_pinned(tmp_path):
    root = make_dataset(tmp_path / "b", cases=2, shape=(16, 16, 16), seed=0, test_cases=0)
    for (sub, case), digest in BRATS_PIN.items():
        array = _load(root / sub / f"{case}.nii.gz")[1]
        assert hashlib.sha256(array.tobytes()).hexdigest() == digest, (sub, case)
    assert hashlib.sha256((root / "dataset.json").read_bytes()).hexdigest() == BRATS_JSON_SHA256


def test_brats_default_shape(tmp_path):
    root = make_dataset(tmp_path / "b", cases=1, test_cases=0)
    assert nib.load(str(root / "imagesTr" / "BRATS_001.nii.gz")).shape == (48, 48, 48, 4)


def test_task_dataset_json_and_files(task_dir):
    task, root = task_dir
    name, size, modality, labels, files, _, _ = EXPECTED[task]
    meta = json.loads((root / "dataset.json").read_text())
    assert set(meta) == KEYS
    assert (meta["name"], meta["tensorImageSize"], meta["modality"], meta["labels"]) == (name, size, modality, labels)
    assert meta["numTraining"] == 3 and meta["numTest"] == 1
    assert meta["training"] == [{"image": f"./imagesTr/{f}.nii.gz", "label": f"./labelsTr/{f}.nii.gz"}
                                for f in files[:3]]
    assert meta["test"] == [f"./imagesTs/{files[3]}.nii.gz"]
    for entry in meta["training"]:
        for rel in entry.values():
            path = root / rel
            assert path.is_file() and path.with_name(f"._{path.name}").exists()  # AppleDouble junk beside it
    assert (root / "imagesTs" / f"._{files[3]}.nii.gz").stat().st_size < 100
    assert not list((root / "labelsTr").glob(f"{files[3]}*"))


def test_task_dtypes_and_dims(task_dir):
    task, root = task_dir
    _, _, _, _, files, dtype, channels = EXPECTED[task]
    for sub, f in [("imagesTr", f) for f in files[:3]] + [("imagesTs", files[3])]:
        img, image = _load(root / sub / f"{f}.nii.gz")
        assert img.get_data_dtype() == dtype and image.dtype == dtype
        assert image.ndim == (4 if channels else 3) and (not channels or image.shape[3] == channels)
    for f in files[:3]:
        lab, label = _load(root / "labelsTr" / f"{f}.nii.gz")
        assert lab.get_data_dtype() == np.uint8 and label.ndim == 3
        assert nib.load(str(root / "imagesTr" / f"{f}.nii.gz")).shape[:3] == label.shape


def test_task_case_shapes_vary_about_base(task_dir):
    task, root = task_dir
    shapes = [nib.load(str(p)).shape[:3] for p in sorted((root / "labelsTr").glob("[!.]*.nii.gz"))]
    assert len(set(shapes)) > 1
    for shape in shapes:
        for n, b in zip(shape, BASE[task]):
            assert round(0.85 * b) <= n <= round(1.15 * b)


def test_task_spacing_in_header(task_dir):
    task, root = task_dir
    zooms = []
    for entry in json.loads((root / "dataset.json").read_text())["training"]:
        img = nib.load(str(root / entry["image"]))
        zoom = np.array(img.header.get_zooms()[:3])
        assert np.allclose(zoom, np.abs(np.diag(img.affine)[:3]), atol=1e-5)
        assert np.allclose(img.affine, nib.load(str(root / entry["label"])).affine)
        assert np.any(img.affine[:3, 3] != 0)
        for z, (low, high) in zip(zoom, SPACING[task]):
            assert low - 1e-5 <= z <= high + 1e-5
        if task == "spleen-ct":  # negative X and Y axes, as many CTs
            assert (np.sign(np.diag(img.affine)[:3]) == [-1, -1, 1]).all()
        zooms.append(zoom)
    ratio = np.median([z.max() / z.min() for z in zooms])
    assert ratio >= 4 if task == "prostate" else ratio < 3
    assert len({tuple(z) for z in zooms}) > 1  # spacing varies per case


def test_task_every_class_in_every_case(task_dir):
    task, root = task_dir
    labels = EXPECTED[task][3]
    low, high = FRACTION[task]
    for p in sorted((root / "labelsTr").glob("[!.]*.nii.gz")):
        label = _load(p)[1]
        assert set(np.unique(label).tolist()) == {int(k) for k in labels}, p.name
        for value in labels:
            if value != "0":
                assert low <= (label == int(value)).mean() <= high, (p.name, value)


def test_ct_hounsfield_units():
    for i in range(3):
        image, label, _ = spleen_ct_case(np.random.default_rng([0, i]), (48, 48, 32))
        assert image.dtype == np.int16 and image.ndim == 3
        assert (image[0, 0] < -900).all() and (image[-1, -1] < -900).all()  # air in the field's corners
        bone = image > 300                                                    # spine: 400-1000 HU
        assert bone.sum() > 0.003 * image.size and 400 <= np.median(image[bone]) <= 1000
        soft = (label == 0) & (image > -60) & (image < 200)                   # soft tissue and liver
        assert image[label == 1].mean() >= image[soft].mean() + 40


def test_hippocampus_has_no_background_and_stands_out():
    for i in range(3):
        image, label, _ = hippocampus_case(np.random.default_rng([0, i]), (32, 40, 32))
        assert image.dtype == np.float32 and image.min() > 10                # every voxel is tissue
        inside = label > 0
        assert image[inside].mean() < 0.8 * image[~inside].mean()
        # a thin dark CSF border: the one-voxel shell around the hippocampus is darker than the hippocampus
        grown = inside.copy()
        for axis in range(3):
            grown |= np.roll(inside, 1, axis) | np.roll(inside, -1, axis)
        assert image[grown & ~inside].mean() < 0.85 * image[inside].mean()


def test_prostate_channels_both_informative():
    for i in range(3):
        image, label, _ = prostate_case(np.random.default_rng([0, i]), (64, 64, 16))
        assert image.dtype == np.float32 and image.shape[3] == 2 and (image > 0).all()
        t2, adc = image[..., 0], image[..., 1]
        assert t2[label == 1].mean() > 1.3 * t2[label == 2].mean()     # T2: PZ bright, TZ medium
        assert adc[label == 1].mean() > 1.3 * adc[label == 2].mean()   # ADC: PZ high, TZ lower
        body = t2 > 50
        assert abs(np.corrcoef(t2[body], adc[body])[0, 1]) < 0.9          # not one contrast twice
        for channel in (t2, adc):  # outside the body (the field's corners): low noise, never zero
            corner = channel[:2, :2]
            assert corner.std() > 1 and corner.mean() < 0.1 * channel[label > 0].mean()


@pytest.mark.parametrize("task", list(EXPECTED))
def test_task_deterministic_per_seed(tmp_path, task):
    runs = [make_dataset(tmp_path / str(n), cases=2, shape=(16, 16, 16), seed=seed, test_cases=1, task=task)
            for n, seed in enumerate((5, 5, 6))]
    files = sorted(p.relative_to(runs[0]) for p in runs[0].rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(runs[1]) for p in runs[1].rglob("*") if p.is_file())
    assert all((runs[0] / f).read_bytes() == (runs[1] / f).read_bytes() for f in files)
    name = EXPECTED[task][4][1]
    arr = lambda root: _load(root / "imagesTr" / f"{name}.nii.gz")[1]
    assert arr(runs[0]).tobytes() != arr(runs[2]).tobytes()


@pytest.mark.parametrize("task", list(EXPECTED))
def test_task_smallest_shape(tmp_path, task):
    root = make_dataset(tmp_path / "x", cases=3, shape=(8, 8, 8), test_cases=0, task=task)
    for p in (root / "labelsTr").glob("[!.]*.nii.gz"):
        assert min(nib.load(str(p)).shape) >= 8


@pytest.mark.parametrize("task", TASKS)
def test_generation_is_fast(tmp_path, task):
    start = time.perf_counter()
    make_dataset(tmp_path / "x", cases=12, test_cases=0, task=task)
    assert time.perf_counter() - start < 2.0


def test_bad_task_names_the_valid_ones(tmp_path):
    with pytest.raises(VoxtuneError, match="brats, spleen-ct, hippocampus, prostate") as err:
        make_dataset(tmp_path / "x", cases=1, task="liver")
    assert "liver" in str(err.value)
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("task", list(EXPECTED))
def test_task_bad_shape(tmp_path, task):
    with pytest.raises(VoxtuneError, match="--shape"):
        make_dataset(tmp_path / "x", shape=(4, 16, 16), task=task)
