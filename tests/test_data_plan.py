"""voxtune.data.plan and the auto preset of `prepare`: fingerprint, target spacing, pooling, patch, CT
normalisation, classes, resampling; each test names the broken variant it catches."""
from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from voxtune.data import plan
from voxtune.data.cache import load_case, read_manifest
from voxtune.data.prepare import prepare
from voxtune.data.preprocess import resample, resample_label
from voxtune.data.synthetic import make_dataset
from voxtune.errors import VoxtuneError


def test_target_spacing_takes_the_median_or_the_coarse_axis_10th_percentile():
    # near-isotropic: the median per axis (a variant taking the mean gives 1.3 on Z)
    assert plan.target_spacing([[1.0, 1.0, 1.0], [0.9, 0.9, 1.2], [1.1, 1.0, 1.7]]) == ([1.0, 1.0, 1.2], None)
    # anisotropic (median 3.6 / 0.6 = 6 >= 3): Z takes its 10th percentile, the others their median
    spacings = [[0.6, 0.6, z] for z in (3.0, 3.6, 3.6, 3.6, 4.0, 4.0, 5.0, 5.0, 5.0, 6.0)]
    target, coarse = plan.target_spacing(spacings)
    assert coarse == 2 and target[:2] == [0.6, 0.6]
    assert target[2] == pytest.approx(np.percentile([s[2] for s in spacings], 10))  # 3.54, not the median 4.5
    # never finer than the finest other axis: a 10th percentile of 0.5 stays at 0.8
    target, coarse = plan.target_spacing([[0.8, 0.8, z] for z in (0.5, 0.5, 0.5, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0)])
    assert coarse == 2 and target[2] == 0.8


def test_pooling_goes_in_plane_first_on_anisotropic_spacing():
    assert plan.pool_strides([0.6, 0.6, 3.6], [64, 64, 18], 3) == [(2, 2, 1), (2, 2, 1), (2, 2, 2)]
    assert plan.divisor(plan.pool_strides([0.6, 0.6, 3.6], [64, 64, 18], 3)) == (8, 8, 2)
    assert plan.pool_strides([1.0, 1.0, 1.0], [32, 32, 32], 3) == [(2, 2, 2)] * 3
    assert plan.pool_strides(None, [8, 8, 8], 3) == [(2, 2, 2)] * 3  # BraTS: the paper's net, whatever the size
    # a feature map never below MIN_EDGE voxels: a 12-voxel Z pools once (12 -> 6), not twice (-> 3)
    assert plan.pool_strides([1.0, 1.0, 1.0], [32, 32, 12], 2) == [(2, 2, 2), (2, 2, 1)]


def test_whole_volumes_where_the_largest_case_fits_else_a_patch():
    assert plan.plan_patch([1.0, 1.0, 1.0], [33, 39, 31], largest=[37, 46, 37]) is None
    assert plan.plan_patch([1.0, 1.0, 1.0], [33, 39, 31], budget=40**3, largest=[37, 46, 37]) == [40, 40, 32]


def test_patch_is_the_median_shape_within_the_budget_and_divisible():
    assert plan.plan_patch([1.0, 1.0, 1.0], [33, 39, 31]) == [40, 40, 32]  # rounded up to (8, 8, 8)
    assert plan.plan_patch([0.6, 0.6, 3.6], [62, 62, 17]) == [64, 64, 18]  # (8, 8, 2)
    big = plan.plan_patch([0.8, 0.8, 2.0], [512, 512, 120])
    extent = np.array(big) * [0.8, 0.8, 2.0]  # mm: the longest physical sides were cut first, so they end even
    assert np.prod(big) <= plan.PATCH_VOXELS * 1.2 and extent.max() / extent.min() < 1.3
    assert [b % d for b, d in zip(big, plan.divisor(plan.pool_strides([0.8, 0.8, 2.0], big, 3)))] == [0, 0, 0]


