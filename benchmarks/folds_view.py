"""A view of a prepared cache for the ground truth of benchmarks/bench_folds.sh: its train and val
cases become the view's train split and its test cases the view's val split, so a run trained on the
view trains on every train + val case and its last epoch's val_dice is its test Dice (no choice is made
on the test cases: the last epoch counts, not the best). The case files are symlinks, nothing is copied.

    python benchmarks/folds_view.py CACHE VIEW
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from voxtune.data.cache import MANIFEST, read_manifest


def main(cache: str, view: str) -> int:
    cache_dir, out = Path(cache).resolve(), Path(view)
    manifest = read_manifest(cache_dir)
    out.mkdir(parents=True)
    for entry in manifest["cases"]:
        entry["split"] = {"train": "train", "val": "train", "test": "val"}[entry["split"]]
        for rel in entry["files"].values():
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            (out / rel).symlink_to(cache_dir / rel)
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1))
    counts = {s: sum(e["split"] == s for e in manifest["cases"]) for s in ("train", "val")}
    print(f"{out}: {counts['train']} train (the cache's train + val), {counts['val']} val (its test)")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
