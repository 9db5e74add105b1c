"""Per-sample cost of one training step of voxtune's 3D U-Net on one CPU thread, by batch size: the
step as the training loop takes it (forward, Dice loss, backward, Adam), and the forward alone as the
BatchNorm statistics pass takes it (train mode, no gradients).

Why `benchmarks/bench_cpu.sh` uses batch 4: with batch 1 (what each of 2 DDP ranks gets from a global
batch of 2) torch on CPU runs this net's convolutions outside oneDNN, and a sample costs several times
more, which would be timed as the cost of data parallelism.

    .venv/bin/python benchmarks/cpu_batch.py [--shape 48] [--repeats 4]
"""
import argparse
import time

import torch

from voxtune.config import TrainConfig
from voxtune.models import build_model


def per_sample(net: torch.nn.Module, batch: int, shape: int, repeats: int, train: bool) -> float:
    from monai.losses import DiceLoss

    x = torch.randn(batch, 4, shape, shape, shape)
    y = (torch.rand(batch, 1, shape, shape, shape) > 0.9).float()
    loss_fn, optimizer = DiceLoss(sigmoid=True), torch.optim.Adam(net.parameters(), lr=1e-3)
    net.train(True)  # the statistics pass normalises in train mode too
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        if train:
            optimizer.zero_grad(set_to_none=True)
            loss_fn(net(x), y).backward()
            optimizer.step()
        else:
            with torch.no_grad():
                net(x)
        times.append(time.perf_counter() - t0)
    return min(times) / batch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=4)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    net = build_model(TrainConfig(norm="bn"), 4, 1)
    print(f"torch {torch.__version__}, 1 thread, unet3d (filter_start 8, bn), {args.shape}^3 x 4 channels; "
          f"best of {args.repeats}\n")
    print("| batch | training step (forward, Dice loss, backward, Adam), s per sample "
          "| forward, train mode, no gradients (the statistics pass), s per sample |")
    print("|---:|---:|---:|")
    for batch in (1, 2, 4):
        step = per_sample(net, batch, args.shape, args.repeats, True)
        forward = per_sample(net, batch, args.shape, args.repeats, False)
        print(f"| {batch} | {step:.3f} | {forward:.3f} |")


if __name__ == "__main__":
    main()
