"""How many files one trial opens and writes per epoch: what a search asks of a shared filesystem's
metadata server per rank (docs/cluster.md#node-local-staging).

Trains one config in this process (num_workers 0, so that every open happens here and Python's audit
hook sees it: a loader process opens the same files, only elsewhere) on a phantom cache, and counts the
`open` events per epoch: under the cache (reads: case files and the manifest) and under the run folder
(writes: metrics, checkpoints, TensorBoard). Two settings: whole volumes (the default plan on small
cases) and 24^3 patches. The counts do not depend on the machine; they scale with the cases per epoch
(train + val + the precise-BN pass) and not with their size.

    python benchmarks/file_opens.py [WORKDIR] [--epochs 3]      (default WORKDIR: file-opens; ~1 minute)
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

from common import ROOT, voxtune

sys.path.insert(0, str(ROOT / "src"))


def count(cache: Path, out: Path, epochs: int, patch: list[int] | None) -> list[dict]:
    from voxtune.config import make_config
    from voxtune.train.loop import fit

    seen: Counter = Counter()
    rows: list[dict] = []
    cache_s, out_s = str(cache), str(out)

    def hook(event: str, args: tuple) -> None:
        if event == "open" and isinstance(args[0], (str, Path)):
            path = str(args[0])
            mode = args[1] if len(args) > 1 and isinstance(args[1], str) else "r"
            if path.startswith(cache_s):
                seen["cache_reads"] += 1
                seen[path.rsplit(".", 2)[-2] if path.endswith(".npy") else "other"] += 1
            elif path.startswith(out_s):
                seen["run_writes" if any(c in mode for c in "wax+") else "run_reads"] += 1

    def report(record: dict) -> bool:
        rows.append({"epoch": record["epoch"], **seen})
        seen.clear()
        return False

    sys.addaudithook(hook)
    overrides = {"epochs": epochs, "num_workers": 0, "filter_start": 4}
    if patch:
        overrides["patch_size"] = patch
    fit(make_config(overrides), cache, out, threads=1, report=report)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("work", nargs="?", default="file-opens")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--child", help=argparse.SUPPRESS)  # internal: count one setting in this process
    args = ap.parse_args()
    work = Path(args.work).resolve()
    if args.child:
        patch = json.loads(args.child)
        print(json.dumps(count(work / "cache", work / f"run-{'patch' if patch else 'whole'}", args.epochs, patch)))
        return
    if work.exists():
        sys.exit(f"{work} exists; remove it or pass another folder")
    voxtune("synth", "--out", str(work / "msd"), "--cases", "12", "--shape", "32", "32", "32", "--seed", "0",
            stdout=subprocess.DEVNULL)
    voxtune("prepare", "--source", str(work / "msd"), "--out", str(work / "cache"), stdout=subprocess.DEVNULL)
    manifest = json.loads((work / "cache" / "manifest.json").read_text())
    split = Counter(c["split"] for c in manifest["cases"])
    print(f"{split['train']} train and {split['val']} val cases (3 case files each), {args.epochs} epochs, "
          "1 rank, loader in-process; files opened per epoch:\n")
    print("| samples | epoch | opens under the cache | of them image / label / foreground / other | "
          "run-folder writes | run-folder reads |")
    print("|---|---:|---:|---|---:|---:|")
    for patch in (None, [24, 24, 24]):
        out = subprocess.run([sys.executable, __file__, str(work), "--epochs", str(args.epochs),
                              "--child", json.dumps(patch)], check=True, capture_output=True, text=True).stdout
        for row in json.loads(out.strip().splitlines()[-1]):
            kinds = " / ".join(str(row.get(k, 0)) for k in ("image", "label", "foreground", "other"))
            print(f"| {'24^3 patches' if patch else 'whole volumes'} | {row['epoch']} | {row.get('cache_reads', 0)} | "
                  f"{kinds} | {row.get('run_writes', 0)} | {row.get('run_reads', 0)} |")
    shutil.rmtree(work / "msd")


if __name__ == "__main__":
    main()
