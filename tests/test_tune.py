"""`voxtune tune`: the three modes on a local Ray instance, a two-node cluster, and bad inputs."""
from __future__ import annotations

import contextlib
import csv
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pytest

from voxtune.cli import main

SPACE = "lr: {grid: [0.001, 0.005]}\nnorm: {grid: [bn, gn]}\n"
OUTPUTS = {"leaderboard.csv", "best.json", "summary.json", "search.json", "trials"}


def _space(tmp_path: Path) -> str:
    path = tmp_path / "space.yaml"
    path.write_text(SPACE)
    return str(path)


def _leaderboard(run: Path) -> list[dict]:
    with open(run / "leaderboard.csv") as f:
        return list(csv.DictReader(f))


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "Traceback" not in err[0]
    return err[0]


MODES = {
    "experiment": ["--workers", "2"],
    "data": ["--workers", "2"],
    # 4 workers of half a CPU each: two trials at once, two DDP ranks each, on this 2-core machine
    "hybrid": ["--workers", "4", "--workers-per-trial", "2", "--cpus-per-worker", "0.5"],
    # trials on one worker each; one left alone with an epoch to go may take the other worker
    "auto": ["--workers", "2"],
}


@pytest.mark.slow
@pytest.mark.parametrize("mode", list(MODES))
def test_each_mode_writes_the_same_outputs(mode, cache_dir, tmp_path):
    run = tmp_path / "run"
    rc = main(["tune", "--cache", str(cache_dir), "--out", str(run), "--mode", mode, "--space", _space(tmp_path),
               "--epochs", "2", *MODES[mode]])
    assert rc == 0
    assert OUTPUTS <= {p.name for p in run.iterdir()}

    rows = _leaderboard(run)
    assert len(rows) == 4
    assert {(r["lr"], r["norm"]) for r in rows} == {(lr, n) for lr in ("0.001", "0.005") for n in ("bn", "gn")}
    per_trial = {"experiment": 1, "data": 2, "hybrid": 2, "auto": 1}[mode]
    for row in rows:
        assert row["status"] == "finished"
        assert int(row["epochs"]) == 2
        assert row["workers"] == str(per_trial) or (mode == "auto" and row["workers"] == "1@e1 2@e2")
        assert 0.0 <= float(row["val_dice"]) <= 1.0
        assert float(row["train_time_s"]) > 0 and row["node"]
        records = json.loads((run / "trials" / row["trial_id"] / "metrics.json").read_text())
        assert [r["epoch"] for r in records] == [1, 2]
        assert float(row["val_dice"]) == pytest.approx(max(r["val_dice"] for r in records))  # the trial's best
        assert {"train_loss", "val_loss", "val_dice", "val_dice_whole_tumour"} <= set(records[0])
        assert (run / "trials" / row["trial_id"] / "checkpoints" / "best.pt").exists()
    assert float(rows[0]["val_dice"]) == max(float(r["val_dice"]) for r in rows)

    best = json.loads((run / "best.json").read_text())
    assert best["trial_id"] == rows[0]["trial_id"]
    assert best["test"]["test_cases"] == 1 and 0.0 <= best["test"]["test_dice"] <= 1.0
    from voxtune.train.evaluate import evaluate  # the test score is the best checkpoint's, scored once more here

    assert evaluate(run / best["checkpoint"], cache_dir, "test", 1)["test_dice"] == pytest.approx(
        best["test"]["test_dice"])
    summary = json.loads((run / "summary.json").read_text())
    assert summary["mode"] == mode and summary["workers_per_trial"] == per_trial
    assert summary["concurrent_trials"] == summary["workers"] // per_trial
    assert summary["status"] == {"finished": 4}
    assert summary["wall_time_s"] > 0 and summary["startup_s"] > 0
    parts = summary["startup_breakdown"]  # where the start-up went: every part measured, none left unsaid
    assert parts["startup_s"] == pytest.approx(summary["startup_s"])
    assert parts["imports_s"] > 0.2 and parts["build_s"] > 0 and parts["tune_s"] > 0  # a fresh process imports torch
    total = parts["tune_s"] + parts["imports_s"] + parts["build_s"] + parts["other_s"]
    assert total == pytest.approx(parts["startup_s"])
    assert -0.05 < parts["other_s"] < parts["startup_s"]

    groups = {json.loads((run / "trials" / r["trial_id"] / "trial.json").read_text())["group_id"] for r in rows}
    if mode == "data":  # one DDP group served every trial: start-up paid once per search
        assert len(groups) == 1


