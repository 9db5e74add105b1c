"""The precise-BN ablation: `voxtune train` with norm bn, precise_bn on against off, nothing else changed.

lr x seed x {on, off}, E epochs each, on one prepared cache. Per run: best and last validation Dice and
the largest epoch-to-epoch drop after epoch 10; per (lr, arm): the medians over seeds, as docs/benchmarks.md#the-precise-bn-ablation
shows them. Writes WORK/precise_bn.json and prints the tables.

    python benchmarks/precise_bn.py CACHE WORK [--epochs 25] [--lrs 0.001 0.005] [--seeds 0 1 2]
"""
from __future__ import annotations

import json
import statistics
import subprocess
import time
from pathlib import Path

from quality import SETTLED, arguments, summarise  # benchmarks/quality.py, beside this script


def run(voxtune: str, cache: Path, out: Path, lr: float, seed: int, precise: bool, epochs: int) -> dict:
    cmd = [voxtune, "train", "--cache", str(cache), "--out", str(out), "--epochs", str(epochs), "--set", "norm=bn",
           "--set", f"lr={lr}", "--set", f"seed={seed}", "--set", f"precise_bn={'true' if precise else 'false'}"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    dice = [r["val_dice"] for r in json.loads((out / "metrics.json").read_text())]
    return {"val_dice": dice, **summarise(dice)}


def main() -> None:
    args = arguments()
    runs, t0 = [], time.perf_counter()
    jobs = [(lr, seed, precise) for lr in args.lrs for seed in args.seeds for precise in (True, False)]
    for i, (lr, seed, precise) in enumerate(jobs, 1):
        out = args.work / f"lr{lr:g}-s{seed}-{'on' if precise else 'off'}"
        runs.append({"lr": lr, "seed": seed, "precise_bn": precise,
                     **run(args.voxtune, args.cache, out, lr, seed, precise, args.epochs)})
        r = runs[-1]
        print(f"[{time.perf_counter() - t0:6.0f}s] {i}/{len(jobs)} lr {lr:g} seed {seed} precise_bn "
              f"{'on' if precise else 'off'}: best {r['best']:.3f} last {r['last']:.3f} "
              f"largest drop after epoch {SETTLED} {r['max_drop_after_10']:.3f}", flush=True)
    (args.work / "precise_bn.json").write_text(json.dumps({"epochs": args.epochs, "runs": runs}, indent=1))
    print("\n| lr | precise_bn | best, seeds " + " / ".join(map(str, args.seeds)) + " | last | largest drop after "
          f"epoch {SETTLED} | median best | median last |")
    print("|---:|---|---|---|---|---:|---:|")
    for lr in args.lrs:
        for precise in (True, False):
            arm = [r for r in runs if r["lr"] == lr and r["precise_bn"] is precise]
            cells = [" / ".join(f"{r[k]:.3f}" for r in arm) for k in ("best", "last", "max_drop_after_10")]
            print(f"| {lr:g} | {'on' if precise else 'off'} | {' | '.join(cells)} | "
                  f"{statistics.median(r['best'] for r in arm):.3f} | {statistics.median(r['last'] for r in arm):.3f} |")


if __name__ == "__main__":
    main()
