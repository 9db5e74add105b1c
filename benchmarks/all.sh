#!/usr/bin/env bash
# Every number in the README and docs/benchmarks*.md, from scratch, one script after the other (~4.5 hours on 2 CPU cores):
#
#     bash benchmarks/all.sh [WORKDIR]     (default WORKDIR: bench-all; must not exist)
#
# Each script's output goes to WORKDIR/<name>.log beside its own work folder WORKDIR/<name>/. Run it on
# a quiet machine (the 2-worker runs suffer most from other load) and quote the logs, not memory.
# shellcheck source=SCRIPTDIR/lib.sh
source "$(dirname "$0")/lib.sh" || exit 1
bench_work bench-all "$@"
bench_record
run() {  # run NAME COMMAND...: log to WORKDIR/NAME.log, with its duration
    local name=$1 t0=$SECONDS
    shift
    echo "== $name: $*"
    "$@" > "$WORK/$name.log" 2>&1
    echo "== $name: done in $((SECONDS - t0)) s" | tee -a "$WORK/$name.log"
}
run cache_format "$PY" benchmarks/cache_format.py
run loader "$PY" benchmarks/loader.py "$WORK/loader"
run file_opens "$PY" benchmarks/file_opens.py "$WORK/file-opens"
run staging bash benchmarks/staging.sh "$WORK/staging"  # root, slurm-wlm, munge and FUSE, as CI's machine has
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
run startup_parts "$PY" benchmarks/startup_parts.py "$WORK/bench-cpu/cache"  # bench_cpu's 32^3 cache
run prestart "$PY" benchmarks/prestart.py --work "$WORK/prestart"
run bench_auto bash benchmarks/bench_auto.sh "$WORK/bench-auto"
run growth_setting bash benchmarks/growth_setting.sh "$WORK/growth-setting"
run bench_growth bash benchmarks/bench_growth.sh "$WORK/bench-growth"
run carry_over "$PY" benchmarks/carry_over.py --work "$WORK/carry-over"
run bench_folds bash benchmarks/bench_folds.sh "$WORK/bench-folds"
run tasks bash benchmarks/tasks.sh "$WORK/tasks"
