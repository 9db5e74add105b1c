"""Killed workers, killed jobs, Ctrl-C, NaN trials and bad inputs: nothing finished is lost.

These tests really kill processes: a trial's worker with SIGKILL mid-epoch, the whole job
(driver and its local Ray cluster, one process group) with SIGKILL, then `--resume`.
"""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from sigdefault import default_sigint
from voxtune.cli import main

FAULTS = Path(__file__).parent / "faults"


def _tune(run: Path, cache: Path, space: str, *extra: str, env: dict | None = None) -> subprocess.Popen:
    (run.parent / "space.yaml").write_text(space)
    cmd = [sys.executable, "-m", "voxtune.cli", "tune", "--cache", str(cache), "--out", str(run),
           "--space", str(run.parent / "space.yaml"), *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, env={**os.environ, **(env or {})},
                            preexec_fn=default_sigint)


def _read(path: Path, default=None):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return default


def _wait_for(predicate, proc: subprocess.Popen, timeout: float = 240.0):
    end = time.time() + timeout
    while time.time() < end:
        found = predicate()
        if found:
            return found
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.1)
    raise AssertionError("timed out waiting for the search")


def _trials(run: Path) -> dict[str, dict]:
    return {p.parent.name: info for p in (run / "trials").glob("*/trial.json") if (info := _read(p))}


def _epochs(run: Path, trial_id: str) -> list[int]:
    return [r["epoch"] for r in _read(run / "trials" / trial_id / "metrics.json", [])]


def _leaderboard(run: Path) -> list[dict]:
    with open(run / "leaderboard.csv") as f:
        return list(csv.DictReader(f))


def _finish(proc: subprocess.Popen, timeout: float = 300.0) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


@pytest.mark.slow
@pytest.mark.parametrize("mode, rank", [("experiment", 0), ("data", 1), ("auto", 1)])
def test_killed_worker_is_retried_from_its_checkpoint(mode, rank, cache_dir, tmp_path):
    """SIGKILL one rank mid-trial: the trial restarts from its last epoch, each epoch recorded once. (auto:
    the trial alone on 2 workers has grown to 2 ranks; it loses the lent one and goes on.)"""
    run = tmp_path / "run"
    epochs = 30 if mode == "auto" else 8  # (auto: epochs enough for the warm rank to join; ~0.3 s each)
    proc = _tune(run, cache_dir, "lr: {grid: [0.002]}\n", "--mode", mode, "--workers", "2", "--epochs", str(epochs),
                 *(["--set", "batch_size=4", "--auto-regroup-s", "0"] if mode == "auto" else []))

    after = 1 if mode == "auto" else 2  # (auto: grown once its warm rank joined, maybe back an epoch later)

    def running_at_epoch_2():
        for trial_id, info in _trials(run).items():
            if len(_epochs(run, trial_id)) >= after and info["status"] == "running" and len(info["pids"]) > rank:
                return trial_id, info
        return None

    trial_id, info = _wait_for(running_at_epoch_2, proc)
    os.kill(info["pids"][rank], signal.SIGKILL)
    rc, out, err = _finish(proc)
    assert rc == 0, err[-3000:]
    assert _epochs(run, trial_id) == list(range(1, epochs + 1))
    final = _read(run / "trials" / trial_id / "trial.json")
    assert final["status"] == "finished" and final["attempts"] == 2
    row = _leaderboard(run)[0]
    assert row["status"] == "finished" and row["epochs"] == str(epochs)


