"""voxtune.data.cache: manifest reading, load_case, checksums, split/region helpers."""
import json
from pathlib import Path

import numpy as np
import pytest

import voxtune.data
from voxtune.data.cache import CACHE_VERSION, case_ids, load_case, read_manifest, region_names
from voxtune.errors import VoxtuneError


def test_public_api(cache_dir):
    image, label = voxtune.data.load_case(cache_dir, "BRATS_001")
    assert image.dtype == np.float32 and image.shape == (4, 24, 24, 21)
    assert label.dtype == np.uint8 and label.shape == (1, 24, 24, 21)
    assert CACHE_VERSION == 3


def test_case_ids_and_regions(cache_dir, regions_cache_dir):
    m = read_manifest(cache_dir)
    splits = {s: case_ids(m, s) for s in ("train", "val", "test")}
    assert sum(map(len, splits.values())) == 8 and len(splits["train"]) == 6
    assert sorted(sum(splits.values(), [])) == case_ids(m)
    assert region_names(m) == ["whole_tumour"]
    assert region_names(read_manifest(regions_cache_dir)) == ["whole_tumour", "tumour_core", "enhancing_tumour"]
    with pytest.raises(VoxtuneError, match="split 'training'"):
        case_ids(m, "training")


def test_read_manifest_errors(tmp_path, cache_copy):
    with pytest.raises(VoxtuneError, match="voxtune prepare"):
        read_manifest(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(VoxtuneError, match="manifest.json: missing"):
        read_manifest(tmp_path / "empty")
    path = cache_copy / "manifest.json"
    meta = json.loads(path.read_text())
    path.write_text(json.dumps({**meta, "version": 99}))
    with pytest.raises(VoxtuneError, match="cache version 99.*voxtune prepare"):
        read_manifest(cache_copy)
    path.write_text("{not json")
    with pytest.raises(VoxtuneError, match="unreadable.*voxtune prepare"):
        read_manifest(cache_copy)


def test_unknown_case(cache_dir):
    with pytest.raises(VoxtuneError, match="case BRATS_999: not in the cache manifest"):
        load_case(cache_dir, "BRATS_999")


def test_verify_checksum(cache_copy):
    path = cache_copy / "cases" / "BRATS_001.label.npy"
    data = bytearray(path.read_bytes())
    data[-1] ^= 1  # same size and shape, one voxel flipped
    path.write_bytes(bytes(data))
    load_case(cache_copy, "BRATS_001")  # without verify the damage is not noticed
    with pytest.raises(VoxtuneError, match="BRATS_001.label.npy: checksum does not match.*voxtune prepare"):
        load_case(cache_copy, "BRATS_001", verify=True)


def test_truncated_or_missing_npy(cache_copy):
    path = cache_copy / "cases" / "BRATS_002.image.npy"
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(VoxtuneError, match="BRATS_002.image.npy.*voxtune prepare"):
        load_case(cache_copy, "BRATS_002")
    (cache_copy / "cases" / "BRATS_003.label.npy").unlink()
    with pytest.raises(VoxtuneError, match="BRATS_003.label.npy: missing"):
        load_case(cache_copy, "BRATS_003")


def test_cropped_float16_storage_rebuilds_the_frame(cache_dir, msd_dir):
    """Only the box around the non-zero voxels is stored, the image as float16; load_case rebuilds the
    whole preprocessed frame: exactly the preprocessed volume, rounded to float16."""
    import nibabel as nib

    from voxtune.data.preprocess import preprocess

    manifest = read_manifest(cache_dir)
    assert manifest["image_dtype"] == "float16"
    entry = manifest["cases"][0]
    stored = np.load(cache_dir / entry["files"]["image"], mmap_mode="r")
    assert stored.dtype == np.float16 and list(stored.shape) == [4] + [b1 - b0 for b0, b1 in entry["bbox"]]
    assert stored.size < np.prod(entry["image_shape"])  # the phantom's head does not fill its frame
    raw_image = np.asarray(nib.load(str(msd_dir / "imagesTr" / "BRATS_001.nii.gz")).dataobj, dtype=np.float32)
    raw_label = np.asarray(nib.load(str(msd_dir / "labelsTr" / "BRATS_001.nii.gz")).dataobj, dtype=np.uint8)
    want_image, want_label, _ = preprocess(raw_image, raw_label, (1.0, 1.0, 1.0), manifest)
    image, label = load_case(cache_dir, "BRATS_001", manifest=manifest)
    assert np.array_equal(image, want_image.astype(np.float16).astype(np.float32))
    assert np.array_equal(label, want_label)


@pytest.mark.parametrize("start, size, flip", [
    ((2, 3, 4), (16, 8, 8), (False, False, False)),
    ((-3, 10, 15), (8, 20, 12), (True, False, True)),  # reaches past the frame on three sides
    ((0, 0, 0), (24, 24, 24), (False, True, False)),
    ((23, 23, 20), (4, 4, 4), (True, True, True)),
])
def test_read_window_is_a_slice_of_the_frame(cache_dir, start, size, flip):
    from voxtune.data.cache import read_window

    manifest = read_manifest(cache_dir)
    entry = manifest["cases"][1]
    image, label = load_case(cache_dir, entry["id"], manifest=manifest)
    image, label = image.astype(np.float16), label
    lo = [max(0, -s) for s in start]  # zero-pad the frame so that every window lies inside it
    pad = [(0, 0)] + [(lo_, max(0, s + n - d)) for lo_, s, n, d in zip(lo, start, size, image.shape[1:])]
    window = (slice(None),) + tuple(slice(s + l0, s + l0 + n) for s, l0, n in zip(start, lo, size))
    axes = tuple(1 + i for i, f in enumerate(flip) if f)
    want_image, want_label = (np.flip(np.pad(a, pad)[window], axes) for a in (image, label))
    got_image, got_label = read_window(cache_dir, entry, "float16", start, size, flip)
    assert got_image.dtype == np.float16 and got_label.dtype == np.uint8
    assert np.array_equal(got_image, want_image) and np.array_equal(got_label, want_label)


def test_a_sample_read_opens_each_file_once(cache_dir, monkeypatch):
    """On a shared filesystem every open is a request to its metadata server: the header is read and the
    data mapped from one open (np.load with mmap_mode opens the file twice)."""
    import builtins

    from voxtune.data.cache import read_window

    entry = read_manifest(cache_dir)["cases"][1]
    opened, real_open = [], builtins.open
    monkeypatch.setattr(builtins, "open", lambda file, *a, **k: opened.append(str(file)) or real_open(file, *a, **k))
    image, _ = read_window(cache_dir, entry, "float16", (0, 0, 0), (8, 8, 8))
    names = sorted(Path(f).name for f in opened if str(cache_dir) in f)
    assert names == sorted(Path(entry["files"][k]).name for k in ("image", "label")), names
    assert image.shape[1:] == (8, 8, 8)


def test_cheap_check_refuses_swapped_truncated_and_overwritten_files(cache_copy):
    from voxtune.data.cache import check_case

    manifest = read_manifest(cache_copy)
    entries = {c["id"]: c for c in manifest["cases"]}
    cases = cache_copy / "cases"
    for entry in entries.values():
        check_case(cache_copy, entry)
    a, b = cases / "BRATS_001.label.npy", cases / "BRATS_002.label.npy"
    a_bytes, b_bytes = a.read_bytes(), b.read_bytes()
    a.write_bytes(b_bytes)
    b.write_bytes(a_bytes)
    with pytest.raises(VoxtuneError, match="BRATS_001.label.npy: does not match the manifest"):
        check_case(cache_copy, entries["BRATS_001"])
    image = cases / "BRATS_003.image.npy"
    image.write_bytes(image.read_bytes()[:-10])
    with pytest.raises(VoxtuneError, match="BRATS_003.image.npy: does not match.*voxtune verify"):
        check_case(cache_copy, entries["BRATS_003"])
    array = np.load(cases / "BRATS_004.image.npy")
    array.flat[0] += 1.0  # same size, first voxel changed
    np.save(cases / "BRATS_004.image.npy", array)
    with pytest.raises(VoxtuneError, match="BRATS_004.image.npy"):
        check_case(cache_copy, entries["BRATS_004"])


def test_verify_command_checks_every_byte(tmp_path, capsys):
    """A byte changed where the cheap check does not look is still found by `voxtune verify`."""
    from voxtune.cli import main
    from voxtune.data.cache import check_case
    from voxtune.data.prepare import prepare
    from voxtune.data.synthetic import make_dataset

    # 64^3: files large enough that the probe reads only part of them
    prepare(make_dataset(tmp_path / "msd", cases=2, shape=(64, 64, 64), test_cases=0), tmp_path / "c",
            split=(1, 0, 0))
    cache = tmp_path / "c"
    assert main(["verify", "--cache", str(cache)]) == 0
    assert "verified 2 cases" in capsys.readouterr().out
    path = cache / "cases" / "BRATS_002.image.npy"
    data = bytearray(path.read_bytes())
    data[len(data) // 2 + 5000] ^= 0x01  # between the probe's blocks
    path.write_bytes(bytes(data))
    check_case(cache, read_manifest(cache)["cases"][1])  # the sampled check misses it
    assert main(["verify", "--cache", str(cache)]) == 1
    captured = capsys.readouterr()
    assert "case BRATS_002:" in captured.err and "BRATS_002.image.npy: checksum does not match" in captured.err
    assert "1 match their checksums, 1 do not" in captured.out