@contextlib.contextmanager
def _two_node_cluster(tmp_path: Path, port: str, node_envs: tuple[dict, dict] = ({}, {})):
    """A head and a worker node of 1 CPU each on this machine, token auth on: (address, env). node_envs:
    variables of each node's own (what its Ray processes see, as a cluster's nodes see their own $TMPDIR)."""
    ray = shutil.which("ray", path=os.path.dirname(sys.executable))
    token = tmp_path / "token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    start = [ray, "start", "--num-cpus", "1", "--disable-usage-stats"]
    try:
        subprocess.run([*start, "--head", "--port", port, "--include-dashboard", "false"], env=env | node_envs[0],
                       check=True, capture_output=True)
        subprocess.run([*start, "--address", f"127.0.0.1:{port}"], env=env | node_envs[1], check=True,
                       capture_output=True)
        yield f"127.0.0.1:{port}", env
    finally:
        subprocess.run([ray, "stop", "--force"], env=env, capture_output=True)


@pytest.mark.slow
def test_two_node_cluster_spreads_trials(cache_dir, tmp_path):
    """A head and a worker node on this machine, token auth on; trials land on both nodes."""
    with _two_node_cluster(tmp_path, "6399") as (address, env):
        run = tmp_path / "run"
        proc = subprocess.run([sys.executable, "-m", "voxtune.cli", "tune", "--cache", str(cache_dir), "--out",
                               str(run), "--mode", "experiment", "--space", _space(tmp_path), "--epochs", "1",
                               "--workers", "2", "--address", address],
                              env=env, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-3000:]
        rows = _leaderboard(run)
        assert len(rows) == 4 and all(r["status"] == "finished" for r in rows)
        assert len({r["node"] for r in rows}) == 2
        assert json.loads((run / "summary.json").read_text())["nodes"] == 2


@pytest.mark.slow
def test_auto_grows_a_trial_across_two_nodes(cache_dir, tmp_path):
    """One trial on two 1-CPU nodes: at its first epoch end it starts warming a rank up on the other node's
    worker and joins it once ready, so its grown DDP group spans the nodes (gloo over the loopback addresses). With --stage '$NODE_SCRATCH', a
    folder of each node's own, each node stages the cache once and each rank reads its own node's copy;
    the copies are removed at the end."""
    space = tmp_path / "one.yaml"
    space.write_text("lr: {grid: [0.005]}\n")
    scratch = [tmp_path / "scratch-head", tmp_path / "scratch-worker"]
    node_envs = ({"NODE_SCRATCH": str(scratch[0])}, {"NODE_SCRATCH": str(scratch[1])})
    with _two_node_cluster(tmp_path, "6398", node_envs) as (address, env):
        run = tmp_path / "run"
        proc = subprocess.run([sys.executable, "-m", "voxtune.cli", "tune", "--cache", str(cache_dir), "--out",
                               str(run), "--mode", "auto", "--space", str(space), "--epochs", "30", "--workers", "2",
                               "--set", "batch_size=4", "--auto-regroup-s", "0", "--address", address,
                               "--stage", "$NODE_SCRATCH"],
                              env=env, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-3000:]
        (row,) = _leaderboard(run)
        records = json.loads((run / "trials" / row["trial_id"] / "metrics.json").read_text())
        ks = [r["workers"] for r in records]
        assert row["status"] == "finished" and ks[0] == 1 and 2 in ks
    from voxtune.data.stage import stage_folder

    copies = {str(stage_folder(s, cache_dir)) for s in scratch}
    staging = json.loads((run / "summary.json").read_text())["staging"]
    assert {s["path"] for s in staging.values()} == copies and all(s["files_copied"] > 0 for s in staging.values())
    caches = json.loads((run / "trials" / row["trial_id"] / "trial.json").read_text())["caches"]
    assert caches == sorted(copies)  # the grown group's two ranks, each on its node's copy
    assert proc.stdout.count("staging ") == 1 and all(not any(s.iterdir()) for s in scratch)  # removed


