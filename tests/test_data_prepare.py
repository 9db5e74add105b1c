"""voxtune.data.prepare: preprocessing rules, manifest, split, resume, atomicity, failed cases."""
import json

import nibabel as nib
import numpy as np
import pytest

from voxtune.data.cache import load_case, read_manifest
from voxtune.data.plan import brats_settings
from voxtune.data.prepare import assign_splits, prepare
from voxtune.data.preprocess import preprocess
from voxtune.data.synthetic import make_dataset
from voxtune.errors import VoxtuneError

CASE_KEYS = {"id", "split", "image_shape", "label_shape", "source_shape", "source_spacing", "spacing", "bbox",
             "background", "files", "bytes", "sha256", "probe"}


def test_manifest(cache_dir, msd_dir):
    m = read_manifest(cache_dir)
    assert m["version"] == 3 and m["labels"] == "binary" and m["regions"] == ["whole_tumour"]
    assert m["preset"] == "brats" and m["label_values"] == [1] and m["spacing"] is None
    assert m["image_dtype"] == "float16" and m["normalise"] == [{"scheme": "brain"}] * 4
    assert m["plan"]["patch_size"] is None  # BraTS trains on whole volumes, as the paper
    assert m["modalities"] == ["FLAIR", "T1w", "t1gd", "T2w"]
    assert m["shape"] is None and m["crop_z"] == [2, 1] and m["seed"] == 0
    assert m["split_fractions"] == [0.7, 0.15, 0.15] and m["source"] == str(msd_dir.resolve())
    assert [c["id"] for c in m["cases"]] == [f"BRATS_{i:03d}" for i in range(1, 9)]
    for case in m["cases"]:
        assert set(case) == CASE_KEYS
        assert case["image_shape"] == [4, 24, 24, 21] and case["label_shape"] == [1, 24, 24, 21]
        assert case["source_shape"] == [24, 24, 24]
        assert case["source_spacing"] == case["spacing"] == [1.0, 1.0, 1.0]
        assert set(case["files"]) == {"image", "label", "foreground"}
        for kind, rel in case["files"].items():
            assert (cache_dir / rel).stat().st_size == case["bytes"][kind]
            assert len(case["sha256"][kind]) == 64 and len(case["probe"][kind]) == 64
        assert all(0 <= b0 < b1 <= n for (b0, b1), n in zip(case["bbox"], case["image_shape"][1:]))
    assert sorted(c["split"] for c in m["cases"]).count("train") == 6


def test_zscore_and_background(cache_dir, msd_dir):
    image, label = load_case(cache_dir, "BRATS_002")
    raw = np.asarray(nib.load(str(msd_dir / "imagesTr" / "BRATS_002.nii.gz")).dataobj)
    raw = np.moveaxis(raw, -1, 0)[..., 2:-1]
    for c in range(4):
        brain = raw[c] != 0
        assert abs(image[c][brain].mean()) < 1e-4 and abs(image[c][brain].std() - 1) < 1e-3
        assert (image[c][~brain] == 0).all()
    assert image.dtype == np.float32 and label.dtype == np.uint8


def test_crop_155_to_152(tmp_path):
    src = make_dataset(tmp_path / "msd", cases=1, shape=(16, 16, 155), test_cases=0)
    prepare(src, tmp_path / "cache", split=(1, 0, 0))
    image, label = load_case(tmp_path / "cache", "BRATS_001")
    assert image.shape == (4, 16, 16, 152) and label.shape == (1, 16, 16, 152)
    raw = np.asarray(nib.load(str(src / "labelsTr" / "BRATS_001.nii.gz")).dataobj)
    assert np.array_equal(label[0], raw[..., 2:-1] > 0)


def test_resize(msd_dir, tmp_path):
    result = prepare(msd_dir, tmp_path / "c", shape=(16, 12, 10))
    assert result.ok
    image, label = load_case(tmp_path / "c", "BRATS_001")
    assert image.shape == (4, 16, 12, 10) and label.shape == (1, 16, 12, 10)
    assert set(np.unique(label).tolist()) <= {0, 1} and label.any()
    assert read_manifest(tmp_path / "c")["shape"] == [16, 12, 10]


def test_binary_vs_regions(cache_dir, regions_cache_dir, msd_dir):
    _, binary = load_case(cache_dir, "BRATS_001")
    _, regions = load_case(regions_cache_dir, "BRATS_001")
    raw = np.asarray(nib.load(str(msd_dir / "labelsTr" / "BRATS_001.nii.gz")).dataobj)[..., 2:-1]
    assert binary.shape[0] == 1 and regions.shape[0] == 3
    assert np.array_equal(binary[0], raw > 0) and np.array_equal(regions[0], raw > 0)
    assert np.array_equal(regions[1], np.isin(raw, [2, 3])) and np.array_equal(regions[2], raw == 3)
    assert read_manifest(regions_cache_dir)["regions"] == ["whole_tumour", "tumour_core", "enhancing_tumour"]


