#!/usr/bin/env bash
# The cross-validation benchmark (docs/benchmarks-auto.md#cross-validation-single-split-against-5-fold-search): does a 5-fold search (voxtune tune --folds 5) choose a better
# config than a single-split search, is its fold ensemble better than one fold model, and what does it cost?
#
# 30 phantom cases at 32^3, prepared 50/20/30: 21 train + val cases (the folds cut them; --folds pools
# them), 9 test cases that no search sees. Space: lr {2e-4, 1e-3, 5e-3} x norm {bn, gn}, 6 epochs each,
# FIFO, experiment mode on 2 workers (1 CPU core each). Three seeded repeats r = 0, 1, 2 (training seed r):
#   single-r: a single-split search: train on 4/5 of the pool, validate on the other 1/5, fold r of the
#             5 (--folds 5 --set fold=r: the split differs per repeat, as one seeded split would);
#   cv5-r:    a 5-fold search: each config's 5 fold models side by side, ranked by their mean; best.json
#             scores the chosen config's ensemble (mean of probabilities) and each fold model on test.
# Ground truth: every config retrained on all 21 train + val cases with 3 seeds (0, 1, 2) and scored on
# the 9 test cases at its last epoch (benchmarks/folds_view.py); a protocol's regret is the ground truth
# of the best config minus that of the config it chose. benchmarks/folds_table.py prints the tables.
#
#     bash benchmarks/bench_folds.sh [WORKDIR]      (default WORKDIR: bench-folds)
#
# Needs a quiet 2-core machine for the cost column. Takes ~20 minutes.
# shellcheck source=SCRIPTDIR/lib.sh
source "$(dirname "$0")/lib.sh" || exit 1
bench_work bench-folds "$@"
CASES=${CASES:-30} SHAPE=${SHAPE:-32} EPOCHS=${EPOCHS:-6}  # (smaller for a smoke run of the script)
uptime

bench_phantoms "$CASES" "$SHAPE" --split 0.5 0.2 0.3
"$PY" benchmarks/folds_view.py "$WORK/cache" "$WORK/cache-truth"
printf 'lr: {grid: [0.0002, 0.001, 0.005]}\nnorm: {grid: [bn, gn]}\n' > "$WORK/space.yaml"
tune() {  # tune CACHE OUT ARGS...
    local cache=$1 out=$2; shift 2
    "$VOXTUNE" tune --cache "$cache" --out "$out" --space "$WORK/space.yaml" --mode experiment --workers 2 \
        --epochs "$EPOCHS" "$@" | tail -3
}
for r in 0 1 2; do
    tune "$WORK/cache" "$WORK/single-$r" --folds 5 --set fold=$r --set seed=$r
    tune "$WORK/cache" "$WORK/cv5-$r" --folds 5 --set seed=$r
done
tune "$WORK/cache-truth" "$WORK/truth" --num-samples 3
"$PY" benchmarks/folds_table.py "$WORK"
uptime
