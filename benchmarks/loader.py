"""The data path at the paper's volume size: what a sample costs, and what a training run holds in RAM.

    .venv/bin/python benchmarks/loader.py WORK [--cases 16] [--passes 3]

On N full-size phantoms (240 x 240 x 155 x 4, `voxtune synth` + `voxtune prepare` without --shape):

1. bytes stored per case (cropped float16 .npy) against the float32 frame;
2. samples/s and MB/s of CaseDataset through a DataLoader with 0, 1 and 2 loader processes, for
   whole volumes and for 128^3 patches (with flips, as training draws them), against the raw limit:
   the same bytes read by np.load of the stored files (whole volumes) or copied from a case already
   in RAM (patches), all from a warm page cache;
3. the same samples as voxtune 0.1 made them (its cache: a float32 frame per case, np.load of the whole
   volume, then the crop and flip copies), against CaseDataset now, sample by sample without a
   DataLoader: what a training process pays per sample, before and after;
4. one `voxtune train --epochs 2 --set patch_size=64` on a 4-case and on a 12-case subset of the
   cache: the first epoch's extra data wait (epoch 1 minus epoch 2) and the run's peak RSS.

Writes WORK/loader.json and WORK/loader.md (docs/benchmarks.md#loading-a-sample).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from common import ROOT, voxtune

FULL = (240, 240, 155)


def make_cache(work: Path, cases: int) -> Path:
    msd, cache = work / "Task01_BrainTumour", work / "cache"
    if not (msd / "dataset.json").exists():
        voxtune("synth", "--out", str(msd), "--cases", str(cases), "--test-cases", "0", "--shape", *map(str, FULL),
                stdout=subprocess.DEVNULL)
    if not (cache / "manifest.json").exists():
        voxtune("prepare", "--source", str(msd), "--out", str(cache), "--workers", "2", stdout=subprocess.DEVNULL)
    return cache


def warm(cache: Path) -> None:
    for path in (cache / "cases").glob("*.npy"):
        with open(path, "rb") as f:
            while f.read(1 << 24):
                pass


def loader_rate(cache: Path, ids: list[str], patch, workers: int, passes: int) -> dict:
    import torch

    from voxtune.data.loader import CaseDataset, EpochSampler

    ds = CaseDataset(cache, ids * passes, patch_size=patch, augment=True, divisor=8)
    sampler = EpochSampler(torch.utils.data.RandomSampler(ds, generator=torch.Generator().manual_seed(0)))
    loader = torch.utils.data.DataLoader(ds, batch_size=1, sampler=sampler, num_workers=workers,
                                         prefetch_factor=2 if workers else None)
    it = iter(loader)
    first = next(it)  # worker start-up is not throughput
    nbytes = sum(t.numel() * t.element_size() for t in first)
    t0 = time.perf_counter()
    n = sum(1 for _ in it)
    seconds = time.perf_counter() - t0
    return {"samples_per_s": n / seconds, "mb_per_s": n * nbytes / seconds / 1e6, "sample_mb": nbytes / 1e6}


def raw_rate(cache: Path, manifest: dict, ids: list[str], patch, passes: int) -> dict:
    """The same bytes without the loader: np.load of the stored files, or a window copied from RAM."""
    entries = [c for c in manifest["cases"] if c["id"] in ids]
    rng = np.random.default_rng(0)
    if patch is None:
        t0 = time.perf_counter()
        nbytes = 0
        for _ in range(passes):
            for e in entries:
                arrays = [np.load(cache / e["files"][k]) for k in ("image", "label")]
                nbytes += sum(a.nbytes for a in arrays)
        seconds = time.perf_counter() - t0
        n = passes * len(entries)
        return {"samples_per_s": n / seconds, "mb_per_s": nbytes / seconds / 1e6}
    in_ram = [(np.load(cache / e["files"]["image"]), np.load(cache / e["files"]["label"])) for e in entries]
    t0 = time.perf_counter()
    nbytes, n = 0, passes * len(entries)
    for i in range(n):
        image, label = in_ram[i % len(in_ram)]
        start = [int(rng.integers(0, max(1, d - p) + 1)) for d, p in zip(image.shape[1:], patch)]
        window = (slice(None),) + tuple(slice(s, s + p) for s, p in zip(start, patch))
        copies = [np.array(image[window]), np.array(label[window])]
        nbytes += sum(c.nbytes for c in copies)
    seconds = time.perf_counter() - t0
    return {"samples_per_s": n / seconds, "mb_per_s": nbytes / seconds / 1e6}


def per_sample_ms(cache: Path, manifest: dict, ids: list[str], patch, work: Path, samples: int = 24) -> dict:
    """Median ms of one sample: voxtune 0.1's way (float32 frame .npy, np.load, crop, flip copy) and
    CaseDataset's (a memory-mapped window of the cropped float16 cache, flipped in the one copy)."""
    import torch

    from voxtune.data.cache import load_case
    from voxtune.data.loader import CaseDataset

    old = work / "v01"
    old.mkdir(exist_ok=True)
    few = ids[:4]
    for cid in few:  # the v0.1 cache: whole float32 frames
        if not (old / f"{cid}.image.npy").exists():
            image, label = load_case(cache, cid, manifest=manifest)
            np.save(old / f"{cid}.image.npy", image)
            np.save(old / f"{cid}.label.npy", label)
            for kind in ("image", "label"):
                with open(old / f"{cid}.{kind}.npy", "rb") as f:  # warm, as the new cache is
                    while f.read(1 << 24):
                        pass
    rng = np.random.default_rng(0)

    def v01(i: int):
        cid = few[i % len(few)]
        image, label = np.load(old / f"{cid}.image.npy"), np.load(old / f"{cid}.label.npy")
        if patch is not None:
            start = [int(rng.integers(0, d - p + 1)) for d, p in zip(image.shape[1:], patch)]
            window = (slice(None),) + tuple(slice(s, s + p) for s, p in zip(start, patch))
            image, label = image[window], label[window]
        axes = [1 + a for a in range(3) if rng.random() < 0.5]
        image, label = np.flip(image, axes), np.flip(label, axes)
        return (torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)),
                torch.from_numpy(np.ascontiguousarray(label, dtype=np.float32)))

    ds = CaseDataset(cache, few, patch_size=patch, augment=True, divisor=8)
    times = {"v0.1": [], "now": []}
    for i in range(samples):
        for name, fn in (("v0.1", lambda: v01(i)), ("now", lambda: ds[(i, i % len(few))])):
            t0 = time.perf_counter()
            fn()
            times[name].append(1000 * (time.perf_counter() - t0))
    return {k: statistics.median(v) for k, v in times.items()}