def test_float32_storage_and_foreground_sample(msd_dir, tmp_path):
    result = prepare(msd_dir, tmp_path / "c32", image_dtype="float32")
    assert result.ok and read_manifest(tmp_path / "c32")["image_dtype"] == "float32"
    image32, label = load_case(tmp_path / "c32", "BRATS_001")
    entry = read_manifest(tmp_path / "c32")["cases"][0]
    assert np.load(tmp_path / "c32" / entry["files"]["image"]).dtype == np.float32
    # the stored tumour coordinates are tumour voxels of the frame, all of them at this size
    fg = np.load(tmp_path / "c32" / entry["files"]["foreground"])
    assert fg.dtype == np.int32 and len(fg) == label[0].sum() and label[0][tuple(fg.T)].all()
    with pytest.raises(VoxtuneError, match="--dtype 'float64'"):
        prepare(msd_dir, tmp_path / "c64", image_dtype="float64")


def test_an_empty_case_stores_one_voxel(tmp_path):
    from voxtune.data.prepare import nonzero_box

    assert nonzero_box(np.zeros((2, 4, 4, 4)), np.zeros((1, 4, 4, 4), np.uint8)) == [[0, 1]] * 3
    image = np.zeros((2, 6, 6, 6))
    image[1, 2, 3, 4] = 1.0
    label = np.zeros((1, 6, 6, 6), np.uint8)
    label[0, 1, 3, 3] = 1
    assert nonzero_box(image, label) == [[1, 3], [3, 4], [3, 5]]


def test_preprocess_direct():
    image = np.zeros((8, 8, 10, 2), np.float32)
    image[2:6, 2:6, :, :] = np.arange(4 * 4 * 10 * 2).reshape(4, 4, 10, 2) + 5
    label = np.zeros((8, 8, 10), np.uint8)
    label[3, 3, 3] = 3
    img, lab, background = preprocess(image, label, (1.0, 1.0, 1.0), brats_settings(2, labels="regions"))
    assert background == [0.0, 0.0] and (img[:, 0, 0, 0] == 0).all()
    assert img.shape == (2, 8, 8, 7) and lab.shape == (3, 8, 8, 7)
    assert lab[:, 3, 3, 1].tolist() == [1, 1, 1]


def test_split_reproducible_and_recorded():
    ids = [f"c{i}" for i in range(20)]
    a, b = assign_splits(ids, (0.7, 0.15, 0.15), 0), assign_splits(list(reversed(ids)), (0.7, 0.15, 0.15), 0)
    assert a == b and list(a.values()).count("val") == 3 and list(a.values()).count("test") == 3
    assert a != assign_splits(ids, (0.7, 0.15, 0.15), 1)


def test_split_matches_rerun_elsewhere(cache_dir, msd_dir, tmp_path):
    prepare(msd_dir, tmp_path / "again")
    split = lambda d: {c["id"]: c["split"] for c in read_manifest(d)["cases"]}
    assert split(cache_dir) == split(tmp_path / "again")


@pytest.mark.parametrize("split", [(0.5, 0.5, 0.5), (1.2, -0.1, -0.1), (0.5, 0.5)])
def test_bad_split(msd_dir, tmp_path, split):
    with pytest.raises(VoxtuneError, match="--split"):
        prepare(msd_dir, tmp_path / "c", split=split)


def test_bad_labels_and_source(msd_dir, tmp_path):
    with pytest.raises(VoxtuneError, match="--labels"):
        prepare(msd_dir, tmp_path / "c", labels="multi")
    with pytest.raises(VoxtuneError, match="dataset.json"):
        prepare(tmp_path, tmp_path / "c")


def test_rerun_skips_finished(cache_copy, msd_dir):
    mtimes = {p.name: p.stat().st_mtime_ns for p in (cache_copy / "cases").iterdir()}
    result = prepare(msd_dir, cache_copy)
    assert result.ok and result.skipped == [f"BRATS_{i:03d}" for i in range(1, 9)] and not result.prepared
    assert "skipped 8 already done" in result.summary()
    assert mtimes == {p.name: p.stat().st_mtime_ns for p in (cache_copy / "cases").iterdir()}


