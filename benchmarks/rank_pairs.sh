#!/usr/bin/env bash
# The README's CPU rank-pairing numbers: one config (lr 1e-3, batch 4, 6 epochs) on the bench's 20-case 32^3
# set (10 train cases: the last global batch holds 2) trained by one worker, and by 2 DDP ranks (data mode,
# global-batch) with min_rank_batch 1 (the short batch runs as 2 ranks of 1 case: batch-1 steps) and with
# the CPU default (it goes whole to rank 0). For bn (SyncBN) and gn. Prints the training seconds of
# epochs 2-6 (epoch 1 pays the warm-up), min-max and median, and the train loss, which must not change.
# ~3 minutes on 2 cores.
#
#     bash benchmarks/rank_pairs.sh [WORKDIR]      (default WORKDIR: rank-pairs)
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-rank-pairs}
VOXTUNE=${VOXTUNE:-.venv/bin/voxtune}
PY=${PY:-.venv/bin/python}
if [ -e "$WORK" ]; then echo "$WORK exists; remove it or pass another folder" >&2; exit 1; fi
uptime
"$VOXTUNE" synth --out "$WORK/Task01_BrainTumour" --cases 20 --shape 32 32 32 --seed 0
"$VOXTUNE" prepare --source "$WORK/Task01_BrainTumour" --out "$WORK/cache" --split 0.5 0.3 0.2
for norm in bn gn; do
    printf 'lr: 0.001\nnorm: %s\n' "$norm" > "$WORK/space-$norm.yaml"
    common=(--cache "$WORK/cache" --space "$WORK/space-$norm.yaml" --epochs 6 --set batch_size=4)
    "$VOXTUNE" tune "${common[@]}" --out "$WORK/$norm-one" --mode experiment --workers 1
    "$VOXTUNE" tune "${common[@]}" --out "$WORK/$norm-single" --mode data --workers 2 --set min_rank_batch=1
    "$VOXTUNE" tune "${common[@]}" --out "$WORK/$norm-paired" --mode data --workers 2
done
"$PY" - "$WORK" <<'PY'
import json, statistics, sys
from pathlib import Path

work = Path(sys.argv[1])
print("| norm | run | training s per epoch, epochs 2-6: median [min-max] | train loss, epoch 6 |")
print("|---|---|---:|---:|")
for norm in ("bn", "gn"):
    for run, label in (("one", "1 worker, batch 4"), ("single", "2 ranks, min_rank_batch 1 (short batch: 1 + 1)"),
                       ("paired", "2 ranks, CPU default (short batch: 2 + 0)")):
        (metrics,) = (work / f"{norm}-{run}" / "trials").glob("*/metrics.json")
        records = json.loads(metrics.read_text())
        train = [r["train_s"] for r in records[1:]]
        print(f"| {norm} | {label} | {statistics.median(train):.2f} [{min(train):.2f}-{max(train):.2f}] "
              f"| {records[-1]['train_loss']:.4f} |")
PY
uptime
