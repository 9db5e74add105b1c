"""What one training step costs at each rank batch, timed before a bench's runs.

The cost model (voxtune.bench.model) needs the step of a K-rank global-batch trial, whose ranks take
batch / K each. That is not batch / K times the full step: on a CPU, torch 2.13 runs a batch-1 Conv3d
outside oneDNN, and a batch-1 step of the bench's net costs about as much as a batch-4 one
(benchmarks/cpu_batch.py). So `voxtune bench` times a real step - forward, Dice loss, backward, Adam -
of the bench's net on random volumes of the cache's size, at every rank batch its runs use and every
power of two up to the batch (so another bench at a smaller batch can be checked against it), with
the threads of one worker, on the driver.
"""
from __future__ import annotations

import statistics
import time
from typing import Any

WARMUP, ROUNDS = 2, 7


def rank_batches(batch: int, extra: set[int]) -> list[int]:
    """Powers of two up to `batch`, `batch` itself and `extra` (the runs' own rank batches)."""
    out, b = {batch, *extra}, 1
    while b < batch:
        out.add(b)
        b *= 2
    return sorted(x for x in out if 1 <= x <= batch)


def time_steps(model, lr: float, in_channels: int, out_channels: int, shape: list[int], batches: list[int],
               threads: int) -> dict[str, Any]:
    """{"step_s_by_batch": {b: median seconds}, "step_s_range": {b: [min, max]}, "threads", "shape",
    "device"}; on the CPU (a GPU bench's driver may hold no GPU, and the GPU's step is what its runs
    measure anyway). The batches take turns, one step each per round, so a spell of load on the
    machine slows every batch alike instead of the one timed then (timed one after another, two
    benches' batch-1 steps differed by 1.7x)."""
    import torch
    from monai.losses import DiceLoss

    before = torch.get_num_threads()
    torch.set_num_threads(max(1, threads))
    try:
        torch.manual_seed(0)
        model.train()
        optimizer = torch.optim.Adam(model.parameters(), lr=lr)
        loss_fn = DiceLoss(sigmoid=True)
        inputs = {b: (torch.randn(b, in_channels, *shape), (torch.rand(b, out_channels, *shape) > 0.9).float())
                  for b in batches}
        seconds: dict[int, list[float]] = {b: [] for b in batches}
        for i in range(WARMUP + ROUNDS):
            for b, (image, label) in inputs.items():
                start = time.perf_counter()
                optimizer.zero_grad(set_to_none=True)
                loss_fn(model(image), label).backward()
                optimizer.step()
                if i >= WARMUP:
                    seconds[b].append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(before)
    return {"step_s_by_batch": {str(b): statistics.median(s) for b, s in seconds.items()},
            "step_s_range": {str(b): [min(s), max(s)] for b, s in seconds.items()},
            "threads": max(1, threads), "shape": list(shape), "device": "cpu"}


def for_bench(cfg, manifest: dict[str, Any], run_batches: set[int], threads: float) -> dict[str, Any]:
    """time_steps on the cache's volume (or the config's patch) at the bench's rank batches; one line of progress."""
    from voxtune.data.loader import divisible
    from voxtune.models import build_model
    from voxtune.train.build import layout

    plan = layout(cfg, manifest)  # the config's `auto` values on this cache, as a trial resolves them
    image_shape, out_channels = manifest["cases"][0]["image_shape"], plan.out_channels
    model = build_model(cfg, image_shape[0], out_channels, strides=plan.strides, softmax=plan.softmax)
    shape = list(plan.patch_size) if plan.patch_size else divisible(image_shape[1:], model.divisor)
    batches = rank_batches(cfg.batch_size, run_batches)
    print(f"bench: timing a training step at rank batch {', '.join(map(str, batches))} on {shape} "
          f"({WARMUP} + {ROUNDS} rounds, one step of each batch a round)", flush=True)
    return time_steps(model, cfg.lr, image_shape[0], out_channels, shape, batches, int(threads))
