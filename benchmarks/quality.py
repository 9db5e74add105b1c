"""Validation Dice curves of `voxtune train` against a plain PyTorch loop of the same net.

lr x norm x seed, E epochs each, on one prepared cache; the plain loop (benchmarks/plain_unet.py, BatchNorm
with PyTorch's default momentum statistics) runs every lr x seed. Writes into WORK:

    quality.json   every curve, and per run: best, last, largest epoch-to-epoch drop after epoch 10,
                   share of the loop spent recomputing BatchNorm statistics
    quality.png    the curves, one panel per lr
    quality.md     the table

    python benchmarks/quality.py CACHE WORK [--epochs 25] [--lrs 0.001 0.005] [--seeds 0 1 2]
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import VOXTUNE

HERE = Path(__file__).resolve().parent
SETTLED = 10  # drops are counted from this epoch on: early epochs of any run swing


def summarise(curve: list[float]) -> dict[str, float]:
    drops = [a - b for a, b in zip(curve[SETTLED - 1:], curve[SETTLED:])]
    return {"best": max(curve), "last": curve[-1], "max_drop_after_10": max(drops, default=0.0)}


def run_voxtune(voxtune: str, cache: Path, out: Path, lr: float, norm: str, seed: int, epochs: int) -> dict:
    cmd = [voxtune, "train", "--cache", str(cache), "--out", str(out), "--epochs", str(epochs),
           "--set", f"lr={lr}", "--set", f"norm={norm}", "--set", f"seed={seed}"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    records = json.loads((out / "metrics.json").read_text())
    loop_s = sum(r["epoch_time_s"] for r in records)
    return {"val_dice": [r["val_dice"] for r in records], "loop_s": loop_s,
            "bn_stats_share": sum(r.get("bn_stats_s", 0.0) for r in records) / loop_s}


def run_plain(cache: Path, lr: float, seed: int, epochs: int) -> dict:
    cmd = [sys.executable, str(HERE / "plain_unet.py"), str(cache), "--epochs", str(epochs), "--lr", str(lr),
           "--seed", str(seed)]
    out = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    return {"val_dice": out["val_dice"], "loop_s": out["seconds"]}


def plot(runs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lrs = sorted({r["lr"] for r in runs})
    fig, axes = plt.subplots(1, len(lrs), figsize=(6 * len(lrs), 4.2), dpi=110, squeeze=False)
    colours = {"bn": "tab:blue", "gn": "tab:green", "plain bn": "tab:red"}
    for ax, lr in zip(axes[0], lrs):
        for r in (r for r in runs if r["lr"] == lr):
            label = r["name"] if r["seed"] == min(x["seed"] for x in runs) else None
            ax.plot(range(1, len(r["val_dice"]) + 1), r["val_dice"], color=colours[r["name"]], alpha=0.75,
                    lw=1.3, label=label)
        ax.set_title(f"lr {lr:g}: val Dice per epoch, every seed")
        ax.set_xlabel("epoch")
        ax.set_ylabel("val Dice")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def markdown(runs: list[dict]) -> str:
    lines = ["| run | lr | seed | best | last | largest drop after epoch 10 | loop s | BN statistics share |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in runs:
        share = f"{100 * r['bn_stats_share']:.1f} %" if "bn_stats_share" in r else ""
        lines.append(f"| {r['name']} | {r['lr']:g} | {r['seed']} | {r['best']:.3f} | {r['last']:.3f} | "
                     f"{r['max_drop_after_10']:.3f} | {r['loop_s']:.1f} | {share} |")
    return "\n".join(lines) + "\n\n" + by_config(runs)


def by_config(runs: list[dict]) -> str:
    """The table of docs/benchmarks.md#quality-against-a-plain-pytorch-loop: one row per (run, lr), every seed's best and last, the largest drop over the
    seeds, the median loop time and statistics share."""
    lines = ["| run | lr | best, seeds " + " / ".join(str(s) for s in sorted({r["seed"] for r in runs}))
             + " | last | largest drop after epoch 10 | loop s (median) | BN statistics share (median) |",
             "|---|---:|---|---|---:|---:|---:|"]
    for name, lr in dict.fromkeys((r["name"], r["lr"]) for r in runs):
        group = sorted((r for r in runs if (r["name"], r["lr"]) == (name, lr)), key=lambda r: r["seed"])
        shares = [r["bn_stats_share"] for r in group if "bn_stats_share" in r]
        share = f"{100 * statistics.median(shares):.1f} %" if shares else ""
        best = " / ".join(f"{r['best']:.3f}" for r in group)
        last = " / ".join(f"{r['last']:.3f}" for r in group)
        drop = max(r["max_drop_after_10"] for r in group)
        loop_s = statistics.median(r["loop_s"] for r in group)
        lines.append(f"| {name} | {lr:g} | {best} | {last} | {drop:.3f} | {loop_s:.1f} | {share} |")
    return "\n".join(lines) + "\n"


def arguments() -> argparse.Namespace:
    """CACHE WORK [--epochs] [--lrs] [--seeds] [--voxtune], with WORK made (quality.py and precise_bn.py)."""
    ap = argparse.ArgumentParser()
    ap.add_argument("cache", type=Path)
    ap.add_argument("work", type=Path)
    ap.add_argument("--epochs", type=int, default=25)
    ap.add_argument("--lrs", type=float, nargs="+", default=[1e-3, 5e-3])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--voxtune", default=VOXTUNE)
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    return args


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--table":  # the tables again, from a run's quality.json
        print(markdown(json.loads(Path(sys.argv[2]).read_text())["runs"]))
        return
    args = arguments()
    jobs = [(lr, norm, seed) for lr in args.lrs for norm in ("bn", "gn", "plain bn") for seed in args.seeds]
    runs = []
    t0 = time.perf_counter()
    for i, (lr, norm, seed) in enumerate(jobs, 1):
        if norm == "plain bn":
            result = run_plain(args.cache, lr, seed, args.epochs)
        else:
            result = run_voxtune(args.voxtune, args.cache, args.work / f"{norm}-lr{lr:g}-s{seed}", lr, norm, seed,
                                 args.epochs)
        runs.append({"name": norm, "lr": lr, "seed": seed, **result, **summarise(result["val_dice"])})
        r = runs[-1]
        print(f"[{time.perf_counter() - t0:6.0f}s] {i}/{len(jobs)} {norm} lr {lr:g} seed {seed}: best {r['best']:.3f} "
              f"last {r['last']:.3f} largest drop after epoch {SETTLED} {r['max_drop_after_10']:.3f}", flush=True)
    (args.work / "quality.json").write_text(json.dumps({"epochs": args.epochs, "runs": runs}, indent=1))
    plot(runs, args.work / "quality.png")
    (args.work / "quality.md").write_text(markdown(runs))
    print(markdown(runs))


if __name__ == "__main__":
    main()
