#!/usr/bin/env bash
# The foreground-prior head bias (foreground_prior 0.01, voxtune's default) against a zero bias
# (foreground_prior 0.5, the paper's): best and last val Dice after 25 epochs at lr 1e-3, seeds 0-2,
# on the 12-case 48^3 phantom set, one `voxtune train` after the other. ~8 minutes on 2 CPU cores.
#
#     bash benchmarks/prior_bias.sh [WORKDIR]     (default WORKDIR: prior-bias)
# shellcheck source=SCRIPTDIR/lib.sh
source "$(dirname "$0")/lib.sh" || exit 1
bench_work prior-bias "$@"
"$VOXTUNE" synth --out "$WORK/msd" --cases 12 --shape 48 48 48 --seed 0
"$VOXTUNE" prepare --source "$WORK/msd" --out "$WORK/cache"
uptime
for prior in 0.01 0.5; do
    for seed in 0 1 2; do
        "$VOXTUNE" train --cache "$WORK/cache" --out "$WORK/prior$prior-seed$seed" --epochs 25 \
            --set lr=0.001 --set seed="$seed" --set foreground_prior="$prior" | tail -1
    done
done
"$PY" - "$WORK" <<'PYEOF'
import json, statistics, sys
from pathlib import Path
work = Path(sys.argv[1])
print("| head bias | seed 0 best / last | seed 1 best / last | seed 2 best / last | mean best |")
print("|---|---:|---:|---:|---:|")
for prior, name in (("0.01", "foreground prior 0.01 (voxtune)"), ("0.5", "zero (prior 0.5, the paper)")):
    cells, bests = [], []
    for seed in range(3):
        curve = [r["val_dice"] for r in json.loads((work / f"prior{prior}-seed{seed}" / "metrics.json").read_text())]
        cells.append(f"{max(curve):.3f} / {curve[-1]:.3f}")
        bests.append(max(curve))
    print(f"| {name} | {' | '.join(cells)} | {statistics.mean(bests):.3f} |")
PYEOF
uptime
