#!/usr/bin/env bash
# The README's quality table: validation Dice per epoch of `voxtune train` with BatchNorm and GroupNorm
# against a plain PyTorch loop of the same net, lr {1e-3, 5e-3} x 3 seeds x 25 epochs, on the
# 12-case 48^3 phantom set. Takes ~25 minutes on 2 CPU cores.
#
#     bash benchmarks/quality.sh [WORKDIR]      (default WORKDIR: quality)
#
# Writes WORKDIR/quality.{json,png,md}.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-quality}
VOXTUNE=${VOXTUNE:-.venv/bin/voxtune}
PY=${PY:-.venv/bin/python}
if [ -e "$WORK" ]; then echo "$WORK exists; remove it or pass another folder" >&2; exit 1; fi
uptime
"$VOXTUNE" synth --out "$WORK/Task01_BrainTumour" --cases 12 --shape 48 48 48 --seed 0
"$VOXTUNE" prepare --source "$WORK/Task01_BrainTumour" --out "$WORK/cache"
"$PY" benchmarks/quality.py "$WORK/cache" "$WORK" --epochs 25 --lrs 0.001 0.005 --seeds 0 1 2 --voxtune "$VOXTUNE"
uptime
