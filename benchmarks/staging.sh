#!/usr/bin/env bash
# Shared vs staged cache on the two-node SLURM test cluster (docs/cluster.md#node-local-staging): the
# cache read through a slowed FUSE mount (benchmarks/slowfs.py: 10 ms per open, 1 ms per lookup, as a
# busy shared filesystem's metadata server) or from the copy the launcher stages into each node's
# $SLURM_TMPDIR. 30 BraTS phantoms at 48^3; 3 seeded repeats of 2 trials x 4 epochs per reading;
# ~10 minutes on 2 cores. Needs root, slurm-wlm, munge, libfuse2 and /dev/fuse; fusepy comes from PyPI
# into WORK/fuse-venv.
#
#     bash benchmarks/staging.sh [WORKDIR] [--repeats 3] [--epochs 4] [--open-ms 10] [--lookup-ms 1]
#                                                              (default WORKDIR: staging)
# shellcheck source=SCRIPTDIR/lib.sh
source "$(dirname "$0")/lib.sh" || exit 1
dir=""
if [[ $# -gt 0 && $1 != --* ]]; then dir=$1; shift; fi
bench_work staging "$dir"
bench_record
uptime
bench_phantoms 30 48
python3 -m venv "$WORK/fuse-venv"
"$WORK/fuse-venv/bin/pip" install -q fusepy
"$PY" benchmarks/staging.py "$WORK" --fuse-python "$WORK/fuse-venv/bin/python" "$@"
