"""What a fresh Ray Train run costs per trial, the reason voxtune keeps its own DDP group across trials.

    .venv/bin/python benchmarks/ray_train_startup.py [--fits 3] [--workers 2]

Times `TorchTrainer.fit()` of Ray Train with W CPU workers (gloo) and a training function that only
imports what voxtune's training loop imports (torch, MONAI) and joins the process group: the
per-trial overhead a search would pay if each trial were its own Ray Train run. Several fits in one
Ray session, so Ray's own start is paid once and not counted. Then a data-parallel `voxtune tune`
search of 3 one-epoch trials on the same W workers: its later trials' time outside the training loop
(the group is reused). Prints a markdown table.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from common import voxtune


def _loop(config):
    import torch.distributed as dist

    import voxtune.train.loop  # noqa: F401  (torch and MONAI, as a trial's loop imports them)

    dist.barrier()


def ray_train_fits(workers: int, fits: int, storage: Path) -> list[float]:
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    ray.init(address="local", include_dashboard=False, logging_level="ERROR")
    times = []
    try:
        for i in range(fits):
            trainer = TorchTrainer(_loop, scaling_config=ScalingConfig(num_workers=workers, use_gpu=False,
                                                                       resources_per_worker={"CPU": 1}),
                                   torch_config=TorchConfig(backend="gloo"),
                                   run_config=RunConfig(name=f"fit{i}", storage_path=str(storage)))
            t0 = time.perf_counter()
            trainer.fit()
            times.append(time.perf_counter() - t0)
            print(f"Ray Train fit {i + 1}/{fits}: {times[-1]:.1f} s", flush=True)
    finally:
        ray.shutdown()
    return times


def voxtune_reuse(workers: int, work: Path) -> list[float]:
    voxtune("synth", "--out", str(work / "msd"), "--cases", "8", "--shape", "24", "24", "24",
            stdout=subprocess.DEVNULL)
    voxtune("prepare", "--source", str(work / "msd"), "--out", str(work / "cache"), stdout=subprocess.DEVNULL)
    (work / "space.yaml").write_text("lr: {grid: [0.001, 0.002, 0.005]}\n")
    voxtune("tune", "--cache", str(work / "cache"), "--out", str(work / "run"), "--mode", "data",
            "--workers", str(workers), "--space", str(work / "space.yaml"), "--epochs", "1", stdout=subprocess.DEVNULL)
    infos = sorted((json.loads(p.read_text()) for p in (work / "run" / "trials").glob("*/trial.json")),
                   key=lambda i: i["start_ts"])
    return [i["end_ts"] - i["start_ts"] - i["train_time_s"] for i in infos]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--fits", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        fits = ray_train_fits(args.workers, args.fits, Path(tmp) / "ray-train")
        outside = voxtune_reuse(args.workers, Path(tmp))
    print(f"\n| per trial, {args.workers} CPU workers (gloo) | seconds |\n|---|---:|")
    print(f"| fresh Ray Train `TorchTrainer.fit`, import-and-join loop, median of {len(fits)} | "
          f"{statistics.median(fits):.1f} |")
    print(f"| voxtune data mode, first trial outside its training loop (starts the group) | {outside[0]:.1f} |")
    print(f"| voxtune data mode, later trials outside their training loop (group reused), median | "
          f"{statistics.median(outside[1:]):.1f} |")


if __name__ == "__main__":
    main()
