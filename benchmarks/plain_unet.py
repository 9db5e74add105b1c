"""Baseline for `voxtune train`: the same 3D U-Net shape trained by a plain PyTorch loop.

No voxtune code in the training path: arrays come straight from the cache's .npy files (each set into
its case's frame by the manifest's bbox), the net is written out here, the loss is a hand-written soft
Dice. Prints seconds, best val Dice and the
per-epoch val Dice curve, so `voxtune train` can be compared to it in the same run (see
benchmarks/train_overhead.sh and benchmarks/quality.sh).

    python benchmarks/plain_unet.py CACHE [--epochs 25] [--lr 1e-3] [--batch 2]
"""
import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn


def block(c_in, c_out):
    return nn.Sequential(nn.Conv3d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm3d(c_out), nn.ReLU(inplace=True),
                         nn.Conv3d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm3d(c_out), nn.ReLU(inplace=True))


class PlainUNet(nn.Module):
    def __init__(self, c_in=4, c_out=1, f=8):
        super().__init__()
        self.d1, self.d2, self.d3 = block(c_in, f), block(f, 2 * f), block(2 * f, 4 * f)
        self.b = block(4 * f, 8 * f)
        self.u3, self.c3 = nn.ConvTranspose3d(8 * f, 4 * f, 2, 2), block(8 * f, 4 * f)
        self.u2, self.c2 = nn.ConvTranspose3d(4 * f, 2 * f, 2, 2), block(4 * f, 2 * f)
        self.u1, self.c1 = nn.ConvTranspose3d(2 * f, f, 2, 2), block(2 * f, f)
        self.head = nn.Conv3d(f, c_out, 1)

    def forward(self, x):
        s1 = self.d1(x)
        s2 = self.d2(nn.functional.max_pool3d(s1, 2))
        s3 = self.d3(nn.functional.max_pool3d(s2, 2))
        x = self.b(nn.functional.max_pool3d(s3, 2))
        x = self.c3(torch.cat([self.u3(x), s3], 1))
        x = self.c2(torch.cat([self.u2(x), s2], 1))
        x = self.c1(torch.cat([self.u1(x), s1], 1))
        return self.head(x)


def soft_dice_loss(logits, target, eps=1e-5):
    p = torch.sigmoid(logits)
    dims = tuple(range(2, p.ndim))
    inter = (p * target).sum(dims)
    return (1 - (2 * inter + eps) / (p.sum(dims) + target.sum(dims) + eps)).mean()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("cache")
    ap.add_argument("--epochs", type=int, default=25)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    cache = Path(args.cache)
    manifest = json.loads((cache / "manifest.json").read_text())

    def frame(case, kind):  # the stored array holds the case's nonzero box; outside it, the background value
        shape = case[f"{kind}_shape"]
        fill = case["background"] if kind == "image" else [0] * shape[0]
        out = np.empty(shape, np.float32)
        out[...] = np.asarray(fill, np.float32)[:, None, None, None]
        box = tuple(slice(b0, b1) for b0, b1 in case["bbox"])
        out[(slice(None), *box)] = np.load(cache / case["files"][kind])
        return out

    def arrays(split):
        cases = [c for c in manifest["cases"] if c["split"] == split]
        x = np.stack([frame(c, "image") for c in cases])
        y = np.stack([frame(c, "label") for c in cases])
        pad = [(0, 0), (0, 0)] + [(0, -s % 8) for s in x.shape[2:]]  # the net needs multiples of 2**3
        return torch.from_numpy(np.pad(x, pad)), torch.from_numpy(np.pad(y, pad))

    torch.manual_seed(args.seed)
    xt, yt = arrays("train")
    xv, yv = arrays("val")
    net = PlainUNet(xt.shape[1], yt.shape[1])
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    best, curve, t0 = 0.0, [], time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        net.train()
        for idx in torch.randperm(len(xt)).split(args.batch):
            loss = soft_dice_loss(net(xt[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        net.eval()
        with torch.no_grad():
            pred = (torch.sigmoid(net(xv)) > 0.5).float()
            inter = (pred * yv).sum((2, 3, 4))
            dice = ((2 * inter) / (pred.sum((2, 3, 4)) + yv.sum((2, 3, 4))).clamp_min(1e-8)).mean().item()
        best = max(best, dice)
        curve.append(round(dice, 4))
    seconds = time.perf_counter() - t0
    print(json.dumps({"epochs": args.epochs, "seconds": round(seconds, 2), "best_val_dice": round(best, 4),
                      "val_dice": curve}))


if __name__ == "__main__":
    main()
