"""scripts/slurm/voxtune.sbatch under a fake SLURM: stub scontrol, srun, ray and voxtune.

The stubs log every call (arguments, RAY_AUTH_MODE, the token file's mode) to one file in call
order; `srun` drops its options and runs the command here; `ray start --block` blocks until
`ray stop`; `ray status` lists one node per `ray start` so the script's node count is exercised.
No real SLURM or Ray: what this proves is the script's own logic, not a cluster run.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sigdefault import default_sigint

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "slurm" / "voxtune.sbatch"

pytestmark = [
    pytest.mark.skipif(shutil.which("bash") is None, reason="bash not installed"),
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SLURM nodes run Linux; the stubs use GNU stat"),
]

_AUTH = 'auth=${RAY_AUTH_MODE:-none} token_mode=$( [[ -f ${RAY_AUTH_TOKEN_PATH:-/nonexistent} ]] ' \
        '&& stat -c %a "$RAY_AUTH_TOKEN_PATH" || echo missing)'

STUBS = {
    "scontrol": """#!/bin/bash
echo "scontrol $*" >> "$STUB_DIR/calls.log"
[[ "$1 $2" == "show hostnames" ]] && printf 'node1\\nnode2\\n'
""",
    # The script passes every srun option as one --name=value word, so dropping words that start
    # with '-' leaves the command.
    "srun": """#!/bin/bash
echo "srun $*" >> "$STUB_DIR/calls.log"
while [[ $# -gt 0 && $1 == -* ]]; do shift; done
exec "$@"
""",
    "ray": f"""#!/bin/bash
echo "ray $* | {_AUTH}" >> "$STUB_DIR/calls.log"
[[ -f ${{RAY_AUTH_TOKEN_PATH:-/nonexistent}} ]] && cat "$RAY_AUTH_TOKEN_PATH" > "$STUB_DIR/seen_token"
case $1 in
  start)
    if [[ " $* " == *" --address="* && -n ${{STUB_WORKER_NEVER_JOINS:-}} ]]; then :; else echo up >> "$STUB_DIR/nodes"; fi
    for _ in $(seq 300); do [[ -e $STUB_DIR/stopped ]] && exit 0; sleep 0.1; done; exit 1 ;;
  stop) touch "$STUB_DIR/stopped" ;;
  status)
    n=$(cat "$STUB_DIR/nodes" 2>/dev/null | wc -l)
    if (( n == 0 )); then echo "No cluster status. It may take a few seconds for the Ray internal services to start up."; exit 0; fi
    echo "======== Autoscaler status ========"; echo "Node status"; echo "-----"; echo "Active:"
    for i in $(seq "$n"); do echo " 1 node_$i$i$i"; done
    printf 'Pending:\\n (no pending nodes)\\nRecent failures:\\n node_dead: NodeTerminated\\n\\nResources\\n' ;;
esac
""",
    "voxtune": f"""#!/bin/bash
echo "voxtune $* | {_AUTH}" >> "$STUB_DIR/calls.log"
if [[ -n ${{STUB_DRIVER_WAITS:-}} ]]; then
  trap 'kill $! 2>/dev/null; echo "voxtune interrupted" >> "$STUB_DIR/calls.log"; exit 130' INT
  [[ -n ${{STUB_DRIVER_IGNORES_INT:-}} ]] && trap '' INT
  # A Ray driver that gets TERM itself (a plain scancel signals every process) aborts.
  trap 'kill $! 2>/dev/null; trap - ABRT; kill -ABRT $$' TERM
  touch "$STUB_DIR/driver_started"; sleep 30 >/dev/null 2>&1 & wait; exit 0
