#!/usr/bin/env bash
# The quality table (docs/benchmarks.md#quality-against-a-plain-pytorch-loop): validation Dice per epoch of `voxtune train` with BatchNorm and GroupNorm
# against a plain PyTorch loop of the same net, lr {1e-3, 5e-3} x 3 seeds x 25 epochs, on the
# 12-case 48^3 phantom set. Takes ~25 minutes on 2 CPU cores.
#
#     bash benchmarks/quality.sh [WORKDIR]      (default WORKDIR: quality)
#
# Writes WORKDIR/quality.{json,png,md}.
# shellcheck source=SCRIPTDIR/lib.sh
source "$(dirname "$0")/lib.sh" || exit 1
bench_work quality "$@"
uptime
bench_phantoms 12 48
"$PY" benchmarks/quality.py "$WORK/cache" "$WORK" --epochs 25 --lrs 0.001 0.005 --seeds 0 1 2 --voxtune "$VOXTUNE"
uptime
