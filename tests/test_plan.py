"""The cost model, the schedule it plays out, its calibration and what it says it fitted, and `voxtune plan`.

The benches below are written by hand from round constants, each number worked out in the comments,
never by the code under test: calibration must recover the constants, and the schedule must land
where the arithmetic says.
"""
from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest

from voxtune.bench import model as M
from voxtune.bench import plan as P
from voxtune.bench.simulate import Asha, Trial, schedule
from voxtune.cli import main
from voxtune.errors import VoxtuneError

# Round constants: 8 train cases at batch 2 (4 steps), 2 val cases, 1 s a step, 0.25 s a val case.
TRUTH = M.MakespanModel(train_cases=8, val_cases=2, batch_size=2, epochs=3, step_s=1.0, param_bytes=1_000_000,
                        beta_s_per_byte=1e-8, startup_s=4.0, group_startup_s=3.0, trial_overhead_s=1.0,
                        group_overhead_s=0.5, contention={1: 1.0, 2: 1.1}, startup_contention={1: 1.0, 2: 1.5},
                        batch_cost={1: 0.8, 2: 1.0})
PLAIN = replace(TRUTH, startup_s=0.0, group_startup_s=0.0, trial_overhead_s=0.0, group_overhead_s=0.0,
                contention={1: 1.0}, startup_contention={1: 1.0}, beta_s_per_byte=0.0, batch_cost={})


def _run(mode, workers, k, wall, per_epoch, startup, recipe=None, trials=4, epochs=3, **extra):
    row = {"mode": mode, "workers": workers, "workers_per_trial": k, "concurrent_trials": workers // k,
           "wall_s": wall, "trial_compute_s": epochs * per_epoch, "per_epoch_s": per_epoch, "startup_s": startup,
           "ddp_recipe": recipe, "repeats": [{}]}
    return row | extra


def hand_bench() -> dict:
    """TRUTH's runs, 4 trials x 3 epochs, worked out by hand.

    1 worker: epoch 4 x 1.0 + 2 x 0.25 = 4.5; wall 4 + 4 x (1 + 3 x 4.5) = 62.
    experiment W=2: epoch 1.1 x 4.5 = 4.95; start-up 4 x 1.5 = 6; wall 6 + 2 x (1 + 14.85) = 37.7.
    data W=2 global-batch: rank batch 1 (timed 0.8 of a batch-2 step), 4 steps; compute 1.1 x (4 x 0.8 + 0.25)
      = 3.795; all-reduce 2 x 1/2 x 1e6 x 1e-8 + 5e-5 = 0.01005 a step, 0.0402 an epoch: epoch 3.8352;
      start-up 6 + 3 = 9; wall 9 + 4 x (1 + 0.5 + 3 x 3.8352) = 61.0224.
    data W=2 scale-lr (fits nothing: the all-reduce is fitted on the first recipe): rank batch 2, 2 steps;
      compute 1.1 x (2 x 1.0 + 0.25) = 2.475, all-reduce 0.0201: epoch 2.4951; wall 9 + 4 x 8.9853 = 44.9412.
    """
    runs = [_run("experiment", 1, 1, 62.0, 4.5, 4.0), _run("data", 1, 1, 62.0, 4.5, 4.0),
            _run("experiment", 2, 1, 37.7, 4.95, 6.0),
            _run("data", 2, 2, 61.0224, 3.8352, 9.0, "global-batch"),
            _run("data", 2, 2, 44.9412, 2.4951, 9.0, "scale-lr")]
    settings = {"trials": 4, "epochs": 3, "train_cases": 8, "val_cases": 2, "batch_size": 2,
                "param_bytes": 1_000_000, "ddp_recipes": ["global-batch", "scale-lr"],
                "step_s_by_batch": {"1": 0.4, "2": 0.5}, "image_shape": [4, 24, 24, 21], "model_params": 250_000,
                "cpus_per_worker": 1.0, "gpus_per_worker": 0.0, "base_config": {"model": "unet3d", "batch_size": 2}}
    return {"format": 2, "runs": runs, "settings": settings, "machine": {"cpus": 2}}


