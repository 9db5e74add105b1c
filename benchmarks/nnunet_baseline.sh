#!/usr/bin/env bash
# The own-data yardstick (docs/data.md#how-the-default-plan-does): nnU-Net v2's 3d_fullres (nnunetv2 from PyPI, on the CPU) on the synthetic
# spleen-ct, hippocampus and prostate phantoms, on exactly voxtune's split: it trains on the cases that
# `voxtune prepare` puts in train, validates on its val cases and is scored (Dice per class) on its test
# cases; benchmarks/nnunet_baseline.py says how. Trainer nnUNetTrainer_5epochs (5 x 250 iterations).
#
# 20 phantom cases per task at `voxtune synth`'s base shapes, prepared with voxtune's default split
# (70/15/15, seed 0): 14 train, 3 val, 3 test.
#
#     bash benchmarks/nnunet_baseline.sh [WORKDIR [TASK ...]]    (default: nnunet-baseline, all three tasks)
#
# Creates the nnU-Net venv at $NNUNET_VENV (default .nnunet-venv, ignored by git; ~1.9 GB, ~45 s from
# PyPI here) when it is missing. Needs a quiet 2-core machine for the seconds; takes ~50 minutes.
# Writes WORKDIR/<task>/nnunet/result.json (and nnU-Net's own trees and logs beside it) and prints the table.
# shellcheck source=SCRIPTDIR/lib.sh
source "$(dirname "$0")/lib.sh" || exit 1
bench_work nnunet-baseline "$@"
shift $(($# > 0 ? 1 : 0))
TASKS=("$@")
[ ${#TASKS[@]} -gt 0 ] || TASKS=(spleen-ct hippocampus prostate)
CASES=${CASES:-20} TEST_CASES=${TEST_CASES:-2} SEED=${SEED:-0}  # TEST_CASES: unlabelled imagesTs, unscored
SHAPE=${SHAPE:-}                                # "X Y Z"; empty: each task's own base shape
TRAINER=${TRAINER:-nnUNetTrainer_5epochs}       # nnUNetTrainer_1epoch for a smoke run
NICE=${NICE:-0}                                 # nice -n for nnU-Net's processes
NNUNET_VENV=${NNUNET_VENV:-.nnunet-venv}
NNUNETV2=2.8.1
TORCH=2.13.0  # the CPU build pip finds on this machine; a requirement admitting 2.14+ pulls CUDA's (GBs)

if [ ! -x "$NNUNET_VENV/bin/nnUNetv2_train" ]; then
    t0=$SECONDS
    log=$NNUNET_VENV/install.log
    echo "creating the nnU-Net venv $NNUNET_VENV (nnunetv2==$NNUNETV2, torch==$TORCH; log: $log)"
    ${PYTHON:-python3} -m venv "$NNUNET_VENV"
    echo "torch==$TORCH" > "$NNUNET_VENV/constraints.txt"  # so nnunetv2's torch>=2.1.2 cannot upgrade it
    { "$NNUNET_VENV/bin/python" -m pip install "torch==$TORCH" \
        && "$NNUNET_VENV/bin/python" -m pip install -c "$NNUNET_VENV/constraints.txt" "nnunetv2==$NNUNETV2"; } \
        > "$log" 2>&1 || { echo "nnunet_baseline.sh: pip install into $NNUNET_VENV failed; log: $log" >&2; exit 1; }
    "$NNUNET_VENV/bin/python" -c "import torch; assert torch.__version__.split('+')[0] == '$TORCH', torch.__version__" \
        || { echo "nnunet_baseline.sh: $NNUNET_VENV has the wrong torch (not $TORCH); log: $log" >&2; exit 1; }
    echo "nnU-Net venv ready in $((SECONDS - t0)) s"
fi
# nnU-Net finds a trainer by importing every module under nnUNetTrainer/, Primus's too; those import timm,
# which imports torchvision, whose PyPI wheel is built for CUDA torch and fails to load on the CPU build
# ("operator torchvision::nms does not exist"). The Primus trainers are transformers this yardstick never
# uses: remove them (the result records primus_trainers_removed).
nnunet=$("$NNUNET_VENV/bin/python" -c 'import nnunetv2, os; print(os.path.dirname(nnunetv2.__file__))' 2>/dev/null) \
    || { echo "nnunet_baseline.sh: $NNUNET_VENV/bin/python cannot import nnunetv2; remove $NNUNET_VENV" >&2; exit 1; }
rm -rf "$nnunet/training/nnUNetTrainer/primus"
uptime

for task in "${TASKS[@]}"; do
    echo "== $task"
    # shellcheck disable=SC2086  # SHAPE is three words or none
    "$VOXTUNE" synth --task "$task" --out "$WORK/$task/msd" --cases "$CASES" --test-cases "$TEST_CASES" \
        --seed "$SEED" ${SHAPE:+--shape $SHAPE}
    "$VOXTUNE" prepare --source "$WORK/$task/msd" --out "$WORK/$task/cache" > "$WORK/$task/prepare.log"
    "$PY" benchmarks/nnunet_baseline.py --msd "$WORK/$task/msd" --cache "$WORK/$task/cache" \
        --work "$WORK/$task/nnunet" --venv "$NNUNET_VENV" --trainer "$TRAINER" --task "$task" --nice "$NICE" \
        | tee "$WORK/$task/nnunet.log"
done

"$PY" - "$WORK" "${TASKS[@]}" <<'PYEOF'
import json, sys
from pathlib import Path

work, tasks = Path(sys.argv[1]), sys.argv[2:]
results = [json.loads((work / t / "nnunet" / "result.json").read_text()) for t in tasks]
r0 = results[0]
print(f"\nnnU-Net v2 {r0['nnunetv2']} 3d_fullres, torch {r0['torch']} on {r0['cpu_count']} CPU cores; test Dice "
      "on voxtune's test cases, mean over cases (mirroring at test time, nnU-Net's default)\n")
print("| task | nnU-Net trainer | plan+preprocess s | train s | predict s | total s | test Dice per class |")
print("|---|---|---:|---:|---:|---:|---|")
for r in results:
    s = r["seconds"]
    classes = {k: v for k, v in r["test_dice_mean"].items() if k != "mean"}
    dice = ", ".join(f"{k} {v:.3f}" for k, v in classes.items())
    if len(classes) > 1:
        dice += f" (mean {r['test_dice_mean']['mean']:.3f})"
    print(f"| {r['task']} | {r['trainer']} | {s['plan_preprocess']:.0f} | {s['train']:.0f} | {s['predict']:.0f} "
          f"| {r['total_s']:.0f} | {dice} |")
print("\n| task | patch (x y z) | spacing mm (x y z) | batch | epochs x iterations | cases train / val / test |")
print("|---|---|---|---:|---|---|")
for r in results:
    sp = r["split"]
    print(f"| {r['task']} | {' x '.join(map(str, r['patch_size_xyz']))} "
          f"| {' x '.join(f'{v:.2f}' for v in r['spacing_xyz'])} | {r['batch_size']} "
          f"| {r['epochs']} x {r['iterations_per_epoch']} | {sp['train']} / {sp['val']} / {sp['test']} |")
PYEOF
uptime
