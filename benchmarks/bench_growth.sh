#!/usr/bin/env bash
# Warm growth where two ranks pay (docs/benchmarks-auto.md#warm-growth-where-two-ranks-pay): the auto
# bench's tail case (b) and ASHA case (c) at the smallest setting on this machine where 2 ranks train a
# whole epoch >= 1.3x faster than one (benchmarks/growth_setting.sh: 32^3, gn, batch 4: 1.74x):
#   (b) 3 trials x 8 epochs (lr {1e-3, 3e-3, 5e-3}): the last trial runs alone;
#   (c) 8 trials x 8 epochs with ASHA (lr {5e-4, 1e-3, 3e-3, 5e-3} x amsgrad {false, true}).
# auto against experiment and data (global-batch: the same problem), 2 workers, 3 seeded repeats. Prints
# auto_table.py's table, then each auto run's regroups (critical path and warm-up, from trial.json) and
# the bound: the tail trial on 2 ranks for all its epochs, free and at once.
#
#     bash benchmarks/bench_growth.sh [WORKDIR]      (default WORKDIR: bench-growth)
#
# Needs a quiet 2-core machine. ~20 minutes.
# shellcheck source=SCRIPTDIR/lib.sh
source "$(dirname "$0")/lib.sh" || exit 1
bench_work bench-growth "$@"
bench_record
uptime

bench_phantoms 20 32 --split 0.5 0.3 0.2
printf 'lr: {grid: [0.001, 0.003, 0.005]}\nnorm: gn\n' > "$WORK/space-b.yaml"
printf 'lr: {grid: [0.0005, 0.001, 0.003, 0.005]}\namsgrad: {grid: [false, true]}\nnorm: gn\n' > "$WORK/space-c.yaml"
bench_modes b 3 8 fifo
bench_modes c 8 8 asha
"$PY" benchmarks/auto_table.py "$WORK"
"$PY" benchmarks/growth_table.py "$WORK"
uptime
