#!/usr/bin/env bash
# Every number in the README, from scratch, one script after the other (~4 hours on 2 CPU cores):
#
#     bash benchmarks/all.sh [WORKDIR]     (default WORKDIR: bench-all; must not exist)
#
# Each script's output goes to WORKDIR/<name>.log beside its own work folder WORKDIR/<name>/. Run it on
# a quiet machine (the 2-worker runs suffer most from other load) and quote the logs, not memory.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-bench-all}
PY=${PY:-.venv/bin/python}
if [ -e "$WORK" ]; then echo "$WORK exists; remove it or pass another folder" >&2; exit 1; fi
mkdir -p "$WORK"
git rev-parse HEAD > "$WORK/commit.txt" 2>/dev/null || true
git status --porcelain > "$WORK/dirty.txt" 2>/dev/null || true
run() {  # run NAME COMMAND...: log to WORKDIR/NAME.log, with its duration
    local name=$1 t0=$SECONDS
    shift
    echo "== $name: $*"
    "$@" > "$WORK/$name.log" 2>&1
    echo "== $name: done in $((SECONDS - t0)) s" | tee -a "$WORK/$name.log"
}
run cache_format "$PY" benchmarks/cache_format.py
run loader "$PY" benchmarks/loader.py "$WORK/loader"
run quality bash benchmarks/quality.sh "$WORK/quality"
run storage_quality bash benchmarks/storage_quality.sh "$WORK/storage-quality"
run prior_bias bash benchmarks/prior_bias.sh "$WORK/prior-bias"
run train_overhead bash benchmarks/train_overhead.sh "$WORK/train-overhead"
run ray_train_startup "$PY" benchmarks/ray_train_startup.py
run cpu_batch "$PY" benchmarks/cpu_batch.py
run precise_bn bash benchmarks/precise_bn.sh "$WORK/precise-bn"
run same_problem bash benchmarks/same_problem.sh "$WORK/same-problem"
run rank_pairs bash benchmarks/rank_pairs.sh "$WORK/rank-pairs"
run bench_cpu bash benchmarks/bench_cpu.sh "$WORK/bench-cpu"
run bench_auto bash benchmarks/bench_auto.sh "$WORK/bench-auto"
run carry_over "$PY" benchmarks/carry_over.py --work "$WORK/carry-over"
run bench_folds bash benchmarks/bench_folds.sh "$WORK/bench-folds"
run tasks bash benchmarks/tasks.sh "$WORK/tasks"
