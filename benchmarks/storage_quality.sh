#!/usr/bin/env bash
# Does float16 storage change what a search finds? The same 4-trial experiment-parallel search
# (lr {1e-3, 5e-3} x norm {bn, gn}, 8 epochs, 2 workers) on the 12-case 48^3 phantom set prepared
# twice, --dtype float32 and --dtype float16 (both cropped to the brain box, which rebuilds the frame
# exactly), compared trial by trial. ~6 minutes on 2 CPU cores.
#
#     bash benchmarks/storage_quality.sh [WORKDIR]     (default WORKDIR: storage-quality)
# shellcheck source=SCRIPTDIR/lib.sh
source "$(dirname "$0")/lib.sh" || exit 1
bench_work storage-quality "$@"
"$VOXTUNE" synth --out "$WORK/msd" --cases 12 --shape 48 48 48 --seed 0
printf 'lr: {grid: [0.001, 0.005]}\nnorm: {grid: [bn, gn]}\n' > "$WORK/space.yaml"
uptime
for dtype in float32 float16; do
    "$VOXTUNE" prepare --source "$WORK/msd" --out "$WORK/cache-$dtype" --dtype "$dtype"
    "$VOXTUNE" tune --cache "$WORK/cache-$dtype" --out "$WORK/run-$dtype" --mode experiment --workers 2 \
        --space "$WORK/space.yaml" --epochs 8 > "$WORK/tune-$dtype.log"
done
"$PY" - "$WORK" <<'PYEOF'
import csv, json, sys
from pathlib import Path
work = Path(sys.argv[1])
def rows(dtype):
    with open(work / f"run-{dtype}" / "leaderboard.csv") as f:
        return {(r["lr"], r["norm"]): r for r in csv.DictReader(f)}
def mb(dtype):
    m = json.loads((work / f"cache-{dtype}" / "manifest.json").read_text())
    return sum(sum(c["bytes"].values()) for c in m["cases"]) / len(m["cases"]) / 1e6
a, b = rows("float32"), rows("float16")
print(f"| lr | norm | best val Dice, float32 cache ({mb('float32'):.2f} MB/case) | float16 cache ({mb('float16'):.2f} MB/case) | difference |")
print("|---:|---|---:|---:|---:|")
for key in sorted(a):
    x, y = float(a[key]["val_dice"]), float(b[key]["val_dice"])
    print(f"| {key[0]} | {key[1]} | {x:.4f} | {y:.4f} | {y - x:+.4f} |")
for dtype in ("float32", "float16"):
    best = json.loads((work / f"run-{dtype}" / "best.json").read_text())
    print(f"{dtype}: best trial lr {best['config']['lr']} norm {best['config']['norm']}, test Dice {best['test']['test_dice']:.4f}")
PYEOF
uptime
