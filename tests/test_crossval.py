"""--folds K: the folds, K fold models side by side, their mean, resume, the ensemble, and a search."""
from __future__ import annotations

import csv
import json
import statistics

import numpy as np
import pytest
import torch

import voxtune.train.loop as loop
from voxtune.cli import main
from voxtune.config import make_config
from voxtune.data.cache import case_ids, read_manifest, train_val_ids
from voxtune.errors import VoxtuneError
from voxtune.layout import TrainDir
from voxtune.train.crossval import cv_record


def test_folds_cut_the_train_and_val_cases_and_leave_test_alone(cache_dir):
    manifest = read_manifest(cache_dir)
    pool = set(case_ids(manifest, "train") + case_ids(manifest, "val"))
    assert train_val_ids(manifest) == (case_ids(manifest, "train"), case_ids(manifest, "val"))
    vals = []
    for fold in range(3):
        train, val = train_val_ids(manifest, 3, fold)
        assert val and set(train) | set(val) == pool and not set(train) & set(val)
        assert (train, val) == train_val_ids(manifest, 3, fold)  # seeded: a resume meets the same folds
        vals += val
    assert sorted(vals) == sorted(pool)  # every case validates in exactly one fold
    other = dict(manifest, seed=manifest.get("seed", 0) + 1)  # another split seed cuts other folds
    assert [train_val_ids(other, 3, f)[1] for f in range(3)] != [train_val_ids(manifest, 3, f)[1] for f in range(3)]


@pytest.mark.parametrize("values, key", [({"fold": 0}, "fold"), ({"folds": 3, "fold": 3}, "fold"),
                                         ({"folds": 0}, "folds"), ({"folds": 21}, "folds")])
def test_config_refuses_a_fold_that_does_not_exist(values, key):
    with pytest.raises(VoxtuneError, match=f"config key '{key}'"):
        make_config(values)


def test_cv_record_is_the_mean_of_each_folds_best():
    def rec(epoch, dice):
        return {"epoch": epoch, "train_loss": 1.0 - dice, "val_loss": 1.0 - dice, "val_dice": dice,
                "val_dice_whole_tumour": dice, "epoch_time_s": 2.0, "end_ts": 100.0 + epoch, "workers": 1}

    # fold 0 peaked at epoch 1 (0.8), fold 1 rises to 0.6 at epoch 2
    record = cv_record([rec(2, 0.5), rec(2, 0.6)], [rec(1, 0.8), rec(2, 0.6)])
    assert record["val_dice"] == pytest.approx(0.55)  # what a scheduler judges: this epoch's mean
    assert record["cv_dice"] == pytest.approx(0.7) and record["cv_dice_whole_tumour"] == pytest.approx(0.7)
    assert record["cv_dice_std"] == pytest.approx(statistics.stdev([0.8, 0.6]))
    assert record["fold_best_dice"] == [0.8, 0.6] and record["fold_best_epoch"] == [1, 2]
    assert record["epoch_time_s"] == 4.0 and record["epoch"] == 2


@pytest.fixture(scope="module")
def cv_run(cache_dir, tmp_path_factory):
    """loop.fit of folds 3, 2 epochs, recording which cases each fold model validated on."""
    run = tmp_path_factory.mktemp("cv") / "run"
    seen, real = [], loop._validate
    loop._validate = lambda model, val_set, *a, **k: (seen.append(list(val_set.case_ids))
                                                      or real(model, val_set, *a, **k))
    try:
        summary = loop.fit(make_config({"epochs": 2, "folds": 3, "lr": 0.005}), cache_dir, run, threads=1)
    finally:
        loop._validate = real
    return run, summary, seen


def test_each_fold_model_trains_and_validates_on_its_own_fold(cv_run, cache_dir):
    run, summary, seen = cv_run
    manifest = read_manifest(cache_dir)
    # epoch 1 of folds 0, 1, 2, then epoch 2 of each: side by side
    assert seen == [train_val_ids(manifest, 3, f)[1] for f in (0, 1, 2)] * 2
    for fold in range(3):
        folder = TrainDir(run).fold(fold)
        assert make_config(json.loads(json.dumps(_yaml(folder.config)))).fold == fold
        assert folder.best_checkpoint.is_file() and folder.last_checkpoint.is_file()
        assert [r["epoch"] for r in json.loads(folder.metrics.read_text())] == [1, 2]
    assert _yaml(TrainDir(run).config)["folds"] == 3 and _yaml(TrainDir(run).config)["fold"] is None


def test_the_runs_metrics_are_the_folds_means(cv_run):
    run, summary, _ = cv_run
    folds = [json.loads(TrainDir(run).fold(f).metrics.read_text()) for f in range(3)]
    records = json.loads(TrainDir(run).metrics.read_text())
    assert records == summary["metrics"] and len(records) == 2
    for e, record in enumerate(records):
        assert record["val_dice"] == pytest.approx(statistics.fmean(f[e]["val_dice"] for f in folds))
        bests = [max(r["val_dice"] for r in f[:e + 1]) for f in folds]
        assert record["fold_best_dice"] == pytest.approx(bests)
        assert record["cv_dice"] == pytest.approx(statistics.fmean(bests))
    assert summary["best_val_dice"] == records[-1]["cv_dice"] and len(summary["folds"]) == 3


