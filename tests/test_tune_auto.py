"""`voxtune tune --mode auto` on a local Ray instance: a trial alone on two workers grows, and its
result follows its 1-worker twin (the same problem whatever K: global batch, synchronised BatchNorm)."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from voxtune.cli import main

pytestmark = pytest.mark.slow


def _rows(run: Path) -> list[dict]:
    with open(run / "leaderboard.csv") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("norm, folds", [("bn", 1), ("gn", 1), ("gn", 2)])
def test_a_grown_trial_follows_its_one_worker_twin(norm, folds, cache_dir, tmp_path):
    """One trial on 2 workers: nobody waits, so it takes the second worker at its first epoch end (and
    may give it back when that epoch was not faster); every epoch it trains matches `voxtune train`'s.
    (folds 2: each fold model is rebuilt on the grown group from its own last epoch.)"""
    space = tmp_path / "space.yaml"
    space.write_text(f"lr: {{grid: [0.005]}}\nnorm: {{grid: [{norm}]}}\n")
    run, twin = tmp_path / "auto", tmp_path / "twin"
    # min_rank_batch 1: the grown trial's 2 ranks take 1 case each (CPU ranks would pair up: 2 + 0)
    common = ["--cache", str(cache_dir), "--epochs", "4", "--set", "batch_size=2", "--set", "min_rank_batch=1",
              "--folds", str(folds)]
    # --auto-regroup-s 0: grow although 3 epochs of a 24^3 volume cannot repay a regroup (what is tested
    # is that growing does not change the trial's result)
    assert main(["tune", "--out", str(run), "--mode", "auto", "--workers", "2", "--auto-regroup-s", "0",
                 "--space", str(space), *common]) == 0
    assert main(["train", "--out", str(twin), "--set", "lr=0.005", "--set", f"norm={norm}", *common]) == 0

    (row,) = _rows(run)
    grown = json.loads((run / "trials" / row["trial_id"] / "metrics.json").read_text())
    alone = json.loads((twin / "metrics.json").read_text())
    assert [r["workers"] for r in grown][:2] == [1, 2]  # grew at its first epoch end
    assert row["workers"].startswith("1@e1 2@e2")  # the leaderboard shows the worker history
    summary = json.loads((run / "summary.json").read_text())
    assert summary["mode"] == "auto" and summary["grown_trials"] == 1
    for g, a in zip(grown, alone, strict=True):
        assert g["train_loss"] == pytest.approx(a["train_loss"], rel=0.02), (g["epoch"], g["workers"])
    assert max(r["val_dice"] for r in grown) == pytest.approx(max(r["val_dice"] for r in alone), abs=0.01)
    for fold in range(folds if folds > 1 else 0):  # each fold model, not only their mean
        trial = run / "trials" / row["trial_id"]
        g, a = (json.loads((d / "folds" / str(fold) / "metrics.json").read_text()) for d in (trial, twin))
        assert [r["workers"] for r in g][:2] == [1, 2]
        assert [r["train_loss"] for r in g] == pytest.approx([r["train_loss"] for r in a], rel=0.02), fold
        assert max(r["val_dice"] for r in g) == pytest.approx(max(r["val_dice"] for r in a), abs=0.01), fold