@pytest.mark.parametrize("args, expected", [
    (["--mode", "sideways"], "unknown --mode 'sideways'"),
    (["--mode", "hybrid", "--workers", "4"], "--workers-per-trial"),
    (["--mode", "hybrid", "--workers", "4", "--workers-per-trial", "3"], "must divide --workers 4"),
    (["--mode", "experiment", "--search", "optuna"], "--num-samples"),
    (["--mode", "experiment", "--scheduler", "hyper"], "unknown --scheduler"),
    (["--mode", "experiment", "--set", "colour=red"], "unknown config key 'colour'"),
    (["--mode", "data", "--workers", "2", "--workers-per-trial", "1"], "--mode data runs every trial over all"),
])
def test_bad_tune_arguments_are_one_line(args, expected, cache_dir, tmp_path, capsys):
    rc = main(["tune", "--cache", str(cache_dir), "--out", str(tmp_path / "run"), *args])
    assert rc == 2
    assert expected in _one_error_line(capsys)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("space, expected", [
    ("lr: {grid: []}\n", "needs a non-empty list"),
    ("lr: {uniform: [0.1]}\n", "needs [lo, hi]"),
    ("lr: {loguniform: [0, 0.1]}\n", "lo > 0"),
    ("norm: {grid: [bn, batch]}\n", "'batch' is not one of"),
    ("depthh: 3\n", "not a train-config key"),
    ("lr: {normal: [0, 1]}\n", "must be a constant or one of"),
    ("- lr\n", "expected a mapping"),
])
def test_bad_search_space_is_one_line(space, expected, cache_dir, tmp_path, capsys):
    path = tmp_path / "space.yaml"
    path.write_text(space)
    rc = main(["tune", "--cache", str(cache_dir), "--out", str(tmp_path / "run"), "--mode", "experiment",
               "--space", str(path)])
    assert rc == 2
    line = _one_error_line(capsys)
    assert expected in line and "space.yaml" in line


def test_out_holding_another_search_is_refused(cache_dir, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "search.json").write_text("{}")
    (run / "leaderboard.csv").write_text("keep me")
    rc = main(["tune", "--cache", str(cache_dir), "--out", str(run), "--mode", "experiment"])
    assert rc == 2
    assert "--resume" in _one_error_line(capsys)
    assert (run / "leaderboard.csv").read_text() == "keep me"


def test_resume_refuses_flags_that_differ_from_the_saved_search(cache_dir, tmp_path, capsys):
    """search.json decides a resumed search: a flag asking for something else would be silently ignored, so
    it is refused, naming it; the same command repeated with --resume (same values) goes through."""
    from voxtune.cli import _resume_conflicts, build_parser
    from voxtune.parallel.settings import SearchSettings
    from voxtune.parallel.space import PAPER_SPACE

    run = tmp_path / "run"
    run.mkdir()
    saved = SearchSettings(cache_dir=str(cache_dir), mode="experiment", space=PAPER_SPACE, workers=2,
                           base_config={"epochs": 3}, stage=str(tmp_path / "local")).checked()
    (run / "search.json").write_text(json.dumps(asdict(saved)))
    rc = main(["tune", "--out", str(run), "--resume", "--mode", "data", "--stage", str(tmp_path / "other")])
    assert rc == 2
    line = _one_error_line(capsys)
    assert "--mode, --stage" in line and "search.json" in line
    same = ["tune", "--out", str(run), "--resume", "--cache", str(cache_dir), "--mode", "experiment", "--workers", "2",
            "--epochs", "3", "--stage", str(tmp_path / "local"), "--address", "10.0.0.1:6379"]
    assert _resume_conflicts(build_parser().parse_args(same)) == []
    assert set(_resume_conflicts(build_parser().parse_args(same + ["--epochs", "4", "--set", "lr=0.5"]))) == {
        "--epochs", "--set"}