def test_a_stop_after_an_epoch_stops_every_fold(cache_dir, tmp_path):
    reports = []
    summary = loop.fit(make_config({"epochs": 3, "folds": 2}), cache_dir, tmp_path / "run", threads=1,
                       report=lambda record: reports.append(record) or True)
    assert len(reports) == 1 and "cv_dice" in reports[0] and summary["stopped_early"]
    for fold in range(2):
        assert len(json.loads(TrainDir(tmp_path / "run").fold(fold).metrics.read_text())) == 1


def test_resume_catches_up_a_fold_left_an_epoch_behind(cache_dir, tmp_path):
    """Killed between two folds' saves: the folds resume an epoch apart, and only the late ones train."""
    run = tmp_path / "run"
    loop.fit(make_config({"epochs": 1, "folds": 2}), cache_dir, run, threads=1)
    loop.fit(make_config({"epochs": 2, "folds": 2, "fold": 0}), cache_dir, TrainDir(run).fold(0).path, threads=1)
    ahead = json.loads(TrainDir(run).fold(0).metrics.read_text())
    summary = loop.fit(make_config({"epochs": 3, "folds": 2}), cache_dir, run, threads=1)
    assert [r["epoch"] for r in summary["metrics"]] == [1, 2, 3]
    fold0 = json.loads(TrainDir(run).fold(0).metrics.read_text())
    assert fold0[:2] == ahead and [r["epoch"] for r in fold0] == [1, 2, 3]  # its 2nd epoch was not trained again
    assert [r["epoch"] for r in json.loads(TrainDir(run).fold(1).metrics.read_text())] == [1, 2, 3]


def test_a_fold_that_fails_fails_its_run_with_the_folds_line(cache_dir, tmp_path, monkeypatch):
    import voxtune.train.build as build

    monkeypatch.setattr(build, "make_loss", lambda name, softmax: (lambda logits, label: logits.mean() * float("nan")))
    with pytest.raises(loop.TrainingDiverged, match=r"^fold 0 of 2: training loss became nan at epoch 1"):
        loop.fit(make_config({"epochs": 2, "folds": 2}), cache_dir, tmp_path / "run", threads=1)


def test_resume_with_other_folds_is_refused(cv_run, cache_dir, tmp_path):
    import shutil

    run = shutil.copytree(cv_run[0], tmp_path / "run")
    with pytest.raises(VoxtuneError, match="different config.*folds"):
        loop.fit(make_config({"epochs": 3, "folds": 2, "lr": 0.005}), cache_dir, run, threads=1)


def test_the_ensemble_scores_the_mean_of_the_fold_models_probabilities(cv_run, cache_dir):
    from voxtune.data.loader import CaseDataset
    from voxtune.train.evaluate import evaluate, evaluate_models, load_model
    from voxtune.train.metrics import dice_per_region, infer

    run = cv_run[0]
    checkpoints = [TrainDir(run).fold(f).best_checkpoint for f in range(3)]
    scores = evaluate_models(checkpoints, cache_dir, "test", threads=1)
    assert [s["test_dice"] for s in scores["models"]] == pytest.approx(
        [evaluate(c, cache_dir, "test", threads=1)["test_dice"] for c in checkpoints])
    models = [load_model(c)[0] for c in checkpoints]
    ids = case_ids(read_manifest(cache_dir), "test")
    cases = CaseDataset(cache_dir, ids, divisor=models[0].divisor)
    dice = []
    for i in range(len(ids)):
        image, label = cases[i]
        with torch.no_grad():
            probs = torch.stack([torch.sigmoid(infer(m, image[None].float(), None)) for m in models]).mean(0)
        dice.append(dice_per_region(torch.logit(probs.clamp(1e-7, 1 - 1e-7)), label[None])[0].mean().item())
    assert scores["ensemble"]["test_dice"] == pytest.approx(float(np.mean(dice)), abs=1e-6)


class _Constant(torch.nn.Module):
    """A 'model' whose probability is `p` in every voxel of its first region."""
    divisor = 1

    def __init__(self, p: float):
        super().__init__()
        self.logit = torch.nn.Parameter(torch.logit(torch.tensor(p)), requires_grad=False)

    def forward(self, x):
        return self.logit.expand(x.shape[0], 1, *x.shape[2:]).clone()