def test_calibration_recovers_the_constants_and_names_the_run_of_each():
    m = M.calibrate(hand_bench())
    for key in ("step_s", "startup_s", "group_startup_s", "trial_overhead_s", "group_overhead_s", "beta_s_per_byte"):
        assert getattr(m, key) == pytest.approx(getattr(TRUTH, key), rel=1e-6), key
    assert m.contention == pytest.approx({1: 1.0, 2: 1.1}) and m.startup_contention == pytest.approx({1: 1.0, 2: 1.5})
    assert m.batch_cost == pytest.approx({1: 0.8, 2: 1.0}) and m.global_batch
    source = {f["constant"]: f["from"] for f in m.fitted}
    assert source["step_s"] == ["1 worker"] and source["contention[2]"] == ["experiment W=2 K=1"]
    assert source["beta_s_per_byte"] == ["data W=2 K=2, global-batch"]
    assert source["batch_cost"] == ["settings.step_s_by_batch"]


def test_auto_regroups_cost_what_the_bench_measured_not_a_start_up():
    """A regroup costs auto's simulation the median critical path of the calibration's auto regroups
    (trial.json's critical_s, warm growth's join and resume), not a new rank's cold start-up."""
    assert M.calibrate(hand_bench()).regroup_s == TRUTH.startup_s  # no auto run: a cold start-up
    bench = hand_bench()
    regroups = [[{"to": 2, "critical_s": 0.3}, {"to": 1, "critical_s": 0.2}], [{"to": 2, "critical_s": 0.9}]]
    bench["runs"].append(_run("auto", 2, 1, 30.0, 4.0, 6.0, "global-batch",
                              repeats=[{"regroups": r} for r in regroups]))
    m = M.calibrate(bench)
    assert m.regroup_s == pytest.approx(0.3)
    assert [f["from"] for f in m.fitted if f["constant"] == "regroup_s"] == [["auto W=2 K=1, global-batch"]]


def test_errors_are_reported_only_for_runs_that_fitted_nothing():
    bench = hand_bench()
    errors = {e["run"]: e["error_pct"] for e in P.model_error(bench)}
    assert errors.pop("data W=2 K=2, scale-lr") == pytest.approx(0.0, abs=1e-4)
    assert errors == {"1 worker": None, "experiment W=2 K=1": None, "data W=2 K=2, global-batch": None}
    bench["runs"][4]["wall_s"] = 44.9412 * 1.1  # the unfitted run measured 10 % slower than the model says
    assert [e["error_pct"] for e in P.model_error(bench) if e["error_pct"] is not None] == [
        pytest.approx(100 * (1 / 1.1 - 1), rel=1e-4)]


def test_a_step_costs_what_was_timed_at_its_rank_batch_not_a_share_of_the_full_one():
    """Batch 1 timed at 0.8 of a batch-2 step: a global-batch rank's epoch is 4 x 0.8 + 0.25, not 4 x 0.5 + 0.25."""
    m = replace(TRUTH, global_batch=True, contention={1: 1.0})
    assert M.compute_epoch_s(m, 2, 1) == pytest.approx(3.45)
    assert M.compute_epoch_s(replace(m, batch_cost={}), 2, 1) == pytest.approx(2.25)  # linear where none was timed


def test_a_bench_that_timed_no_step_leaves_the_step_linear_and_says_so():
    bench = hand_bench()
    bench["settings"]["step_s_by_batch"] = {}
    m = M.calibrate(bench)
    assert m.batch_cost == {} and m.step(1) == pytest.approx(m.step_s / 2)
    assert "assumed: a step's cost linear in the rank batch" in P.format_constants(m)


