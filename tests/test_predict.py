"""`voxtune predict`: label maps on the source grid, MSD label values, --label scores, bad inputs."""
from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

from voxtune.cli import main
from voxtune.data.plan import brats_settings
from voxtune.predict import predict_volume, region_masks, to_label_map

REGIONS = ["whole_tumour", "tumour_core", "enhancing_tumour"]


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.fixture(scope="module")
def resized(tmp_path_factory):
    """(MSD folder of 24x24x27 cases, run trained on a 16^3 resized, patch-trained regions cache)."""
    root = tmp_path_factory.mktemp("predict_resized")
    msd, cache, run = root / "msd", root / "cache", root / "run"
    assert main(["synth", "--out", str(msd), "--cases", "4", "--test-cases", "1",
                 "--shape", "24", "24", "27"]) == 0
    assert main(["prepare", "--source", str(msd), "--out", str(cache), "--labels", "regions",
                 "--shape", "16", "16", "16"]) == 0
    assert main(["train", "--cache", str(cache), "--out", str(run), "--epochs", "1", "--threads", "1",
                 "--set", "patch_size=[8,8,8]"]) == 0
    return msd, run


def test_msd_folder_regions(regions_run, msd_dir, tmp_path, capsys):
    assert main(["predict", "--run", str(regions_run), "--input", str(msd_dir), "--out", str(tmp_path)]) == 0
    assert "wrote 2 label maps" in capsys.readouterr().out
    for name in ("BRATS_009.nii.gz", "BRATS_010.nii.gz"):  # the test images of the synthetic task
        src, pred = nib.load(msd_dir / "imagesTs" / name), nib.load(tmp_path / name)
        data = np.asarray(pred.dataobj)
        assert data.shape == src.shape[:3] and data.dtype == np.uint8
        assert np.allclose(pred.affine, src.affine)
        assert set(np.unique(data)) <= {0, 1, 2, 3}


def test_resized_run_maps_back_to_source_grid(resized, tmp_path, capsys):
    msd, run = resized
    image, label = msd / "imagesTr" / "BRATS_001.nii.gz", msd / "labelsTr" / "BRATS_001.nii.gz"
    assert main(["predict", "--run", str(run), "--input", str(image), "--label", str(label),
                 "--out", str(tmp_path), "--overlap", "0.25"]) == 0
    out = capsys.readouterr().out
    assert "dice" in out and "hd95_mm" in out and "enhancing_tumour" in out
    pred = nib.load(tmp_path / "BRATS_001.nii.gz")
    assert pred.shape == (24, 24, 27)
    assert np.allclose(pred.header.get_zooms(), nib.load(image).header.get_zooms()[:3])


class _BrainModel(torch.nn.Module):
    """Pointwise stand-in network: every region = 'voxel is inside the brain' (FLAIR != 0)."""

    divisor = 8

    def __init__(self):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # predict_volume asks for the device

    def forward(self, x):
        return (20.0 * (x[:, :1] != 0).float() - 10.0).repeat(1, 3, 1, 1, 1) + self.anchor


@pytest.mark.parametrize("shape, patch", [(None, None), (None, [8, 8, 8]), ([16, 16, 16], None)])
def test_geometry_round_trip(shape, patch):
    """With a pointwise model the prediction must land exactly on the source brain, Z crop undone."""
    rng = np.random.default_rng(0)
    image = np.zeros((24, 20, 27, 4), dtype=np.float32)
    image[3:20, 4:17, 1:25] = rng.uniform(1, 2, (17, 13, 24, 4))
    state = {"prepare": brats_settings(4, labels="regions", shape=shape), "config": {"patch_size": patch},
             "regions": REGIONS, "in_channels": 4}
    masks = predict_volume(_BrainModel(), state, image)
    assert masks.shape == (3, 24, 20, 27)
    expected = image[..., 0] != 0
    expected[..., :2] = expected[..., -1:] = False  # slices the crop removed come back as background
    if shape is None:
        assert np.array_equal(masks[0], expected)
    else:  # resized 24x20x24 -> 16^3 -> back: boundaries may move by a voxel, nothing more
        dice = 2 * (masks[0] & expected).sum() / (masks[0].sum() + expected.sum())
        assert dice > 0.9 and not masks[0][..., :2].any() and not masks[0][..., -1:].any()