def test_predict_ensembles_the_fold_models_probabilities():
    """0.3 and 0.8: each alone says no and yes; their mean 0.55 says yes (a vote of 1 against 1, or the
    first model alone, would not)."""
    from voxtune.predict import predict_volume

    image = np.ones((12, 12, 16, 4), dtype=np.float32)
    state = {"prepare": {"labels": "binary", "shape": None, "crop_z": [2, 1], "normalise": "brain"},
             "config": {"patch_size": None}, "regions": ["whole_tumour"]}
    low, high = _Constant(0.3), _Constant(0.8)
    assert not predict_volume(low, state, image)[0, :, :, 2:-1].any()
    assert predict_volume([low, high], state, image)[0, :, :, 2:-1].all()
    assert not predict_volume([low, low, high], state, image)[0, :, :, 2:-1].any()  # mean 0.47


@pytest.mark.slow
def test_tune_folds_ranks_configs_by_the_fold_mean_and_asha_stops_a_configs_folds_together(cache_dir, msd_dir,
                                                                                            tmp_path, capsys):
    space = tmp_path / "space.yaml"  # one worker, trials in this order: a good, a hopeless, a good lr
    space.write_text("lr: {grid: [0.005, 0.0000001, 0.003]}\nnorm: gn\n")
    run = tmp_path / "run"
    assert main(["tune", "--cache", str(cache_dir), "--out", str(run), "--mode", "experiment", "--workers", "1",
                 "--space", str(space), "--scheduler", "asha", "--epochs", "4", "--folds", "3"]) == 0
    assert "fold mean val_dice" in capsys.readouterr().out  # the progress lines say what a config is judged by
    with open(run / "leaderboard.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3  # one row per config
    assert [float(r["val_dice"]) for r in rows] == sorted((float(r["val_dice"]) for r in rows), reverse=True)
    for row in rows:
        folds = [float(d) for d in row["val_dice_folds"].split(";")]
        assert len(folds) == 3 and float(row["val_dice"]) == pytest.approx(statistics.fmean(folds), abs=1e-4)
        epochs = [len(json.loads(TrainDir(run / "trials" / row["trial_id"]).fold(f).metrics.read_text()))
                  for f in range(3)]
        assert epochs == [int(row["epochs"])] * 3  # the folds ran, and stopped, together
    hopeless = next(r for r in rows if r["lr"] == "1e-07")
    assert hopeless["status"] == "stopped" and int(hopeless["epochs"]) < 4

    best = json.loads((run / "best.json").read_text())
    assert best["trial_id"] == rows[0]["trial_id"] and len(best["checkpoints"]) == 3
    assert all((run / c).is_file() for c in best["checkpoints"])
    assert [f["fold"] for f in best["folds"]] == [0, 1, 2] and all("test_dice" in f["test"] for f in best["folds"])
    assert best["test"]["test_dice"] is not None and best["config"]["folds"] == 3
    assert json.loads((run / "summary.json").read_text())["folds"] == 3

    capsys.readouterr()
    assert main(["predict", "--run", str(run), "--input", str(msd_dir), "--out", str(tmp_path / "pred")]) == 0
    assert "ensemble of the 3 fold models" in capsys.readouterr().out
    assert main(["predict", "--run", str(run), "--fold", "1", "--input", str(msd_dir),
                 "--out", str(tmp_path / "pred1")]) == 0
    assert best["checkpoints"][1] in capsys.readouterr().out
    assert main(["report", "--run", str(run)]) == 0
    assert "Cross-validation folds" in (run / "report.html").read_text()


def _yaml(path):
    import yaml

    return yaml.safe_load(path.read_text())


def test_bench_refuses_folds_it_would_score_as_one_model(cache_dir, tmp_path):
    from voxtune.bench.benchmark import run_bench

    with pytest.raises(VoxtuneError, match="config key 'folds'"):
        run_bench(cache_dir, tmp_path / "bench", workers=[1, 2], modes=["experiment"], trials=2,
                  base_config={"folds": 3})
    assert not (tmp_path / "bench").exists()


def test_train_folds_prints_the_cross_validated_dice_and_predict_finds_the_folds(cv_run, tmp_path, capsys):
    from voxtune.predict import resolve_checkpoints

    run = cv_run[0]
    folds = [TrainDir(run).fold(f).best_checkpoint for f in range(3)]
    assert resolve_checkpoints(run) == folds and resolve_checkpoints(run, fold=2) == folds[2:]
    with pytest.raises(VoxtuneError, match=r"--fold 3: .* 3 fold models \(0..2\)"):
        resolve_checkpoints(run, fold=3)
    with pytest.raises(VoxtuneError, match="drop --fold"):
        resolve_checkpoints(checkpoint=folds[0], fold=0)
    assert main(["report", "--run", str(run)]) == 0
    assert "cross-validated val Dice" in (run / "report.html").read_text()


def test_train_cli_with_folds(cache_dir, tmp_path, capsys):
    assert main(["train", "--cache", str(cache_dir), "--out", str(tmp_path / "run"), "--threads", "1",
                 "--epochs", "1", "--folds", "2"]) == 0
    assert "cross-validated val_dice" in capsys.readouterr().out
    assert [d.name for d in TrainDir(tmp_path / "run").folds()] == ["0", "1"]
