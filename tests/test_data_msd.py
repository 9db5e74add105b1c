"""voxtune.data.msd: dataset.json validation, safe case paths, NIfTI loading errors."""
import json
import os

import nibabel as nib
import numpy as np
import pytest

from voxtune.data.msd import CaseEntry, CaseError, load_case, read_task, resolve_case_path
from voxtune.errors import VoxtuneError


def _edit_json(root, fn):
    path = root / "dataset.json"
    meta = json.loads(path.read_text())
    fn(meta)
    path.write_text(json.dumps(meta))


def test_read_task(msd_dir):
    task = read_task(msd_dir)
    assert task.modalities == ["FLAIR", "T1w", "t1gd", "T2w"]
    assert task.labels == {0: "background", 1: "edema", 2: "non-enhancing tumor", 3: "enhancing tumour"}
    assert [e.case_id for e in task.training] == [f"BRATS_{i:03d}" for i in range(1, 9)]
    assert len(task.test) == 2


def test_missing_dataset_json(tmp_path):
    with pytest.raises(VoxtuneError, match="dataset.json: missing"):
        read_task(tmp_path)
    with pytest.raises(VoxtuneError, match="no such folder"):
        read_task(tmp_path / "nope")


def test_bad_json(msd_copy):
    (msd_copy / "dataset.json").write_text('{"training": [')
    with pytest.raises(VoxtuneError, match="dataset.json: not valid JSON"):
        read_task(msd_copy)


@pytest.mark.parametrize("key", ["modality", "labels", "training", "numTraining"])
def test_missing_key(msd_copy, key):
    _edit_json(msd_copy, lambda m: m.pop(key))
    with pytest.raises(VoxtuneError, match=f'dataset.json: key "{key}" is missing'):
        read_task(msd_copy)


@pytest.mark.parametrize("key,value,match", [
    ("modality", ["FLAIR"], '"modality"'),
    ("training", "imagesTr", '"training"'),
    ("training", [{"image": 3, "label": "./x.nii.gz"}], r'"training"\[0\]'),
    ("numTraining", "8", '"numTraining"'),
    ("numTraining", 9, '"numTraining" is 9'),
    ("test", [1, 2], '"test"'),
])
def test_wrong_types(msd_copy, key, value, match):
    _edit_json(msd_copy, lambda m: m.__setitem__(key, value))
    with pytest.raises(VoxtuneError, match=match) as info:
        read_task(msd_copy)
    assert "dataset.json" in str(info.value) and "\n" not in str(info.value)


def test_duplicate_case(msd_copy):
    _edit_json(msd_copy, lambda m: (m["training"].append(m["training"][0]),
                                    m.__setitem__("numTraining", 9)))
    with pytest.raises(VoxtuneError, match="repeats case BRATS_001"):
        read_task(msd_copy)


@pytest.mark.parametrize("rel", ["../../etc/passwd", "./imagesTr/../../outside.nii.gz", "/etc/passwd"])
def test_path_escaping_rejected(msd_dir, rel):
    with pytest.raises(CaseError, match="passwd|outside"):
        resolve_case_path(msd_dir, rel, "BRATS_001")


def test_symlink_escaping_rejected(msd_copy, tmp_path):
    outside = tmp_path / "secret.nii.gz"
    outside.write_bytes(b"x")
    os.symlink(outside, msd_copy / "imagesTr" / "BRATS_099.nii.gz")
    with pytest.raises(CaseError, match="outside the dataset folder"):
        resolve_case_path(msd_copy, "./imagesTr/BRATS_099.nii.gz", "BRATS_099")
    assert resolve_case_path(msd_copy, "./imagesTr/BRATS_001.nii.gz", "BRATS_001").is_file()


def _entry(n=1):
    name = f"BRATS_{n:03d}.nii.gz"
    return CaseEntry(f"BRATS_{n:03d}", f"./imagesTr/{name}", f"./labelsTr/{name}")


def test_load_case(msd_dir):
    image, label, spacing = load_case(read_task(msd_dir), _entry())
    assert image.shape == (24, 24, 24, 4) and image.dtype == np.float32
    assert label.shape == (24, 24, 24) and label.dtype == np.uint8
    assert spacing == (1.0, 1.0, 1.0)


