"""Your own data, end to end: the three non-BraTS phantoms (CT spleen, two-class hippocampus, anisotropic
two-modality prostate) go prepare -> tune -> predict -> report with their own classes, names, label
values, source grids and affines, across the modes (experiment; hybrid with folds; auto with ASHA)."""
from __future__ import annotations

import csv
import json

import nibabel as nib
import numpy as np
import pytest

from voxtune.cli import main

# task: (base shape, searched lrs, tune flags); sizes keep each search to well under a minute here
TASKS = {
    "spleen-ct": ((24, 24, 16), ["--mode", "experiment", "--workers", "2"]),
    "hippocampus": ((32, 40, 32), ["--mode", "hybrid", "--workers", "4", "--workers-per-trial", "2",
                                   "--cpus-per-worker", "0.5", "--folds", "2"]),
    "prostate": ((32, 32, 10), ["--mode", "auto", "--workers", "2", "--scheduler", "asha"]),
}
# Each class holds 2-7 % of its phantom's voxels, so a guess scores a Dice of a few %. After 24 epochs the
# spleen and prostate classes reach 0.85-0.96 here, the hippocampus's head and tail (told apart by shape
# alone) 0.5-0.8.
LEARNT = 0.3
CLASSES = {"spleen-ct": (["spleen"], {0, 1}), "hippocampus": (["anterior", "posterior"], {0, 1, 2}),
           "prostate": (["pz", "tz"], {0, 1, 2})}


@pytest.fixture(scope="module", params=list(TASKS))
def searched(request, tmp_path_factory):
    """(task, MSD folder, cache, run) after synth -> prepare -> a 2-trial search of 24 epochs."""
    task = request.param
    shape, flags = TASKS[task]
    base = tmp_path_factory.mktemp(task)
    msd, cache, run = base / "msd", base / "cache", base / "run"
    assert main(["synth", "--task", task, "--out", str(msd), "--cases", "10", "--test-cases", "1",
                 "--shape", *map(str, shape)]) == 0
    assert main(["prepare", "--source", str(msd), "--out", str(cache)]) == 0
    space = base / "space.yaml"
    space.write_text("lr: {grid: [0.003, 0.01]}\n")
    assert main(["tune", "--cache", str(cache), "--out", str(run), "--space", str(space), "--epochs", "24",
                 *flags]) == 0
    return task, msd, cache, run


@pytest.mark.slow
def test_a_search_reports_each_class_by_its_name_and_learns_it(searched):
    task, _, cache, run = searched
    names, _ = CLASSES[task]
    manifest = json.loads((cache / "manifest.json").read_text())
    assert manifest["labels"] == "classes" and manifest["regions"] == names and manifest["crop_z"] is None
    with open(run / "leaderboard.csv") as f:
        rows = list(csv.DictReader(f))
    best = rows[0]
    # ASHA may stop the weaker trial early; every trial ends finished or stopped, the best one finished
    assert len(rows) == 2 and best["status"] == "finished"
    assert {r["status"] for r in rows} <= ({"finished", "stopped"} if "asha" in TASKS[task][1] else {"finished"})
    for name in names:  # per-class Dice, named after dataset.json, well above chance
        assert float(best[f"val_dice_{name}"]) > LEARNT, (task, name, best)
    assert float(best["val_dice"]) == pytest.approx(np.mean([float(best[f"val_dice_{n}"]) for n in names]))
    record = json.loads((run / "best.json").read_text())
    assert {f"test_dice_{n}" for n in names} <= set(record["test"])
    trial = run / "trials" / best["trial_id"]
    metrics = json.loads(((trial / "metrics.json") if (trial / "metrics.json").exists() else
                          trial / "folds" / "0" / "metrics.json").read_text())
    assert {f"val_dice_{n}" for n in names} <= set(metrics[-1])


@pytest.mark.slow
def test_predict_writes_the_datasets_own_labels_on_each_source_grid(searched, tmp_path, capsys):
    task, msd, _, run = searched
    names, values = CLASSES[task]
    assert main(["predict", "--run", str(run), "--input", str(msd), "--out", str(tmp_path / "test")]) == 0
    test_image = next((msd / "imagesTs").glob("[!.]*.nii.gz"))
    pred, src = nib.load(tmp_path / "test" / test_image.name), nib.load(test_image)
    assert pred.shape == src.shape[:3] and np.allclose(pred.affine, src.affine)
    assert pred.get_data_dtype() == np.uint8 and set(np.unique(np.asarray(pred.dataobj))) <= values
    # a training case with its label: Dice and HD95 per named class, on the source grid (mm)
    meta = json.loads((msd / "dataset.json").read_text())
    case = meta["training"][0]
    capsys.readouterr()
    assert main(["predict", "--run", str(run), "--input", str(msd / case["image"]), "--label",
                 str(msd / case["label"]), "--out", str(tmp_path / "scored")]) == 0
    out = capsys.readouterr().out
    truth = np.asarray(nib.load(msd / case["label"]).dataobj)
    written = np.asarray(nib.load(tmp_path / "scored" / case["image"].rsplit("/", 1)[-1]).dataobj)
    for name, value in zip(names, sorted(values - {0})):
        assert name in out
        both = ((written == value) & (truth == value)).sum()
        assert 2 * both / ((written == value).sum() + (truth == value).sum()) > LEARNT, (task, name)


@pytest.mark.slow
def test_report_names_the_classes(searched, tmp_path):
    task, _, _, run = searched
    assert main(["report", "--run", str(run), "--out", str(tmp_path / "report.html")]) == 0
    page = (tmp_path / "report.html").read_text()
    for name in CLASSES[task][0]:
        assert f"test Dice, {name}" in page
