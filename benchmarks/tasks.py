"""The own-data tables (docs/data.md#how-the-default-plan-does): voxtune's default plan on the four phantom kinds, three seeds each.

Per task (brats, spleen-ct, hippocampus, prostate) and seed r = 0, 1, 2: `voxtune synth --task T --cases 20
--seed r` at the task's base shape, `voxtune prepare` with every default (the plan it chose, MB stored
per case, seconds per case), a 2-trial search (lr {0.003, 0.01}, experiment mode on 2 workers, the
default config otherwise, EPOCHS epochs, training seed r), then `predict` of every test-split case
against its label on the source grid (Dice per class; seconds per case, in this process, after the
imports). Seed 0 is the data benchmarks/nnunet_baseline.sh gives nnU-Net (same cases, same split):
with --nnunet WORKDIR the last table sets the two side by side.

    python benchmarks/tasks.py WORKDIR [--epochs E] [--tasks ...] [--seeds ...] [--nnunet NNUNET_WORKDIR]
    python benchmarks/tasks.py WORKDIR --repredict [--nnunet ...]   (predict again on WORKDIR's searches)

Prints the tables as docs/data.md shows them (medians [min-max] over the seeds).
"""
from __future__ import annotations

import argparse
import csv
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import VOXTUNE
from common import span as _span

SPACE = "lr: {grid: [0.003, 0.01]}\n"


def span(values: list[float], digits: int = 3) -> str:
    """median [min-max] of values, or the one value (a single seed)."""
    return _span(values, digits, alone=True)


