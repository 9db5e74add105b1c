"""The cross-validation tables (docs/benchmarks-auto.md#cross-validation-single-split-against-5-fold-search), from the WORKDIR of benchmarks/bench_folds.sh: the ground truth
of every config, then for each search (single-split and 5-fold, three repeats) the config it chose, that
config's regret, the test Dice of the model it delivers, and its cost; the aggregates last (median
[min-max] over the repeats).

    python benchmarks/folds_table.py WORKDIR
"""
from __future__ import annotations

import csv
import json
import statistics
import sys
from pathlib import Path

from common import span


def _rows(run: Path) -> list[dict]:
    with open(run / "leaderboard.csv", newline="") as f:
        return list(csv.DictReader(f))


def _key(values: dict) -> tuple[float, str]:
    return float(values["lr"]), str(values["norm"])


def truth(work: Path) -> dict[tuple[float, str], list[float]]:
    """{(lr, norm): [test Dice at the last epoch, per seed]} of the runs trained on train + val."""
    out: dict[tuple[float, str], list[float]] = {}
    for row in _rows(work / "truth"):
        records = json.loads((work / "truth" / "trials" / row["trial_id"] / "metrics.json").read_text())
        out.setdefault(_key(row), []).append(records[-1]["val_dice"])
    return out


def search(run: Path, gt: dict, best_gt: float) -> dict:
    best = json.loads((run / "best.json").read_text())
    summary = json.loads((run / "summary.json").read_text())
    folds = best.get("folds") or []
    chosen = _key(best["searched"])
    models = max(1, len(folds)) if folds else 1
    return {"run": run.name, "chosen": chosen, "val": best["validation"]["val_dice"],
            "truth": statistics.fmean(gt[chosen]), "regret": best_gt - statistics.fmean(gt[chosen]),
            "test": best["test"]["test_dice"],
            "fold_tests": [f["test"]["test_dice"] for f in folds],
            "epochs": sum(int(r["epochs"]) for r in _rows(run)) * models, "wall": summary["wall_time_s"]}


def main(work: str) -> int:
    root = Path(work)
    gt = truth(root)
    best_gt = max(statistics.fmean(v) for v in gt.values())
    print("Ground truth: each config trained on all train + val cases, test Dice at its last epoch, 3 seeds\n")
    print("| lr | norm | test Dice, mean | [min-max] |")
    print("|---:|---|---:|---:|")
    for (lr, norm), values in sorted(gt.items(), key=lambda kv: -statistics.fmean(kv[1])):
        print(f"| {lr:g} | {norm} | {statistics.fmean(values):.3f} | [{min(values):.3f}-{max(values):.3f}] |")
    print("\n| search | chosen config | its val Dice | its true test Dice | regret | delivered model's test Dice "
          "| fold models' test Dice | epochs trained | wall s |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    found: dict[str, list[dict]] = {"single": [], "cv5": []}
    for protocol in found:
        for run in sorted(root.glob(f"{protocol}-*")):
            if (run / "best.json").exists():
                s = search(run, gt, best_gt)
                found[protocol].append(s)
                folds = ", ".join(f"{d:.3f}" for d in s["fold_tests"]) or "-"
                delivered = f"{s['test']:.3f}" + (" (ensemble)" if s["fold_tests"] else "")
                print(f"| {s['run']} | lr {s['chosen'][0]:g}, {s['chosen'][1]} | {s['val']:.3f} | {s['truth']:.3f} "
                      f"| {s['regret']:.3f} | {delivered} | {folds} | {s['epochs']} | {s['wall']:.0f} |")
    print("\n| protocol | regret | delivered test Dice | epochs trained | wall s |")
    print("|---|---:|---:|---:|---:|")
    for protocol, runs in found.items():
        if runs:
            print(f"| {protocol} | {span([s['regret'] for s in runs])} | {span([s['test'] for s in runs])} "
                  f"| {span([s['epochs'] for s in runs], 0)} | {span([s['wall'] for s in runs], 0)} |")
    cv = found["cv5"]
    if cv:
        gain = [s["test"] - statistics.fmean(s["fold_tests"]) for s in cv]
        over_best = [s["test"] - max(s["fold_tests"]) for s in cv]
        print(f"\nensemble test Dice minus its fold models' mean: {span(gain)}; minus the best fold model's: "
              f"{span(over_best)} (the best fold model on test: known only afterwards)")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