@pytest.mark.slow
@pytest.mark.parametrize("mode, folds", [("experiment", 1), ("auto", 1), ("experiment", 2)])
def test_killed_job_resumes_without_redoing_finished_trials(mode, folds, cache_dir, tmp_path):
    """(folds 2: every fold model of a config goes on from its own last epoch, on the same folds.)"""
    run = tmp_path / "run"
    space = "lr: {grid: [0.001, 0.005]}\nnorm: {grid: [bn, gn]}\n"
    proc = _tune(run, cache_dir, space, "--mode", mode, "--workers", "2", "--epochs", "4", "--folds", str(folds))

    def one_finished_one_midway():
        trials = _trials(run)
        done = [t for t, i in trials.items() if i["status"] == "finished"]
        midway = [t for t, i in trials.items() if i["status"] == "running" and _epochs(run, t)]
        return (done, midway) if done and midway else None

    done, midway = _wait_for(one_finished_one_midway, proc)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and its local Ray cluster, as SLURM would
    proc.communicate()
    kept = {p: p.stat().st_mtime_ns for t in done for p in (run / "trials" / t).rglob("*") if p.is_file()}
    assert kept

    rc, out, err = _finish(_tune(run, cache_dir, space, "--resume"))
    assert rc == 0, err[-3000:]
    rows = _leaderboard(run)
    assert len(rows) == 4 and all(r["status"] == "finished" and r["epochs"] == "4" for r in rows)
    for row in rows:
        assert _epochs(run, row["trial_id"]) == [1, 2, 3, 4]
        for fold in range(folds if folds > 1 else 0):
            assert _epochs(run, f"{row['trial_id']}/folds/{fold}") == [1, 2, 3, 4]
    if folds > 1:
        assert all(len(r["val_dice_folds"].split(";")) == folds for r in rows)
    assert {p: p.stat().st_mtime_ns for p in kept} == kept  # finished trials untouched
    assert _read(run / "best.json")["trial_id"] == rows[0]["trial_id"]


@pytest.mark.slow
def test_ctrl_c_writes_the_leaderboard_and_says_how_to_resume(cache_dir, tmp_path):
    run = tmp_path / "run"
    space = "lr: {grid: [0.001, 0.005]}\n"
    proc = _tune(run, cache_dir, space, "--mode", "experiment", "--workers", "2", "--epochs", "6")
    _wait_for(lambda: any(_epochs(run, t) for t in _trials(run)), proc)
    os.kill(proc.pid, signal.SIGINT)
    rc, out, err = _finish(proc)
    assert rc == 130
    assert f"voxtune tune --out {run} --resume" in err
    rows = _leaderboard(run)
    assert len(rows) == 2 and {r["status"] for r in rows} == {"interrupted"}
    assert "Traceback" not in err

    rc, out, err = _finish(_tune(run, cache_dir, space, "--resume"))
    assert rc == 0, err[-3000:]
    for row in _leaderboard(run):
        assert row["status"] == "finished" and _epochs(run, row["trial_id"]) == list(range(1, 7))


# The fault matrix: {a damaged cache file, a full disk, a VoxtuneError of the loop (a NaN loss)} x {before
# the trial's first report (epoch 1), after it (epoch 2)} x {experiment, data with the fault on rank 0 or 1},
# each cell a trial of its own (keyed by lr, see faults/sitecustomize.py) in one search per mode, beside a
# healthy trial. A full disk is a rank-0 cell only: rank 0 writes everything, other ranks nothing. The DDP
# cells run as hybrid, 2 trials at once of 2 ranks each: the same trial and worker group as data mode's,
# in half the time.
_REASONS = {"nan": "training loss became nan at epoch {epoch}", "file": "unreadable",
            "disk": "no space left on its device"}
_MATRIX = {
    "experiment": [(kind, epoch, 0) for kind in ("file", "disk", "nan") for epoch in (1, 2)],
    "hybrid": [(kind, epoch, rank) for kind in ("file", "nan") for epoch in (1, 2) for rank in (0, 1)]
            + [("disk", epoch, 0) for epoch in (1, 2)],
}