fi
""",
}


def _fake_slurm(tmp_path: Path, hostname_out: str | None = None) -> tuple[dict[str, str], Path]:
    stub_dir = tmp_path / "stubs"
    stub_dir.mkdir()
    stubs = dict(STUBS)
    if hostname_out is not None:
        stubs["hostname"] = f"#!/bin/bash\necho \"hostname $*\" >> \"$STUB_DIR/calls.log\"\necho '{hostname_out}'\n"
    for name, text in stubs.items():
        (stub_dir / name).write_text(text)
        (stub_dir / name).chmod(0o755)
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "VOXTUNE_", "RAY_")) and k != "TMPDIR"}
    env.update(PATH=f"{stub_dir}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}", HOME=str(home),
               STUB_DIR=str(stub_dir), SLURM_JOB_ID="4242", SLURM_JOB_NODELIST="node[1-2]", SLURM_NNODES="2",
               SLURM_CPUS_PER_TASK="2", SLURM_GPUS_ON_NODE="4", VOXTUNE_RAY_PORT="6390", VOXTUNE_STOP_GRACE_S="5")
    if hostname_out is None and not _has_ipv4():
        env["VOXTUNE_HEAD_IP"] = "10.0.0.1"  # a machine with no network: the real hostname gives none
    return env, stub_dir


def _has_ipv4() -> bool:
    out = subprocess.run(["hostname", "--all-ip-addresses"], capture_output=True, text=True).stdout
    return any(re.fullmatch(r"\d+\.\d+\.\d+\.\d+", w) and not w.startswith("127.") for w in out.split())


def _calls(stub_dir: Path) -> list[str]:
    return (stub_dir / "calls.log").read_text().splitlines()


def _index(calls: list[str], prefix: str) -> int:
    return next(i for i, c in enumerate(calls) if c.startswith(prefix))


def _assert_token_kept_secret(stub_dir: Path, home: Path, *outputs: str) -> None:
    token = (stub_dir / "seen_token").read_text().strip()
    assert re.fullmatch(r"[0-9a-f]{64}", token)
    log = (stub_dir / "calls.log").read_text()
    for text in (log, *outputs):
        assert token not in text
    assert not (home / ".voxtune" / "ray-4242").exists()  # token file and job folder removed
    assert (home / ".voxtune").stat().st_mode & 0o777 == 0o700


def test_sbatch_starts_token_cluster_runs_tune_and_stops(tmp_path):
    env, stub_dir = _fake_slurm(tmp_path)
    t0 = time.monotonic()
    proc = subprocess.run(["bash", str(SCRIPT), "tune", "--cache", "C", "--out", "R", "--mode", "experiment"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert time.monotonic() - t0 < 10
    calls = _calls(stub_dir)

    assert "scontrol show hostnames node[1-2]" in calls
    head = calls[_index(calls, "ray start --head")]
    assert "--include-dashboard=false" in head and "--disable-usage-stats" in head and "--block" in head
    assert "--port=6390" in head and "--num-cpus=2" in head and "--num-gpus=4" in head
    ip = re.search(r"--node-ip-address=(\S+)", head).group(1)
    assert re.fullmatch(r"\d+\.\d+\.\d+\.\d+", ip) and not ip.startswith("127.")
    worker = calls[_index(calls, "ray start --address")]
    assert f"--address={ip}:6390" in worker and "--num-gpus=4" in worker
    worker_srun = next(c for c in calls if c.startswith("srun") and " ray start --address" in c)
    assert "--exclude=node1" in worker_srun and "--nodes=1" in worker_srun and "--ntasks=1" in worker_srun
    assert all("--export=ALL" in c for c in calls if c.startswith("srun"))

    driver = calls[_index(calls, "voxtune")]
    assert driver.startswith(f"voxtune tune --address {ip}:6390 --cache C --out R --mode experiment |")
    for line in (head, worker, driver):  # token auth on everywhere; the file owner-only while in use
        assert line.endswith("auth=token token_mode=600"), line
    assert _index(calls, "ray start --address") > _index(calls, "ray status")  # head answered first
    assert _index(calls, "ray stop") > calls.index(driver)
    stop_srun = next(c for c in calls if c.startswith("srun") and c.endswith(" ray stop"))
    assert "--overlap" in stop_srun and "--nodes=2" in stop_srun and "--ntasks=2" in stop_srun
    _assert_token_kept_secret(stub_dir, Path(env["HOME"]), proc.stdout, proc.stderr)


def _stop_running_driver(env: dict[str, str], stub_dir: Path, args: list[str], whole_job: bool = False):
    """Run the script with `args` until the stub driver is up, then send TERM to the script alone (as
    the time limit does) or to every process of the job (`whole_job`, as a plain scancel does);
    returns (exit code, stdout, stderr)."""
    proc = subprocess.Popen(["bash", str(SCRIPT), *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=default_sigint)  # as sbatch starts it
    try:
        deadline = time.monotonic() + 20
        while not (stub_dir / "driver_started").exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        if whole_job:
            os.killpg(proc.pid, signal.SIGTERM)
        else:
            proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    finally:
        try:  # a stub driver's `sleep` can outlive it
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return proc.returncode, out, err


@pytest.mark.parametrize("extra_env, args, stage", [
    ({"SLURM_TMPDIR": "/local/job"}, [], "--stage $SLURM_TMPDIR/voxtune "),  # unexpanded: each node has its own
    ({"TMPDIR": "/local/tmp"}, [], "--stage $TMPDIR/voxtune "),
    ({}, [], ""),  # no node-local directory given: the shared copy
    ({"SLURM_TMPDIR": "/local/job", "VOXTUNE_STAGE": "0"}, [], ""),
    ({"SLURM_TMPDIR": "/local/job"}, ["--stage", "/ssd"], ""),  # the user's own, passed on as given
    ({"SLURM_TMPDIR": "/local/job"}, ["--resume"], ""),  # stages as the search was started
    ({"SLURM_TMPDIR": "/local/job"}, ["bench"], "--stage $SLURM_TMPDIR/voxtune "),  # a bench stages once for all its runs
])
def test_sbatch_stages_tune_to_the_node_local_directory(extra_env, args, stage, tmp_path):
    env, stub_dir = _fake_slurm(tmp_path)
    verb, args = (args[0], args[1:]) if args[:1] == ["bench"] else ("tune", args)
    proc = subprocess.run(["bash", str(SCRIPT), verb, "--out", "R", *args], env=env | extra_env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    driver = _calls(stub_dir)[_index(_calls(stub_dir), "voxtune")]
    assert driver.startswith(f"voxtune {verb} "), driver
    assert driver.split(":6390 ", 1)[1].startswith(f"{stage}--out R {' '.join(args)}".rstrip() + " |"), driver


def test_sbatch_time_limit_signal_interrupts_driver_then_stops_ray(tmp_path):
    """TERM (SLURM's --signal=B:TERM@120 or scancel) -> the driver gets SIGINT (saves, exits 130) -> ray stop."""
    env, stub_dir = _fake_slurm(tmp_path, hostname_out="127.0.1.1 fe80::1 10.1.2.3 10.9.9.9")
    env["STUB_DRIVER_WAITS"] = "1"
    rc, out, err = _stop_running_driver(env, stub_dir, ["tune", "--out", "R", "--resume"])
    assert rc == 130, out + err  # the interrupted driver's exit code
    calls = _calls(stub_dir)
    assert any(c.startswith("voxtune tune --address 10.1.2.3:6390 --out R --resume |") for c in calls)
    assert _index(calls, "ray stop") > _index(calls, "voxtune interrupted")
    _assert_token_kept_secret(stub_dir, Path(env["HOME"]), out, err)


def test_plain_scancel_that_kills_the_driver_is_explained_and_still_cleans_up(tmp_path):
    """A plain scancel: TERM to every process at once; a driver that dies under it before it saves (as Ray's
    own handler aborted it, 134, before voxtune replaced that handler) is explained, and Ray still stopped."""
    env, stub_dir = _fake_slurm(tmp_path, hostname_out="10.1.2.3")
    env["STUB_DRIVER_WAITS"] = "1"
    # It dies before it saves: the script's INT, sent as the same TERM reaches the driver, must not win
    # the race (the stub's bash may run its INT trap first; CI once saw 130 here).
    env["STUB_DRIVER_IGNORES_INT"] = "1"
    rc, out, err = _stop_running_driver(env, stub_dir, ["tune", "--out", "R", "--resume"], whole_job=True)
    assert rc == 134, out + err
    assert "the driver ended with exit 134" in out and "scancel --batch --signal=TERM 4242" in out
    assert any(c.startswith("ray stop") for c in _calls(stub_dir))
    _assert_token_kept_secret(stub_dir, Path(env["HOME"]), out, err)


def test_a_driver_that_outlives_the_grace_period_is_killed_and_said_so(tmp_path):
    env, stub_dir = _fake_slurm(tmp_path, hostname_out="10.1.2.3")
    env.update(STUB_DRIVER_WAITS="1", STUB_DRIVER_IGNORES_INT="1", VOXTUNE_STOP_GRACE_S="1")
    rc, out, err = _stop_running_driver(env, stub_dir, ["bench", "--out", "B"])
    assert rc == 137, out + err
    assert "the driver did not stop within 1s (VOXTUNE_STOP_GRACE_S); killed it" in out
    assert "scancel --batch" not in out  # not the plain-scancel explanation: this was the time-limit stop
    assert any(c.startswith("ray stop") for c in _calls(stub_dir))
    _assert_token_kept_secret(stub_dir, Path(env["HOME"]), out, err)


def test_sbatch_fails_clearly_when_a_worker_never_registers(tmp_path):
    env, stub_dir = _fake_slurm(tmp_path, hostname_out="10.1.2.3")
    env.update(STUB_WORKER_NEVER_JOINS="1", VOXTUNE_RAY_WAIT_S="2")
    proc = subprocess.run(["bash", str(SCRIPT), "tune", "--cache", "C", "--out", "R", "--mode", "experiment"],
                          env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1
    assert "1 of 2 Ray nodes registered after 2s" in proc.stderr
    calls = _calls(stub_dir)
    assert not any(c.startswith("voxtune") for c in calls)
    assert any(c.startswith("ray stop") for c in calls)
    _assert_token_kept_secret(stub_dir, Path(env["HOME"]), proc.stdout, proc.stderr)


def test_sbatch_bench_verb_runs_voxtune_bench_on_the_cluster(tmp_path):
    env, stub_dir = _fake_slurm(tmp_path, hostname_out="10.1.2.3")
    proc = subprocess.run(["bash", str(SCRIPT), "bench", "--cache", "C", "--out", "B", "--workers", "1", "2"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    calls = _calls(stub_dir)
    driver = calls[_index(calls, "voxtune")]
    assert driver.startswith("voxtune bench --address 10.1.2.3:6390 --cache C --out B --workers 1 2 |"), driver
    assert driver.endswith("auth=token token_mode=600")
    assert _index(calls, "ray stop") > calls.index(driver)
    _assert_token_kept_secret(stub_dir, Path(env["HOME"]), proc.stdout, proc.stderr)


@pytest.mark.parametrize("args", [[], ["--cache", "C", "--out", "R"], ["train", "--out", "R"]])
def test_sbatch_without_tune_or_bench_first_starts_nothing(args, tmp_path):
    env, stub_dir = _fake_slurm(tmp_path, hostname_out="10.1.2.3")
    proc = subprocess.run(["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1
    assert "the first argument must be the verb, tune or bench" in proc.stderr
    assert not (stub_dir / "calls.log").exists()
