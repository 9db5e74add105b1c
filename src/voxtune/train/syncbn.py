"""Synchronised BatchNorm for process groups torch's own SyncBatchNorm refuses (gloo, on CPU).

Under DDP each rank sees batch_size / K cases of the global batch. A plain BatchNorm normalises over
those alone, so a K-rank trial would train another problem than one worker on the whole batch (at
the paper's batch 2 and K = 2: statistics of one volume). torch.nn.SyncBatchNorm fixes that on CUDA
(NCCL) only; this layer does the same with plain all-reduces, on any backend:

    forward   all-reduce (count, per-channel sum, per-channel sum of squares) in float64; normalise
              with the global mean and biased variance; the running statistics take the unbiased one;
    backward  all-reduce (sum dy, sum dy * x_hat) per channel; the input's gradient uses the global
              sums, the weight's and bias's gradients stay local (DDP averages them), as torch's does.

Outside training, or without a process group of two or more, it is a plain BatchNorm.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


def _shape(t: torch.Tensor, dims: int) -> torch.Tensor:
    """Per-channel [C] -> [1, C, 1, ...] for an input of `dims` dimensions."""
    return t.view(1, -1, *([1] * (dims - 2)))


class _SyncBatchNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, eps, momentum, group):
        dims = [0, *range(2, x.dim())]
        channels = x.size(1)
        x64 = x.double()
        stats = torch.cat([torch.tensor([x.numel() / channels], dtype=torch.float64, device=x.device),
                           x64.sum(dims), (x64 * x64).sum(dims)])
        dist.all_reduce(stats, group=group)
        n = stats[0]
        mean = stats[1:1 + channels] / n
        var = (stats[1 + channels:] / n - mean * mean).clamp_(min=0.0)
        if running_mean is not None:
            with torch.no_grad():
                running_mean.mul_(1 - momentum).add_(mean.to(running_mean.dtype), alpha=momentum)
                unbiased = var * n / max(n.item() - 1, 1.0)
                running_var.mul_(1 - momentum).add_(unbiased.to(running_var.dtype), alpha=momentum)
        invstd = torch.rsqrt(var + eps).to(x.dtype)
        x_hat = (x - _shape(mean.to(x.dtype), x.dim())) * _shape(invstd, x.dim())
        out = x_hat if weight is None else x_hat * _shape(weight, x.dim()) + _shape(bias, x.dim())
        ctx.save_for_backward(x_hat, invstd, weight)
        ctx.n, ctx.group = n, group
        return out

    @staticmethod
    def backward(ctx, dy):
        x_hat, invstd, weight = ctx.saved_tensors
        dims = [0, *range(2, dy.dim())]
        channels = dy.size(1)
        sum_dy, sum_dy_xhat = dy.sum(dims), (dy * x_hat).sum(dims)
        grad_weight = sum_dy_xhat if weight is not None and ctx.needs_input_grad[1] else None
        grad_bias = sum_dy if weight is not None and ctx.needs_input_grad[2] else None
        sums = torch.cat([sum_dy, sum_dy_xhat]).double()
        dist.all_reduce(sums, group=ctx.group)
        mean_dy = (sums[:channels] / ctx.n).to(dy.dtype)
        mean_dy_xhat = (sums[channels:] / ctx.n).to(dy.dtype)
        scale = invstd if weight is None else invstd * weight
        dx = (dy - _shape(mean_dy, dy.dim()) - x_hat * _shape(mean_dy_xhat, dy.dim())) * _shape(scale, dy.dim())
        return dx, grad_weight, grad_bias, None, None, None, None, None


class SyncBatchNorm(_BatchNorm):
    """BatchNorm over the global batch of every rank of the default (or given) process group."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, process_group=None):
        super().__init__(num_features, eps, momentum, affine, track_running_stats)
        self.process_group = process_group

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        synced = dist.is_available() and dist.is_initialized() and dist.get_world_size(self.process_group) > 1
        if not (self.training and synced):
            return super().forward(x)
        factor = 0.0
        if self.track_running_stats:
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        return _SyncBatchNormFunction.apply(
            x, self.weight, self.bias, self.running_mean if self.track_running_stats else None,
            self.running_var if self.track_running_stats else None, self.eps, factor,
            self.process_group or dist.group.WORLD)


def convert_sync_batchnorm(module: nn.Module, process_group=None) -> nn.Module:
    """Every BatchNorm layer of `module` as a SyncBatchNorm with the same parameters and statistics."""
    if isinstance(module, _BatchNorm) and not isinstance(module, SyncBatchNorm):
        synced = SyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                               module.track_running_stats, process_group)
        synced.load_state_dict(module.state_dict())
        synced.train(module.training)
        return synced
    for name, child in module.named_children():
        module.add_module(name, convert_sync_batchnorm(child, process_group))
    return module
