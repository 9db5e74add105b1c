"""Networks by name: the paper's 3D U-Net and MONAI's SegResNet and DynUNet."""
from __future__ import annotations

from torch import nn

from voxtune.config import TrainConfig
from voxtune.models.unet3d import UNet3D, foreground_prior_bias

_MONAI_NORM = {"bn": "batch", "gn": ("group", {"num_groups": 8}), "in": "instance"}  # "none": refused by config


def build_model(cfg: TrainConfig, in_channels: int, out_channels: int) -> nn.Module:
    """A network mapping [B, in_channels, X, Y, Z] to logits [B, out_channels, X, Y, Z].

    Every model carries `divisor`: the spatial sizes it accepts must be multiples of it.
    """
    if cfg.model == "unet3d":
        return UNet3D(in_channels, out_channels, cfg.filter_start, cfg.depth, cfg.norm, cfg.kernel_size,
                      prior=cfg.foreground_prior)
    if cfg.model == "segresnet":
        from monai.networks.nets import SegResNet

        blocks_down = tuple([1] + [2] * (cfg.depth - 1) + [4])[: cfg.depth + 1]
        net = SegResNet(spatial_dims=3, init_filters=cfg.filter_start, in_channels=in_channels,
                        out_channels=out_channels, norm=_MONAI_NORM[cfg.norm], blocks_down=blocks_down,
                        blocks_up=(1,) * (len(blocks_down) - 1))
        net.divisor = 2 ** (len(blocks_down) - 1)
        foreground_prior_bias(_last_conv(net), cfg.foreground_prior)
        return net
    if cfg.model == "dynunet":
        from monai.networks.nets import DynUNet

        levels = cfg.depth + 1
        net = DynUNet(spatial_dims=3, in_channels=in_channels, out_channels=out_channels,
                      kernel_size=[cfg.kernel_size] * levels, strides=[1] + [2] * cfg.depth,
                      upsample_kernel_size=[2] * cfg.depth,
                      filters=[cfg.filter_start * 2**i for i in range(levels)],
                      norm_name=_MONAI_NORM[cfg.norm])
        net.divisor = 2**cfg.depth
        foreground_prior_bias(_last_conv(net), cfg.foreground_prior)
        return net
    raise ValueError(f"unknown model '{cfg.model}'")


def _last_conv(net: nn.Module) -> nn.Conv3d:
    """The output convolution of a MONAI net: the last Conv3d registered."""
    return [m for m in net.modules() if isinstance(m, nn.Conv3d)][-1]