def test_label_channels_follow_dataset_json():
    labels = {0: "background", 1: "Anterior", 2: "Posterior"}
    assert plan.label_channels(labels, "classes") == (["anterior", "posterior"], [1, 2])
    assert plan.label_channels({0: "bg", 1: "non-enhancing tumor"}, "classes") == (["non_enhancing_tumor"], [1])
    assert plan.label_channels({0: "background", 1: "PZ", 2: "pz"}, "classes") == (["pz_1", "pz_2"], [1, 2])
    assert plan.label_channels(labels, "binary") == (["foreground"], [1])
    brats = {0: "background", 1: "edema", 2: "non-enhancing tumor", 3: "enhancing tumour"}
    assert plan.is_brats(brats) and not plan.is_brats(labels)
    assert plan.label_channels(brats, "binary") == (["whole_tumour"], [1])


def test_resampling_never_blends_slices_across_the_coarse_axis():
    volume = np.zeros((1, 8, 8, 4), np.float32)
    for z in range(4):
        volume[0, ..., z] = 10.0 * (z + 1)
    out = resample(volume, (12, 12, 8), coarse=2).numpy()
    assert set(np.unique(out.round(3)).tolist()) == {10.0, 20.0, 30.0, 40.0}  # every slice a source slice
    blended = resample(volume, (12, 12, 8), coarse=None).numpy()
    assert len(np.unique(blended.round(3))) > 4  # the trilinear variant blends them
    label = np.zeros((8, 8, 4), np.uint8)
    label[2:6, 2:6, 1:3] = 2
    assert set(np.unique(resample_label(label, (16, 16, 8), 2)).tolist()) == {0, 2}  # values, never averages


def _write(root, name, image, label, spacing, modalities=None, labels=None):
    """A tiny MSD task of hand-made cases: image [X, Y, Z] or [X, Y, Z, C], label [X, Y, Z]."""
    for sub in ("imagesTr", "labelsTr"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    affine = np.diag([*spacing, 1.0])
    nib.save(nib.Nifti1Image(image, affine), str(root / "imagesTr" / f"{name}.nii.gz"))
    nib.save(nib.Nifti1Image(label, affine), str(root / "labelsTr" / f"{name}.nii.gz"))
    meta_path = root / "dataset.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {
        "modality": modalities or {"0": "MRI"}, "labels": labels or {"0": "background", "1": "Anterior",
                                                                    "2": "Posterior"},
        "training": [], "numTraining": 0, "test": []}
    meta["training"].append({"image": f"./imagesTr/{name}.nii.gz", "label": f"./labelsTr/{name}.nii.gz"})
    meta["numTraining"] = len(meta["training"])
    meta_path.write_text(json.dumps(meta))


def test_classes_stay_apart_and_no_crop_or_resampling_is_invented(tmp_path):
    """Two classes on a 1 mm grid: one label channel each, exactly the source's voxels, every slice kept
    (the BraTS crop and the whole-tumour merge would each break this)."""
    rng = np.random.default_rng(0)
    src = tmp_path / "Task04_Hippocampus"
    for i in range(4):
        label = np.zeros((16, 16, 12), np.uint8)
        label[3:8, 4:10, 2:9], label[9:13, 4:10, 2:9] = 1, 2
        _write(src, f"hippo_{i}", rng.uniform(100, 200, (16, 16, 12)).astype(np.float32), label, (1.0, 1.0, 1.0))
    result = prepare(src, tmp_path / "cache", split=(0.5, 0.25, 0.25))
    assert result.ok
    m = read_manifest(tmp_path / "cache")
    assert m["preset"] == "auto" and m["labels"] == "classes" and m["crop_z"] is None
    assert m["regions"] == ["anterior", "posterior"] and m["label_values"] == [1, 2]
    assert m["normalise"] == [{"scheme": "volume"}] and m["spacing"] == [1.0, 1.0, 1.0]
    image, channels = load_case(tmp_path / "cache", "hippo_0", manifest=m)
    assert image.shape == (1, 16, 16, 12) and channels.shape == (2, 16, 16, 12)
    raw = np.asarray(nib.load(str(src / "labelsTr" / "hippo_0.nii.gz")).dataobj)
    assert np.array_equal(channels[0], raw == 1) and np.array_equal(channels[1], raw == 2)
    assert abs(image.mean()) < 0.01 and abs(image.std() - 1) < 0.01  # z-scored over the whole volume


