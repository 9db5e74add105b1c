"""The scaling model: waves, tail idle, splits, recommendation, calibration, and `voxtune plan` inputs."""
from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest

from voxtune.bench import plan as P
from voxtune.cli import main
from voxtune.errors import VoxtuneError

# A model with round numbers: 8 train cases at batch 2 (4 steps), 2 val cases, 1 s a step.
TRUTH = P.MakespanModel(train_cases=8, val_cases=2, batch_size=2, epochs=3, step_s=1.0, param_bytes=1_000_000,
                beta_s_per_byte=1e-8, startup_s=4.0, group_startup_s=3.0, trial_overhead_s=1.0,
                group_overhead_s=0.5, contention={1: 1.0, 2: 1.1}, startup_contention={1: 1.0, 2: 1.5})
PLAIN = replace(TRUTH, startup_s=0.0, group_startup_s=0.0, trial_overhead_s=0.0, group_overhead_s=0.0,
                contention={1: 1.0}, startup_contention={1: 1.0}, beta_s_per_byte=0.0)


def fake_bench(m: P.MakespanModel = TRUTH, trials: int = 4) -> dict:
    """A bench.json whose runs are exactly what `m` predicts (start-up: Ray up to the first epoch, as tune.py
    measures it; ray.init's 2 s are outside the wall time)."""
    runs = []
    recipe = "global-batch" if m.global_batch else "scale-lr"
    for mode, w, k in [("experiment", 1, 1), ("data", 1, 1), ("experiment", 2, 1), ("data", 2, 2)]:
        p = P.predict(m, w, trials, k)
        running = min(w // k, trials)
        epoch = P.compute_epoch_s(m, k, running * k) + P.steps(m, k) * P.allreduce_s(m, k)
        start = m.startup(running * k, k)
        runs.append({"mode": mode, "workers": w, "workers_per_trial": k, "concurrent_trials": w // k,
                     "wall_s": p["predicted_wall_s"], "trial_compute_s": m.epochs * epoch, "per_epoch_s": epoch,
                     "startup_s": start, "ray_init_s": 2.0, "trial_outside_s": 0.3 if trials > w // k else None,
                     "speedup": 1.0, "efficiency": 1.0, "idle_worker_s": 0.0, "data_wait_share": 0.1,
                     "ddp_recipe": recipe if k > 1 else None})
    settings = {"trials": trials, "epochs": m.epochs, "train_cases": m.train_cases, "val_cases": m.val_cases,
                "batch_size": m.batch_size, "param_bytes": m.param_bytes, "ddp_recipes": [recipe]}
    return {"format": 2, "runs": runs, "settings": settings, "machine": {"cpus": 2}}


def test_steps_shrink_with_workers_at_same_per_replica_batch():
    assert [P.steps(TRUTH, k) for k in (1, 2, 4, 8)] == [4, 2, 1, 1]


def test_a_global_batch_keeps_the_steps_and_splits_their_compute():
    """The global-batch recipe: K ranks of batch/K take the 1-worker run's steps, each step 1/K of the compute."""
    m = replace(PLAIN, global_batch=True)
    assert [P.steps(m, k) for k in (1, 2)] == [4, 4]
    assert P.compute_epoch_s(m, 2, 2) == pytest.approx(P.compute_epoch_s(PLAIN, 2, 2))
    assert P.steps(m, 2) * P.allreduce_s(TRUTH, 2) == 2 * P.steps(TRUTH, 2) * P.allreduce_s(TRUTH, 2)


def test_calibration_recovers_a_global_batch_model():
    truth = replace(TRUTH, global_batch=True)
    m = P.calibrate(fake_bench(truth))
    assert m.global_batch and m.beta_s_per_byte == pytest.approx(truth.beta_s_per_byte, rel=1e-6)
    assert all(abs(e["error_pct"]) < 1e-6 for e in P.model_error(fake_bench(truth)))


def test_an_old_bench_json_is_refused_for_calibration(tmp_path, capsys):
    old = fake_bench()
    del old["format"]
    assert main(["plan", "--calibration", _write(tmp_path, "old.json", old), "--workers", "2", "--trials", "4"]) == 2
    assert "format None" in capsys.readouterr().err


def test_waves_and_tail_idle():
    # 5 trials on 4 workers: a full wave of 4, then 1 trial alone while 3 workers idle.
    p = P.predict(PLAIN, 4, 5, 1)
    trial = PLAIN.epochs * (4 * 1.0 + 2 * P.VAL_RATIO * 1.0 / 2)
    assert (p["waves"], p["tail_trials"], p["concurrent_trials"]) == (2, 1, 4)
    assert p["predicted_wall_s"] == pytest.approx(2 * trial)
    assert p["idle_worker_s"] == pytest.approx(3 * trial)
    assert P.predict(PLAIN, 4, 8, 1)["idle_worker_s"] == pytest.approx(0.0)


def test_more_workers_than_trials_leaves_the_extra_idle():
    p = P.predict(PLAIN, 8, 2, 1)
    assert p["waves"] == 1 and p["idle_worker_s"] == pytest.approx(6 * p["predicted_wall_s"])


def test_every_split_is_predicted_and_named():
    result = P.plan(TRUTH, 8, 16)
    assert [(p["mode"], p["workers_per_trial"], p["concurrent_trials"]) for p in result["predictions"]] == [
        ("experiment", 1, 8), ("hybrid", 2, 4), ("hybrid", 4, 2), ("data", 8, 1)]
    assert [p["waves"] for p in result["predictions"]] == [2, 4, 8, 16]


def test_recommends_experiment_when_trials_fill_the_workers():
    assert P.plan(TRUTH, 4, 16)["recommended"]["mode"] == "experiment"


def test_recommends_splitting_a_lone_trial_when_all_reduce_is_cheap():
    cheap = replace(TRUTH, beta_s_per_byte=0.0, group_startup_s=0.0, group_overhead_s=0.0, contention={1: 1.0})
    best = P.plan(cheap, 4, 1)["recommended"]
    assert best["workers_per_trial"] > 1 and best["predicted_wall_s"] < P.predict(cheap, 4, 1, 1)["predicted_wall_s"]


def test_inter_node_all_reduce_is_slower():
    assert P.allreduce_s(TRUTH, 8, gpus_per_node=4) > P.allreduce_s(TRUTH, 8, gpus_per_node=8) > 0
    assert P.allreduce_s(TRUTH, 1) == 0.0


def test_contention_interpolates_and_holds_beyond_measured():
    m = replace(TRUTH, contention={1: 1.0, 3: 2.0})
    assert (m.slowdown(1), m.slowdown(2), m.slowdown(3), m.slowdown(64)) == (1.0, 1.5, 2.0, 2.0)


def test_calibration_recovers_the_model_that_made_the_runs():
    m = P.calibrate(fake_bench())
    for key in ("step_s", "startup_s", "group_startup_s", "trial_overhead_s", "group_overhead_s"):
        assert getattr(m, key) == pytest.approx(getattr(TRUTH, key), rel=1e-6), key
    assert m.beta_s_per_byte == pytest.approx(TRUTH.beta_s_per_byte, rel=1e-6)
    assert m.contention == pytest.approx({1: 1.0, 2: 1.1})
    assert m.startup_contention == pytest.approx({1: 1.0, 2: 1.5})
    errors = P.model_error(fake_bench())
    assert [(e["mode"], e["workers"]) for e in errors] == [("experiment", 1), ("experiment", 2), ("data", 2)]
    assert all(abs(e["error_pct"]) < 1e-6 for e in errors)


def test_paper_defaults_favour_experiment_and_text_quotes_the_paper():
    rows = P.sweep_speedups(P.DEFAULTS, 32, gpus_per_node=4, top=32)
    assert [r["workers"] for r in rows] == [1, 2, 4, 8, 16, 32] and rows[0]["experiment"] == pytest.approx(1.0)
    assert rows[-1]["experiment"] > rows[-1]["data"]
    text = P.paper_prediction()
    assert "x12-14" in text and "| 32 |" in text


def test_plan_json_schema(capsys, tmp_path):
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(fake_bench()))
    assert main(["plan", "--calibration", str(path), "--workers", "4", "--trials", "6", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {"predictions", "recommended"} <= set(out)
    for p in out["predictions"]:
        assert {"mode", "workers_per_trial", "concurrent_trials", "predicted_wall_s"} <= set(p)
        assert p["predicted_wall_s"] > 0 and not math.isnan(p["predicted_wall_s"])
    assert out["recommended"] in out["predictions"]
    assert [p["workers_per_trial"] for p in out["predictions"]] == [1, 2, 4]


def test_plan_table_and_sweep_say_the_defaults_are_not_measured(capsys):
    assert main(["plan", "--workers", "8", "--trials", "32", "--sweep", "--gpus-per-node", "4"]) == 0
    out = capsys.readouterr().out
    assert "default constants" in out and "recommended:" in out and "256" in out


def _write(tmp_path, name: str, bench: dict) -> str:
    path = tmp_path / name
    path.write_text(json.dumps(bench))
    return str(path)


def test_check_predicts_another_benchs_runs_out_of_sample(tmp_path, capsys):
    """Calibrated on 4 trials x 3 epochs, the model predicts a bench of 3 trials x 5 epochs made by the same
    machine: a tail wave with one worker idle, other epochs, every mode."""
    calibration = _write(tmp_path, "a.json", fake_bench(TRUTH, trials=4))
    other = _write(tmp_path, "b.json", fake_bench(replace(TRUTH, epochs=5), trials=3))
    assert main(["plan", "--calibration", calibration, "--check", other, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [(r["mode"], r["workers"], r["trials"], r["epochs"]) for r in out["runs"]] == [
        ("experiment", 1, 3, 5), ("experiment", 2, 3, 5), ("data", 2, 3, 5)]
    assert out["max_abs_error_pct"] < 1e-6
    assert main(["plan", "--calibration", calibration, "--check", other]) == 0
    assert "out of sample" in capsys.readouterr().out


def test_check_reports_a_model_that_does_not_hold(tmp_path, capsys):
    """Runs made by a machine 1.5x slower per step are predicted too fast, and the error says so."""
    calibration = _write(tmp_path, "a.json", fake_bench(TRUTH))
    other = _write(tmp_path, "b.json", fake_bench(replace(TRUTH, step_s=1.5)))
    result = P.check(calibration, other)
    assert all(r["error_pct"] < -15 for r in result["runs"])
    assert result["max_abs_error_pct"] == max(abs(r["error_pct"]) for r in result["runs"])


def test_check_refuses_a_bench_of_another_setup(tmp_path, capsys):
    a, b = fake_bench(), fake_bench()
    a["settings"]["image_shape"], b["settings"]["image_shape"] = [4, 48, 48, 45], [4, 64, 64, 61]
    b["machine"]["cpus"] = 16
    rc = main(["plan", "--calibration", _write(tmp_path, "a.json", a), "--check", _write(tmp_path, "b.json", b)])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "image_shape, cpus differ" in err[0]


@pytest.mark.parametrize("args, words", [
    ([], "--workers N and --trials M"),
    (["--check", "MISSING"], "--check needs --calibration"),
    (["--calibration", "NORUNS", "--check", "MISSING"], "--check"),
    (["--workers", "0", "--trials", "4"], "--workers 0"),
    (["--workers", "2", "--trials", "0"], "--trials 0"),
    (["--workers", "2", "--trials", "4", "--gpus-per-node", "0"], "--gpus-per-node 0"),
    (["--workers", "2", "--trials", "4", "--calibration", "MISSING"], "file not found"),
    (["--workers", "2", "--trials", "4", "--calibration", "BADJSON"], "not readable as JSON"),
    (["--workers", "2", "--trials", "4", "--calibration", "NORUNS"], "not a usable bench.json"),
    (["--workers", "2", "--trials", "4", "--calibration", "LIST"], "expected a bench.json object"),
])
def test_bad_inputs_exit_2_with_one_line(args, words, tmp_path, capsys):
    files = {"MISSING": tmp_path / "missing.json", "BADJSON": tmp_path / "bad.json",
             "NORUNS": tmp_path / "noruns.json", "LIST": tmp_path / "list.json"}
    files["BADJSON"].write_text("{not json")
    files["NORUNS"].write_text(json.dumps({"settings": {}, "runs": []}))
    files["LIST"].write_text("[]")
    args = [str(files.get(a, a)) for a in args]
    assert main(["plan", *args]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and words in err


def test_plan_api_rejects_bad_numbers():
    with pytest.raises(VoxtuneError):
        P.plan(TRUTH, -1, 4)


def test_planning_more_epochs_takes_longer(capsys):
    short = P.run_plan(workers=2, trials=4, as_json=True, epochs=2)["recommended"]["predicted_wall_s"]
    long = P.run_plan(workers=2, trials=4, as_json=True, epochs=20)["recommended"]["predicted_wall_s"]
    assert long > 5 * short
    with pytest.raises(VoxtuneError, match="--epochs 0"):
        P.run_plan(workers=2, trials=4, epochs=0)
