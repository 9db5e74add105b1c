#!/usr/bin/env bash
# `voxtune train` against a plain PyTorch loop of the same 3D U-Net (benchmarks/plain_unet.py),
# same cache, same epochs, one after the other in this run; prints the time ratio, both Dice
# scores and the share of training time spent waiting for data.
#
#     bash benchmarks/train_overhead.sh [WORKDIR]     (default WORKDIR: train-overhead)
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-train-overhead}
PY=${PY:-.venv/bin/python}
VOXTUNE=${VOXTUNE:-.venv/bin/voxtune}
rm -rf "$WORK/run"
[ -f "$WORK/msd/dataset.json" ] || "$VOXTUNE" synth --out "$WORK/msd" --cases 12 --shape 48 48 48 --seed 0
"$VOXTUNE" prepare --source "$WORK/msd" --out "$WORK/cache"
uptime

t0=$(date +%s.%N)
"$VOXTUNE" train --cache "$WORK/cache" --out "$WORK/run" --epochs 25 --set lr=0.001 | tail -1
t1=$(date +%s.%N)
plain=$("$PY" benchmarks/plain_unet.py "$WORK/cache" --epochs 25 --lr 0.001)
t2=$(date +%s.%N)

"$PY" - "$WORK/run/metrics.json" "$t0" "$t1" "$t2" "$plain" <<'PYEOF'
import json, sys
records = json.load(open(sys.argv[1]))
t0, t1, t2 = map(float, sys.argv[2:5])
plain = json.loads(sys.argv[5])
voxtune_s, plain_s = t1 - t0, t2 - t1
loop_s = sum(r["epoch_time_s"] for r in records)
wait = sum(r["data_wait_s"] for r in records) / loop_s
print(f"| voxtune train (command) | {voxtune_s:.1f} s | best val Dice {max(r['val_dice'] for r in records):.3f} |")
print(f"| voxtune train (training loop) | {loop_s:.1f} s | data wait {100 * wait:.1f} % of loop time |")
print(f"| plain PyTorch loop | {plain_s:.1f} s | best val Dice {plain['best_val_dice']:.3f} |")
print(f"ratio voxtune/plain: command {voxtune_s / plain_s:.2f}x, loop {loop_s / plain_s:.2f}x")
PYEOF
uptime
