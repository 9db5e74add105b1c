#!/usr/bin/env bash
# The auto benchmark (docs/benchmarks-auto.md#auto-against-the-fixed-modes): --mode auto against experiment and data parallelism (global-batch, so all
# three train the same problem) on 1 and 2 workers (1 CPU core each), 3 seeded repeats per point, on
# three searches:
#   (a) 4 trials x 6 epochs  (lr {1e-3, 5e-3} x norm {bn, gn}): every worker busy until the end;
#   (b) 3 trials x 8 epochs  (lr {1e-3, 3e-3, 5e-3}, norm bn): the last trial runs alone;
#   (c) 8 trials x 8 epochs with ASHA (lr {5e-4, 1e-3, 3e-3, 5e-3} x norm {bn, gn}): stopped trials
#       leave the survivors alone.
# For each: wall time, time to a target Dice, when the final best model was trained, best val and test
# Dice (bench.md per search); then the scaling model calibrated on (a) only and checked on (b) and (c),
# which it never saw (ASHA's stops in (c) as measured), and its paper-setting table for auto.
#
# 20 phantom cases at 32^3: 10 train, 6 validation, 4 test. Batch 4 (2 ranks of batch 2 when a trial grows).
#
#     bash benchmarks/bench_auto.sh [WORKDIR]      (default WORKDIR: bench-auto)
#
# Needs a quiet 2-core machine, as bench_cpu.sh. Takes ~30 minutes.
# shellcheck source=SCRIPTDIR/lib.sh
source "$(dirname "$0")/lib.sh" || exit 1
bench_work bench-auto "$@"
uptime

bench_phantoms 20 32 --split 0.5 0.3 0.2
printf 'lr: {grid: [0.001, 0.005]}\nnorm: {grid: [bn, gn]}\n' > "$WORK/space-a.yaml"
printf 'lr: {grid: [0.001, 0.003, 0.005]}\nnorm: bn\n' > "$WORK/space-b.yaml"
printf 'lr: {grid: [0.0005, 0.001, 0.003, 0.005]}\nnorm: {grid: [bn, gn]}\n' > "$WORK/space-c.yaml"
bench_modes a 4 6 fifo
bench_modes b 3 8 fifo
bench_modes c 8 8 asha
for s in a b c; do echo "## ($s)"; cat "$WORK/$s/bench.md" | sed -n '/^| mode/,/^$/p'; done
"$PY" benchmarks/auto_table.py "$WORK"
"$VOXTUNE" plan --calibration "$WORK/a/bench.json" --check "$WORK/b/bench.json"
"$VOXTUNE" plan --calibration "$WORK/a/bench.json" --check "$WORK/c/bench.json"
"$VOXTUNE" plan --paper
uptime