_HOOKS_TAKEN = """
import voxtune.data.cache, voxtune.data.loader, voxtune.files, voxtune.train.build, voxtune.train.loop
assert voxtune.train.build.make_loss.__name__ == "_nan_loss", "nan"
assert voxtune.data.cache._file.__module__ == "sitecustomize", "file"
assert voxtune.files.open.__module__ == "sitecustomize", "disk"
assert voxtune.train.loop.fit.__module__ == "sitecustomize", "fit"
"""


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["experiment", "hybrid"])
def test_a_trials_own_error_at_any_epoch_on_any_rank_fails_that_trial_only(mode, cache_dir, tmp_path):
    cells = {repr(round(0.0011 + 0.0001 * i, 4)): cell for i, cell in enumerate(_MATRIX[mode])}
    lrs = ["0.001", *cells]
    # Hybrid: a global batch of 4, so that rank 1 trains too (on CPU a rank takes 2 cases of a batch or none).
    workers = ["--workers", "2"] if mode == "experiment" else \
        ["--workers", "4", "--workers-per-trial", "2", "--cpus-per-worker", "0.5", "--set", "batch_size=4"]
    env = {"PYTHONPATH": os.pathsep.join([str(FAULTS), os.environ.get("PYTHONPATH", "")]),
           "VOXTUNE_FAULTS": json.dumps(cells)}
    # The hooks must take: Python swallows an error in sitecustomize, and a search without its faults passes.
    hooked = subprocess.run([sys.executable, "-c", _HOOKS_TAKEN], env={**os.environ, **env}, capture_output=True,
                            text=True)
    assert hooked.returncode == 0 and "Error in sitecustomize" not in hooked.stderr, hooked.stderr[-2000:]
    run = tmp_path / "run"
    # ASHA in one of the two: a trial that fails never reaches its rungs, and must not break them.
    scheduler = "asha" if mode == "experiment" else "fifo"
    t0 = time.time()
    rc, out, err = _finish(_tune(run, cache_dir, f"lr: {{grid: [{', '.join(lrs)}]}}\n", "--mode", mode,
                                 *workers, "--epochs", "2", "--scheduler", scheduler, env=env), timeout=500)
    assert rc == 0, err[-3000:]  # some trial finished: the search succeeded, with its failures counted
    assert "Traceback" not in err, err[-3000:]
    assert f"{len(lrs)} trials: " in out and f"{len(cells)} failed" in out, out[-2000:]
    rows = {r["lr"]: r for r in _leaderboard(run)}
    assert set(rows) == set(lrs)
    assert rows["0.001"]["status"] in ("finished", "stopped") and rows["0.001"]["val_dice"] != ""
    for lr, (kind, epoch, rank) in cells.items():
        row = rows[lr]
        info = _read(run / "trials" / row["trial_id"] / "trial.json")
        where = f"{kind} at epoch {epoch} on rank {rank}"
        assert row["status"] == "error", where
        assert _REASONS[kind].format(epoch=epoch) in row["reason"], (where, row["reason"])
        if kind == "file":  # (a NaN loss is all-reduced: every rank stops, and the first to say so names it)
            assert row["reason"].startswith("rank 1: ") == (rank == 1), (where, row["reason"])
        assert info["attempts"] == 1, where  # not retried
        assert _epochs(run, row["trial_id"]) == list(range(1, epoch)), where  # nothing trained after it
        assert info["end_ts"] - t0 < 240, where


def _plan(run: Path, cache: str, workers: int, **config):
    """What the driver hands a trial (voxtune.parallel.settings.TrialPlan), for calling run_trial directly."""
    from voxtune.config import make_config
    from voxtune.parallel.settings import TrialPlan

    return TrialPlan(run_dir=str(run), cache_dir=cache, config=make_config(config), workers_per_trial=workers,
                     cpus=1, gpus=0, searched=(), folders={}, search_id="test")


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


