"""voxtune.data.synthetic: MSD layout, dtypes, contrasts, determinism, bad arguments."""
import json

import nibabel as nib
import numpy as np
import pytest

from voxtune.data.synthetic import make_case, make_dataset
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