def sh(*args: str, log: Path) -> float:
    """Run a voxtune command, output to `log`; its wall seconds. A failure stops the benchmark, naming the log."""
    t0 = time.perf_counter()
    with open(log, "w") as f:
        rc = subprocess.run(args, stdout=f, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        sys.exit(f"tasks.py: {' '.join(args[:2])} failed (exit {rc}); see {log}")
    return time.perf_counter() - t0


def predict_test(out: Path, names: list[str]) -> tuple[list[str], dict[str, list[float]], list[float]]:
    """Predict every test-split case of OUT's cache with OUT/run's best trial, against its label on the
    source grid: (case ids, {class: Dice per case}, seconds per case)."""
    from voxtune.predict import predict

    msd, manifest = out / "msd", json.loads((out / "cache" / "manifest.json").read_text())
    meta = json.loads((msd / "dataset.json").read_text())
    by_id = {e["image"].rsplit("/", 1)[-1].split(".nii")[0]: e for e in meta["training"]}
    test = [c["id"] for c in manifest["cases"] if c["split"] == "test"]
    dice: dict[str, list[float]] = {n: [] for n in names}
    predict_s = []
    for cid in test:
        t0 = time.perf_counter()
        (record,) = predict(run=out / "run", source=msd / by_id[cid]["image"], out=out / "predicted",
                            label=msd / by_id[cid]["label"])
        predict_s.append(time.perf_counter() - t0)
        for n in names:
            dice[n].append(record[f"dice_{n}"])
    return test, dice, predict_s


def repredict(work: Path, results: list[dict]) -> list[dict]:
    """--repredict: the predict step again on WORK's finished searches (after a change to predict alone):
    test Dice and predict seconds replaced, the total's predict part too; training is not rerun."""
    for r in results:
        out = work / r["task"] / f"seed{r['seed']}"
        shutil.rmtree(out / "predicted", ignore_errors=True)
        _, dice, predict_s = predict_test(out, r["names"])
        r["total_s"] += sum(predict_s) - r["predict_s_per_case"] * r["test_cases"]
        r.update(test={n: statistics.fmean(v) for n, v in dice.items()}, predict_s_per_case=statistics.fmean(predict_s))
        print(f"{r['task']} seed {r['seed']}: test Dice {r['test']} (predicted again)", flush=True)
    return results


def one(work: Path, task: str, seed: int, epochs: int) -> dict:
    """synth -> prepare -> search -> predict of one task and seed; everything the tables need."""
    out = work / task / f"seed{seed}"
    out.mkdir(parents=True)
    msd, cache, run = out / "msd", out / "cache", out / "run"
    sh(VOXTUNE, "synth", "--task", task, "--out", str(msd), "--cases", "20", "--seed", str(seed),
       log=out / "synth.log")
    prepare_s = sh(VOXTUNE, "prepare", "--source", str(msd), "--out", str(cache), log=out / "prepare.log")
    (out / "space.yaml").write_text(SPACE)
    search_s = sh(VOXTUNE, "tune", "--cache", str(cache), "--out", str(run), "--space", str(out / "space.yaml"),
                  "--mode", "experiment", "--workers", "2", "--epochs", str(epochs), "--set", f"seed={seed}",
                  log=out / "tune.log")
    manifest = json.loads((cache / "manifest.json").read_text())
    names = manifest["regions"]
    with open(run / "leaderboard.csv", newline="") as f:
        best = next(csv.DictReader(f))
    records = json.loads((run / "trials" / best["trial_id"] / "metrics.json").read_text())
    test, dice, predict_s = predict_test(out, names)
    cases = manifest["cases"]
    return {"task": task, "seed": seed, "names": names, "spacing": manifest["spacing"], "shape": manifest["shape"],
            "patch": manifest["plan"]["patch_size"], "median_shape": manifest["plan"]["median_shape"],
            "normalise": [n["scheme"] for n in manifest["normalise"]],
            "mb_per_case": sum(sum(c["bytes"].values()) for c in cases) / len(cases) / 1e6,
            "prepare_s_per_case": prepare_s / len(cases), "search_s": search_s, "lr": float(best["lr"]),
            "epoch_s": statistics.median(r["epoch_time_s"] for r in records),
            "val": {n: float(best[f"val_dice_{n}"]) for n in names},
            "test": {n: statistics.fmean(v) for n, v in dice.items()}, "test_cases": len(test),
            "predict_s_per_case": statistics.fmean(predict_s),
            "total_s": prepare_s + search_s + sum(predict_s)}


def tables(results: list[dict], epochs: int, nnunet: Path | None) -> str:
    tasks = list(dict.fromkeys(r["task"] for r in results))
    lines = ["| task | plan: spacing (mm) | median shape | patch | normalise | MB per case | prepare s per case |",
             "|---|---|---|---|---|---:|---:|"]
    for task in tasks:
        rs = [r for r in results if r["task"] == task]
        first = rs[0]
        plan = (' x '.join(f'{s:.3g}' for s in first['spacing']) if first['spacing']
                else f"source voxels (BraTS preset)")
        lines.append(f"| {task} | {plan} | {'x'.join(map(str, first['median_shape']))} | "
                     f"{'x'.join(map(str, first['patch'])) if first['patch'] else 'whole volume'} | "
                     f"{', '.join(first['normalise'])} | {span([r['mb_per_case'] for r in rs], 2)} | "
                     f"{span([r['prepare_s_per_case'] for r in rs], 2)} |")
    lines += ["", f"{len(results) // len(tasks)} seeds per task; search: lr {{0.003, 0.01}}, {epochs} epochs, "
              "experiment mode on 2 workers; Dice of the best trial (by mean validation Dice).", "",
              "| task | class | s per epoch | best val Dice | test Dice, source grid | predict s per case | "
              "prepare + search + predict s |", "|---|---|---:|---:|---:|---:|---:|"]
    for task in tasks:
        rs = [r for r in results if r["task"] == task]
        for i, name in enumerate(rs[0]["names"]):
            common = (f"{span([r['epoch_s'] for r in rs], 2)} | " if i == 0 else " | ")
            tail = (f" {span([r['predict_s_per_case'] for r in rs], 2)} | {span([r['total_s'] for r in rs], 0)} |"
                    if i == 0 else " | |")
            lines.append(f"| {task if i == 0 else ''} | {name} | {common}{span([r['val'][name] for r in rs])} | "
                         f"{span([r['test'][name] for r in rs])} |{tail}")
    if nnunet is not None:
        lines += ["", "Seed 0, the same 20 cases and split (14 train, 3 val, 3 test); test Dice per class on the "
                  "source grid, mean over the test cases:", "",
                  "| task | nnU-Net 3d_fullres (5 epochs): total s | its test Dice | voxtune: total s | its test Dice |",
                  "|---|---:|---|---:|---|"]
        for task in tasks:
            path = nnunet / task / "nnunet" / "result.json"
            ours = next(r for r in results if r["task"] == task and r["seed"] == 0)
            mine = ", ".join(f"{n} {ours['test'][n]:.3f}" for n in ours["names"])
            if not path.is_file():
                lines.append(f"| {task} | (not run: no {path}) | | {ours['total_s']:.0f} | {mine} |")
                continue
            theirs = json.loads(path.read_text())
            text = ", ".join(f"{k} {v:.3f}" for k, v in theirs["test_dice_mean"].items() if k != "mean")
            lines.append(f"| {task} | {theirs['total_s']:.0f} | {text} | {ours['total_s']:.0f} | {mine} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("work", type=Path)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--tasks", nargs="+", default=["brats", "spleen-ct", "hippocampus", "prostate"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--nnunet", type=Path, help="WORKDIR of benchmarks/nnunet_baseline.sh")
    parser.add_argument("--repredict", action="store_true",
                        help="predict again on WORK's finished searches (WORK/results.json) and print the tables")
    args = parser.parse_args()
    if args.repredict:
        results = repredict(args.work, json.loads((args.work / "results.json").read_text()))
        (args.work / "results.json").write_text(json.dumps(results, indent=1))
        print(tables(results, args.epochs, args.nnunet))
        return
    if args.work.exists():
        sys.exit(f"{args.work} exists; remove it or pass another folder")
    results = []
    for task in args.tasks:
        for seed in args.seeds:  # seed by seed within a task: a spell of load hits one seed, not one task
            results.append(one(args.work, task, seed, args.epochs))
            r = results[-1]
            print(f"{task} seed {seed}: test Dice {r['test']}, {r['total_s']:.0f} s", flush=True)
    (args.work / "results.json").write_text(json.dumps(results, indent=1))
    print(tables(results, args.epochs, args.nnunet))


if __name__ == "__main__":
    main()