def test_trial_killed_after_its_last_checkpoint_still_reports_its_metric(cache_dir, tmp_path, monkeypatch):
    """The job died between the last epoch's checkpoint and trial.json saying "finished": on resume the
    trial trains nothing, and Tune must still get its val_dice (else Tune fails the whole search)."""
    from types import SimpleNamespace

    from voxtune.config import make_config
    from voxtune.parallel import trial as T
    from voxtune.parallel.ddp import WorkerGroup
    from voxtune.train.loop import fit

    out = tmp_path / "run" / "trials" / "t1"
    done = fit(make_config({"epochs": 2}), cache_dir, out, threads=1)
    (out / "trial.json").write_text(json.dumps({"trial_id": "t1", "status": "running", "attempts": 1}))
    reports: list[dict] = []
    monkeypatch.setattr(T.tune, "report", reports.append)
    monkeypatch.setattr(T.tune, "get_context", lambda: SimpleNamespace(get_trial_id=lambda: "t1"))
    monkeypatch.setattr(T.ray, "get_runtime_context", lambda: SimpleNamespace(get_node_id=lambda: "node"))
    monkeypatch.setattr(T, "_GROUP", WorkerGroup(1, 1, 0))
    T.run_trial({}, _plan(tmp_path / "run", str(cache_dir), 1, epochs=2))
    assert [r["epoch"] for r in reports] == [2]
    assert reports[0]["val_dice"] == done["metrics"][-1]["val_dice"]
    info = _read(out / "trial.json")
    assert info["status"] == "finished" and info["attempts"] == 2
    assert _epochs(tmp_path / "run", "t1") == [1, 2]
    import ray

    assert not ray.is_initialized()  # a one-rank group needs no Ray, and must not start one here


def test_peer_dying_as_tune_tears_down_a_stopped_trial_is_not_an_error(tmp_path, monkeypatch):
    """ASHA stops a data-parallel trial and Tune, with nothing to reuse the actor for, removes its
    placement group: the peer dies under rank 0's last ray.get. The trial is "stopped", not "error",
    and its thread ends with SystemExit(0), as Tune's function runner expects."""
    from types import SimpleNamespace

    import ray

    from voxtune.parallel import trial as T

    out = tmp_path / "run" / "trials" / "t1"
    out.mkdir(parents=True)
    (out / "metrics.json").write_text(json.dumps([{"epoch": 1, "val_dice": 0.4, "epoch_time_s": 1.5}]))

    def stopped_by_scheduler(record):
        raise SystemExit(0)  # what tune.report does in a trial Tune has decided to stop

    class TornDownGroup:
        nodes, node_ids, group_id, pids = ["n0", "n1"], ["id0", "id1"], "g", [1, 2]

        def fit(self, cfg, cache_dir, out_dir, report, staged=None):
            assert report({"epoch": 1, "val_dice": 0.4}) is True  # told to stop
            raise ray.exceptions.RayActorError()  # the peer, killed with the placement group

    monkeypatch.setattr(T.tune, "report", stopped_by_scheduler)
    monkeypatch.setattr(T.tune, "get_context", lambda: SimpleNamespace(get_trial_id=lambda: "t1"))
    monkeypatch.setattr(T.ray, "get_runtime_context", lambda: SimpleNamespace(get_node_id=lambda: "node"))
    monkeypatch.setattr(T, "_GROUP", TornDownGroup())
    with pytest.raises(SystemExit) as exit_:
        T.run_trial({}, _plan(tmp_path / "run", "unused", 2))
    assert exit_.value.code == 0
    info = _read(out / "trial.json")
    assert info["status"] == "stopped" and info["epochs"] == 1 and info["train_time_s"] == 1.5
    assert T._GROUP is None  # a torn-down group is never handed to another trial


