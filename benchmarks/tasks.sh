#!/usr/bin/env bash
# The own-data tables (docs/data.md#how-the-default-plan-does), from scratch: voxtune's default plan on the four phantom kinds (brats,
# spleen-ct, hippocampus, prostate; 3 seeds each, benchmarks/tasks.py) and, beside it, nnU-Net v2's
# 3d_fullres on the same cases and split of seed 0 (benchmarks/nnunet_baseline.sh, 5 epochs).
#
#     bash benchmarks/tasks.sh [WORKDIR]     (default: bench-tasks; must not exist)
#
# ~80 minutes on 2 quiet CPU cores (nnU-Net ~50, voxtune ~30); EPOCHS (default 40) sets voxtune's budget,
# NNUNET=0 skips the yardstick (then the last table says it was not run).
# shellcheck source=SCRIPTDIR/lib.sh
source "$(dirname "$0")/lib.sh" || exit 1
bench_work bench-tasks "$@"
EPOCHS=${EPOCHS:-40}
bench_record
if [ "${NNUNET:-1}" != 0 ]; then
    bash benchmarks/nnunet_baseline.sh "$WORK/nnunet" spleen-ct hippocampus prostate
fi
"$PY" benchmarks/tasks.py "$WORK/voxtune" --epochs "$EPOCHS" --nnunet "$WORK/nnunet"
