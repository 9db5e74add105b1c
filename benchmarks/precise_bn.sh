#!/usr/bin/env bash
# The precise-BN ablation (docs/benchmarks.md#the-precise-bn-ablation): norm bn, precise_bn on against off (nothing else changed), lr {1e-3,
# 5e-3} x 3 seeds x 25 epochs, on the 12-case 48^3 phantom set (8 training cases: 4 optimiser steps per
# epoch at batch 2; the paper had ~169). ~16 minutes on 2 CPU cores.
#
#     bash benchmarks/precise_bn.sh [WORKDIR]      (default WORKDIR: precise-bn)
# shellcheck source=SCRIPTDIR/lib.sh
source "$(dirname "$0")/lib.sh" || exit 1
bench_work precise-bn "$@"
uptime
bench_phantoms 12 48
"$PY" benchmarks/precise_bn.py "$WORK/cache" "$WORK" --epochs 25 --lrs 0.001 0.005 --seeds 0 1 2 --voxtune "$VOXTUNE"
uptime