def test_a_stop_is_on_disk_before_the_ranks_are_told_to_leave(tmp_path, monkeypatch):
    """With no next trial, Tune may kill the stopped trial's actor while its ranks are still leaving:
    trial.json must already say "stopped" when report() returns."""
    from types import SimpleNamespace

    from voxtune.parallel import trial as T

    out = tmp_path / "run" / "trials" / "t1"

    seen: list[dict] = []

    class KilledGroup:
        nodes, node_ids, group_id, pids = ["n0"], ["id0"], "g", [1]

        def fit(self, cfg, cache_dir, out_dir, report, staged=None):
            records = []
            for epoch, stop in ((1, False), (2, True)):  # as fit does: metrics.json first, then report
                records.append({"epoch": epoch, "val_dice": 0.5, "epoch_time_s": 1.0})
                (out / "metrics.json").write_text(json.dumps(records))
                assert report(records[-1]) is stop
            seen.append(_read(out / "trial.json"))
            raise KeyboardInterrupt  # stands for the kill: nothing after this line runs

    monkeypatch.setattr(T.tune, "get_context", lambda: SimpleNamespace(get_trial_id=lambda: "t1"))
    monkeypatch.setattr(T.ray, "get_runtime_context", lambda: SimpleNamespace(get_node_id=lambda: "node"))
    monkeypatch.setattr(T, "_GROUP", KilledGroup())
    calls = iter([None, SystemExit(0)])  # Tune lets epoch 1 through and stops the trial at epoch 2

    def report(record):
        exc = next(calls)
        if exc:
            raise exc

    monkeypatch.setattr(T.tune, "report", report)
    with pytest.raises(SystemExit):
        T.run_trial({}, _plan(tmp_path / "run", "unused", 1))
    assert seen[0]["status"] == "stopped" and seen[0]["epochs"] == 2 and seen[0]["end_ts"] > 0


def test_driver_settles_trials_tune_ended_without_their_last_write(tmp_path):
    """After a search that ran to its end, no trial is left 'running' (which would read as an interrupted
    search, exit 130): Tune's verdict, stopped or finished, is written; trials whose workers kept dying
    and trials that never started get Tune's error as one plain line; a trial's own error is kept."""
    from types import SimpleNamespace

    from voxtune.parallel import state
    from voxtune.parallel.settings import SearchSettings
    from voxtune.parallel.tune import _settle_trials

    run = tmp_path / "run"

    def trial(tid, status, epochs, **fields):
        d = run / "trials" / tid
        d.mkdir(parents=True)
        (d / "trial.json").write_text(json.dumps({"trial_id": tid, "status": status, "config": {"lr": 0.1},
                                                  **fields}))
        (d / "metrics.json").write_text(json.dumps([{"epoch": e, "val_dice": 0.5, "epoch_time_s": 1.0}
                                                    for e in range(1, epochs + 1)]))

    trial("asha_stopped", "running", 2)
    trial("killed_after_last_epoch", "running", 4)
    trial("died", "running", 1)
    trial("diverged", "error", 1, reason="loss became nan at epoch 1")
    trial("done", "finished", 4)
    settings = SearchSettings(cache_dir="unused", space={"lr": {"grid": [0.1]}}, base_config={"epochs": 4})

    class RayActorError(Exception):
        pass

    def result(tid, error=None):
        return SimpleNamespace(path=str(tmp_path / "ray" / tid), config={"lr": 0.1}, error=error)

    wrapped = RayActorError("\x1b[31mThe actor died unexpectedly before finishing this task.\x1b[0m\n\tclass_name: X")
    results = [result("asha_stopped"), result("killed_after_last_epoch"), result("died", wrapped),
               result("diverged"), result("done"), result("never_ran", SimpleNamespace(cause=ValueError("no bundle")))]
    _settle_trials(run, settings, results, {}, interrupted=False)
    got = {t: state.read(run / "trials" / t) for t in ("asha_stopped", "killed_after_last_epoch", "died",
                                                        "diverged", "done", "never_ran")}
    assert got["asha_stopped"]["status"] == "stopped" and got["asha_stopped"]["epochs"] == 2
    assert got["asha_stopped"]["train_time_s"] == 2.0 and got["asha_stopped"]["end_ts"] > 0
    assert got["killed_after_last_epoch"]["status"] == "finished"
    assert got["died"] == {**got["died"], "status": "error",
                           "reason": "RayActorError: The actor died unexpectedly before finishing this task."}
    assert got["diverged"]["reason"] == "loss became nan at epoch 1"
    assert got["done"]["status"] == "finished"
    assert got["never_ran"]["status"] == "error" and got["never_ran"]["reason"] == "never started: ValueError: no bundle"


