"""Precise BatchNorm statistics: running mean and variance that match the weights they score.

Training normalises each batch with its own statistics; evaluation uses running averages that
momentum (0.1) accumulates over past batches, computed with past weights. With a handful of
optimiser steps per epoch (3D volumes, batch 2) those averages lag the weights, and a net trained
with a Dice loss, whose logits sit close to the threshold, can turn whole volumes to background. So
the training loop recomputes them with the current weights before every validation and checkpoint
("precise BN", Wu & Johnson 2021, *Rethinking "Batch" in BatchNorm*, section 3), unless the config
says precise_bn: false; benchmarks/precise_bn.sh measures the difference (docs/benchmarks.md#the-precise-bn-ablation).
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.optim.swa_utils import update_bn


def batchnorm_layers(model: nn.Module) -> list[_BatchNorm]:
    """Every BatchNorm (and SyncBatchNorm) layer of `model`."""
    return [m for m in model.modules() if isinstance(m, _BatchNorm)]


@torch.no_grad()
def recompute_bn_stats(model: nn.Module, images: Iterable[torch.Tensor]) -> int:
    """Replace each BatchNorm layer's running mean and variance by the equal-weight average of the
    batch statistics of `images` (batches [B, C, X, Y, Z], already on the model's device), computed
    with the model's current weights. Returns the number of batches this process used.

    Under DDP every rank passes its own batches and all ranks end with the same statistics: the
    average over every rank's batches, which is what one process would compute from all of them.
    Under SyncBatchNorm (CUDA) each forward is a collective, so every rank must pass as many batches.
    The model's train/eval mode is left as it was.
    """
    layers = batchnorm_layers(model)
    if not layers:
        return 0
    count = 0

    def counted():
        nonlocal count
        for batch in images:
            count += 1
            yield batch

    # torch's own: reset the running statistics, momentum None (a cumulative average), one pass.
    update_bn(counted(), model)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        device = layers[0].running_mean.device
        flat = torch.cat([torch.tensor([float(count)], device=device, dtype=torch.float64)]
                         + [torch.cat([m.running_mean, m.running_var]).double() * count for m in layers])
        dist.all_reduce(flat)
        total, offset = flat[0].item(), 1
        if total < 1:
            raise RuntimeError("no batch to recompute BatchNorm statistics from on any rank")
        for m in layers:
            n = m.running_mean.numel()
            m.running_mean.copy_(flat[offset:offset + n] / total)
            m.running_var.copy_(flat[offset + n:offset + 2 * n] / total)
            m.num_batches_tracked.fill_(int(total))
            offset += 2 * n
    elif count == 0:
        raise RuntimeError("no batch to recompute BatchNorm statistics from")
    return count
