"""scripts/slurm/voxtune.sbatch submitted with `sbatch -N 2` to a real two-node SLURM cluster.

The cluster (tests/slurm_cluster.py) runs on this machine over loopback: slurmctld, munged and two
slurmd, n1 and n2, each offering 1 CPU. The launcher starts a Ray node on each: the head on n1 at
127.0.0.2 (VOXTUNE_HEAD_IP; Ray would replace 127.0.0.1 by the machine's network address), the
worker on n2 at 127.0.0.1, so trials show which node ran them and no traffic leaves loopback.

Two stops: what SLURM sends when the time limit is near (`--signal=B:TERM@120`), TERM to the batch
script only, here with `scancel --batch --signal=TERM` (the bench test); and a plain `scancel`, TERM
to every process of the job at once, the Ray nodes and the driver included (the tune test). Both
save the search's state and end the driver with 130.
"""
from __future__ import annotations

import csv
import json
import os
import sys
import time
from pathlib import Path

import pytest

from slurm_cluster import ClusterError, free_port, make_cluster, unavailable

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "slurm" / "voxtune.sbatch"
SPACE = "lr: {grid: [0.001, 0.005]}\nnorm: {grid: [bn, gn]}\n"
JOB_TIMEOUT_S = 300

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    cluster = make_cluster(cpus_per_node=1)
    try:
        cluster.start()
    except ClusterError as exc:
        pytest.skip(f"could not start a SLURM test cluster: {exc}")
    yield cluster
    killed = cluster.stop()
    assert not killed, f"still running after the cluster stopped, killed by PID: {killed}"


@pytest.fixture(scope="module")
def job_path(tmp_path_factory) -> str:
    """PATH for the jobs: this checkout's voxtune, run by the test's Python, and that Python's `ray`."""
    bin_dir = tmp_path_factory.mktemp("bin")
    (bin_dir / "voxtune").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m voxtune.cli "$@"\n')
    (bin_dir / "voxtune").chmod(0o755)
    return os.pathsep.join([str(bin_dir), str(Path(sys.executable).parent), os.environ.get("PATH", "/usr/bin:/bin")])


def _submit(slurm, job_path: str, tmp_path: Path, *args: str) -> tuple[int, Path]:
    """sbatch -N 2 the launcher with `args` (verb first); (job id, its output file)."""
    env = {k: v for k, v in slurm.env.items() if not k.startswith(("VOXTUNE_", "RAY_"))}
    env.update(PATH=job_path, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO / "src"), env.get("PYTHONPATH")])),
               VOXTUNE_HEAD_IP="127.0.0.2", VOXTUNE_RAY_PORT=str(free_port(6300, 7000)),
               VOXTUNE_SECRET_DIR=str(tmp_path / "secret"), VOXTUNE_GPUS_PER_NODE="0")
    output = tmp_path / f"job-{len(list(tmp_path.glob('job-*.out')))}.out"
    job_id = slurm.sbatch(["-N", "2", "--ntasks-per-node=1", "--cpus-per-task=1", "--gpus-per-node=0",
                           "--time=15", f"--output={output}", str(SCRIPT), *args], env=env, cwd=tmp_path)
    return job_id, output


def _finish(slurm, tmp_path: Path, job_id: int, output: Path):
    """Wait for the job; check that it left no process behind (Ray, slurmstepd) and deleted its token."""
    job = slurm.wait(job_id, JOB_TIMEOUT_S, output)
    assert slurm.job_processes(wait_s=20) == [], job.output[-3000:]
    assert not (tmp_path / "secret" / f"ray-{job_id}").exists()
    return job


def _run(slurm, job_path: str, tmp_path: Path, *args: str):
    return _finish(slurm, tmp_path, *_submit(slurm, job_path, tmp_path, *args))


def _stop_when(slurm, job_id: int, output: Path, ready, what: str, plain: bool = False) -> None:
    """Once `ready()` holds, send TERM to the batch script, as SLURM does before the time limit, or with
    `plain` to every process of the job, as a plain `scancel` does."""
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while not ready():
        state = slurm.state(job_id)
        assert state in ("PENDING", "RUNNING") and time.monotonic() < deadline, \
            f"job {job_id} {state} before {what}:\n" + (output.read_text()[-3000:] if output.exists() else "")
        time.sleep(0.2)
    if plain:
        slurm.client("scancel", str(job_id))
    else:
        slurm.client("scancel", "--batch", "--signal=TERM", str(job_id))


def _leaderboard(run: Path) -> list[dict]:
    with open(run / "leaderboard.csv") as f:
        return list(csv.DictReader(f))


def _epochs(trial_dir: Path) -> list[int]:
    try:
        return [e["epoch"] for e in json.loads((trial_dir / "metrics.json").read_text())]
    except (OSError, ValueError):
        return []


def _read_on_own_node(slurm, trial_dirs) -> None:
    """Every rank read the copy staged in its own node's $SLURM_TMPDIR (the head, 127.0.0.2, is n1)."""
    node_of = {"127.0.0.2": "n1", "127.0.0.1": "n2"}
    for trial in trial_dirs:
        info = json.loads((trial / "trial.json").read_text())
        ips = info.get("node_ips") or [info["node_ip"]]
        assert {Path(c).parent for c in info["caches"]} == {slurm.node_tmp(node_of[ip]) / "voxtune" for ip in ips}, info


def _staged_on_both(slurm, staging: dict) -> None:
    assert sorted(Path(s["path"]).parents[1].name for s in staging.values()) == ["n1", "n2"], staging