def test_trial_state_moves_only_along_the_diagram(tmp_path):
    from voxtune.parallel import state

    d = tmp_path / "t"
    d.mkdir()
    with pytest.raises(state.InvalidTransition):
        state.write(d, node="n")  # no fields before a state
    state.start_attempt(d, "t", {"lr": 0.1})
    state.write(d, pids=[1, 2])
    state.end(d, "interrupted")
    assert state.start_attempt(d, "t", {"lr": 0.1})["attempts"] == 2
    state.end(d, "finished", epochs=3)
    for later in ("running", "error", "stopped"):
        with pytest.raises(state.InvalidTransition):
            state.write(d, later)
    with pytest.raises(state.InvalidTransition):
        state.write(tmp_path / "u", "paused")
    info = state.read(d)
    assert (info["status"], info["attempts"], info["pids"], info["epochs"]) == ("finished", 2, [1, 2], 3)


def test_only_the_state_module_writes_trial_json():
    """trial.json has one writer: every other module goes through voxtune.parallel.state. Its name lives in
    voxtune.layout (which names every file and writes none); its path is asked for only by the writer."""
    import re

    src = Path(__file__).resolve().parents[1] / "src" / "voxtune"
    texts = {p.relative_to(src).as_posix(): p.read_text() for p in src.rglob("*.py")}
    assert [n for n, t in texts.items() if '"trial.json"' in t] == ["layout.py"]
    writers = [n for n, t in texts.items() if re.search(r"\)\.state\b", t)]  # TrialDir(...).state
    assert writers == ["parallel/state.py"]


def test_cache_file_failing_its_checksum_is_one_line(cache_copy, tmp_path, capsys):
    manifest = _read(cache_copy / "manifest.json")
    case = next(c for c in manifest["cases"] if c["split"] == "train")
    image = cache_copy / case["files"]["image"]
    array = np.load(image)
    array.flat[0] += 1.0
    np.save(image, array)
    rc = main(["train", "--cache", str(cache_copy), "--out", str(tmp_path / "run"), "--epochs", "1"])
    assert rc == 2
    line = _one_line(capsys)
    assert case["id"] in line and "voxtune prepare" in line


def test_incompatible_cache_version_is_one_line(cache_copy, tmp_path, capsys):
    manifest = _read(cache_copy / "manifest.json")
    manifest["version"] = 999
    (cache_copy / "manifest.json").write_text(json.dumps(manifest))
    assert main(["train", "--cache", str(cache_copy), "--out", str(tmp_path / "run")]) == 2
    assert "voxtune prepare" in _one_line(capsys)


def test_resume_without_a_search_is_one_line(tmp_path, capsys):
    assert main(["tune", "--out", str(tmp_path / "run"), "--resume"]) == 2
    assert "no search to resume" in _one_line(capsys)


def test_yaml_is_loaded_safely(tmp_path, capsys):
    evil = tmp_path / "train.yaml"
    evil.write_text("lr: !!python/object/apply:os.system ['touch pwned']\n")
    assert main(["train", "--cache", str(tmp_path), "--out", str(tmp_path / "run"), "--config", str(evil)]) == 2
    assert "not readable as YAML" in _one_line(capsys)
    assert not Path("pwned").exists()


def test_checkpoints_load_weights_only(tmp_path):
    """A checkpoint that would run code on load is refused, not executed."""
    import torch

    from voxtune.errors import VoxtuneError
    from voxtune.train.checkpoint import load_checkpoint

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    torch.save({"model": Evil()}, tmp_path / "last.pt")
    with pytest.raises(VoxtuneError, match="not a readable voxtune checkpoint"):
        load_checkpoint(tmp_path / "last.pt")
    assert not (tmp_path / "pwned").exists()


@pytest.fixture(scope="module")
def two_val_cache(msd_dir, tmp_path_factory):
    """The 8-case phantoms split 4 / 2 / 2, so that two DDP ranks each validate a case of their own."""
    from voxtune.data.prepare import prepare

    out = tmp_path_factory.mktemp("two_val") / "cache"
    assert prepare(msd_dir, out, split=(0.5, 0.25, 0.25)).ok
    return out


