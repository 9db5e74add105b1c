"""Shared vs staged (#30): the same search on the two-node SLURM test cluster, reading the cache through a
slowed mount (benchmarks/slowfs.py: every open and lookup waits, as on a busy shared filesystem) or the
copy the launcher stages into each node's $SLURM_TMPDIR (docs/cluster.md#node-local-staging).

Run by benchmarks/staging.sh, which makes WORK/cache and WORK/fuse-venv first:

    bash benchmarks/staging.sh [WORKDIR] [--repeats 3] [--epochs 4] [--open-ms 10] [--lookup-ms 1]

Each repeat runs both readings (in alternating order, each repeat its own seed) as `sbatch -N 2
scripts/slurm/voxtune.sbatch tune ... --mode experiment --workers 2`, one trial per node at a time: the
shared reading with VOXTUNE_STAGE=0, the staged one as the launcher does by default. Printed: each
reading's epoch time and data-wait share (median [min-max] over the repeats of each run's median
epoch), the search's wall time, best val Dice, the opens and lookups the shared mount served per
trial-epoch (counted by the mount; a staged search's are its stagers' and drivers', one per file per node),
and the staging time per node and per GB. Needs root, slurm-wlm,
munge and FUSE (the SLURM tests' requirements, plus /dev/fuse).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import ROOT, span

sys.path.insert(0, str(ROOT / "tests"))
from slurm_cluster import free_port, make_cluster, unavailable  # noqa: E402  (the SLURM tests' cluster)

SCRIPT = ROOT / "scripts" / "slurm" / "voxtune.sbatch"
SPACE = "lr: {grid: [0.001, 0.005]}\n"  # two trials: one per node at a time


def mount(work: Path, fuse_python: str, open_ms: float, lookup_ms: float) -> subprocess.Popen:
    shared = work / "shared"
    shared.mkdir()
    proc = subprocess.Popen([fuse_python, str(ROOT / "benchmarks" / "slowfs.py"), str(work / "cache"), str(shared),
                             "--open-ms", str(open_ms), "--lookup-ms", str(lookup_ms),
                             "--counts", str(work / "mount-counts.json")],
                            stdout=open(work / "slowfs.log", "wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 20
    while not (shared / "manifest.json").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            sys.exit(f"the slowed mount did not come up: {(work / 'slowfs.log').read_text()[-500:]}")
        time.sleep(0.2)
    return proc


def counts(work: Path) -> dict[str, int]:
    time.sleep(1.0)  # the mount rewrites its counts every half second
    return json.loads((work / "mount-counts.json").read_text())


def job_env(cluster, work: Path, shared: bool) -> dict[str, str]:
    env = {k: v for k, v in cluster.env.items() if not k.startswith(("VOXTUNE_", "RAY_"))}
    bin_dir = work / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "voxtune").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m voxtune.cli "$@"\n')
    (bin_dir / "voxtune").chmod(0o755)
    env.update(PATH=os.pathsep.join([str(bin_dir), str(Path(sys.executable).parent), "/usr/bin:/bin"]),
               PYTHONPATH=str(ROOT / "src"), VOXTUNE_HEAD_IP="127.0.0.2", VOXTUNE_RAY_PORT=str(free_port(6300, 7000)),
               VOXTUNE_SECRET_DIR=str(work / "secret"), VOXTUNE_GPUS_PER_NODE="0")
    if shared:
        env["VOXTUNE_STAGE"] = "0"
    return env


def run(cluster, work: Path, reading: str, repeat: int, epochs: int) -> dict:
    out = work / "runs" / f"{reading}-r{repeat}"
    output = work / "runs" / f"{reading}-r{repeat}.out"
    before = counts(work)
    job = cluster.sbatch(["-N", "2", "--ntasks-per-node=1", "--cpus-per-task=1", "--gpus-per-node=0", "--time=30",
                          f"--output={output}", str(SCRIPT), "tune", "--cache", str(work / "shared"),
                          "--out", str(out), "--mode", "experiment", "--workers", "2", "--space", str(work / "space.yaml"),
                          "--epochs", str(epochs), "--set", f"seed={repeat}"],
                         env=job_env(cluster, work, reading == "shared"), cwd=work)
    done = cluster.wait(job, 1800, output)
    if done.exit_code != 0:
        sys.exit(f"{reading} repeat {repeat}: job {job} exited {done.exit_code}; see {output}")
    after = counts(work)
    summary = json.loads((out / "summary.json").read_text())
    metrics = [json.loads(p.read_text()) for p in out.glob("trials/*/metrics.json")]
    epochs_run = [e for m in metrics for e in m]
    return {"reading": reading, "repeat": repeat, "wall_s": summary["wall_time_s"],
            "epoch_s": statistics.median(e["epoch_time_s"] for e in epochs_run),
            "data_wait": sum(e["data_wait_s"] for e in epochs_run) / sum(e["epoch_time_s"] for e in epochs_run),
            "best_dice": max(e["val_dice"] for e in epochs_run), "trial_epochs": len(epochs_run),
            "opens": after["opens"] - before["opens"], "lookups": after["lookups"] - before["lookups"],
            "staging": list(summary["staging"].values())}


def table(rows: list[dict]) -> None:
    print("| reading | epoch s | data-wait share | search wall s | best val Dice | shared-mount opens, whole search "
          "| per trial-epoch | lookups per trial-epoch | stage s per node | stage s per GB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for reading in ("shared", "staged"):
        mine = [r for r in rows if r["reading"] == reading]
        stages = [s for r in mine for s in r["staging"]]
        per_gb = [s["seconds"] / (s["bytes_copied"] / 1e9) for s in stages if s["bytes_copied"]]
        print(f"| {reading} | {span([r['epoch_s'] for r in mine], 2)} | {span([r['data_wait'] for r in mine], 2)} | "
              f"{span([r['wall_s'] for r in mine], 1)} | {span([r['best_dice'] for r in mine], 3)} | "
              f"{span([r['opens'] for r in mine], 0)} | {span([r['opens'] / r['trial_epochs'] for r in mine], 0)} | "
              f"{span([r['lookups'] / r['trial_epochs'] for r in mine], 0)} | "
              f"{span([s['seconds'] for s in stages], 2) if stages else '-'} | {span(per_gb, 1) if per_gb else '-'} |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("work")
    ap.add_argument("--fuse-python", required=True, help="a Python with fusepy (staging.sh makes WORK/fuse-venv)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--open-ms", type=float, default=10.0)
    ap.add_argument("--lookup-ms", type=float, default=1.0)
    args = ap.parse_args()
    if reason := unavailable():
        sys.exit(f"staging.py needs the SLURM test cluster: {reason}")
    work = Path(args.work).resolve()
    (work / "space.yaml").write_text(SPACE)
    (work / "runs").mkdir()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a kill still stops the cluster and unmounts
    fuse = mount(work, args.fuse_python, args.open_ms, args.lookup_ms)
    cluster = make_cluster(cpus_per_node=1)
    rows = []
    try:
        cluster.start()
        for repeat in range(1, args.repeats + 1):
            for reading in (("shared", "staged") if repeat % 2 else ("staged", "shared")):
                rows.append(run(cluster, work, reading, repeat, args.epochs))
                r = rows[-1]
                print(f"[staging] {reading} r{repeat}: epoch {r['epoch_s']:.2f}s, wall {r['wall_s']:.1f}s, "
                      f"{r['opens']} opens and {r['lookups']} lookups on the shared mount", flush=True)
    finally:
        cluster.stop()
        subprocess.run(["fusermount", "-u", str(work / "shared")], check=False)
        fuse.terminate()
        shutil.rmtree(work / "secret", ignore_errors=True)
    (work / "staging.json").write_text(json.dumps(rows, indent=1))
    manifest = json.loads((work / "cache" / "manifest.json").read_text())
    size = sum(b for c in manifest["cases"] for b in c["bytes"].values())
    print(f"\n{len(manifest['cases'])} cases ({size / 1e6:.1f} MB), 2 trials x {args.epochs} epochs on 2 nodes (1 CPU "
          f"each), {args.repeats} repeats; shared mount: {args.open_ms:g} ms per open, {args.lookup_ms:g} ms per "
          "lookup; median [min-max] over the repeats\n")
    table(rows)


if __name__ == "__main__":
    main()
