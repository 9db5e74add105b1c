"""Does a search slow the next one when both run in one Python process, as `voxtune bench` runs them?

The carry-over numbers (docs/benchmarks-auto.md#carry-over-between-searches). In the auto bench (bench_auto.sh) auto always ran right after data mode
in each repeat, and its one-worker epochs were often slower than experiment mode's with the same trials.
This script runs, in each repeat (its own seed), on the bench's 20-case 32^3 set, 4 trials x 4 epochs
(lr {1e-3, 5e-3} x norm {bn, gn}), 2 workers, batch 4:

    one process:  data then auto;  data then experiment;  experiment then auto
    two processes: data, then auto in a fresh process

and prints, for each search, the median training seconds of an epoch over every trial's epochs 2-4
(epoch 1 pays the warm-up), as a median over the repeats with [min-max]. One-worker searches (experiment,
auto that grows nothing) train the same trials on the same workers: where one context is slower than the
others, that context, not the mode, is the cost. Also prints, after each search, how many of Ray's or
the trials' processes are still alive. ~5 minutes a repeat on 2 cores.

    python benchmarks/carry_over.py [--work DIR] [--repeats 3]      (default DIR: carry-over)
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench_set import SPACE, make_bench_set
from common import print_result, results, span

SEQUENCES = [  # (label of the context, modes run one after another in one process)
    ("one process", ("data", "auto")),
    ("one process", ("data", "experiment")),
    ("one process", ("experiment", "auto")),
    ("new process", ("data",)),
    ("new process", ("auto",)),
]


def _survivors() -> int:
    """Processes of Ray or of trials still alive (besides this one)."""
    alive = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        alive += any(word in cmd for word in ("ray::", "raylet", "gcs_server", "ray/_private", "dashboard"))
    return alive


def run_sequence(work: Path, modes: list[str], seed: int, tag: str) -> None:
    """Run `modes` one after another in this process; print one JSON line per search."""
    from voxtune.parallel.settings import SearchSettings
    from voxtune.parallel.tune import run_search

    for i, mode in enumerate(modes):
        settings = SearchSettings(cache_dir=str(work / "cache"), mode=mode, space=SPACE, workers=2,
                                  base_config={"epochs": 4, "batch_size": 4, "seed": seed},
                                  ddp_recipe="global-batch" if mode == "data" else None)
        run_dir = work / "runs" / f"{tag}-{i}-{mode}"
        run_search(run_dir, settings)
        train = [r["train_s"] for f in sorted((run_dir / "trials").glob("*/metrics.json"))
                 for r in json.loads(f.read_text()) if r["epoch"] > 1]
        time.sleep(1.0)
        print_result({"mode": mode, "after": modes[i - 1] if i else None, "train_s": statistics.median(train),
                      "alive_1s_after": _survivors()})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default="carry-over")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--sequence", nargs="+")  # internal: run these modes in this process
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tag", default="")
    args = ap.parse_args()
    work = Path(args.work)
    if args.sequence:
        return run_sequence(work, args.sequence, args.seed, args.tag)
    make_bench_set(work)
    found: dict[tuple[str, str, str | None], list[float]] = {}
    alive = []
    for rep in range(1, args.repeats + 1):
        for n, (context, modes) in enumerate(SEQUENCES):
            after = "data" if modes == ("auto",) else None  # the fresh auto process follows the data one
            out = subprocess.run([sys.executable, __file__, "--work", str(work), "--sequence", *modes,
                                  "--seed", str(rep), "--tag", f"r{rep}-s{n}"],
                                 capture_output=True, text=True, check=True).stdout
            for r in results(out):
                key = (context, r["mode"], r["after"] or after)
                found.setdefault(key, []).append(r["train_s"])
                alive.append(r["alive_1s_after"])
                print(f"[repeat {rep}] {context}: {r['mode']} after {key[2] or 'nothing'}: "
                      f"train_s {r['train_s']:.3f}", flush=True)
    print(f"\nRay or trial processes alive 1 s after a search returned: at most {max(alive)} "
          f"({len(alive)} searches)")
    print(f"\n| search | after | context | training s per epoch, median of {args.repeats} [min-max] |")
    print("|---|---|---|---:|")
    for (context, mode, after), values in sorted(found.items(), key=lambda kv: (kv[0][1], kv[0][2] or "", kv[0][0])):
        print(f"| {mode} | {after or 'nothing'} | {context} | {span(values, 3)} |")


if __name__ == "__main__":
    main()