@pytest.mark.slow
@pytest.mark.parametrize("mode, damage", [("data", "flip"), ("experiment", "truncate")])
def test_a_damaged_validation_file_fails_every_trial_in_seconds(mode, damage, two_val_cache, tmp_path):
    """A validation case is damaged before any trial reports (data: only rank 1 reads it, while rank 0
    waits in its first all-reduce). Every trial ends 'error' with the file's one line, within seconds and
    without retries (no gloo timeout after 10 minutes); the search goes on to its next trial, writes its
    leaderboard, and exits 2 (all failed) with one line and no traceback."""
    import shutil

    cache = Path(shutil.copytree(two_val_cache, tmp_path / "cache"))
    manifest = _read(cache / "manifest.json")
    rank1_case = [c for c in manifest["cases"] if c["split"] == "val"][1]
    image = cache / rank1_case["files"]["image"]
    if damage == "flip":
        data = bytearray(image.read_bytes())
        data[200] ^= 0xFF
        image.write_bytes(bytes(data))
    else:
        os.truncate(image, 4096)
    run = tmp_path / "run"
    t0 = time.time()
    rc, out, err = _finish(_tune(run, cache, "lr: {grid: [0.001]}\nnorm: {grid: [bn, gn]}\n", "--mode", mode,
                                 "--workers", "2", "--epochs", "2"))
    assert rc == 2, err[-3000:]  # every trial failed: one line, exit 2
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("voxtune tune: error: all 2 trials"), err
    assert time.time() - t0 < 90
    rows = _leaderboard(run)
    assert len(rows) == 2  # the search went on after the first trial failed
    prefix = "rank 1: " if mode == "data" else ""
    for row in rows:
        info = _read(run / "trials" / row["trial_id"] / "trial.json")
        assert row["status"] == "error" and info["attempts"] == 1
        assert row["reason"].startswith(f"{prefix}{image}: does not match the manifest"), row["reason"]
        assert info["end_ts"] - info["attempt_start_ts"] < 60
    assert _read(run / "summary.json")["status"] == {"error": 2}


@pytest.mark.slow
def test_sigterm_interrupts_the_driver_like_ctrl_c(cache_dir, tmp_path):
    """What scancel and a time limit send: the leaderboard so far, exit 130, the --resume line, and no
    line advising to turn Ray's authentication off."""
    run = tmp_path / "run"
    proc = _tune(run, cache_dir, "lr: {grid: [0.001, 0.005]}\n", "--mode", "experiment", "--workers", "2",
                 "--epochs", "10")
    _wait_for(lambda: any(_epochs(run, t) for t in _trials(run)), proc)
    os.kill(proc.pid, signal.SIGTERM)
    rc, out, err = _finish(proc)
    assert rc == 130, err[-3000:]
    assert f"voxtune tune --out {run} --resume" in err and "Traceback" not in err
    assert "RAY_AUTH_MODE=disabled" not in out + err and "opt out" not in out + err
    assert {r["status"] for r in _leaderboard(run)} == {"interrupted"}


@pytest.mark.slow
def test_a_driver_ended_by_ray_as_the_stop_came_is_still_an_interrupt(cache_dir, tmp_path):
    """A plain scancel: TERM reaches the command and its Ray cluster at once, and Ray ends the driver
    (its child process) before the driver can save anything. The command writes the leaderboard itself,
    exits 130 with the resume line, and --resume continues every trial."""
    run = tmp_path / "run"
    space = "lr: {grid: [0.001, 0.005]}\n"
    proc = _tune(run, cache_dir, space, "--mode", "experiment", "--workers", "2", "--epochs", "3")
    _wait_for(lambda: any(_epochs(run, t) for t in _trials(run)), proc)
    driver = int(Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()[0])
    os.kill(driver, signal.SIGKILL)  # as Ray's exit when its raylet stops: no handler runs
    os.kill(proc.pid, signal.SIGTERM)
    rc, out, err = _finish(proc)
    assert rc == 130, err[-3000:]
    assert f"voxtune tune --out {run} --resume" in err and "Traceback" not in err
    assert not (run / "best.json").exists()
    assert {r["status"] for r in _leaderboard(run)} == {"interrupted"}
    assert _read(run / "summary.json")["interrupted"] is True

    rc, out, err = _finish(_tune(run, cache_dir, space, "--resume"))
    assert rc == 0, err[-3000:]
    for row in _leaderboard(run):
        assert row["status"] == "finished" and _epochs(run, row["trial_id"]) == [1, 2, 3]


