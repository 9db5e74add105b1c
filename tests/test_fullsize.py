"""The paper's volume size end to end: full-size MSD phantoms (240 x 240 x 155 x 4) prepared without
--shape, a 2-trial patch search on Ray, and predict back on the source grid and affine."""
from __future__ import annotations

import csv
import json

import nibabel as nib
import numpy as np
import pytest

from voxtune.cli import main

FULL = (240, 240, 155)


@pytest.mark.slow
def test_full_size_prepare_search_and_predict(tmp_path, capsys):
    from voxtune.data.cache import read_manifest
    from voxtune.data.synthetic import make_dataset

    msd = make_dataset(tmp_path / "Task01_BrainTumour", cases=3, shape=FULL, seed=3, test_cases=0)
    cache = tmp_path / "cache"
    assert main(["prepare", "--source", str(msd), "--out", str(cache), "--workers", "2", "--split", "0.34", "0.33",
                 "0.33"]) == 0
    manifest = read_manifest(cache)
    for case in manifest["cases"]:
        assert case["image_shape"] == [4, 240, 240, 152] and case["source_shape"] == list(FULL)
        assert sum(case["bytes"].values()) <= 80e6  # cropped float16: the budget per full-size case

    space = tmp_path / "space.yaml"
    space.write_text("lr: {grid: [0.001, 0.005]}\n")
    run = tmp_path / "run"
    assert main(["tune", "--cache", str(cache), "--out", str(run), "--mode", "experiment", "--workers", "2",
                 "--space", str(space), "--epochs", "1", "--set", "patch_size=64",
                 "--set", "filter_start=4"]) == 0  # a narrower net: the data path is under test here
    with open(run / "leaderboard.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and {r["status"] for r in rows} == {"finished"}
    best = json.loads((run / "best.json").read_text())
    assert best["config"]["patch_size"] == [64, 64, 64] and best["test"]["test_cases"] == 1

    test_case = next(c["id"] for c in manifest["cases"] if c["split"] == "test")
    image = msd / "imagesTr" / f"{test_case}.nii.gz"
    out = tmp_path / "pred"
    capsys.readouterr()
    assert main(["predict", "--run", str(run), "--input", str(image), "--out", str(out),
                 "--label", str(msd / "labelsTr" / f"{test_case}.nii.gz")]) == 0
    assert "dice" in capsys.readouterr().out
    written, source = nib.load(str(out / image.name)), nib.load(str(image))
    assert written.shape == FULL and np.allclose(written.affine, source.affine)
    assert set(np.unique(np.asarray(written.dataobj))) <= {0, 1}
