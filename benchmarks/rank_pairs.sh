#!/usr/bin/env bash
# The CPU rank-pairing numbers (docs/benchmarks.md#cpu-ranks-in-pairs): one config (lr 1e-3, batch 4, 6 epochs) on the bench's 20-case 32^3
# set (10 train cases: the last global batch holds 2) trained by one worker, and by 2 DDP ranks (data mode,
# global-batch) with min_rank_batch 1 (the short batch runs as 2 ranks of 1 case: batch-1 steps) and with
# the CPU default (it goes whole to rank 0). For bn (SyncBN) and gn. Prints the training seconds of
# epochs 2-6 (epoch 1 pays the warm-up), min-max and median, and the train loss, which must not change.
# ~3 minutes on 2 cores.
#
#     bash benchmarks/rank_pairs.sh [WORKDIR]      (default WORKDIR: rank-pairs)
# shellcheck source=SCRIPTDIR/lib.sh
source "$(dirname "$0")/lib.sh" || exit 1
bench_work rank-pairs "$@"
uptime
bench_phantoms 20 32 --split 0.5 0.3 0.2
for norm in bn gn; do
    printf 'lr: 0.001\nnorm: %s\n' "$norm" > "$WORK/space-$norm.yaml"
    common=(--cache "$WORK/cache" --space "$WORK/space-$norm.yaml" --epochs 6 --set batch_size=4)
    "$VOXTUNE" tune "${common[@]}" --out "$WORK/$norm-one" --mode experiment --workers 1
    "$VOXTUNE" tune "${common[@]}" --out "$WORK/$norm-single" --mode data --workers 2 --set min_rank_batch=1
    "$VOXTUNE" tune "${common[@]}" --out "$WORK/$norm-paired" --mode data --workers 2
done
"$PY" - "$WORK" <<'PY'
import json, sys
from pathlib import Path

sys.path.insert(0, "benchmarks")  # the repository root is the cwd
from common import span

work = Path(sys.argv[1])
print("| norm | run | training s per epoch, epochs 2-6: median [min-max] | train loss, epoch 6 |")
print("|---|---|---:|---:|")
for norm in ("bn", "gn"):
    for run, label in (("one", "1 worker, batch 4"), ("single", "2 ranks, min_rank_batch 1 (short batch: 1 + 1)"),
                       ("paired", "2 ranks, CPU default (short batch: 2 + 0)")):
        (metrics,) = (work / f"{norm}-{run}" / "trials").glob("*/metrics.json")
        records = json.loads(metrics.read_text())
        train = [r["train_s"] for r in records[1:]]
        print(f"| {norm} | {label} | {span(train, 2)} "
              f"| {records[-1]['train_loss']:.4f} |")
PY
uptime
