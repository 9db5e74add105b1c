#!/usr/bin/env bash
# The README's precise-BN ablation: norm bn, precise_bn on against off (nothing else changed), lr {1e-3,
# 5e-3} x 3 seeds x 25 epochs, on the 12-case 48^3 phantom set (8 training cases: 4 optimiser steps per
# epoch at batch 2; the paper had ~169). ~16 minutes on 2 CPU cores.
#
#     bash benchmarks/precise_bn.sh [WORKDIR]      (default WORKDIR: precise-bn)
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-precise-bn}
VOXTUNE=${VOXTUNE:-.venv/bin/voxtune}
PY=${PY:-.venv/bin/python}
if [ -e "$WORK" ]; then echo "$WORK exists; remove it or pass another folder" >&2; exit 1; fi
uptime
"$VOXTUNE" synth --out "$WORK/Task01_BrainTumour" --cases 12 --shape 48 48 48 --seed 0
"$VOXTUNE" prepare --source "$WORK/Task01_BrainTumour" --out "$WORK/cache"
"$PY" benchmarks/precise_bn.py "$WORK/cache" "$WORK" --epochs 25 --lrs 0.001 0.005 --seeds 0 1 2 --voxtune "$VOXTUNE"
uptime
