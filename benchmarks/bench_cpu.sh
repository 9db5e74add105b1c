#!/usr/bin/env bash
# The CPU benchmark (docs/benchmarks.md#which-mode-wins-on-2-cpu-cores): the same 4-trial search (lr {1e-3, 5e-3} x norm {bn, gn}) under experiment
# and data parallelism at 1 and 2 workers (1 CPU core each), data parallelism under both DDP recipes
# (global-batch: the 1-worker problem; scale-lr: the paper's), 3 seeded repeats per point (repeat r trains
# with seed r - 1 and queues the trials in an order of its own), with the searches' validation and test
# Dice, the anytime curves and the time to a target Dice that at least half the trials reach; whether the
# winners had settled (benchmarks/settled.py); then the scaling model calibrated on it and checked out of
# sample on a second bench it never saw: another batch (2, so a global-batch rank takes 1), 3 trials x
# 8 epochs (a tail where one worker idles), 3 seeded repeats.
#
# 20 phantom cases at 32^3: 10 train, 6 validation, 4 test. Batch 4 (global-batch: 2 per rank).
#
#     bash benchmarks/bench_cpu.sh [WORKDIR]      (default WORKDIR: bench-cpu)
#
# Needs a quiet 2-core machine: other work on the box slows the 2-worker runs more than the 1-worker
# run and shows up as lost speed-up; `uptime` before and after is printed. Takes ~50 minutes.
# Writes WORKDIR/bench/{bench.json,speedup.png,bench.md}, WORKDIR/plan.json, WORKDIR/other-batch/bench.json
# and WORKDIR/check.json (the out-of-sample error).
# shellcheck source=SCRIPTDIR/lib.sh
source "$(dirname "$0")/lib.sh" || exit 1
bench_work bench-cpu "$@"
EPOCHS=${EPOCHS:-30}
uptime

bench_phantoms 20 32 --split 0.5 0.3 0.2
printf 'lr: {grid: [0.001, 0.005]}\nnorm: {grid: [bn, gn]}\n' > "$WORK/space.yaml"
"$VOXTUNE" bench --cache "$WORK/cache" --out "$WORK/bench" --space "$WORK/space.yaml" --workers 1 2 \
    --modes experiment data --trials 4 --epochs "$EPOCHS" --repeats 3 --ddp-recipe global-batch scale-lr \
    --set batch_size=4
"$VOXTUNE" plan --calibration "$WORK/bench/bench.json" --workers 2 --trials 4 --json > "$WORK/plan.json"
"$VOXTUNE" bench --cache "$WORK/cache" --out "$WORK/other-batch" --space "$WORK/space.yaml" --workers 1 2 \
    --modes experiment data --trials 3 --epochs 8 --repeats 3 --ddp-recipe global-batch --set batch_size=2
"$VOXTUNE" plan --calibration "$WORK/bench/bench.json" --check "$WORK/other-batch/bench.json" --json \
    > "$WORK/check.json"
cat "$WORK/bench/bench.md"
"$PY" benchmarks/settled.py "$WORK/bench"
"$VOXTUNE" plan --calibration "$WORK/bench/bench.json" --check "$WORK/other-batch/bench.json"
uptime
