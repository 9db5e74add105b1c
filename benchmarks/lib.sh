# shellcheck shell=bash
# What the benchmark scripts share; not a benchmark itself. Each script starts with
#
#     # shellcheck source=SCRIPTDIR/lib.sh
#     source "$(dirname "$0")/lib.sh" || exit 1
#
# which, before any line of the script runs:
#   - sets `set -euo pipefail` (for the rest of the script);
#   - cds to the repository root (the folder above benchmarks/), so the script's relative paths (.venv/...,
#     benchmarks/..., a default WORKDIR) are the repository's, wherever it is started from;
#   - sets PY (default .venv/bin/python) and VOXTUNE (default .venv/bin/voxtune) unless the caller set them;
# and defines
#   bench_work DEFAULT [WORKDIR]     WORK=WORKDIR (empty or absent: DEFAULT); an existing WORK is refused:
#                                    "WORK exists; remove it or pass another folder" on stderr, exit 1
#   bench_record                     mkdir -p WORK; WORK/commit.txt (git rev-parse HEAD) and WORK/dirty.txt
#                                    (git status --porcelain), each empty where git cannot tell
#   bench_phantoms CASES SIZE [ARG...]
#                                    `voxtune synth` CASES BraTS phantoms at SIZE^3 (seed 0) into
#                                    WORK/Task01_BrainTumour, then `voxtune prepare` them into WORK/cache with
#                                    ARG... (e.g. --split 0.5 0.3 0.2: the bench's 20-case set, which
#                                    benchmarks/bench_set.py makes for the Python scripts)
#   bench_modes NAME TRIALS EPOCHS SCHEDULER
#                                    `voxtune bench` of auto against experiment and data (global-batch) on 1 and
#                                    2 workers, 3 seeded repeats, batch 4, on WORK/cache with WORK/space-NAME.yaml,
#                                    into WORK/NAME (bench_auto.sh, bench_growth.sh)
# The `|| exit 1` stops a script whose lib.sh is missing (set -e is not on yet at that line); a failure
# inside lib.sh exits on its own.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
# shellcheck disable=SC2034  # used by the scripts that source this file
PY=${PY:-.venv/bin/python}
VOXTUNE=${VOXTUNE:-.venv/bin/voxtune}

bench_work() {  # bench_work DEFAULT [WORKDIR]: sets WORK; refuses one that exists
    WORK=${2:-$1}
    if [ -e "$WORK" ]; then echo "$WORK exists; remove it or pass another folder" >&2; exit 1; fi
}

bench_record() {  # bench_record: makes WORK and records the commit and uncommitted changes it runs at
    mkdir -p "$WORK"
    git rev-parse HEAD > "$WORK/commit.txt" 2>/dev/null || true
    git status --porcelain > "$WORK/dirty.txt" 2>/dev/null || true
}

bench_phantoms() {  # bench_phantoms CASES SIZE [PREPARE_ARG...]: WORK/Task01_BrainTumour and its cache WORK/cache
    "$VOXTUNE" synth --out "$WORK/Task01_BrainTumour" --cases "$1" --shape "$2" "$2" "$2" --seed 0
    "$VOXTUNE" prepare --source "$WORK/Task01_BrainTumour" --out "$WORK/cache" "${@:3}"
}

bench_modes() {  # bench_modes NAME TRIALS EPOCHS SCHEDULER: auto, experiment and data on 1 and 2 workers
    "$VOXTUNE" bench --cache "$WORK/cache" --out "$WORK/$1" --space "$WORK/space-$1.yaml" --workers 1 2 \
        --modes experiment data auto --trials "$2" --epochs "$3" --scheduler "$4" --repeats 3 \
        --ddp-recipe global-batch --set batch_size=4
}
