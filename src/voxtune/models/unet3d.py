"""The 3D U-Net of Berral et al. 2022 (after Çiçek et al. 2016).

`depth` down blocks, a bottleneck, `depth` up blocks. Each block: two (conv k^3 -> norm -> ReLU);
max-pool down and transposed conv up by each level's stride (2 on every axis, as the paper; a cache's
plan may keep an axis at 1 for a few levels, so anisotropic data pools in-plane first); skip
connections by concatenation. Filters double per level from `filter_start`. The head is a 1^3 conv to
one logit per output channel: the sigmoid or softmax lives in the loss and the metric, which is
numerically safer than an activation layer in the net.

style "paper" is the authors' net where it is a design (github.com/oriolaranda/DistMIS, model.py):
k^3 transposed convolutions (`up_block`, Keras default init: Glorot uniform, zero bias), a k^3 head,
convolutions with a bias, kernels TruncatedNormal(stddev 0.05) cut at 2 sigma and zero biases
(`conv_block`, `model_unet_tune`). Its normalisation over the last axis (the slices of a
channels-first tensor) is a bug and is not reproduced; its sigmoid stays in the loss, as above.
"""
from __future__ import annotations

import math

import torch
from torch import nn


def norm_layer(norm: str, channels: int) -> nn.Module:
    """bn: BatchNorm3d, gn: GroupNorm (8 groups, fewer when channels are few), in: InstanceNorm3d."""
    if norm == "bn":
        return nn.BatchNorm3d(channels)
    if norm == "gn":
        groups = min(8, channels)
        while channels % groups:
            groups -= 1
        return nn.GroupNorm(groups, channels)
    if norm == "in":
        return nn.InstanceNorm3d(channels, affine=True)
    if norm == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm '{norm}'")


def foreground_prior_bias(head: nn.Conv3d, prior: float = 0.01, softmax: bool = False) -> None:
    """Start every voxel at P(tumour) = prior instead of 0.5 (Lin et al. 2017, RetinaNet); 0.5 is a
    zero bias, as the paper's net had. softmax (channel 0 the background, K - 1 classes): the background's
    bias makes each class start at P = prior (1/K with prior 1/K: a zero bias).

    Tumour is a few percent of a brain volume. From a 0.5 start the Dice loss first spends many
    steps unlearning "everything is tumour" (measured: benchmarks/prior_bias.sh).
    """
    if not softmax:
        nn.init.constant_(head.bias, -math.log((1 - prior) / prior))
        return
    classes = head.out_channels - 1
    nn.init.zeros_(head.bias)
    with torch.no_grad():  # softmax: P(class) = 1 / (e^b0 + K - 1) = prior
        head.bias[0] = math.log(max(1.0 / prior - classes, 1.0))


def paper_init(conv: nn.Module) -> nn.Module:
    """Keras TruncatedNormal(stddev=0.05) kernels (redrawn beyond 2 sigma) and zero biases."""
    nn.init.trunc_normal_(conv.weight, std=0.05, a=-0.1, b=0.1)
    nn.init.zeros_(conv.bias)
    return conv


class ConvBlock(nn.Sequential):
    """[B, c_in, X, Y, Z] -> [B, c_out, X, Y, Z]: two (conv -> norm -> ReLU)."""

    def __init__(self, c_in: int, c_out: int, norm: str, kernel_size: int, paper: bool = False):
        pad = kernel_size // 2
        bias = paper or norm == "none"  # a norm layer's shift makes the conv bias redundant (the paper kept it)
        super().__init__(
            nn.Conv3d(c_in, c_out, kernel_size, padding=pad, bias=bias), norm_layer(norm, c_out), nn.ReLU(inplace=True),
            nn.Conv3d(c_out, c_out, kernel_size, padding=pad, bias=bias), norm_layer(norm, c_out), nn.ReLU(inplace=True),
        )
        if paper:
            for conv in (self[0], self[3]):
                paper_init(conv)


class UNet3D(nn.Module):
    """[B, in_channels, X, Y, Z] -> logits [B, out_channels, X, Y, Z]; X, Y, Z divisible by 2**depth."""

    def __init__(self, in_channels: int = 4, out_channels: int = 1, filter_start: int = 8,
                 depth: int = 3, norm: str = "bn", kernel_size: int = 3, prior: float = 0.01, style: str = "voxtune",
                 strides: list[tuple[int, int, int]] | None = None, softmax: bool = False):
        super().__init__()
        if style not in ("voxtune", "paper"):
            raise ValueError(f"unknown unet3d style '{style}'")
        strides = [tuple(int(v) for v in s) for s in strides] if strides else [(2, 2, 2)] * depth
        if len(strides) != depth:
            raise ValueError(f"{len(strides)} strides for depth {depth}")
        paper = style == "paper"
        widths = [filter_start * 2**i for i in range(depth + 1)]
        self.down = nn.ModuleList()
        c = in_channels
        for w in widths[:-1]:
            self.down.append(ConvBlock(c, w, norm, kernel_size, paper))
            c = w
        # pooling has no weights: one per level changes neither the state dict nor the initial weights
        self.pools = nn.ModuleList(nn.MaxPool3d(s) for s in strides)
        self.bottleneck = ConvBlock(c, widths[-1], norm, kernel_size, paper)
        self.upsample = nn.ModuleList()
        self.up = nn.ModuleList()
        for w_low, w, stride in zip(widths[:0:-1], widths[-2::-1], reversed(strides)):
            self.upsample.append(_up_conv(w_low, w, kernel_size if paper else None, stride))
            self.up.append(ConvBlock(2 * w, w, norm, kernel_size, paper))
        self.head = nn.Conv3d(widths[0], out_channels, kernel_size=kernel_size if paper else 1,
                              padding=kernel_size // 2 if paper else 0)
        if paper:
            paper_init(self.head)
        foreground_prior_bias(self.head, prior, softmax)
        self.divisor = tuple(math.prod(s[a] for s in strides) for a in range(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for block, pool in zip(self.down, self.pools):
            x = block(x)
            skips.append(x)
            x = pool(x)
        x = self.bottleneck(x)
        for upsample, block, skip in zip(self.upsample, self.up, reversed(skips)):
            x = block(torch.cat([upsample(x), skip], dim=1))
        return self.head(x)


def _up_conv(c_in: int, c_out: int, kernel_size: int | None, stride: tuple[int, int, int]) -> nn.ConvTranspose3d:
    """Transposed convolution multiplying each side by its stride: kernel = stride (voxtune; 2^3 at
    stride 2), or k^3 padded as Keras's "same" (the paper's), Glorot-uniform kernels and a zero bias as
    Keras initialises them."""
    if kernel_size is None:
        return nn.ConvTranspose3d(c_in, c_out, kernel_size=stride, stride=stride)
    up = nn.ConvTranspose3d(c_in, c_out, kernel_size, stride=stride, padding=kernel_size // 2,
                            output_padding=tuple(s - 1 for s in stride))
    nn.init.xavier_uniform_(up.weight)
    nn.init.zeros_(up.bias)
    return up


def build(cfg, in_channels: int, out_channels: int, strides=None, softmax: bool = False) -> UNet3D:
    """The registry's builder (voxtune.models.NETWORKS) from a TrainConfig."""
    return UNet3D(in_channels, out_channels, cfg.filter_start, cfg.depth, cfg.norm, cfg.kernel_size,
                  prior=cfg.foreground_prior, style=cfg.unet_style, strides=strides, softmax=softmax)
