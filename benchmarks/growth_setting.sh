#!/usr/bin/env bash
# Where can growing a trial pay on this machine (docs/benchmarks-auto.md#warm-growth-where-two-ranks-pay)?
# One config (lr 1e-3, batch 4, 4 epochs) on the bench's 20-case set (10 train, 6 val, 4 test) at
# 32^3 and 48^3, bn and gn, trained by one worker and by 2 DDP ranks (data mode, global-batch: the
# same problem). Prints the whole epoch's seconds (training, the BatchNorm statistics pass and
# validation), epochs 2-4 (epoch 1 pays the warm-up), median [min-max], and the 1-worker epoch over the
# 2-rank one: growth can pay where that is >= 1.3. ~8 minutes on 2 cores.
#
#     bash benchmarks/growth_setting.sh [WORKDIR]      (default WORKDIR: growth-setting)
# shellcheck source=SCRIPTDIR/lib.sh
source "$(dirname "$0")/lib.sh" || exit 1
bench_work growth-setting "$@"
bench_record
uptime
for size in 32 48; do
    "$VOXTUNE" synth --out "$WORK/msd-$size" --cases 20 --shape "$size" "$size" "$size" --seed 0 > /dev/null
    "$VOXTUNE" prepare --source "$WORK/msd-$size" --out "$WORK/cache-$size" --split 0.5 0.3 0.2 > /dev/null
    for norm in bn gn; do
        printf 'lr: 0.001\nnorm: %s\n' "$norm" > "$WORK/space-$norm.yaml"
        common=(--cache "$WORK/cache-$size" --space "$WORK/space-$norm.yaml" --epochs 4 --set batch_size=4)
        "$VOXTUNE" tune "${common[@]}" --out "$WORK/$size-$norm-one" --mode experiment --workers 1 > /dev/null
        "$VOXTUNE" tune "${common[@]}" --out "$WORK/$size-$norm-two" --mode data --workers 2 > /dev/null
    done
done
"$PY" - "$WORK" <<'PY'
import json, statistics, sys
from pathlib import Path

sys.path.insert(0, "benchmarks")  # the repository root is the cwd
from common import span

work = Path(sys.argv[1])
print("| volume | norm | 1 worker: epoch s, epochs 2-4 | 2 ranks: epoch s | 1 worker / 2 ranks | best val Dice 1 / 2 |")
print("|---|---|---|---|---:|---|")
for size in (32, 48):
    for norm in ("bn", "gn"):
        runs = {}
        for run in ("one", "two"):
            (metrics,) = (work / f"{size}-{norm}-{run}" / "trials").glob("*/metrics.json")
            runs[run] = json.loads(metrics.read_text())
        one, two = ([r["epoch_time_s"] for r in runs[k][1:]] for k in ("one", "two"))
        dice = " / ".join(f"{max(r['val_dice'] for r in runs[k]):.3f}" for k in ("one", "two"))
        print(f"| {size}^3 | {norm} | {span(one, 2)} | {span(two, 2)} | "
              f"{statistics.median(one) / statistics.median(two):.2f} | {dice} |")
PY
uptime