def subset_cache(cache: Path, out: Path, manifest: dict, n: int) -> Path:
    """A cache of n cases sharing the big cache's files (hard links): n - v train, v val cases."""
    val = max(1, round(0.15 * n))
    chosen = ([c for c in manifest["cases"] if c["split"] == "train"][: n - val]
              + [c for c in manifest["cases"] if c["split"] == "val"][:val])
    if len(chosen) < n:
        raise SystemExit(f"{cache} has too few train or val cases for a {n}-case subset")
    shutil.rmtree(out, ignore_errors=True)
    (out / "cases").mkdir(parents=True)
    for case in chosen:
        for rel in case["files"].values():
            os.link(cache / rel, out / rel)
    (out / "manifest.json").write_text(json.dumps({**manifest, "cases": chosen}))
    return out


def train_run(cache: Path, run: Path) -> dict:
    """One `voxtune train` in its own process; its peak RSS and per-epoch data wait."""
    shutil.rmtree(run, ignore_errors=True)
    probe = ("import resource, subprocess, sys; rc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode;"
             " print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(rc)")
    cmd = [sys.executable, "-c", probe, sys.executable, "-m", "voxtune.cli", "train", "--cache", str(cache),
           "--out", str(run), "--epochs", "2", "--set", "patch_size=64"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    records = json.loads((run / "metrics.json").read_text())
    return {"peak_rss_mb": int(out.split()[-1]) / 1024, "data_wait_s": [r["data_wait_s"] for r in records],
            "epoch_s": [r["epoch_time_s"] for r in records]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("work", type=Path)
    ap.add_argument("--cases", type=int, default=16)
    ap.add_argument("--passes", type=int, default=2, help="passes over the cases per throughput measurement")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    from voxtune.data.cache import read_manifest

    args.work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    cache = make_cache(args.work, args.cases)
    manifest = read_manifest(cache)
    stored = [sum(c["bytes"].values()) / 1e6 for c in manifest["cases"]]
    frame_mb = (np.prod(manifest["cases"][0]["image_shape"]) * 4 + np.prod(manifest["cases"][0]["label_shape"])) / 1e6
    print(f"[{time.perf_counter() - t0:5.0f}s] cache of {len(stored)} cases: {np.mean(stored):.1f} MB per case "
          f"(max {max(stored):.1f}) against {frame_mb:.1f} MB as a float32 frame", flush=True)
    ids = [c["id"] for c in manifest["cases"]]
    warm(cache)

    rows = []
    for name, patch in (("whole volume", None), ("128^3 patch", (128, 128, 128))):
        raw = raw_rate(cache, manifest, ids, patch, args.passes)
        for workers in (0, 1, 2):
            got = loader_rate(cache, ids, patch, workers, args.passes)
            rows.append({"sample": name, "workers": workers, **got, "raw_samples_per_s": raw["samples_per_s"],
                         "raw_mb_per_s": raw["mb_per_s"]})
            print(f"[{time.perf_counter() - t0:5.0f}s] {name}, {workers} loader processes: "
                  f"{got['samples_per_s']:.1f} samples/s, {got['mb_per_s']:.0f} MB/s "
                  f"(raw limit {raw['samples_per_s']:.1f} samples/s, {raw['mb_per_s']:.0f} MB/s)", flush=True)

    per_sample = {}
    for name, patch in (("whole volume", None), ("128^3 patch", (128, 128, 128))):
        per_sample[name] = per_sample_ms(cache, manifest, ids, patch, args.work)
        print(f"[{time.perf_counter() - t0:5.0f}s] {name}, one sample: voxtune 0.1 {per_sample[name]['v0.1']:.0f} ms, "
              f"now {per_sample[name]['now']:.0f} ms", flush=True)

    runs = {}
    for n in (4, 12):
        sub = subset_cache(cache, args.work / f"cache{n}", manifest, n)
        runs[n] = train_run(sub, args.work / f"train{n}")
        r = runs[n]
        print(f"[{time.perf_counter() - t0:5.0f}s] train on {n} cases: peak RSS {r['peak_rss_mb']:.0f} MB, data wait "
              f"epoch 1 {r['data_wait_s'][0]:.2f}s, epoch 2 {r['data_wait_s'][1]:.2f}s", flush=True)

    whole0 = next(r for r in rows if r["sample"] == "whole volume" and r["workers"] == 0)
    patch0 = next(r for r in rows if r["sample"] == "128^3 patch" and r["workers"] == 0)
    result = {"cases": len(stored), "stored_mb_per_case": float(np.mean(stored)), "stored_mb_max": max(stored),
              "frame_float32_mb": float(frame_mb), "loader": rows, "train": runs,
              "patch_cost_vs_whole": whole0["samples_per_s"] / patch0["samples_per_s"], "per_sample_ms": per_sample}
    (args.work / "loader.json").write_text(json.dumps(result, indent=1))
    md = [f"{len(stored)} full-size phantoms (240 x 240 x 155 x 4): {np.mean(stored):.1f} MB stored per case "
          f"(max {max(stored):.1f}; {frame_mb:.1f} MB as a float32 frame). Warm page cache, batch 1, with flips.", "",
          "| sample | loader processes | samples/s | MB/s | raw limit samples/s | raw limit MB/s |",
          "|---|---:|---:|---:|---:|---:|"]
    md += [f"| {r['sample']} | {r['workers']} | {r['samples_per_s']:.1f} | {r['mb_per_s']:.0f} | "
           f"{r['raw_samples_per_s']:.1f} | {r['raw_mb_per_s']:.0f} |" for r in rows]
    md += ["", f"A 128^3 patch costs {result['patch_cost_vs_whole']:.2f} of a whole-volume sample (0 loader processes).",
           "", "| one sample, no DataLoader (median ms) | voxtune 0.1 (float32 frame, np.load) | now (cropped float16, "
           "memory-mapped window) |", "|---|---:|---:|"]
    md += [f"| {name} | {v['v0.1']:.0f} | {v['now']:.0f} |" for name, v in per_sample.items()]
    md += ["", "| `voxtune train`, patch 64^3, 2 epochs | peak RSS MB | data wait epoch 1 s | epoch 2 s |",
           "|---|---:|---:|---:|"]
    md += [f"| {n} cases | {r['peak_rss_mb']:.0f} | {r['data_wait_s'][0]:.2f} | {r['data_wait_s'][1]:.2f} |"
           for n, r in runs.items()]
    md += ["", f"Peak RSS 12 cases / 4 cases: {runs[12]['peak_rss_mb'] / runs[4]['peak_rss_mb']:.2f}"]
    (args.work / "loader.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
