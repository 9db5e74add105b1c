"""voxtune.data.loader.CaseDataset: whole volumes, patches, seeding, flips, verification."""
import numpy as np
import pytest
import torch

from voxtune.data.cache import case_ids, load_case, read_manifest
from voxtune.data.loader import CaseDataset
from voxtune.errors import VoxtuneError


@pytest.fixture
def ids(cache_dir):
    return case_ids(read_manifest(cache_dir))


def test_whole_volume_padding(cache_dir, ids):
    ds = CaseDataset(cache_dir, ids, divisor=8)
    image, label = ds[0]
    assert len(ds) == 8
    assert image.dtype == torch.float32 and label.dtype == torch.float32
    assert image.shape == (4, 24, 24, 24) and label.shape == (1, 24, 24, 24)
    raw_image, raw_label = load_case(cache_dir, ids[0])
    assert torch.equal(image[..., :21], torch.from_numpy(raw_image)) and (image[..., 21:] == 0).all()
    assert torch.equal(label[..., :21], torch.from_numpy(raw_label).float())
    assert CaseDataset(cache_dir, ids)[0][0].shape == (4, 24, 24, 21)


def test_regions_channels(regions_cache_dir):
    ds = CaseDataset(regions_cache_dir, ["BRATS_001"])
    assert ds[0][1].shape == (3, 24, 24, 21)


def test_patches_deterministic_and_epoch(cache_dir, ids):
    ds = CaseDataset(cache_dir, ids, patch_size=(16, 16, 16), augment=True, seed=3)
    a = ds[2]
    assert a[0].shape == (4, 16, 16, 16) and a[1].shape == (1, 16, 16, 16)
    again = CaseDataset(cache_dir, ids, patch_size=(16, 16, 16), augment=True, seed=3)[2]
    assert torch.equal(a[0], again[0]) and torch.equal(a[1], again[1])
    changed = False
    for epoch in range(1, 6):
        ds.set_epoch(epoch)
        changed |= not torch.equal(ds[2][0], a[0])
    assert changed


def test_patch_larger_than_volume_is_padded(cache_dir, ids):
    image, label = CaseDataset(cache_dir, ids, patch_size=(32, 16, 24))[0]
    assert image.shape == (4, 32, 16, 24) and label.shape == (1, 32, 16, 24)


def test_foreground_oversampling(cache_dir):
    # a patch of 4^3 in a 24x24x21 volume rarely hits a small tumour by chance
    ds = CaseDataset(cache_dir, ["BRATS_001"] * 300, patch_size=(4, 4, 4))
    hits = np.mean([ds[i][1].sum().item() > 0 for i in range(300)])
    fg = load_case(cache_dir, "BRATS_001")[1].mean()
    assert hits > 1 / 3 - 0.08 and hits > fg + 0.2


def test_flips_match(cache_dir):
    ds = CaseDataset(cache_dir, ["BRATS_001"] * 40, augment=True)
    _, raw_label = load_case(cache_dir, "BRATS_001")
    flips = set()
    for i in range(40):
        image, label = ds[i]
        for axes in [(), (1,), (2,), (3,), (1, 2), (1, 3), (2, 3), (1, 2, 3)]:
            if np.array_equal(label.numpy(), np.flip(raw_label, axes) if axes else raw_label):
                flips.add(axes)
                break
        # the image's zero background flips with the label: FLAIR's head mask covers the tumour
        assert ((image[0] != 0) | (label[0] == 0)).all()
    assert len(flips) >= 4


def test_verify_once_and_memory_cache(cache_copy, monkeypatch):
    import voxtune.data.loader as loader

    calls = []
    real = loader.load_case
    monkeypatch.setattr(loader, "load_case", lambda *a, **k: calls.append(k["verify"]) or real(*a, **k))
    ds = CaseDataset(cache_copy, ["BRATS_001", "BRATS_001"], cache_in_memory=False)
    ds[0], ds[1], ds[0]
    assert calls == [True, False, False]
    calls.clear()
    ds = CaseDataset(cache_copy, ["BRATS_001"])
    assert ds.cache_in_memory
    ds[0], ds[0]
    assert calls == [True]


def test_verify_failure(cache_copy):
    path = cache_copy / "cases" / "BRATS_001.image.npy"
    data = bytearray(path.read_bytes())
    data[-2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(VoxtuneError, match="checksum"):
        CaseDataset(cache_copy, ["BRATS_001"])[0]
    CaseDataset(cache_copy, ["BRATS_001"], verify=False)[0]


def test_bad_arguments(cache_dir):
    with pytest.raises(VoxtuneError, match="BRATS_999"):
        CaseDataset(cache_dir, ["BRATS_999"])
    with pytest.raises(VoxtuneError, match="patch_size"):
        CaseDataset(cache_dir, ["BRATS_001"], patch_size=(16, 16))
    with pytest.raises(VoxtuneError, match="divisor"):
        CaseDataset(cache_dir, ["BRATS_001"], divisor=0)


def test_dataloader_workers(cache_dir, ids):
    loader = torch.utils.data.DataLoader(CaseDataset(cache_dir, ids, divisor=8), batch_size=4, num_workers=2)
    shapes = [tuple(b[0].shape) for b in loader]
    assert shapes == [(4, 4, 24, 24, 24)] * 2
