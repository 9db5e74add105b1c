"""`voxtune bench`: the trials every run shares, the run list, the outputs, and one end-to-end run on Ray."""
from __future__ import annotations

import json
import os
from dataclasses import asdict
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from voxtune.bench import benchmark as B
from voxtune.bench.benchmark import anytime, bench_space, default_target, plan_runs, search_dirs
from voxtune.bench.record import time_to_target
from voxtune.parallel.modes import recipe_config
from voxtune.bench.tables import bench_markdown, write_plot
from voxtune.cli import main
from voxtune.errors import VoxtuneError
from voxtune.parallel.space import PAPER_SPACE, count_trials


def test_first_four_paper_trials_are_a_sub_grid():
    space, repeats, configs = bench_space(PAPER_SPACE, 4)
    assert repeats == 1 and count_trials(space, "grid", repeats) == 4
    assert space == {"lr": 1e-4, "norm": "bn", "beta2": {"grid": [0.99, 0.999]}, "amsgrad": {"grid": [True, False]}}
    assert configs[0] == {"lr": 1e-4, "norm": "bn", "beta2": 0.99, "amsgrad": True}


@pytest.mark.parametrize("trials, repeats", [(1, 1), (2, 1), (3, 1), (5, 5), (6, 1), (10, 5), (32, 1), (64, 2)])
def test_every_trial_count_runs_exactly_that_many_trials(trials, repeats):
    space, got, configs = bench_space(PAPER_SPACE, trials)
    assert got == repeats and len(configs) == trials == count_trials(space, "grid", got)


def test_bench_space_refuses_random_entries():
    with pytest.raises(VoxtuneError, match="'lr'"):
        bench_space({"lr": {"loguniform": [1e-4, 1e-2]}}, 2)
    with pytest.raises(VoxtuneError, match="--trials 0"):
        bench_space(PAPER_SPACE, 0)


def test_run_list_shares_the_one_worker_run_and_places_hybrids():
    runs = plan_runs([1, 2, 4], ["experiment", "data", "hybrid"], None, ["global-batch"])
    assert runs == [("experiment", 1, 1, None), ("experiment", 2, 1, None), ("data", 2, 2, "global-batch"),
                    ("experiment", 4, 1, None), ("data", 4, 4, "global-batch"), ("hybrid", 4, 2, "global-batch")]
    assert plan_runs([4], ["data"], None, ["global-batch"])[0] == ("experiment", 1, 1, None)  # baseline added
    both = plan_runs([2], ["data"], None, ["global-batch", "scale-lr"])
    assert both[1:] == [("data", 2, 2, "global-batch"), ("data", 2, 2, "scale-lr")]
    with pytest.raises(VoxtuneError, match="--modes"):
        plan_runs([1, 2], ["pipeline"], None, ["global-batch"])
    with pytest.raises(VoxtuneError, match="--workers"):
        plan_runs([0, 2], ["data"], None, ["global-batch"])
    with pytest.raises(VoxtuneError, match="--workers-per-trial 1"):
        plan_runs([2], ["hybrid"], 1, ["global-batch"])
    with pytest.raises(VoxtuneError, match="--ddp-recipe"):
        plan_runs([2], ["data"], None, ["half-batch"])
    with pytest.raises(VoxtuneError, match="only hybrid runs use it"):
        plan_runs([4], ["data"], 2, ["global-batch"])


def test_ddp_recipes_keep_the_problem_comparable():
    base = {"batch_size": 2, "lr": 0.001, "scale_lr": False}
    assert recipe_config(base, 1, None) == base
    assert recipe_config(base, 2, "global-batch") == {"batch_size": 1, "lr": 0.001, "scale_lr": False}
    assert recipe_config(base, 2, "scale-lr") == {"batch_size": 2, "lr": 0.001, "scale_lr": True}
    with pytest.raises(VoxtuneError, match="batch_size 2 over 4 ranks"):
        recipe_config(base, 4, "global-batch")


def test_time_to_target_is_the_first_epoch_at_or_above_it():
    curve = [[5.0, 0.2], [9.0, 0.7], [12.0, 0.65], [15.0, 0.9]]
    assert time_to_target(curve, 0.7) == 9.0 and time_to_target(curve, 0.8) == 15.0
    assert time_to_target(curve, 0.95) is None


