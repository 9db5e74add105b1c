"""Do the worker processes Ray starts ahead of time help a search's start-up, or cost it?

A local Ray starts one idle worker process per CPU as the driver connects (Python and Ray loaded), for
the first tasks and actors to take. Tune's trial actors never take them: Tune gives its trainable a
runtime env of its own (env_vars PL_DISABLE_FORK=1, ray/tune/execution/class_cache.py), and a worker
serves one runtime env; so each trial starts a process of its own, while the prestarted ones load Python
and Ray on the same CPUs and are then ended. Only actors in the job's env take one: auto's Pool, data mode's ranks 1..K-1.

This script runs, in each repeat (its own seed; each search in a fresh process, as `voxtune tune`
runs; the order rotated by one each repeat), on the bench's 20-case 32^3 set, 4 trials x 2 epochs
(lr {1e-3, 5e-3} x norm {bn, gn}), 2 workers, batch 4, experiment, data (global-batch) and auto mode, each with Ray's
prestart on (Ray's default) and off (RAY_prestart_worker_first_driver=0 in the search's process,
which the Ray processes it starts inherit), and prints per search: the start-up (Ray up to the first
epoch, summary.json `startup_s`), how far apart the first two trials started (trial.json `start_ts`),
the time ray.init took, and the whole command's time; medians over the repeats with [min-max].
~2 minutes a repeat on 2 cores.

    python benchmarks/prestart.py [--work DIR] [--repeats 5]      (default DIR: prestart)
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from bench_set import SPACE, make_bench_set
from common import print_result, results, span

VARIANTS = ["experiment", "experiment, no prestart", "data", "data, no prestart", "auto", "auto, no prestart"]


def run_one(work: Path, variant: str, seed: int, tag: str) -> None:
    """One search in this process; prints one RESULT line."""
    from voxtune.parallel.settings import SearchSettings
    from voxtune.parallel.tune import run_search

    mode = variant.split(",")[0]
    settings = SearchSettings(cache_dir=str(work / "cache"), mode=mode, space=SPACE, workers=2,
                              base_config={"epochs": 2, "batch_size": 4, "seed": seed},
                              ddp_recipe="global-batch" if mode == "data" else None)
    run_dir = work / "runs" / tag
    t0 = time.perf_counter()
    summary = run_search(run_dir, settings)
    starts = sorted(json.loads(f.read_text())["start_ts"] for f in (run_dir / "trials").glob("*/trial.json"))
    print_result({"variant": variant, "startup_s": summary["startup_s"], "first_two_apart_s": starts[1] - starts[0],
                  "wall_s": summary["wall_time_s"], "ray_init_s": summary["ray_init_s"],
                  "command_s": time.perf_counter() - t0})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default="prestart")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--variant")  # internal: run this one search in this process
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tag", default="")
    args = ap.parse_args()
    work = Path(args.work)
    if args.variant:
        return run_one(work, args.variant, args.seed, args.tag)
    make_bench_set(work)
    found: dict[str, dict[str, list[float]]] = {v: {} for v in VARIANTS}
    for rep in range(1, args.repeats + 1):
        shift = (rep - 1) % len(VARIANTS)
        for n, variant in enumerate(VARIANTS[shift:] + VARIANTS[:shift]):
            env = {**os.environ, **({"RAY_prestart_worker_first_driver": "0"} if "no prestart" in variant else {})}
            out = subprocess.run([sys.executable, __file__, "--work", str(work), "--variant", variant,
                                  "--seed", str(rep), "--tag", f"r{rep}-{n}"],
                                 capture_output=True, text=True, check=True, env=env).stdout
            r = next(results(out))
            for key in ("startup_s", "first_two_apart_s", "ray_init_s", "command_s"):
                found[variant].setdefault(key, []).append(r[key])
            print(f"[repeat {rep}] {variant}: start-up {r['startup_s']:.2f} s, first two trials "
                  f"{r['first_two_apart_s']:.2f} s apart, ray.init {r['ray_init_s']:.2f} s, command {r['command_s']:.2f} s", flush=True)
    print(f"\n| search | start-up s, median of {args.repeats} [min-max] | first two trials apart, s | ray.init s "
          "| command s |")
    print("|---|---:|---:|---:|---:|")
    for variant, got in found.items():
        print(f"| {variant} | {span(got['startup_s'], 2)} | {span(got['first_two_apart_s'], 2)} | {span(got['ray_init_s'], 2)} "
              f"| {span(got['command_s'], 2)} |")


if __name__ == "__main__":
    main()
