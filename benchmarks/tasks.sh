#!/usr/bin/env bash
# The README's own-data tables, from scratch: voxtune's default plan on the four phantom kinds (brats,
# spleen-ct, hippocampus, prostate; 3 seeds each, benchmarks/tasks.py) and, beside it, nnU-Net v2's
# 3d_fullres on the same cases and split of seed 0 (benchmarks/nnunet_baseline.sh, 5 epochs).
#
#     bash benchmarks/tasks.sh [WORKDIR]     (default: bench-tasks; must not exist)
#
# ~80 minutes on 2 quiet CPU cores (nnU-Net ~50, voxtune ~30); EPOCHS (default 40) sets voxtune's budget,
# NNUNET=0 skips the yardstick (then the last table says it was not run).
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-bench-tasks}
PY=${PY:-.venv/bin/python}
EPOCHS=${EPOCHS:-40}
if [ -e "$WORK" ]; then echo "$WORK exists; remove it or pass another folder" >&2; exit 1; fi
mkdir -p "$WORK"
git rev-parse HEAD > "$WORK/commit.txt" 2>/dev/null || true
git status --porcelain > "$WORK/dirty.txt" 2>/dev/null || true
if [ "${NNUNET:-1}" != 0 ]; then
    bash benchmarks/nnunet_baseline.sh "$WORK/nnunet" spleen-ct hippocampus prostate
fi
"$PY" benchmarks/tasks.py "$WORK/voxtune" --epochs "$EPOCHS" --nnunet "$WORK/nnunet"