def test_cli_bad_bench_input_is_one_line(tmp_path, capsys, cache_dir):
    code = main(["bench", "--cache", str(cache_dir), "--out", str(tmp_path / "b"), "--modes", "pipeline"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--modes" in err


def _fake_bench() -> dict:
    rep = {"how": "ran", "load_before": 0.1}
    row = {"workers_per_trial": 1, "concurrent_trials": 1, "trials": 2, "epochs": 1, "status": {"finished": 2},
           "wall_s": 10.0, "wall_s_min": 9.5, "wall_s_max": 11.0, "trial_compute_s": 4.0, "startup_s": 3.0,
           "wall_after_startup_s": 7.0, "ray_init_s": 1.0, "idle_worker_s": 2.0, "per_epoch_s": 4.0,
           "data_wait_share": 0.05, "speedup": 1.0, "efficiency": 1.0, "ddp_recipe": None, "best_val_dice": 0.8,
           "best_val_dice_min": 0.78, "best_val_dice_max": 0.82, "test_dice": 0.75, "time_to_target_s": 8.0,
           "time_to_target_reached": 2, "repeats": [rep, rep], "trial_outside_s": None}
    runs = [{**row, "mode": "experiment", "workers": 1}, {**row, "mode": "data", "workers": 1},
            {**row, "mode": "experiment", "workers": 2, "concurrent_trials": 2, "wall_s": 6.0, "speedup": 10 / 6,
             "efficiency": 10 / 12, "per_epoch_s": 4.4, "trial_compute_s": 4.4},
            {**row, "mode": "data", "workers": 2, "workers_per_trial": 2, "wall_s": 8.0, "speedup": 1.25,
             "efficiency": 0.625, "per_epoch_s": 2.6, "trial_compute_s": 2.6, "startup_s": 4.0,
             "ddp_recipe": "global-batch", "time_to_target_s": None, "time_to_target_reached": 0}]
    settings = {"trials": 2, "epochs": 1, "train_cases": 6, "val_cases": 1, "batch_size": 2, "param_bytes": 40_000,
                "model_params": 10_000, "image_shape": [4, 24, 24, 21], "cpus_per_worker": 1.0, "repeats": 2,
                "gpus_per_worker": 0.0, "base_config": {"model": "unet3d", "norm": "bn"}, "ddp_recipes": ["global-batch"],
                "target_dice": 0.76, "target_dice_rule": "0.95 x best val Dice reached"}
    return {"format": 2, "runs": runs, "settings": settings, "code": {"code_version": "abc", "git_commit": None},
            "machine": {"cpus": 2, "gpus": 0, "torch": "x", "ray": "y", "load_after": 0.2}}


def test_markdown_and_plot_from_a_bench(tmp_path):
    bench = _fake_bench()
    text = bench_markdown(bench)
    assert "| experiment | 2 |" in text and "| fitted |" in text and "step_s = " in text and "x12-14" in text
    assert "| data (global-batch) | 2 | 2 | 1 | 8.0 [9.5-11.0] |" in text and "not reached" in text
    assert "time to Dice 0.760" in text and "| 0.80 | 0.75 |" in text
    write_plot(bench, tmp_path / "speedup.png")
    assert (tmp_path / "speedup.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_runs_are_reused_only_for_the_same_settings_and_code(tmp_path, monkeypatch, cache_dir):
    """A finished run with the same settings and code is reused; an interrupted one resumed; one made by
    other code is moved to runs/stale/ and run again."""
    from voxtune.parallel import tune as T
    from voxtune.parallel.settings import SearchSettings

    calls = []

    def fake_search(run_dir, settings=None, *, address=None, resume=False):
        calls.append("resume" if resume else "run")
        if not resume:
            (run_dir / "search.json").write_text(json.dumps(asdict(settings)))
        summary = {"interrupted": False, "status": {"finished": 1}, "searched": ["lr"]}
        (run_dir / "summary.json").write_text(json.dumps(summary))
        return {**summary, "rows": []}

    monkeypatch.setattr(T, "run_search", fake_search)
    settings = lambda: SearchSettings(cache_dir=str(cache_dir), space={"lr": {"grid": [0.001]}})  # noqa: E731
    assert B._run_one(tmp_path, "experiment-w1-r1", settings(), None)[1] == "ran"
    assert B._run_one(tmp_path, "experiment-w1-r1", settings(), None)[1] == "reused"
    run = tmp_path / "runs" / "experiment-w1-r1"
    (run / "summary.json").write_text(json.dumps({"interrupted": True, "status": {"interrupted": 1}}))
    assert B._run_one(tmp_path, "experiment-w1-r1", settings(), None)[1] == "resumed"
    monkeypatch.setattr(B, "code_version", lambda: "other-code")
    assert B._run_one(tmp_path, "experiment-w1-r1", settings(), None)[1] == "ran"
    assert (tmp_path / "runs" / "stale" / "experiment-w1-r1" / "summary.json").exists()
    assert calls == ["run", "resume", "run"]


@pytest.mark.slow
def test_bench_end_to_end(cache_dir, tmp_path):
    """2 trials x 2 epochs, experiment and data (global batch) at 1 and 2 workers: 3 Ray searches; then the
    same command again reuses all of them. Runs the real command in a subprocess, as a user would. With
    --stage: the bench stages the cache once, before its first search; each search reuses that copy by its
    verified record (no copy, no hashing inside a timed search) and every rank reads it; removed at the end."""
    out = tmp_path / "bench"
    # A private Ray instance: without RAY_ADDRESS=local, ray.init() joins any cluster started on this box.
    env = {**os.environ, "RAY_ADDRESS": "local"}
    cmd = [sys.executable, "-m", "voxtune.cli", "bench", "--cache", str(cache_dir), "--out", str(out), "--workers",
           "1", "2", "--modes", "experiment", "data", "--trials", "2", "--epochs", "2", "--set", "filter_start=4",
           "--set", "lr=0.005", "--stage", str(tmp_path / "local")]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("[bench ") == 6  # a start and an end line for each of the 3 searches
    bench = json.loads((out / "bench.json").read_text())
    keys = {"mode", "workers", "workers_per_trial", "concurrent_trials", "wall_s", "speedup", "efficiency",
            "trial_compute_s", "startup_s", "idle_worker_s", "per_epoch_s", "data_wait_share", "best_val_dice",
            "test_dice", "time_to_target_s", "ddp_recipe", "wall_s_min", "wall_s_max"}
    assert [(r["mode"], r["workers"]) for r in bench["runs"]] == [("experiment", 1), ("experiment", 2),
                                                                  ("data", 1), ("data", 2)]
    for r in bench["runs"]:
        assert keys <= set(r) and r["status"] == {"finished": 2}, r
        assert r["wall_s"] > r["startup_s"] > 0 and 0 <= r["data_wait_share"] <= 1
        assert 0 <= r["best_val_dice"] <= 1 and 0 <= r["test_dice"] <= 1
        assert len(r["repeats"]) == 1 and len(r["repeats"][0]["val_dice"]) == 2
        if r["workers"] == 1:
            assert r["speedup"] == 1.0 and r["repeats"][0]["run"] == "runs/experiment-w1-r1"
    data2 = next(r for r in bench["runs"] if r["mode"] == "data" and r["workers"] == 2)
    assert (data2["workers_per_trial"], data2["concurrent_trials"], data2["ddp_recipe"]) == (2, 1, "global-batch")
    # what each rank of a data trial trained (its config.yaml)
    configs = [yaml.safe_load(p.read_text()) for p in (out / data2["repeats"][0]["run"]).glob("trials/*/config.yaml")]
    assert configs[0]["batch_size"] == 1 and configs[0]["scale_lr"] is False  # 2 ranks x 1 = the global batch 2
    settings = bench["settings"]
    bests = sorted(d for r in bench["runs"] for rep in r["repeats"] for d in rep["val_dice"].values())
    assert settings["target_dice"] == bests[(len(bests) - 1) // 2]  # at least half the trials reach it
    assert bench["code"]["code_version"] and bench["format"] == 2
    assert (out / "speedup.png").stat().st_size > 1000
    assert "| data (global-batch) | 2 |" in (out / "bench.md").read_text()
    assert not (out / "runs" / "data-w1-r1").exists()  # the 1-worker run is shared, not repeated
    [staged] = settings["staging"].values()
    assert staged["files_copied"] > 0 and Path(staged["path"]).parent == tmp_path / "local"
    for run in search_dirs(out):
        [reuse] = json.loads((run / "summary.json").read_text())["staging"].values()
        assert reuse["files_copied"] == 0 and "as last verified" in reuse["note"], reuse
        for trial in run.glob("trials/*/trial.json"):
            assert set(json.loads(trial.read_text())["caches"]) == {staged["path"]}
    assert not list((tmp_path / "local").glob("voxtune-stage-*"))  # removed when the bench ended

    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count(": reused, wall") == 3
    assert [r["how"] for row in json.loads((out / "bench.json").read_text())["runs"] for r in row["repeats"]] \
        == ["reused"] * 4


def test_a_run_whose_trials_all_fail_is_recorded_and_the_bench_goes_on(tmp_path, monkeypatch, cache_dir, capsys):
    """The data run's trials all fail: bench.json names it under failed_runs with the reason, the next run
    still runs, and the table times only the runs that trained. Without its 1-worker run there is no
    speed-up to give: one line, exit 2, bench.json still written."""
    ran = []

    def fake_run_one(bench_dir, name, settings, address):
        ran.append(name)
        run = bench_dir / "runs" / name
        broken = name.startswith("data-w2") or (name.startswith("experiment-w1") and bench_dir.name == "all")
        for t in ("a", "b"):
            (run / "trials" / t).mkdir(parents=True)
            epochs = [] if broken else [{"epoch": e, "val_dice": 0.5, "epoch_time_s": 4.0, "data_wait_s": 0.0,
                                         "end_ts": 5.0 * e} for e in (1, 2)]
            (run / "trials" / t / "metrics.json").write_text(json.dumps(epochs))
        summary = {"workers": settings.workers, "workers_per_trial": settings.per_trial(), "trials": 2, "epochs": 2,
                   "concurrent_trials": settings.concurrent_trials, "wall_time_s": 10.0, "startup_s": 2.0,
                   "ray_init_s": 1.0, "command_time_s": 12.0, "search_start_ts": 0.0,
                   "status": {"error": 2} if broken else {"finished": 2},
                   "rows": [{"trial_id": t, "reason": "BRATS_011.image.npy: unreadable" if broken else "",
                             "start_ts": 0.0, "end_ts": 10.0, "train_time_s": 8.0} for t in ("a", "b")]}
        return summary, "ran"

    monkeypatch.setattr(B, "_run_one", fake_run_one)
    args = dict(workers=[1, 2], modes=["experiment", "data"], trials=2, space={"lr": {"grid": [0.001, 0.002]}},
                base_config={"epochs": 2, "filter_start": 4})
    bench = B.run_bench(cache_dir, tmp_path / "bench", **args)
    assert ran == ["experiment-w1-r1", "experiment-w2-r1", "data-w2-global-batch-r1"]
    assert [(f["run"], f["reasons"]) for f in bench["failed_runs"]] == [
        ("runs/data-w2-global-batch-r1", ["BRATS_011.image.npy: unreadable"])]
    assert [(r["mode"], r["workers"]) for r in bench["runs"]] == [("experiment", 1), ("experiment", 2), ("data", 1)]
    assert "failed, every trial" in capsys.readouterr().out
    assert "Failed: runs/data-w2-global-batch-r1" in (tmp_path / "bench" / "bench.md").read_text()
    # A step was timed at every rank batch of the runs (2, and 1 for a global-batch rank of 2) before them.
    assert set(bench["settings"]["step_s_by_batch"]) == {"1", "2"}
    assert all(s > 0 for s in bench["settings"]["step_s_by_batch"].values())
    # GPU workers: nothing timed on the driver's CPU, and bench.json says why.
    gpu = B.run_bench(cache_dir, tmp_path / "gpu", **args, gpus_per_worker=1.0)
    assert gpu["settings"]["step_s_by_batch"] == {} and "GPU" in gpu["settings"]["step_timing"]["skipped"]

    with pytest.raises(VoxtuneError, match="every 1-worker run failed.*BRATS_011"):
        B.run_bench(cache_dir, tmp_path / "all", **args)
    assert json.loads((tmp_path / "all" / "bench.json").read_text())["failed_runs"]


def test_bench_keep_stage_without_stage_is_refused(cache_dir, tmp_path, capsys):
    assert main(["bench", "--cache", str(cache_dir), "--out", str(tmp_path / "b"), "--keep-stage"]) == 2
    assert "without --stage" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


def test_anytime_curve_and_a_target_half_the_trials_reach():
    assert anytime([[5.0, 0.3], [9.0, 0.2], [12.0, 0.6], [15.0, 0.6], [20.0, 0.7]]) == [
        [5.0, 0.3], [12.0, 0.6], [20.0, 0.7]]
    points = {("experiment", 1, None): [{"val_dice": {"a": 0.9, "b": 0.1}}, {"val_dice": {"a": 0.8, "b": 0.3}}],
              ("experiment", 2, None): [{"val_dice": {"a": 0.7, "b": None}}]}
    target = default_target(points)
    assert target == 0.7  # median of 0.1, 0.3, 0.7, 0.8, 0.9: 3 of the 5 trials reach it
    assert sum(d >= target for reps in points.values() for r in reps for d in r["val_dice"].values() if d) >= 5 / 2


def test_each_repeat_has_its_own_seed_and_trial_order(tmp_path, monkeypatch, cache_dir):
    """Repeat r of every point: seed base + r - 1, the grid in an order of its own; points of one repeat
    share both, so modes compare paired."""
    seen = {}
    space = {"lr": {"grid": [0.001, 0.002, 0.003, 0.004]}, "norm": {"grid": ["bn", "gn"]}}

    def record(bench_dir, name, settings, address):
        seen[name] = (settings.base_config["seed"], settings.space)
        return {"status": {"error": 8}, "rows": []}, "ran"

    monkeypatch.setattr(B, "_run_one", record)
    B._run_points([("experiment", 1, 1, None), ("data", 2, 2, "global-batch")], 3, B.BenchDir(tmp_path),
                  cache_dir, space, 1, B.make_config({"seed": 5}), 8, 1.0, 0.0, None, "fifo")
    seeds = {name: seed for name, (seed, _) in seen.items()}
    assert seeds == {"experiment-w1-r1": 5, "experiment-w1-r2": 6, "experiment-w1-r3": 7,
                     "data-w2-global-batch-r1": 5, "data-w2-global-batch-r2": 6, "data-w2-global-batch-r3": 7}
    # Repeat by repeat: a spell of load slows one repeat of each mode, not every repeat of one; and each
    # repeat starts one point further on, so that no mode always runs right after the same other one.
    assert list(seen) == ["experiment-w1-r1", "data-w2-global-batch-r1", "data-w2-global-batch-r2",
                          "experiment-w1-r2", "experiment-w1-r3", "data-w2-global-batch-r3"]
    orders = {name: [tuple(v["grid"]) for v in sp.values()] for name, (_, sp) in seen.items()}
    assert orders["experiment-w1-r1"] == orders["data-w2-global-batch-r1"]  # paired within a repeat
    assert len({tuple(o) for o in orders.values()}) == 3  # and their own order in each repeat
    for order in orders.values():  # the same trials, only queued differently
        assert sorted(order[0]) == [0.001, 0.002, 0.003, 0.004] and sorted(order[1]) == ["bn", "gn"]


def test_bench_order_puts_each_point_after_a_different_one_in_each_repeat():
    points = ["experiment", "data", "hybrid", "auto"]
    order = B.run_order(points, 4)
    assert sorted(order) == sorted((p, r) for p in points for r in (1, 2, 3, 4))  # each point once a repeat
    assert [r for _, r in order] == sorted(r for _, r in order)  # repeat by repeat
    for point in points:  # each point holds each place in its repeat once, so none always follows the same one
        assert sorted([p for p, r in order if r == rep].index(point) for rep in (1, 2, 3, 4)) == [0, 1, 2, 3]
