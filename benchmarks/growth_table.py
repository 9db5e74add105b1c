"""What auto's growths cost and gave in benchmarks/bench_growth.sh (docs/benchmarks-auto.md#warm-growth-where-two-ranks-pay):
every regroup of every auto run (from trial.json, via bench.json), and the bound on the tail case.

    python benchmarks/growth_table.py WORKDIR
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from common import span


def main(work: str) -> int:
    print("| search | auto runs | growths (warm) | shrinks | critical path s, growths | critical path s, shrinks | "
          "warm-up s (off the critical path) |")
    print("|---|---:|---:|---:|---|---|---|")
    for name in ("b", "c"):
        path = Path(work) / name / "bench.json"
        if not path.exists():
            continue
        bench = json.loads(path.read_text())
        (auto,) = [r for r in bench["runs"] if r["mode"] == "auto" and r["workers"] == 2]
        regroups = [g for rep in auto["repeats"] for g in rep.get("regroups", [])]
        grow = [g for g in regroups if g.get("warm")]
        shrink = [g for g in regroups if not g.get("warm")]
        cell = lambda gs, key: span([g[key] for g in gs if key in g], 2) if gs else "-"  # noqa: E731
        print(f"| ({name}) | {len(auto['repeats'])} | {len(grow)} | {len(shrink)} | {cell(grow, 'critical_s')} | "
              f"{cell(shrink, 'critical_s')} | {cell(grow, 'warm_s')} |")
    path = Path(work) / "b" / "bench.json"
    if path.exists():
        runs = json.loads(path.read_text())["runs"]
        one = next(r for r in runs if r["workers"] == 1)
        exp, data = (next(r for r in runs if r["mode"] == m and r["workers"] == 2) for m in ("experiment", "data"))
        epochs = exp["epochs"]
        saved = epochs * (one["per_epoch_s"] - data["per_epoch_s"])
        print(f"\nBound on (b): the last trial, alone, on 2 ranks for all its {epochs} epochs, free and at once: data "
              f"mode's 2-rank epoch ({data['per_epoch_s']:.2f} s) instead of one worker's ({one['per_epoch_s']:.2f} s) "
              f"saves {saved:.1f} s of experiment's {exp['wall_s']:.1f} s: {(exp['wall_s'] - saved) / exp['wall_s']:.2f}x "
              "its wall time.")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