def test_label_values_round_trip():
    labels = np.random.default_rng(1).integers(0, 4, (6, 5, 4)).astype(np.uint8)
    regions, binary = brats_settings(labels="regions"), brats_settings(labels="binary")
    assert np.array_equal(to_label_map(region_masks(labels, regions), regions), labels)
    assert np.array_equal(to_label_map(region_masks(labels, binary), binary), (labels > 0).astype(np.uint8))
    classes = {"labels": "classes", "label_values": [1, 2, 3]}  # exclusive channels: every value back as itself
    assert np.array_equal(to_label_map(region_masks(labels, classes), classes), labels)


def test_a_version_2_checkpoint_still_predicts():
    """A best.pt from before the plan (prepare settings without label values, one normalisation for all
    channels) is read as the BraTS preset it was."""
    from voxtune.predict import prepare_settings

    old = {"prepare": {"labels": "regions", "shape": None, "crop_z": [2, 1], "normalise": "volume"},
           "regions": REGIONS, "in_channels": 4}
    prep = prepare_settings(old)
    assert prep["label_values"] == [1, 2, 3] and prep["normalise"] == [{"scheme": "volume"}] * 4
    assert prep["spacing"] is None and prep["source_labels"] == [0, 1, 2, 3]


def test_bad_inputs_exit_2(regions_run, msd_dir, tmp_path, capsys):
    run = str(regions_run)
    image = msd_dir / "imagesTs" / "BRATS_009.nii.gz"
    src = nib.load(image)
    three = tmp_path / "three.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(src.dataobj)[..., :3], src.affine), three)
    (tmp_path / "untrained").mkdir()
    cases = [
        (["--run", run, "--input", str(tmp_path / "none.nii.gz")], "none.nii.gz"),
        (["--run", run, "--input", str(msd_dir / "labelsTr" / "BRATS_001.nii.gz")], "3D, one channel"),
        (["--run", run, "--input", str(three)], "3 channels"),
        (["--run", str(tmp_path / "untrained"), "--input", str(image)], "best.pt missing"),
        (["--checkpoint", str(regions_run / "checkpoints" / "last.pt"), "--input", str(image)], "last.pt"),
        (["--run", run, "--input", str(msd_dir), "--label", str(msd_dir / "labelsTr" / "BRATS_001.nii.gz")],
         "--label"),
        (["--run", run, "--input", str(image), "--out", str(image.parent)], "overwrite"),
    ]
    for argv, expected in cases:
        if "--out" not in argv:
            argv = [*argv, "--out", str(tmp_path / "out")]
        assert main(["predict", *argv]) == 2, argv
        err = _one_line_error(capsys)
        assert err.startswith("voxtune predict: error: ") and expected in err, err


class _Recorder(torch.nn.Module):
    """Keeps the input it is given; predicts background everywhere (softmax over background + 1 class)."""
    divisor = 8

    def __init__(self):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(()))
        self.seen = None

    def forward(self, x):
        self.seen = x.clone()
        return torch.cat([torch.ones_like(x[:, :1]), torch.zeros_like(x[:, :1])], 1) + self.anchor


def test_predict_pads_each_channel_with_its_background_as_validation_does():
    """A whole-volume z-score leaves the source's 0 at -mean/std, and the cache fills a frame's padding with
    that value (read_window): predict must feed the network the same padding, not 0 (a padding the network
    never saw once moved a hippocampus's every voxel into one class)."""
    from voxtune.data.preprocess import preprocess

    rng = np.random.default_rng(0)
    image = rng.uniform(1, 2, (10, 12, 9, 1)).astype(np.float32)
    prep = {"preset": "auto", "labels": "classes", "regions": ["a"], "label_values": [1], "shape": None,
            "spacing": [1.0, 1.0, 1.0], "coarse_axis": None, "crop_z": None, "image_dtype": "float32",
            "normalise": [{"scheme": "volume"}]}
    state = {"prepare": prep, "config": {"patch_size": None}, "regions": ["a"], "in_channels": 1, "softmax": True}
    model = _Recorder()
    predict_volume(model, state, image)
    x, _, background = preprocess(image, None, (1.0, 1.0, 1.0), prep)
    assert model.seen.shape[2:] == (16, 16, 16) and background[0] < -1
    np.testing.assert_allclose(model.seen[0, 0, :10, :12, :9].numpy(), x[0], rtol=1e-6)
    pad = model.seen[0, 0].numpy().copy()
    pad[:10, :12, :9] = background[0]
    np.testing.assert_allclose(pad, background[0], rtol=1e-6)  # every padded voxel is the background's value