def _staged_left(slurm) -> list[Path]:
    return [p for n in ("n1", "n2") for p in slurm.node_tmp(n).glob("voxtune/voxtune-stage-*")]


def test_tune_on_two_nodes_cancelled_then_resumed(slurm, job_path, cache_dir, tmp_path):
    """A search spread over both nodes; a plain scancel after an epoch (every process of the job gets TERM:
    the driver saves the leaderboard and exits 130 though Ray stops under it), then resumed. The launcher
    stages the cache into each node's own $SLURM_TMPDIR; the copies outlive the stop and the resume reuses
    them, copying nothing; they are removed when the search ends."""
    (tmp_path / "space.yaml").write_text("lr: {grid: [0.001, 0.005]}\n")
    run = tmp_path / "run"
    job_id, output = _submit(slurm, job_path, tmp_path, "tune", "--cache", str(cache_dir), "--out", str(run),
                             "--mode", "experiment", "--space", str(tmp_path / "space.yaml"), "--epochs", "2",
                             "--workers", "2")

    def both_running_one_epoch_done() -> bool:
        started = [json.loads(p.read_text()) for p in run.glob("trials/*/trial.json")]
        return len({t.get("node") for t in started} - {None}) == 2 and \
            any(_epochs(p) for p in run.glob("trials/*"))

    _stop_when(slurm, job_id, output, both_running_one_epoch_done, "two trials ran and one finished an epoch",
               plain=True)
    job = _finish(slurm, tmp_path, job_id, output)
    assert job.exit_code == 130, job.output[-3000:]  # the driver's: interrupted, resume with --resume
    assert "resume it with: voxtune tune --out" in job.output
    rows = _leaderboard(run)
    assert "interrupted" in {r["status"] for r in rows}
    started = [r for r in rows if r["node"]]
    assert len({r["node"] for r in started}) == 2 and {r["node_ip"] for r in started} == {"127.0.0.1", "127.0.0.2"}
    assert json.loads((run / "summary.json").read_text())["nodes"] == 2
    # (summary.json is written from the files here, the driver having died under the scancel: no staging in it)
    _read_on_own_node(slurm, [run / "trials" / r["trial_id"] for r in started])
    assert _staged_left(slurm)  # kept for the resume

    job = _run(slurm, job_path, tmp_path, "tune", "--out", str(run), "--resume")
    assert job.exit_code == 0, job.output[-3000:]
    rows = _leaderboard(run)
    assert len(rows) == 2 and {r["status"] for r in rows} == {"finished"}, rows
    for row in rows:  # a resumed trial continues from its checkpoint: each epoch once
        assert _epochs(run / "trials" / row["trial_id"]) == [1, 2], row["trial_id"]
    staging = json.loads((run / "summary.json").read_text())["staging"]
    _staged_on_both(slurm, staging)
    assert {(s["files_copied"], s["files_reused"] > 0) for s in staging.values()} == {(0, True)}, staging
    _read_on_own_node(slurm, [run / "trials" / r["trial_id"] for r in rows])
    assert _staged_left(slurm) == [], job.output[-3000:]  # removed when the search ended


def test_bench_stopped_then_resubmitted_continues(slurm, job_path, cache_dir, tmp_path):
    """`voxtune bench` under the launcher: the 1-worker baseline, then data parallelism with each trial's
    two ranks on both nodes. Stopped in that run and submitted again: the finished 1-worker run is kept as
    it is, the stopped run continues from its checkpoints, bench.json lists both."""
    (tmp_path / "space.yaml").write_text(SPACE)
    bench = tmp_path / "bench"
    args = ("bench", "--cache", str(cache_dir), "--out", str(bench), "--space", str(tmp_path / "space.yaml"),
            "--workers", "1", "2", "--modes", "data", "--trials", "2", "--epochs", "3")
    job_id, output = _submit(slurm, job_path, tmp_path, *args)
    first, second = bench / "runs" / "experiment-w1-r1", bench / "runs" / "data-w2-global-batch-r1"
    _stop_when(slurm, job_id, output, lambda: any(_epochs(p) for p in second.glob("trials/*")),
               "the data-parallel run's first epoch")
    job = _finish(slurm, tmp_path, job_id, output)
    assert job.exit_code == 130, job.output[-3000:]  # interrupted, as a search is
    kept = {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in first.rglob("*") if p.is_file()}
    assert (first / "summary.json") in kept

    job = _run(slurm, job_path, tmp_path, *args)
    assert job.exit_code == 0, job.output[-3000:]
    assert {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in first.rglob("*") if p.is_file()} == kept
    result = json.loads((bench / "bench.json").read_text())
    assert [(r["mode"], r["workers"], r["status"]) for r in result["runs"]] == \
        [("data", 1, {"finished": 2}), ("data", 2, {"finished": 2})]
    assert [r["how"] for row in result["runs"] for r in row["repeats"]] == ["reused", "resumed"]
    assert result["settings"]["address"].startswith("127.0.0.2:")
    for trial in (second / "trials").iterdir():
        assert _epochs(trial) == [1, 2, 3], trial.name
        info = json.loads((trial / "trial.json").read_text())
        assert sorted(info["node_ips"]) == ["127.0.0.1", "127.0.0.2"] and len(set(info["nodes"])) == 2
    # The launcher staged the cache once per node for the whole bench; each rank read its own node's copy.
    _staged_on_both(slurm, result["settings"]["staging"])
    _read_on_own_node(slurm, list((second / "trials").iterdir()))
    assert _staged_left(slurm) == [], job.output[-3000:]  # removed when the search ended
