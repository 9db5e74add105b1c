"""voxtune.data.loader.CaseDataset: whole volumes, patches, seeding, flips, checks, DataLoader workers."""
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
    assert image.dtype == torch.float16 and label.dtype == torch.uint8  # as stored: converted on the device
    assert image.shape == (4, 24, 24, 24) and label.shape == (1, 24, 24, 24)
    raw_image, raw_label = load_case(cache_dir, ids[0])
    assert torch.equal(image[..., :21].float(), torch.from_numpy(raw_image)) and (image[..., 21:] == 0).all()
    assert torch.equal(label[..., :21], torch.from_numpy(raw_label))
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
    hits = np.mean([ds[i][1].any().item() for i in range(300)])
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


def test_cases_are_checked_when_the_dataset_opens(cache_copy):
    path = cache_copy / "cases" / "BRATS_001.image.npy"
    data = bytearray(path.read_bytes())
    data[-2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(VoxtuneError, match="BRATS_001.image.npy: does not match the manifest"):
        CaseDataset(cache_copy, ["BRATS_002", "BRATS_001"])
    CaseDataset(cache_copy, ["BRATS_001"], check=False)[0]


def test_no_case_is_kept_in_memory(cache_dir, ids, monkeypatch):
    """Every sample reads its window from the cache files: the dataset holds no arrays of its own."""
    import voxtune.data.loader as loader

    reads = []
    real = loader.read_window
    monkeypatch.setattr(loader, "read_window", lambda *a, **k: reads.append(a[1]["id"]) or real(*a, **k))
    ds = CaseDataset(cache_dir, ids[:2])
    ds[0], ds[1], ds[0]
    assert reads == [ids[0], ids[1], ids[0]]
    assert not any(isinstance(v, (np.ndarray, torch.Tensor)) for v in vars(ds).values())


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


def _epochs(ds, workers: int, epochs: int = 3) -> list[torch.Tensor]:
    from voxtune.data.loader import EpochSampler

    sampler = EpochSampler(torch.utils.data.SequentialSampler(ds))
    loader = torch.utils.data.DataLoader(ds, batch_size=2, sampler=sampler, num_workers=workers,
                                         persistent_workers=workers > 0)
    out = []
    for epoch in range(1, epochs + 1):
        sampler.set_epoch(epoch)
        out.append(torch.cat([torch.cat([image.float().flatten(), label.float().flatten()]) for image, label in loader]))
    return out


def test_persistent_workers_draw_new_patches_and_flips_every_epoch(cache_dir, ids):
    """With (epoch, index) keys, persistent DataLoader workers draw each epoch's own patches and flips,
    and exactly the samples the main process draws: the worker count does not change the run."""
    ds = CaseDataset(cache_dir, ids[:4], patch_size=(16, 16, 16), augment=True, seed=1)
    in_workers = _epochs(ds, workers=2)
    in_main = _epochs(ds, workers=0)
    assert not torch.equal(in_workers[0], in_workers[1]) and not torch.equal(in_workers[1], in_workers[2])
    for a, b in zip(in_workers, in_main):
        assert torch.equal(a, b)