def test_a_slot_takes_the_next_trial_when_its_own_ends_not_when_the_wave_does():
    """Costs 1.6, 1, 1 on 2 workers (3 epochs of 4.5 s, no overheads): slot A runs the slow trial (21.6 s), slot
    B the other two back to back (27 s). Waves would say 21.6 + 13.5 = 35.1; a mean cost, 2 x 16.2 = 32.4."""
    m = replace(PLAIN, config_cost={"slow": 1.6, "fast": 1.0})
    played = schedule(m, 2, 1, [Trial("slow"), Trial("fast"), Trial("fast")])
    assert played["wall_s"] == pytest.approx(27.0) and played["ends"] == pytest.approx([21.6, 13.5, 27.0])
    assert played["idle_worker_s"] == pytest.approx(2 * 27.0 - (21.6 + 13.5 + 13.5))


def test_a_trial_speeds_up_when_its_neighbour_ends():
    """Contention 1.5 with 2 busy: a 1-epoch and a 3-epoch trial both run at 6.75 s an epoch until the short
    one ends (6.75 s); the long one then has 2 epochs left alone at 4.5 s: 6.75 + 9 = 15.75 s."""
    m = replace(PLAIN, contention={1: 1.0, 2: 1.5})
    assert schedule(m, 2, 1, [Trial(epochs=1), Trial(epochs=3)])["wall_s"] == pytest.approx(15.75)


def test_asha_stops_a_trial_below_the_rung_quantile_of_those_before_it():
    """4 epochs, grace 1, eta 2: rungs at 1 and 2. Qualities 0.5, 0.9, 0.3, 0.7 one after the other: at rung 1 the
    third meets the median of [0.5, 0.9] = 0.7 and stops; the fourth meets that of [0.3, 0.5, 0.9] = 0.5 and goes
    on, and at rung 2 meets 0.7 (of [0.5, 0.9]), not below it. 13 epochs of 4.5 s."""
    m = replace(PLAIN, epochs=4)
    played = schedule(m, 1, 1, [Trial(quality=q) for q in (0.5, 0.9, 0.3, 0.7)], asha=Asha(grace=1))
    assert played["epochs"] == [4, 4, 1, 4] and played["wall_s"] == pytest.approx(13 * 4.5)
    assert Asha.of(20).rungs(20) == [5, 10]  # voxtune's setting at 20 epochs, as Ray places the rungs


def test_overheads_and_start_up_are_paid_where_they_fall():
    """Start-up 4 once; each trial 1 s outside its loop: 1 worker, 2 trials of 13.5 s -> 4 + 2 x 14.5 = 33."""
    m = replace(PLAIN, startup_s=4.0, trial_overhead_s=1.0)
    assert schedule(m, 1, 1, [Trial(), Trial()])["wall_s"] == pytest.approx(33.0)
    assert P.predict(m, 1, 2, 1)["predicted_wall_s"] == pytest.approx(33.0)


def test_steps_follow_the_global_batch():
    assert [M.steps(PLAIN, k) for k in (1, 2, 4, 8)] == [4, 2, 1, 1]  # each rank takes the full batch
    gb = replace(PLAIN, global_batch=True)
    assert [M.steps(gb, k) for k in (1, 2)] == [4, 4]  # K ranks of batch / K take the 1-worker run's steps
    assert M.steps(replace(gb, train_cases=9), 2) == 5  # a short last batch is a step too
    # CPU ranks pair up (min_part 2): batch 2 over 2 ranks is one rank of 2 (TRUTH's step 1.0), not two of 1 (0.8).
    paired = replace(TRUTH, global_batch=True, min_part=2, val_cases=0)
    assert (M.ranks_used(paired, 2), M.rank_batch(paired, 2), M.steps(paired, 2)) == (1, 2, 4)
    assert M.compute_epoch_s(paired, 2, 1) == pytest.approx(4 * 1.0)
    assert M.compute_epoch_s(replace(paired, min_part=1), 2, 1) == pytest.approx(4 * 0.8)
    four = replace(paired, batch_size=4, train_cases=8)
    assert (M.ranks_used(four, 2), M.rank_batch(four, 2), M.steps(four, 2)) == (2, 2, 2)