def test_missing_cache_is_one_line(tmp_path, capsys):
    rc = main(["tune", "--cache", str(tmp_path / "nope"), "--out", str(tmp_path / "run"), "--mode", "data"])
    assert rc == 2
    assert "voxtune prepare" in _one_error_line(capsys)
    assert not (tmp_path / "run").exists()


def test_the_driver_side_of_a_search_imports_neither_torch_nor_monai():
    """Every second the driver spends importing torch (~2 s) or MONAI (~4 s) delays the first trial; the
    modules it loads to run a search (trainable, DDP group, outputs, test evaluation) must stay light."""
    code = ("import sys, voxtune.cli, voxtune.parallel.tune, voxtune.parallel.trial, voxtune.parallel.ddp, "
            "voxtune.parallel.progress, voxtune.parallel.outputs; "
            "print(sorted(m for m in ('torch', 'monai', 'tensorboard', 'tensorboardX') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_unreachable_address_fails_fast_in_one_line(cache_dir, tmp_path, capsys):
    """Nothing listens on the port: one line within seconds, not Ray's minutes of GCS retries."""
    with socket.socket() as s:  # a port just freed: connections to it are refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.monotonic()
    rc = main(["tune", "--cache", str(cache_dir), "--out", str(tmp_path / "run"), "--mode", "experiment",
               "--address", f"127.0.0.1:{port}"])
    assert rc == 2
    line = _one_error_line(capsys)
    assert f"--address 127.0.0.1:{port}" in line and "ray start --head" in line
    assert time.monotonic() - started < 30
    assert not (tmp_path / "run").exists()


def test_local_ray_that_does_not_start_is_one_line(cache_dir, tmp_path, capsys, monkeypatch):
    """Ray gives its raylet a fixed 30 s to register (seen on a 2-core box under extra load): one line
    that says what to do, exit 2, and no half-made RUN."""
    import ray

    def overloaded(**kwargs):
        raise Exception("The current node timed out during startup. This could happen because some of the "
                        "raylet failed to startup or the GCS has become overloaded.")

    monkeypatch.setattr(ray, "init", overloaded)
    rc = main(["tune", "--cache", str(cache_dir), "--out", str(tmp_path / "run"), "--mode", "experiment"])
    assert rc == 2
    line = _one_error_line(capsys)
    assert "could not start a local Ray instance (The current node timed out during startup" in line
    assert "load average" in line and "ray start --head" in line
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_optuna_search_with_asha_scheduler(cache_dir, tmp_path):
    """Optuna samples from a continuous space; ASHA may stop trials early (status 'stopped')."""
    space = tmp_path / "space.yaml"
    space.write_text("lr: {loguniform: [0.0005, 0.01]}\nnorm: {choice: [bn, gn]}\n")
    run = tmp_path / "run"
    rc = main(["tune", "--cache", str(cache_dir), "--out", str(run), "--mode", "experiment", "--space", str(space),
               "--search", "optuna", "--num-samples", "4", "--scheduler", "asha", "--epochs", "4",
               "--workers", "2"])
    assert rc == 0
    rows = _leaderboard(run)
    assert len(rows) == 4
    assert {r["status"] for r in rows} <= {"finished", "stopped"} and "finished" in {r["status"] for r in rows}
    for row in rows:
        assert 0.0005 <= float(row["lr"]) <= 0.01 and row["norm"] in ("bn", "gn")
        epochs = _read_epochs(run, row["trial_id"])
        assert epochs == list(range(1, int(row["epochs"]) + 1))
        assert len(epochs) == 4 or row["status"] == "stopped"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["search"] == "optuna" and summary["scheduler"] == "asha"


@pytest.mark.slow
def test_asha_stopped_trial_leaves_its_ddp_group_to_the_next(cache_dir, tmp_path):
    """Data mode under ASHA: the trial ASHA stops early ends cleanly, and the next trial reuses the same
    actor and DDP process group instead of starting a new one."""
    space = tmp_path / "space.yaml"  # trials run one at a time, in this order: a good, a hopeless, a good lr
    space.write_text("lr: {grid: [0.005, 0.0000001, 0.003]}\nnorm: gn\n")
    run = tmp_path / "run"
    rc = main(["tune", "--cache", str(cache_dir), "--out", str(run), "--mode", "data", "--space", str(space),
               "--scheduler", "asha", "--epochs", "4", "--workers", "2"])
    assert rc == 0
    rows = {r["lr"]: r for r in _leaderboard(run)}
    assert rows["1e-07"]["status"] == "stopped" and int(rows["1e-07"]["epochs"]) < 4
    assert rows["0.005"]["status"] == "finished" and rows["0.003"]["status"] in ("finished", "stopped")
    infos = [json.loads((run / "trials" / r["trial_id"] / "trial.json").read_text()) for r in rows.values()]
    assert len({i["group_id"] for i in infos}) == 1 and all(i["attempts"] == 1 for i in infos)


def _read_epochs(run: Path, trial_id: str) -> list[int]:
    return [r["epoch"] for r in json.loads((run / "trials" / trial_id / "metrics.json").read_text())]


def test_grid_repeats_are_distinct_trials():
    """--num-samples N on a grid runs each point with N seeds (base seed, +1, ...), not N copies."""
    from voxtune.parallel.settings import SearchSettings
    from voxtune.parallel.space import count_trials
    from voxtune.errors import VoxtuneError

    s = SearchSettings(cache_dir=".", space={"lr": {"grid": [0.001, 0.005]}}, num_samples=3,
                       base_config={"seed": 7}).checked()
    assert s.trial_space() == {"lr": {"grid": [0.001, 0.005]}, "seed": {"grid": [7, 8, 9]}}
    assert s.tune_samples == 1 and count_trials(s.space, s.search, s.num_samples) == 6
    assert SearchSettings(cache_dir=".", space={"lr": {"grid": [0.001]}}).checked().trial_space() == {"lr": {"grid": [0.001]}}
    with pytest.raises(VoxtuneError, match="searches 'seed' already"):
        SearchSettings(cache_dir=".", space={"seed": {"grid": [0, 1]}}, num_samples=2).checked()


def test_rendezvous_port_is_held_from_the_moment_it_is_chosen():
    """The old way picked a free port, released it, and bound it again later: a group starting beside it
    could take it in between. The store listens on the port it reports."""
    from voxtune.parallel.ddp import master_store

    stores = [master_store("127.0.0.1", 2) for _ in range(3)]
    assert len({s.port for s in stores}) == 3
    for store in stores:
        with socket.socket() as other, pytest.raises(OSError):
            other.bind(("127.0.0.1", store.port))


def test_a_failing_rank_names_itself_and_only_deaths_are_retried():
    import ray

    from voxtune.errors import VoxtuneError
    from voxtune.parallel.ddp import RankFailed, failure_of

    wrapped = ray.exceptions.RayTaskError("fit", "traceback", VoxtuneError("cases/BRATS_004.image.npy: does not match"))
    failure = failure_of(1, wrapped)
    assert isinstance(failure, VoxtuneError) and str(failure) == "rank 1: cases/BRATS_004.image.npy: does not match"
    oom = failure_of(2, ray.exceptions.RayTaskError("fit", "traceback", MemoryError("out of memory")))
    assert isinstance(oom, RankFailed) and str(oom) == "rank 2: MemoryError: out of memory"  # retried, as on rank 0
    died = failure_of(1, ray.exceptions.RayActorError())
    assert isinstance(died, RankFailed) and str(died).startswith("rank 1's worker died: RayActorError")


def test_modes_own_their_rules_and_tune_trains_the_global_batch_by_default(capsys):
    """One word, one meaning: K per mode, the mode of a (W, K) split and each DDP recipe's config come from
    voxtune.parallel.modes, for tune as for bench. Checking returns a checked copy and changes nothing."""
    from voxtune.errors import VoxtuneError
    from voxtune.parallel import modes
    from voxtune.parallel.settings import SearchSettings

    def settings(**kw):
        return SearchSettings(cache_dir=".", space={"lr": {"grid": [0.001]}}, workers=2, **kw)

    given = settings(mode="data", base_config={"batch_size": 4})
    checked = given.checked()
    assert (given.workers_per_trial, given.ddp_recipe) == (None, None)  # untouched
    assert (checked.workers_per_trial, checked.ddp_recipe) == (2, "global-batch")
    assert (checked.trial_config().batch_size, checked.trial_config().scale_lr) == (2, False)
    assert settings(mode="data", ddp_recipe="per-rank").checked().trial_config().batch_size == 2  # the default 2, whole
    assert settings(mode="data", ddp_recipe="scale-lr").checked().trial_config().scale_lr is True
    assert settings(mode="data", base_config={"scale_lr": True}).checked().ddp_recipe == "scale-lr"  # as configured
    assert settings(mode="experiment").checked().ddp_recipe is None
    assert settings(mode="data", base_config={"loss": "batch_dice", "scale_lr": True}).checked()  # the paper's
    assert [modes.mode_of(4, k) for k in (1, 2, 4)] == ["experiment", "hybrid", "data"]
    for bad, message in ((settings(mode="experiment", ddp_recipe="global-batch"), "no DDP ranks"),
                         (settings(mode="data", ddp_recipe="global-batch", base_config={"scale_lr": True}),
                          "is the scale-lr recipe"),
                         (settings(mode="data", base_config={"batch_size": 3}), "batch_size 3 over 2 ranks"),
                         (settings(mode="data", ddp_recipe="half"), "choose from global-batch, scale-lr, per-rank"),
                         (settings(mode="data", base_config={"loss": "batch_dice"}), "not the global batch's"),
                         (SearchSettings(cache_dir=".", space={"loss": {"grid": ["dice", "batch_dice"]}}, workers=2,
                                         mode="data"), "loss batch_dice under --ddp-recipe global-batch")):
        with pytest.raises(VoxtuneError, match=message):
            bad.checked()
    with pytest.raises(SystemExit):  # argparse refuses a recipe it does not know, with its own one line
        main(["tune", "--cache", ".", "--out", "x", "--mode", "data", "--ddp-recipe", "half"])


def test_a_search_saved_before_recipes_resumes_as_it_was_trained(tmp_path):
    """search.json of an older voxtune has no ddp_recipe: its DDP trials took the full batch per rank."""
    from voxtune.parallel.settings import SearchSettings
    from voxtune.parallel.tune import _search_settings

    run = tmp_path / "run"
    run.mkdir()
    old = asdict(SearchSettings(cache_dir=str(tmp_path), mode="data", workers=2, space={"lr": 0.001}))
    del old["ddp_recipe"]
    (run / "search.json").write_text(json.dumps(old))
    resumed = _search_settings(run, None, resume=True)
    assert resumed.ddp_recipe == "per-rank" and resumed.trial_config().batch_size == 2


def test_a_trial_process_counts_torch_dynamo_among_its_imports_not_its_model_build():
    """torch.optim's first Optimizer imports torch._dynamo (~1 s); the start-up breakdown is honest only if
    the trial's import step has paid it before the model's build is timed. A fresh interpreter: this one
    may have imported it already."""
    probe = ("import sys; from voxtune.parallel.ddp import import_loop; import_loop(); "
             "print('torch._dynamo' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "True"
