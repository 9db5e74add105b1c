"""Full-size data path against the network on one GPU: who sets the pace, with and without AMP, and
what packing 1, 2 or 4 trials on the GPU gives. Run through benchmarks/gpu.sh (never in CI).

    python benchmarks/gpu_bench.py WORK [--cases 12] [--smoke]

1. loader: CaseDataset samples/s through a DataLoader (0, 4, 8 processes; pinned memory), whole
   volumes and 128^3 patches, from a warm page cache;
2. network: training steps/s of the paper's 3D U-Net (filter_start 8, depth 3, batch 2) on tensors
   already on the GPU, whole volume (240 x 240 x 152) and 128^3 patches, AMP (bf16) on and off;
3. packing: 1, 2 and 4 `voxtune train` processes sharing the GPU at once (what `voxtune tune
   --gpus-per-worker 1 / 0.5 / 0.25` places on one GPU; Ray itself is not installed there, its
   wheel is larger than what the device machine accepts), 128^3 patches, aggregate samples/s;
4. auto's survivor: when ASHA has stopped 3 of 4 packed trials, the last one grows: one trial at
   batch 2 on 1 rank against 2 gloo ranks of batch 1 on the same GPU (torchrun in place of Ray: the
   growth's gain, not the Pool's decision), seconds per epoch.

--smoke runs every step at toy sizes on the CPU, to check the script before a GPU is lent.
Writes WORK/gpu.json and prints the table.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from common import ROOT, src_env, voxtune, voxtune_cli


def loader_rate(cache: Path, patch, workers: int, cuda: bool, seconds: float) -> float:
    import torch

    from voxtune.data.cache import case_ids, read_manifest
    from voxtune.data.loader import CaseDataset, EpochSampler

    ids = case_ids(read_manifest(cache))
    ds = CaseDataset(cache, ids * 50, patch_size=patch, augment=True, divisor=8)
    loader = torch.utils.data.DataLoader(ds, batch_size=2, sampler=EpochSampler(torch.utils.data.RandomSampler(ds)),
                                         num_workers=workers, pin_memory=cuda, prefetch_factor=4 if workers else None)
    it = iter(loader)
    next(it)
    n, t0 = 0, time.perf_counter()
    for image, _ in it:
        n += image.shape[0]
        if time.perf_counter() - t0 > seconds:
            break
    return n / (time.perf_counter() - t0)


def net_rate(shape, amp: bool, device, steps: int) -> float:
    import torch
    from monai.losses import DiceLoss

    from voxtune.models.unet3d import UNet3D

    torch.manual_seed(0)
    model = UNet3D(4, 1, 8, 3, "bn").to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last_3d)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = DiceLoss(sigmoid=True)
    x = torch.randn(2, 4, *shape, device=device)
    y = (torch.rand(2, 1, *shape, device=device) > 0.9).float()
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last_3d)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = loss_fn(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(2):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 2 * steps / (time.perf_counter() - t0)  # samples/s at batch 2


def packed_rate(cache: Path, work: Path, trials: int, patch: int, epochs: int, amp: bool) -> float:
    """Aggregate training samples/s of `trials` concurrent `voxtune train` runs on the same GPU."""
    procs, runs = [], []
    env = src_env()
    for i in range(trials):
        run = work / f"packed{trials}-{i}"
        runs.append(run)
        cmd = voxtune_cli("train", "--cache", str(cache), "--out", str(run), "--epochs", str(epochs),
                          "--set", f"patch_size={patch}", "--set", f"seed={i}", "--set", f"amp={str(amp).lower()}")
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL))
    for p in procs:
        if p.wait():
            raise SystemExit(f"a packed run failed (exit {p.returncode})")
    total = 0.0
    for run in runs:
        records = json.loads((run / "metrics.json").read_text())[1:]  # epoch 1 warms up
        total += sum(r["train_samples"] for r in records) / sum(r["train_s"] for r in records)
    return total


def grown_rate(cache: Path, work: Path, ranks: int, patch: int, epochs: int, amp: bool) -> dict:
    """auto's survivor: one trial (batch 2) trained by `ranks` gloo ranks sharing the GPU (global-batch:
    1 case a rank at 2), as a trial grows once ASHA has stopped the others packed with it. Ray is not on
    the device machine, so the ranks start with torchrun and the Pool's decision is not exercised: this
    measures what the growth would give, seconds per epoch and training samples/s of the one trial."""
    run = work / f"grown{ranks}"
    config = {"batch_size": 2, "epochs": epochs, "patch_size": [patch] * 3, "amp": amp, "min_rank_batch": 1}
    env = src_env()
    threads = max(1, (os.cpu_count() or 1) // 4 // ranks)  # a quarter of the machine, as 1 of 4 packed trials
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}",
           str(ROOT / "benchmarks" / "grow_rank.py"), str(cache), str(run), json.dumps(config), str(threads)]
    if subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL).returncode:
        raise SystemExit(f"the {ranks}-rank run failed")
    records = json.loads((run / "metrics.json").read_text())[1:]  # epoch 1 warms up
    return {"ranks": ranks, "epoch_s": sum(r["epoch_time_s"] for r in records) / len(records),
            "samples_per_s": sum(r["train_samples"] for r in records) / sum(r["train_s"] for r in records)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("work", type=Path)
    ap.add_argument("--cases", type=int, default=12)
    ap.add_argument("--smoke", action="store_true", help="toy sizes on the CPU: check the script itself")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    import torch

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    full, patch = ((48, 48, 51), 32) if args.smoke else ((240, 240, 155), 128)
    frame = (full[0], full[1], full[2] - 3)
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    log = lambda text: print(f"[{time.perf_counter() - t0:5.0f}s] {text}", flush=True)  # noqa: E731
    msd, cache = work / "Task01_BrainTumour", work / "cache"
    env = src_env()
    if not (cache / "manifest.json").exists():
        voxtune("synth", "--out", str(msd), "--cases", str(args.cases), "--test-cases", "0", "--shape", *map(str, full),
                env=env, stdout=subprocess.DEVNULL)
        voxtune("prepare", "--source", str(msd), "--out", str(cache), "--workers", str(min(8, os.cpu_count())),
                env=env, stdout=subprocess.DEVNULL)
    log(f"cache of {args.cases} cases at {full}; device {torch.cuda.get_device_name(0) if cuda else 'cpu'}")
    result = {"device": torch.cuda.get_device_name(0) if cuda else "cpu", "torch": torch.__version__,
              "cpus": os.cpu_count(), "cases": args.cases, "loader": [], "net": [], "packed": []}
    seconds = 3 if args.smoke else 20
    for name, p in (("whole volume", None), (f"{patch}^3 patch", (patch,) * 3)):
        for workers in (0, 4, 8):
            rate = loader_rate(cache, p, workers, cuda, seconds)
            result["loader"].append({"sample": name, "workers": workers, "samples_per_s": rate})
            log(f"loader {name}, {workers} processes: {rate:.1f} samples/s")
        for amp in (False, True):
            rate = net_rate(frame if p is None else p, amp, device, 2 if args.smoke else 10)
            result["net"].append({"sample": name, "amp": amp, "samples_per_s": rate})
            log(f"network {name}, AMP {'on' if amp else 'off'}: {rate:.2f} samples/s")
    for trials in (1, 2, 4):
        rate = packed_rate(cache, work, trials, patch, 2 if args.smoke else 3, amp=cuda)  # (true without CUDA is refused)
        result["packed"].append({"trials": trials, "gpus_per_trial": 1 / trials, "samples_per_s": rate})
        log(f"{trials} trial(s) packed on the GPU: {rate:.2f} training samples/s in total")
    result["grown"] = []
    for ranks in (1, 2):
        row = grown_rate(cache, work, ranks, patch, 2 if args.smoke else 4, amp=cuda)
        result["grown"].append(row)
        log(f"auto's survivor on {ranks} rank(s) of the GPU: {row['epoch_s']:.2f} s an epoch, "
            f"{row['samples_per_s']:.2f} training samples/s")
    (work / "gpu.json").write_text(json.dumps(result, indent=1))
    print(f"\n{result['device']}, torch {result['torch']}, {result['cpus']} CPUs; samples/s")
    print("| sample | loader 0 / 4 / 8 processes | network AMP off | network AMP on (bf16) |\n|---|---:|---:|---:|")
    for name in dict.fromkeys(r["sample"] for r in result["loader"]):
        loads = " / ".join(f"{r['samples_per_s']:.1f}" for r in result["loader"] if r["sample"] == name)
        nets = [r["samples_per_s"] for r in result["net"] if r["sample"] == name]
        print(f"| {name} | {loads} | {nets[0]:.2f} | {nets[1]:.2f} |")
    print("\n| trials packed on the GPU | GPU per trial | training samples/s, all trials |\n|---:|---:|---:|")
    for r in result["packed"]:
        print(f"| {r['trials']} | {r['gpus_per_trial']:g} | {r['samples_per_s']:.2f} |")
    one = result["grown"][0]["epoch_s"]
    print("\n| auto's survivor (batch 2, global-batch, ranks sharing the GPU) | s per epoch | training samples/s "
          "| epoch time / 1 rank's |\n|---|---:|---:|---:|")
    for r in result["grown"]:
        print(f"| {r['ranks']} rank(s) | {r['epoch_s']:.2f} | {r['samples_per_s']:.2f} | {r['epoch_s'] / one:.2f} |")


if __name__ == "__main__":
    main()