def _resave(path, affine):
    img = nib.load(str(path))
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), affine), str(path))


def test_image_and_label_on_different_grids(msd_copy):
    path = msd_copy / "labelsTr" / "BRATS_001.nii.gz"
    shifted = nib.load(str(path)).affine.copy()
    shifted[0, 3] += 2.0  # the label two millimetres off the image
    _resave(path, shifted)
    with pytest.raises(CaseError, match="different affines") as info:
        load_case(read_task(msd_copy), _entry())
    assert info.value.case_id == "BRATS_001"


def _set_srow_y(path, value):
    """Write `value` as the sform's Y scale (srow_y[1]: bytes 300-304 of a NIfTI-1 header, float32), as
    a broken exporter would: nibabel itself refuses to save such an affine."""
    import gzip
    import struct

    raw = bytearray(gzip.decompress(path.read_bytes()))
    raw[300:304] = struct.pack("<f", value)
    path.write_bytes(gzip.compress(bytes(raw)))


@pytest.mark.parametrize("value", [0.0, float("nan")])
def test_zero_or_nan_spacing(msd_copy, value):
    _set_srow_y(msd_copy / "imagesTr" / "BRATS_001.nii.gz", value)
    _set_srow_y(msd_copy / "labelsTr" / "BRATS_001.nii.gz", value)
    with pytest.raises(CaseError, match="voxel spacing .* must be a positive number"):
        load_case(read_task(msd_copy), _entry())


def test_missing_file(msd_copy):
    (msd_copy / "labelsTr" / "BRATS_001.nii.gz").unlink()
    with pytest.raises(CaseError, match="label file ./labelsTr/BRATS_001.nii.gz is missing") as info:
        load_case(read_task(msd_copy), _entry())
    assert info.value.case_id == "BRATS_001"


def test_truncated_gzip(msd_copy):
    path = msd_copy / "imagesTr" / "BRATS_001.nii.gz"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CaseError, match=r"image file ./imagesTr/BRATS_001.nii.gz is (truncated|unreadable)"):
        load_case(read_task(msd_copy), _entry())


def test_not_gzip(msd_copy):
    (msd_copy / "imagesTr" / "BRATS_001.nii.gz").write_bytes(b"garbage" * 100)
    with pytest.raises(CaseError, match="BRATS_001.nii.gz"):
        load_case(read_task(msd_copy), _entry())


def _save(path, array):
    """Replace the file's voxels, keeping its affine (so the image and label stay on one grid)."""
    nib.save(nib.Nifti1Image(array, nib.load(str(path)).affine), str(path))


def test_shape_mismatch(msd_copy):
    _save(msd_copy / "labelsTr" / "BRATS_001.nii.gz", np.zeros((24, 24, 20), np.uint8))
    with pytest.raises(CaseError, match=r"is \(24, 24, 24\) but label .* is \(24, 24, 20\)"):
        load_case(read_task(msd_copy), _entry())


def test_wrong_dimensionality(msd_copy):
    _save(msd_copy / "imagesTr" / "BRATS_001.nii.gz", np.ones((24, 24, 24), np.float32))
    with pytest.raises(CaseError, match=r"expected \(X, Y, Z, 4\)"):
        load_case(read_task(msd_copy), _entry())
    _save(msd_copy / "labelsTr" / "BRATS_002.nii.gz", np.zeros((24, 24, 24, 2), np.uint8))
    with pytest.raises(CaseError, match="expected 3D"):
        load_case(read_task(msd_copy), _entry(2))


def test_over_voxel_cap(msd_dir):
    with pytest.raises(CaseError, match="13824 voxels per channel, over the cap of 1000"):
        load_case(read_task(msd_dir), _entry(), max_voxels=1000)


def test_unknown_label_values(msd_copy):
    _save(msd_copy / "labelsTr" / "BRATS_001.nii.gz", np.full((24, 24, 24), 7, np.uint8))
    with pytest.raises(CaseError, match=r"values \[7\], which dataset.json's \"labels\" does not list"):
        load_case(read_task(msd_copy), _entry())
