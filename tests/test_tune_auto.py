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
    """One trial on 2 workers: nobody waits, so at its first epoch end it starts warming a second rank up
    and trains on alone until the rank is ready, then joins it (and may give it back when that epoch was
    not faster); every epoch it trains matches `voxtune train`'s. (folds 2: each fold model is rebuilt on
    the grown group from its own last epoch.)"""
    space = tmp_path / "space.yaml"
    space.write_text(f"lr: {{grid: [0.005]}}\nnorm: {{grid: [{norm}]}}\n")
    run, twin = tmp_path / "auto", tmp_path / "twin"
    # min_rank_batch 1: the grown trial's 2 ranks take 1 case each (CPU ranks would pair up: 2 + 0)
    # 30 epochs of ~0.3 s: the warm rank (a process, torch and MONAI: seconds) joins while epochs remain
    common = ["--cache", str(cache_dir), "--epochs", "30", "--set", "batch_size=2", "--set", "min_rank_batch=1",
              "--folds", str(folds)]
    # --auto-regroup-s 0: grow although 3 epochs of a 24^3 volume cannot repay a regroup (what is tested
    # is that growing does not change the trial's result)
    assert main(["tune", "--out", str(run), "--mode", "auto", "--workers", "2", "--auto-regroup-s", "0",
                 "--space", str(space), *common]) == 0
    assert main(["train", "--out", str(twin), "--set", "lr=0.005", "--set", f"norm={norm}", *common]) == 0

    (row,) = _rows(run)
    grown = json.loads((run / "trials" / row["trial_id"] / "metrics.json").read_text())
    alone = json.loads((twin / "metrics.json").read_text())
    ks = [r["workers"] for r in grown]
    joined = ks.index(2) + 1  # the first epoch on the warm rank
    assert ks[:joined - 1] == [1] * (joined - 1) and joined > 1
    assert row["workers"].startswith(f"1@e1 2@e{joined}")  # the leaderboard shows the worker history
    regroup = json.loads((run / "trials" / row["trial_id"] / "trial.json").read_text())["regroups"][0]
    assert regroup["warm"] and regroup["after_epoch"] == joined - 1 and regroup["critical_s"] > 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["mode"] == "auto" and summary["grown_trials"] == 1
    for g, a in zip(grown, alone, strict=True):
        assert g["train_loss"] == pytest.approx(a["train_loss"], rel=0.02), (g["epoch"], g["workers"])
    assert max(r["val_dice"] for r in grown) == pytest.approx(max(r["val_dice"] for r in alone), abs=0.01)
    for fold in range(folds if folds > 1 else 0):  # each fold model, not only their mean
        trial = run / "trials" / row["trial_id"]
        g, a = (json.loads((d / "folds" / str(fold) / "metrics.json").read_text()) for d in (trial, twin))
        assert [r["workers"] for r in g][0] == 1 and 2 in [r["workers"] for r in g]
        assert [r["train_loss"] for r in g] == pytest.approx([r["train_loss"] for r in a], rel=0.02), fold
        assert max(r["val_dice"] for r in g) == pytest.approx(max(r["val_dice"] for r in a), abs=0.01), fold


def test_a_warm_growth_cancelled_by_a_waiting_trial_gives_its_workers_back(tmp_path):
    """The trial side of a warm growth, on a real local Ray with a stand-in Pool: the Pool's first answer
    above the trial's K reserves the worker and starts a warm rank while the trial trains on (nothing
    stops); its next answer back at the old K (a trial now waits) cancels the rank, and the worker is
    Ray's again at that epoch end, which trial.json records."""
    import time

    import ray

    import voxtune.parallel.trial as T
    from voxtune.config import make_config
    from voxtune.parallel import state
    from voxtune.parallel.ddp import WorkerGroup

    @ray.remote(num_cpus=0)
    class StandInPool:
        def __init__(self, answers):
            self.answers = answers

        def epoch_end(self, *args):
            return self.answers.pop(0)

    ray.init(address="local", num_cpus=2, include_dashboard=False)
    try:
        out = tmp_path / "trial"
        out.mkdir()
        state.start_attempt(out, "t", {})
        T._GROUP = group = WorkerGroup(1, 1.0, 0.0)
        pool = StandInPool.remote([2, 1])
        cfg = make_config({"epochs": 5, "batch_size": 2})

        def epoch(n: int) -> dict:
            return {"epoch": n, "end_ts": time.time(), "epoch_time_s": 1.0, "workers": 1, "val_dice": 0.5}

        assert T._regroup(pool, "t", epoch(1), cfg, [], out) == []  # warm: the trial trains on at K = 1
        assert group.warming is not None and group.warming["to"] == 2
        deadline = time.monotonic() + 60
        while ray.available_resources().get("CPU", 0) > 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert ray.available_resources().get("CPU", 0) == 1  # the worker is the warm rank's now
        assert T._regroup(pool, "t", epoch(2), cfg, [], out) == []  # a trial waits: cancelled, K stays 1
        assert group.warming is None and group.workers == 1
        deadline = time.monotonic() + 10
        while ray.available_resources().get("CPU", 0) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert ray.available_resources().get("CPU", 0) == 2  # given back
        assert state.read(out)["warm_cancelled"] == [2]
    finally:
        T._GROUP = None
        ray.shutdown()
