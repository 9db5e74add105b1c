"""Has the CPU bench trained long enough? For every search of a bench folder: its winning trial (best
validation Dice) and how far that trial's validation Dice moved over its last 3 epochs (max - min).

    python benchmarks/settled.py BENCH_DIR

The bench (docs/benchmarks.md#which-mode-wins-on-2-cpu-cores) asks for < 0.01 in every search, so that the winner and its Dice are not a snapshot
of a curve still rising.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

LAST = 3


def main(bench_dir: str) -> int:
    worst = 0.0
    print(f"{'search':<28}{'winner (best val Dice)':<44}{'last 3 epochs: val Dice':<32}{'moved':>7}")
    for run in sorted((Path(bench_dir) / "runs").glob("*-r*")):
        trials = []
        for metrics in (run / "trials").glob("*/metrics.json"):
            records = json.loads(metrics.read_text())
            config = json.loads((metrics.parent / "trial.json").read_text()).get("config", {})
            if records:
                trials.append((max(r["val_dice"] for r in records), config, [r["val_dice"] for r in records]))
        if not trials:
            continue
        best, config, curve = max(trials, key=lambda t: t[0])
        tail = curve[-LAST:]
        moved = max(tail) - min(tail)
        worst = max(worst, moved)
        name = ", ".join(f"{k} {config.get(k)}" for k in ("lr", "norm"))
        print(f"{run.name:<28}{name + f' ({best:.3f})':<44}{' '.join(f'{d:.3f}' for d in tail):<32}{moved:>7.3f}")
    print(f"largest move over a winner's last {LAST} epochs: {worst:.3f} (target < 0.01)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