def test_interrupted_write_not_finished(cache_copy, msd_dir):
    cases = cache_copy / "cases"
    # a partial temp file left by a killed run, and a truncated .npy in place
    (cases / "BRATS_003.image.npy.tmp-123").write_bytes(b"\x93NUMPY partial")
    path = cases / "BRATS_004.image.npy"
    path.write_bytes(path.read_bytes()[:100])
    (cases / "BRATS_005.json").unlink()  # killed before its sidecar was written
    result = prepare(msd_dir, cache_copy)
    assert sorted(result.prepared) == ["BRATS_004", "BRATS_005"] and len(result.skipped) == 6
    assert not list(cases.glob("*.tmp-*"))
    load_case(cache_copy, "BRATS_004", verify=True)


def test_different_settings_refused(cache_copy, msd_dir):
    for kwargs in ({"labels": "regions"}, {"shape": (16, 16, 16)}, {"seed": 1}, {"split": (0.6, 0.2, 0.2)},
                   {"image_dtype": "float32"}):
        with pytest.raises(VoxtuneError, match="Choose another --out"):
            prepare(msd_dir, cache_copy, **kwargs)


def test_foreign_out_refused(msd_dir, tmp_path):
    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff" / "notes.txt").write_text("x")
    with pytest.raises(VoxtuneError, match="not a voxtune cache"):
        prepare(msd_dir, tmp_path / "stuff")


def _damage(root):
    """Break four cases four different ways; return the expected reason fragment per case."""
    gz = root / "imagesTr" / "BRATS_002.nii.gz"
    gz.write_bytes(gz.read_bytes()[:300])
    (root / "labelsTr" / "BRATS_003.nii.gz").unlink()
    nib.save(nib.Nifti1Image(np.zeros((24, 24, 20), np.uint8), np.eye(4)), str(root / "labelsTr" / "BRATS_004.nii.gz"))
    meta = json.loads((root / "dataset.json").read_text())
    meta["training"][4]["image"] = "../../etc/BRATS_005.nii.gz"
    (root / "dataset.json").write_text(json.dumps(meta))
    return {"BRATS_002": "imagesTr/BRATS_002.nii.gz", "BRATS_003": "is missing",
            "BRATS_004": "but label", "BRATS_005": "outside the dataset folder"}


def test_failed_cases_reported_others_prepared(msd_copy, tmp_path, capsys):
    expected = _damage(msd_copy)
    result = prepare(msd_copy, tmp_path / "c")
    assert not result.ok and "4 failed" in result.summary()
    assert dict(result.failed).keys() == expected.keys()
    err = capsys.readouterr().err.splitlines()
    for cid, fragment in expected.items():
        assert any(line.startswith(f"case {cid}: ") and fragment in line for line in err), (cid, err)
    ids = [c["id"] for c in read_manifest(tmp_path / "c")["cases"]]
    assert ids == ["BRATS_001", "BRATS_006", "BRATS_007", "BRATS_008"]


def test_over_voxel_cap_fails_case(msd_dir, tmp_path):
    result = prepare(msd_dir, tmp_path / "c", max_voxels=1000)
    assert len(result.failed) == 8 and "over the cap" in result.failed[0][1]


def test_parallel_workers_same_result(cache_dir, msd_dir, tmp_path):
    result = prepare(msd_dir, tmp_path / "p", workers=2)
    assert result.ok and len(result.prepared) == 8
    sha = lambda d: {c["id"]: c["sha256"] for c in read_manifest(d)["cases"]}
    assert sha(tmp_path / "p") == sha(cache_dir)
    # the fingerprint too: draws are seeded by case, pooled in case order, whichever process read them
    assert read_manifest(tmp_path / "p")["fingerprint"]["intensity"] == read_manifest(cache_dir)["fingerprint"]["intensity"]


def test_volume_normalisation_is_the_papers(msd_dir, tmp_path):
    """--normalise volume z-scores each channel over every voxel, background included (the paper's
    per-image standardisation); the cropped cache still rebuilds the whole frame exactly."""
    assert prepare(msd_dir, tmp_path / "v", normalise="volume").ok
    manifest = read_manifest(tmp_path / "v")
    assert manifest["normalise"] == [{"scheme": "volume"}] * 4
    image, _ = load_case(tmp_path / "v", "BRATS_002")
    raw = np.moveaxis(np.asarray(nib.load(str(msd_dir / "imagesTr" / "BRATS_002.nii.gz")).dataobj), -1, 0)[..., 2:-1]
    entry = next(c for c in manifest["cases"] if c["id"] == "BRATS_002")
    for c in range(4):
        assert abs(image[c].mean()) < 2e-3 and abs(image[c].std() - 1) < 2e-3
        outside = image[c][raw[c] == 0]
        assert outside.size and (outside == np.float16(entry["background"][c])).all() and outside[0] < 0
    with pytest.raises(VoxtuneError, match="--normalise 'skull'"):
        prepare(msd_dir, tmp_path / "x", normalise="skull")
