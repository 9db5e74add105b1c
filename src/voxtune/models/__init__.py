"""Networks by name: NETWORKS maps each `model` config key value to the function that builds it.

A builder takes (cfg: TrainConfig, in_channels, out_channels, strides=None, softmax=False) and returns a
module mapping [B, in_channels, X, Y, Z] to logits [B, out_channels, X, Y, Z] that carries `divisor`
(the spatial sizes it accepts are multiples of it: one int, or one per axis). `strides` is the
pooling per level a cache's plan asks for ([(sx, sy, sz)] * depth; None: 2 everywhere); `softmax`
says the output channels are background + classes (the head's prior bias differs). To add a network: write its builder, add its name here; the
config accepts exactly these names. This module imports neither torch nor MONAI: the config reads
NETWORKS without them, and a builder's module is imported when it is first used.
"""
from __future__ import annotations

from importlib import import_module

NETWORKS = {
    "unet3d": "voxtune.models.unet3d:build",  # the paper's 3D U-Net
    "segresnet": "voxtune.models.monai_nets:segresnet",
    "dynunet": "voxtune.models.monai_nets:dynunet",
}


def build_model(cfg, in_channels: int, out_channels: int, strides=None, softmax: bool = False):
    """The torch.nn.Module that `cfg.model` (a TrainConfig's) names, as its NETWORKS builder makes it."""
    module, name = NETWORKS[cfg.model].split(":")
    return getattr(import_module(module), name)(cfg, in_channels, out_channels, strides=strides, softmax=softmax)
