"""The auto table (docs/benchmarks-auto.md#auto-against-the-fixed-modes): for each search of benchmarks/bench_auto.sh, the 2-worker runs of every mode
(medians of the seeded repeats, [min-max]) and auto's wall time and final-best time over the better
fixed mode's.

    python benchmarks/auto_table.py WORKDIR
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from common import span

SEARCHES = {"a": "4 trials x 6 epochs", "b": "3 trials x 8 epochs", "c": "8 trials x 8 epochs, ASHA"}


def _span(row: dict, key: str, digits: int = 1) -> str:
    """median [min-max] of `key` over the row's repeats that have it; "-" where none has."""
    values = [r[key] for r in row["repeats"] if r.get(key) is not None]
    return span(values, digits) if values else "-"


def main(work: str) -> int:
    print("| search | mode | wall s | final best s | best val Dice | test Dice | auto wall / best fixed | "
          "auto final best / best fixed |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for name, what in SEARCHES.items():
        path = Path(work) / name / "bench.json"
        if not path.exists():
            continue
        runs = [r for r in json.loads(path.read_text())["runs"] if r["workers"] == 2]
        by_mode = {r["mode"]: r for r in runs}
        auto, fixed = by_mode.get("auto"), [by_mode[m] for m in ("experiment", "data") if m in by_mode]
        best_wall = min(fixed, key=lambda r: r["wall_s"]) if fixed else None
        best_final = min((r for r in fixed if r.get("final_best_s")), key=lambda r: r["final_best_s"], default=None)
        for mode in ("experiment", "data", "auto"):
            r = by_mode.get(mode)
            if r is None:
                continue
            ratio = (f"{auto['wall_s'] / best_wall['wall_s']:.2f} (vs {best_wall['mode']})"
                     if mode == "auto" and auto and best_wall else "")
            final = (f"{auto['final_best_s'] / best_final['final_best_s']:.2f} (vs {best_final['mode']})"
                     if mode == "auto" and auto and best_final and auto.get("final_best_s") else "")
            print(f"| ({name}) {what} | {mode} | {_span(r, 'wall_s')} | {_span(r, 'final_best_s')} | "
                  f"{_span(r, 'best_val_dice', 3)} | {_span(r, 'test_dice', 3)} | {ratio} | {final} |")
    print("\nMedians of the 3 seeded repeats [min-max], 2 workers. Final best: Ray up until the epoch that trained "
          "the search's best model ended. Ratios: medians of auto over the better fixed mode's (global-batch data).")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