def test_ct_is_clipped_to_the_pooled_foreground_percentiles_of_the_training_split(tmp_path):
    src = make_dataset(tmp_path / "Task09_Spleen", cases=6, shape=(24, 24, 16), seed=1, test_cases=0,
                       task="spleen-ct")
    assert prepare(src, tmp_path / "cache", split=(4 / 6, 1 / 6, 1 / 6)).ok
    m = read_manifest(tmp_path / "cache")
    train = [c["id"] for c in m["cases"] if c["split"] == "train"]
    # every foreground voxel of the training cases (each has fewer than the 10k sampled per case)
    values = np.concatenate([np.asarray(nib.load(str(src / "imagesTr" / f"{cid}.nii.gz")).dataobj)[
        np.asarray(nib.load(str(src / "labelsTr" / f"{cid}.nii.gz")).dataobj) > 0] for cid in train]).astype(float)
    (rule,) = m["normalise"]
    assert rule["scheme"] == "ct"
    assert rule["clip"] == pytest.approx(np.percentile(values, [0.5, 99.5]))
    assert rule["mean"] == pytest.approx(values.mean()) and rule["std"] == pytest.approx(values.std())
    lo, hi = [(v - rule["mean"]) / rule["std"] for v in rule["clip"]]
    for case in m["cases"]:
        image, _ = load_case(tmp_path / "cache", case["id"], manifest=m)
        assert image.min() >= lo - 0.01 and image.max() <= hi + 0.01  # clipped, the same numbers for every case
        assert case["background"] == [pytest.approx(lo, abs=1e-4)]  # air is the lower clip
    # validation and test cases do not inform it: a fingerprint of every case gives other numbers
    everything = prepare(src, tmp_path / "all", split=(1.0, 0.0, 0.0))
    assert everything.ok and read_manifest(tmp_path / "all")["normalise"][0]["mean"] != pytest.approx(rule["mean"])


def test_anisotropic_prostate_plan(tmp_path):
    src = make_dataset(tmp_path / "Task05_Prostate", cases=5, shape=(32, 32, 10), seed=0, test_cases=0,
                       task="prostate")
    assert prepare(src, tmp_path / "cache").ok
    m = read_manifest(tmp_path / "cache")
    assert m["coarse_axis"] == 2 and m["spacing"][2] > 5 * m["spacing"][0]
    assert m["normalise"] == [{"scheme": "volume"}] * 2 and m["regions"] == ["pz", "tz"]
    assert m["plan"]["patch_size"] is None  # the largest case fits the budget: whole volumes
    shapes = {tuple(c["image_shape"]) for c in m["cases"]}
    assert len(shapes) > 1  # sizes vary per case; patches and padding take care of it


def test_auto_normalisation_by_modality_and_background():
    stats = [{"zero_fraction": 0.7}, {"zero_fraction": 0.0}, {"mean": 50.0, "std": 10.0, "p00_5": 20.0,
                                                              "p99_5": 90.0, "zero_fraction": 0.0}]
    rules = plan.normalisation(["FLAIR", "T2", "CT"], stats, ["auto"])
    assert [r["scheme"] for r in rules] == ["brain", "volume", "ct"]
    assert rules[2] == {"scheme": "ct", "clip": [20.0, 90.0], "mean": 50.0, "std": 10.0}
    assert [r["scheme"] for r in plan.normalisation(["CT", "CT"], stats[2:] * 2, ["volume", "auto"])] == ["volume", "ct"]
    with pytest.raises(VoxtuneError, match="one per channel"):
        plan.normalisation(["T2", "ADC"], stats[:2], ["volume", "brain", "ct"])


def test_flags_a_dataset_cannot_have_are_refused(tmp_path):
    src = make_dataset(tmp_path / "spleen", cases=2, shape=(16, 16, 12), test_cases=0, task="spleen-ct")
    for kwargs, match in (({"labels": "regions"}, "--labels regions are BraTS's"),
                          ({"preset": "brats"}, "--preset brats needs MSD Task01's labels"),
                          ({"shape": (16, 16, 16), "spacing": (1.0, 1.0, 1.0)}, "give one of them"),
                          ({"spacing": (1.0, 0.0, 1.0)}, "--spacing"),
                          ({"crop_z": (1,)}, "--crop-z")):
        with pytest.raises(VoxtuneError, match=match):
            prepare(src, tmp_path / "x", **kwargs)