def test_an_old_bench_json_is_refused_for_calibration(tmp_path, capsys):
    old = hand_bench()
    del old["format"]
    assert main(["plan", "--calibration", _write(tmp_path, "old.json", old), "--workers", "2", "--trials", "4"]) == 2
    assert "format None" in capsys.readouterr().err


def test_waves_and_tail_idle():
    # 5 trials on 4 workers: 4 at once, then 1 alone while 3 workers idle.
    p = P.predict(PLAIN, 4, 5, 1)
    trial = 3 * 4.5
    assert (p["waves"], p["concurrent_trials"]) == (2, 4)
    assert p["predicted_wall_s"] == pytest.approx(2 * trial)
    assert p["idle_worker_s"] == pytest.approx(3 * trial)
    assert P.predict(PLAIN, 4, 8, 1)["idle_worker_s"] == pytest.approx(0.0)


def test_more_workers_than_trials_leaves_the_extra_idle():
    p = P.predict(PLAIN, 8, 2, 1)
    assert p["waves"] == 1 and p["idle_worker_s"] == pytest.approx(6 * p["predicted_wall_s"])


def test_every_split_is_predicted_and_named():
    result = P.plan(TRUTH, 8, 16)
    assert [(p["mode"], p["workers_per_trial"], p["concurrent_trials"]) for p in result["predictions"]] == [
        ("experiment", 1, 8), ("hybrid", 2, 4), ("hybrid", 4, 2), ("data", 8, 1), ("auto", 1, 8)]
    assert [p["waves"] for p in result["predictions"]] == [2, 4, 8, 16, 2]


def test_recommends_experiment_when_trials_fill_the_workers():
    assert P.plan(TRUTH, 4, 16)["recommended"]["mode"] == "experiment"


def test_recommends_splitting_a_lone_trial_when_all_reduce_is_cheap():
    cheap = replace(TRUTH, beta_s_per_byte=0.0, group_startup_s=0.0, group_overhead_s=0.0, contention={1: 1.0})
    best = P.plan(cheap, 4, 1)["recommended"]
    assert best["workers_per_trial"] > 1 and best["predicted_wall_s"] < P.predict(cheap, 4, 1, 1)["predicted_wall_s"]


def test_inter_node_all_reduce_is_slower():
    assert M.allreduce_s(TRUTH, 8, gpus_per_node=4) > M.allreduce_s(TRUTH, 8, gpus_per_node=8) > 0
    assert M.allreduce_s(TRUTH, 1) == 0.0


def test_contention_interpolates_and_holds_beyond_measured():
    m = replace(TRUTH, contention={1: 1.0, 3: 2.0})
    assert (m.slowdown(1), m.slowdown(2), m.slowdown(3), m.slowdown(64)) == (1.0, 1.5, 2.0, 2.0)


def test_paper_setting_is_labelled_default_constants_wherever_it_appears(capsys):
    rows = P.sweep_speedups(M.DEFAULTS, 32, gpus_per_node=4, top=32)
    assert [r["workers"] for r in rows] == [1, 2, 4, 8, 16, 32] and rows[0]["experiment"] == pytest.approx(1.0)
    assert rows[-1]["experiment"] > rows[-1]["data"]
    text = P.paper_prediction()
    assert "(default constants)" in text.splitlines()[0]
    assert f"| 32 | x{rows[-1]['experiment']:.1f} | x{rows[-1]['data']:.1f} |" in text
    assert main(["plan", "--workers", "8", "--trials", "32", "--sweep", "--gpus-per-node", "4"]) == 0
    out = capsys.readouterr().out
    assert "default constants" in out and "not measured" in out and "recommended:" in out and "256" in out


def _write(tmp_path, name: str, bench: dict) -> str:
    path = tmp_path / name
    path.write_text(json.dumps(bench))
    return str(path)


