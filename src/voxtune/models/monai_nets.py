"""MONAI's SegResNet and DynUNet, built from the same TrainConfig keys as the paper's U-Net."""
from __future__ import annotations

import math

from torch import nn

from voxtune.config import TrainConfig
from voxtune.errors import VoxtuneError
from voxtune.models.unet3d import foreground_prior_bias

_MONAI_NORM = {"bn": "batch", "gn": ("group", {"num_groups": 8}), "in": "instance"}  # "none": refused by config


def segresnet(cfg: TrainConfig, in_channels: int, out_channels: int, strides=None, softmax: bool = False) -> nn.Module:
    from monai.networks.nets import SegResNet

    if strides and any(tuple(s) != (2, 2, 2) for s in strides):
        raise VoxtuneError(f"config key 'model': segresnet downsamples by 2 on every axis at every level, and this "
                           f"cache's plan pools {[list(s) for s in strides]} (anisotropic spacing: in-plane "
                           "first); use unet3d or dynunet, which follow the plan")
    blocks_down = tuple([1] + [2] * (cfg.depth - 1) + [4])[: cfg.depth + 1]
    net = SegResNet(spatial_dims=3, init_filters=cfg.filter_start, in_channels=in_channels,
                    out_channels=out_channels, norm=_MONAI_NORM[cfg.norm], blocks_down=blocks_down,
                    blocks_up=(1,) * (len(blocks_down) - 1))
    net.divisor = 2 ** (len(blocks_down) - 1)
    foreground_prior_bias(_last_conv(net), cfg.foreground_prior, softmax)
    return net


def dynunet(cfg: TrainConfig, in_channels: int, out_channels: int, strides=None, softmax: bool = False) -> nn.Module:
    from monai.networks.nets import DynUNet

    levels = cfg.depth + 1
    strides = [tuple(int(v) for v in s) for s in strides] if strides else [(2, 2, 2)] * cfg.depth
    net = DynUNet(spatial_dims=3, in_channels=in_channels, out_channels=out_channels,
                  kernel_size=[cfg.kernel_size] * levels, strides=[(1, 1, 1)] + strides,
                  upsample_kernel_size=strides,
                  filters=[cfg.filter_start * 2**i for i in range(levels)],
                  norm_name=_MONAI_NORM[cfg.norm])
    net.divisor = tuple(int(math.prod(s[a] for s in strides)) for a in range(3))
    foreground_prior_bias(_last_conv(net), cfg.foreground_prior, softmax)
    return net


def _last_conv(net: nn.Module) -> nn.Conv3d:
    """The output convolution of a MONAI net: the last Conv3d registered."""
    return [m for m in net.modules() if isinstance(m, nn.Conv3d)][-1]
