#!/usr/bin/env bash
# The "same problem under DDP" table (docs/benchmarks.md#the-same-problem-at-any-k): one config trained by one worker on the whole batch and by
# 2 DDP ranks (data mode, global-batch: each rank takes half the batch, BatchNorm synchronised over both)
# must follow each other: train loss per epoch within 2 %, best validation Dice within 0.01. For bn and
# gn, 2 seeds each, lr 1e-3, batch 4, 6 epochs, on the 12-case 48^3 phantom set. ~10 minutes on 2 cores.
#
#     bash benchmarks/same_problem.sh [WORKDIR]      (default WORKDIR: same-problem)
# shellcheck source=SCRIPTDIR/lib.sh
source "$(dirname "$0")/lib.sh" || exit 1
bench_work same-problem "$@"
uptime
bench_phantoms 12 48
printf 'norm: {grid: [bn, gn]}\nseed: {grid: [0, 1]}\n' > "$WORK/space.yaml"
common=(--cache "$WORK/cache" --space "$WORK/space.yaml" --epochs 6 --set lr=0.001 --set batch_size=4)
"$VOXTUNE" tune "${common[@]}" --out "$WORK/one" --mode experiment --workers 1
"$VOXTUNE" tune "${common[@]}" --out "$WORK/two" --mode data --workers 2
"$PY" - "$WORK" <<'PY'
import csv, json, sys
from pathlib import Path

work = Path(sys.argv[1])

def trials(run):
    with open(run / "leaderboard.csv") as f:
        rows = list(csv.DictReader(f))
    return {(r["norm"], r["seed"]): json.loads((run / "trials" / r["trial_id"] / "metrics.json").read_text())
            for r in rows}

one, two = trials(work / "one"), trials(work / "two")
print("| norm | seed | train loss per epoch, 1 worker | 2 ranks (global batch) | largest loss gap | "
      "best val Dice 1 / 2 | gap |")
print("|---|---:|---|---|---:|---|---:|")
worst_loss, worst_dice = 0.0, 0.0
for key in sorted(one):
    a, b = one[key], two[key]
    gaps = [abs(x["train_loss"] - y["train_loss"]) / x["train_loss"] for x, y in zip(a, b)]
    da, db = max(r["val_dice"] for r in a), max(r["val_dice"] for r in b)
    worst_loss, worst_dice = max(worst_loss, max(gaps)), max(worst_dice, abs(da - db))
    la, lb = (" ".join(f"{r['train_loss']:.4f}" for r in run) for run in (a, b))
    print(f"| {key[0]} | {key[1]} | {la} | {lb} | {100 * max(gaps):.2f} % | {da:.3f} / {db:.3f} | "
          f"{abs(da - db):.3f} |")
print(f"\nlargest train-loss gap over every epoch: {100 * worst_loss:.2f} % (target < 2 %); "
      f"largest best-val-Dice gap: {worst_dice:.3f} (target < 0.01)")
PY
uptime