def test_plan_json_names_what_it_fitted_and_what_it_assumed(capsys, tmp_path):
    assert main(["plan", "--calibration", _write(tmp_path, "b.json", hand_bench()), "--workers", "4", "--trials", "6",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    for p in out["predictions"]:
        assert {"mode", "workers_per_trial", "concurrent_trials", "predicted_wall_s"} <= set(p)
        assert p["predicted_wall_s"] > 0 and not math.isnan(p["predicted_wall_s"])
    assert out["recommended"] in out["predictions"]
    assert [(p["mode"], p["workers_per_trial"]) for p in out["predictions"]] == [
        ("experiment", 1), ("hybrid", 2), ("data", 4), ("auto", 1)]
    fitted = {f["constant"]: f for f in out["fitted"]}
    assert {"step_s", "beta_s_per_byte", "contention[2]", "batch_cost"} <= set(fitted)
    assert fitted["step_s"]["value"] == pytest.approx(1.0) and fitted["step_s"]["from"] == ["1 worker"]
    assert "VAL_RATIO" in out["assumed"]
    assert main(["plan", "--calibration", str(tmp_path / "b.json"), "--workers", "4", "--trials", "6"]) == 0
    text = capsys.readouterr().out
    assert "fitted constants" in text and "step_s = 1 <- 1 worker" in text


def other_batch_bench() -> dict:
    """TRUTH at batch 1, 3 trials x 5 epochs, 3 repeats: 8 steps of 0.8 s (the timed batch-1 step) + 2 val cases
    of 0.25 s = 6.9 s an epoch. 1 worker: 4 + 3 x (1 + 5 x 6.9) = 110.5. Experiment W=2: 7.59 s an epoch;
    slot A runs 2 trials, 2 x (1 + 37.95) = 77.9, slot B 1 (38.95) and then idles: once alone, slot A's
    second trial runs at 6.9 s an epoch: 6 + 38.95 + 1 + 5 x 6.9 = 80.45."""
    bench = hand_bench()
    runs = [_run("experiment", 1, 1, 110.5, 6.9, 4.0, trials=3, epochs=5, wall_s_min=105.0, wall_s_max=115.0,
                 repeats=[{}, {}, {}]),
            _run("experiment", 2, 1, 80.45 * 1.2, 6.9 * 1.1, 6.0, trials=3, epochs=5, repeats=[{}, {}, {}])]
    bench["runs"] = runs
    bench["settings"] = {**bench["settings"], "trials": 3, "epochs": 5, "batch_size": 1, "ddp_recipes": ["global-batch"],
                         "base_config": {"model": "unet3d", "batch_size": 1}, "step_s_by_batch": {"1": 0.4}}
    return bench


def test_check_predicts_another_batch_out_of_sample_against_the_spread_of_its_repeats(tmp_path, capsys):
    calibration = _write(tmp_path, "a.json", hand_bench())
    other = _write(tmp_path, "b.json", other_batch_bench())
    assert main(["plan", "--calibration", calibration, "--check", other, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    one, two = out["runs"]
    assert (one["run"], one["rank_batch"], one["trials"], one["epochs"]) == ("1 worker", 1, 3, 5)
    assert one["predicted"] == pytest.approx(110.5) and one["within_spread"] and not one["fitted"]
    assert two["predicted"] == pytest.approx(80.45) and two["error_pct"] == pytest.approx(100 * (1 / 1.2 - 1))
    assert not two["within_spread"] and out["max_abs_error_pct"] == pytest.approx(abs(two["error_pct"]))
    assert main(["plan", "--calibration", calibration, "--check", other]) == 0
    assert "out of sample" in capsys.readouterr().out


def test_check_refuses_a_batch_the_calibration_did_not_time(tmp_path, capsys):
    a = hand_bench()
    a["settings"]["step_s_by_batch"] = {"2": 0.5}
    rc = main(["plan", "--calibration", _write(tmp_path, "a.json", a), "--check",
               _write(tmp_path, "b.json", other_batch_bench())])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "rank batch 1, which --calibration" in err[0]


def test_check_refuses_a_bench_of_another_setup(tmp_path, capsys):
    a, b = hand_bench(), hand_bench()
    b["settings"]["image_shape"] = [4, 64, 64, 61]
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
