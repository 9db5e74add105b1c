"""`voxtune bench`: the trials every run shares, the run list, the outputs, and one end-to-end run on Ray."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from voxtune.bench.benchmark import bench_markdown, bench_space, plan_runs, write_plot
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
    runs = plan_runs([1, 2, 4], ["experiment", "data", "hybrid"], None)
    assert runs == [("experiment", 1, 1), ("experiment", 2, 1), ("data", 2, 2),
                    ("experiment", 4, 1), ("data", 4, 4), ("hybrid", 4, 2)]
    assert plan_runs([4], ["data"], None)[0] == ("experiment", 1, 1)  # baseline added
    with pytest.raises(VoxtuneError, match="--modes"):
        plan_runs([1, 2], ["pipeline"], None)
    with pytest.raises(VoxtuneError, match="--workers"):
        plan_runs([0, 2], ["data"], None)
    with pytest.raises(VoxtuneError, match="--workers-per-trial 1"):
        plan_runs([2], ["hybrid"], 1)


def test_cli_bad_bench_input_is_one_line(tmp_path, capsys, cache_dir):
    code = main(["bench", "--cache", str(cache_dir), "--out", str(tmp_path / "b"), "--modes", "pipeline"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--modes" in err


def _fake_bench() -> dict:
    row = {"workers_per_trial": 1, "concurrent_trials": 1, "trials": 2, "epochs": 1, "status": {"finished": 2},
           "wall_s": 10.0, "trial_compute_s": 4.0, "startup_s": 3.0, "ray_init_s": 1.0, "idle_worker_s": 2.0,
           "per_epoch_s": 4.0, "data_wait_share": 0.05, "speedup": 1.0, "efficiency": 1.0, "load_before": 0.1}
    runs = [{**row, "mode": "experiment", "workers": 1}, {**row, "mode": "data", "workers": 1},
            {**row, "mode": "experiment", "workers": 2, "concurrent_trials": 2, "wall_s": 6.0, "speedup": 10 / 6,
             "efficiency": 10 / 12, "per_epoch_s": 4.4, "trial_compute_s": 4.4},
            {**row, "mode": "data", "workers": 2, "workers_per_trial": 2, "wall_s": 8.0, "speedup": 1.25,
             "efficiency": 0.625, "per_epoch_s": 2.6, "trial_compute_s": 2.6, "startup_s": 4.0}]
    settings = {"trials": 2, "epochs": 1, "train_cases": 6, "val_cases": 1, "batch_size": 2, "param_bytes": 40_000,
                "model_params": 10_000, "image_shape": [4, 24, 24, 21], "cpus_per_worker": 1.0,
                "gpus_per_worker": 0.0, "base_config": {"model": "unet3d"}}
    return {"runs": runs, "settings": settings,
            "machine": {"cpus": 2, "gpus": 0, "torch": "x", "ray": "y", "load_after": 0.2}}


def test_markdown_and_plot_from_a_bench(tmp_path):
    bench = _fake_bench()
    text = bench_markdown(bench)
    assert "| experiment | 2 |" in text and "in-sample" in text and "x12-14" in text
    write_plot(bench, tmp_path / "speedup.png")
    assert (tmp_path / "speedup.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_bench_end_to_end(cache_dir, tmp_path):
    """2 trials x 1 epoch, experiment and data at 1 and 2 workers: 3 Ray searches (~1-3 min here).

    Runs the real command in a subprocess, as a user would: Ray pickles the Tuner's callbacks, which
    must not hold pytest's captured streams.
    """
    out = tmp_path / "bench"
    # A private Ray instance: without RAY_ADDRESS=local, ray.init() joins any cluster started on this box.
    env = {**os.environ, "RAY_ADDRESS": "local"}
    done = subprocess.run([sys.executable, "-m", "voxtune.cli", "bench", "--cache", str(cache_dir), "--out",
                           str(out), "--workers", "1", "2", "--modes", "experiment", "data", "--trials", "2",
                           "--epochs", "1", "--set", "filter_start=4"], env=env, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    printed = done.stdout
    assert printed.count("[bench ") == 6  # a start and an end line for each of the 3 searches
    bench = json.loads((out / "bench.json").read_text())
    keys = {"mode", "workers", "workers_per_trial", "concurrent_trials", "wall_s", "speedup", "efficiency",
            "trial_compute_s", "startup_s", "idle_worker_s", "per_epoch_s", "data_wait_share"}
    assert [(r["mode"], r["workers"]) for r in bench["runs"]] == [("experiment", 1), ("experiment", 2),
                                                                  ("data", 1), ("data", 2)]
    for r in bench["runs"]:
        assert keys <= set(r) and r["status"] == {"finished": 2}, r
        assert r["wall_s"] > 0 and 0 <= r["data_wait_share"] <= 1
        assert r["efficiency"] == pytest.approx(r["speedup"] / r["workers"])
        if r["workers"] == 1:
            assert r["speedup"] == 1.0 and r["run"] == "runs/experiment-w1"
    data2 = next(r for r in bench["runs"] if r["mode"] == "data" and r["workers"] == 2)
    assert (data2["workers_per_trial"], data2["concurrent_trials"]) == (2, 1)
    assert {"cpus", "gpus", "torch", "ray"} <= set(bench["machine"])
    assert bench["settings"]["trials"] == 2 and len(bench["settings"]["configs"]) == 2
    assert (out / "speedup.png").stat().st_size > 1000
    assert "| data | 2 |" in (out / "bench.md").read_text()
    assert not (out / "runs" / "data-w1").exists()  # the 1-worker run is shared, not repeated
