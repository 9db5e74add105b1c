#!/usr/bin/env bash
# `voxtune train` against a plain PyTorch loop of the same 3D U-Net (benchmarks/plain_unet.py), same
# cache, same epochs, one after the other in this run. Compares like with like: the training loops'
# own time (voxtune: the sum of its epochs; plain: its loop) and the whole commands (process start,
# imports, data loading included); prints both Dice scores and voxtune's share of time waiting for data.
#
#     bash benchmarks/train_overhead.sh [WORKDIR]     (default WORKDIR: train-overhead)
# shellcheck source=SCRIPTDIR/lib.sh
source "$(dirname "$0")/lib.sh" || exit 1
WORK=${1:-train-overhead}
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
voxtune_cmd, plain_cmd = t1 - t0, t2 - t1
voxtune_loop, plain_loop = sum(r["epoch_time_s"] for r in records), plain["seconds"]
wait = sum(r["data_wait_s"] for r in records) / voxtune_loop
bn = sum(r["bn_stats_s"] for r in records) / voxtune_loop
print("| | command s | training loop s | best val Dice |")
print("|---|---:|---:|---:|")
print(f"| voxtune train | {voxtune_cmd:.1f} | {voxtune_loop:.1f} | {max(r['val_dice'] for r in records):.3f} |")
print(f"| plain PyTorch loop | {plain_cmd:.1f} | {plain_loop:.1f} | {plain['best_val_dice']:.3f} |")
print(f"ratio voxtune/plain: command {voxtune_cmd / plain_cmd:.2f}x, loop {voxtune_loop / plain_loop:.2f}x; "
      f"voxtune's loop waits for data {100 * wait:.1f} % and recomputes BatchNorm statistics {100 * bn:.1f} % of its time")
PYEOF
uptime
