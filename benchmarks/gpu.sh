#!/usr/bin/env bash
# The GPU check, prepared to fit one device call (< 10 minutes on one GPU); never part of CI.
# Loader samples/s against the network's steps/s at full size (whole volume and 128^3 patches),
# AMP on and off, 1, 2 or 4 trials packed on the GPU, and auto's survivor growing from 1 to 2 ranks of the
# GPU once the others stopped: benchmarks/gpu_bench.py says how.
#
# Here, once (the device machine has PyTorch but neither MONAI nor nibabel, and reaches no index):
#     bash benchmarks/gpu.sh --fetch-wheels           -> .whl/ (ignored by git; ~5 MB)
# Then, with the device tool:
#     run(command="bash benchmarks/gpu.sh", carry=[".whl"], timeout_s=600)
# It prints the table and leaves $OUT/gpu.json. Without a GPU, `bash benchmarks/gpu.sh --smoke`
# runs the same steps at toy sizes on the CPU.
# shellcheck source=SCRIPTDIR/lib.sh
source "$(dirname "$0")/lib.sh" || exit 1
if [ "${1:-}" = "--fetch-wheels" ]; then
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .whl monai==1.6.1 nibabel==5.4.2
    exit 0
fi
if [ -d .whl ] && ! python3 -c "import monai, nibabel" 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
OUT=${OUT:-gpu-bench}
WORK=${GPU_BENCH_WORK:-/tmp/voxtune-gpu-bench}
mkdir -p "$OUT"
nvidia-smi -L 2>/dev/null || echo "no nvidia-smi: running on the CPU"
python3 benchmarks/gpu_bench.py "$WORK" "$@"
cp "$WORK/gpu.json" "$OUT/gpu.json"