@pytest.mark.slow
def test_a_second_ctrl_c_stops_at_once_with_the_outputs_written(cache_dir, tmp_path):
    run = tmp_path / "run"
    proc = _tune(run, cache_dir, "lr: {grid: [0.001, 0.005]}\n", "--mode", "experiment", "--workers", "2",
                 "--epochs", "10")
    _wait_for(lambda: any(_epochs(run, t) for t in _trials(run)), proc)
    os.kill(proc.pid, signal.SIGINT)
    time.sleep(0.3)  # two at once would be one: a process notes a signal, not how often it came
    os.kill(proc.pid, signal.SIGINT)
    rc, out, err = _finish(proc, timeout=30)
    assert rc == 130, err[-3000:]
    assert "stopping now" in err and f"voxtune tune --out {run} --resume" in err and "Traceback" not in err
    assert {r["status"] for r in _leaderboard(run)} == {"interrupted"}


@pytest.mark.slow
def test_resume_recovers_trials_tune_never_saved(cache_dir, tmp_path):
    """The job died before Ray Tune first saved its state: --resume starts Tune afresh (new trial ids),
    and each trial continues in its own folder from its checkpoint; none is left 'running'."""
    import shutil

    run = tmp_path / "run"
    space = "lr: {grid: [0.001, 0.005]}\n"
    proc = _tune(run, cache_dir, space, "--mode", "experiment", "--workers", "2", "--epochs", "4")
    _wait_for(lambda: sum(bool(_epochs(run, t)) for t in _trials(run)) == 2, proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    shutil.rmtree(run / "ray")  # as if Tune had not saved its state yet
    before = {t: _epochs(run, t) for t in _trials(run)}
    # (a trial that had finished before the kill landed is not run again: one attempt)
    done = {t for t in before if _read(run / "trials" / t / "trial.json")["status"] == "finished"}
    rc, out, err = _finish(_tune(run, cache_dir, space, "--resume"))
    assert rc == 0, err[-3000:]
    rows = _leaderboard(run)
    assert sorted(r["trial_id"] for r in rows) == sorted(before)  # the same folders, no new ones
    for row in rows:
        assert row["status"] == "finished" and _epochs(run, row["trial_id"]) == [1, 2, 3, 4]
        attempts = _read(run / "trials" / row["trial_id"] / "trial.json")["attempts"]
        assert attempts == (1 if row["trial_id"] in done else 2), row["trial_id"]


def test_an_actors_exit_inside_a_finaliser_prints_nothing_but_other_errors_still_print():
    """Ray's SIGTERM handler can raise SystemExit inside a finaliser of a trial's process; Python prints
    that as "Exception ignored in ..." with a traceback, which reached the driver's stderr (a flaky
    traceback at the end of a search). The trial's hook drops exactly that; any other error prints."""
    import subprocess
    import sys

    script = """
import weakref, sys
from voxtune.parallel.state import quiet_exit_in_finalisers
class Thing: pass
def exit_now(_): raise SystemExit(1)
def fail_now(_): raise ValueError("a real error")
if sys.argv[1] == "hook": quiet_exit_in_finalisers()
a, b = Thing(), Thing()
keep = [weakref.ref(a, exit_now), weakref.ref(b, fail_now)]
del a, b
"""
    plain = subprocess.run([sys.executable, "-c", script, "plain"], capture_output=True, text=True)
    hooked = subprocess.run([sys.executable, "-c", script, "hook"], capture_output=True, text=True)
    assert "SystemExit" in plain.stderr and "a real error" in plain.stderr  # the control: Python prints both
    assert "SystemExit" not in hooked.stderr and "a real error" in hooked.stderr
