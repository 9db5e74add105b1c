"""voxtune.data.cache: manifest reading, load_case, checksums, split/region helpers."""
import json

import numpy as np
import pytest

import voxtune.data
from voxtune.data.cache import CACHE_VERSION, case_ids, load_case, read_manifest, region_names
from voxtune.errors import VoxtuneError


def test_public_api(cache_dir):
    image, label = voxtune.data.load_case(cache_dir, "BRATS_001")
    assert image.dtype == np.float32 and image.shape == (4, 24, 24, 21)
    assert label.dtype == np.uint8 and label.shape == (1, 24, 24, 21)
    assert CACHE_VERSION == 1


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


def test_mmap(cache_dir):
    image, _ = load_case(cache_dir, "BRATS_001", mmap=True)
    assert isinstance(image, np.memmap) and np.array_equal(image, load_case(cache_dir, "BRATS_001")[0])
