"""Per-channel Dice, losses and whole-volume inference, shared by training, test evaluation and predict.

Two kinds of label channels (voxtune.data.cache.exclusive): BraTS's regions, which overlap, each a
sigmoid of its own logit ([B, R] logits for R channels); a dataset's classes, exclusive, a softmax
over background + the R classes ([B, R + 1] logits, channel 0 the background). Labels are always the
R binary channels [B, R, X, Y, Z]; Dice is reported per label channel, never for the background.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.inferers import sliding_window_inference
from monai.metrics import compute_dice


def infer(model: torch.nn.Module, image: torch.Tensor, patch_size: Sequence[int] | None,
          overlap: float = 0.5) -> torch.Tensor:
    """Logits [B, K, X, Y, Z] for image [B, C, X, Y, Z].

    Whole-volume models see the volume at once; patch-trained models go through MONAI's sliding
    window with Gaussian blending, as nnU-Net does.
    """
    if patch_size is None:
        return model(image)
    return sliding_window_inference(image, roi_size=list(patch_size), sw_batch_size=2, predictor=model,
                                    overlap=overlap, mode="gaussian")


def probabilities(logits: torch.Tensor, softmax: bool) -> torch.Tensor:
    """sigmoid per channel, or softmax over the channels (background first)."""
    return torch.softmax(logits.float(), dim=1) if softmax else torch.sigmoid(logits.float())


def as_logits(probs: torch.Tensor, softmax: bool) -> torch.Tensor:
    """Logits whose probabilities are `probs` (an ensemble's mean): log for softmax, logit for sigmoid."""
    return torch.log(probs.clamp_min(1e-7)) if softmax else torch.logit(probs.clamp(1e-7, 1 - 1e-7))


def masks(probs: torch.Tensor, softmax: bool) -> torch.Tensor:
    """Predicted label channels, bool [B, R, X, Y, Z]: sigmoid > 0.5, or each voxel's likeliest class
    (the background's channel dropped)."""
    if not softmax:
        return probs > 0.5
    winner = probs.argmax(dim=1, keepdim=True)
    return torch.arange(1, probs.shape[1], device=probs.device).view(1, -1, 1, 1, 1) == winner


def dice_per_region(logits: torch.Tensor, label: torch.Tensor, softmax: bool = False) -> torch.Tensor:
    """Hard Dice [B, R] of the predicted channels against a binary label [B, R, X, Y, Z].

    A channel absent from both prediction and truth scores 1 (MONAI ignore_empty=False), so cases
    without an enhancing tumour neither vanish from the mean nor count as failures when predicted empty.
    """
    pred = masks(probabilities(logits, softmax), softmax).float()
    return compute_dice(pred, label.float(), include_background=True, ignore_empty=False)


def soft_dice_per_region(logits: torch.Tensor, label: torch.Tensor, smooth: float = 0.01,
                         softmax: bool = False) -> torch.Tensor:
    """Soft Dice [B, R] of the probabilities against a binary label [B, R, X, Y, Z]:
    (2 sum(p y) + smooth) / (sum(p) + sum(y) + smooth), per case. Berral et al.'s code takes the same
    formula once over the whole batch (docs/training.md#differences-from-the-paper)."""
    p = probabilities(logits, softmax)
    p, y = (p[:, 1:] if softmax else p).flatten(2), label.float().flatten(2)
    return (2 * (p * y).sum(-1) + smooth) / (p.sum(-1) + y.sum(-1) + smooth)


def with_background(label: torch.Tensor) -> torch.Tensor:
    """Exclusive class channels [B, R, ...] -> one-hot [B, R + 1, ...], channel 0 where no class is set."""
    label = label.float()
    return torch.cat([1.0 - label.sum(1, keepdim=True).clamp(max=1.0), label], dim=1)


class SoftmaxLoss(torch.nn.Module):
    """A MONAI loss over softmax logits [B, R + 1, ...] against class channels [B, R, ...]."""

    def __init__(self, loss: torch.nn.Module):
        super().__init__()
        self.loss = loss

    def forward(self, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        return self.loss(logits, with_background(label))


def make_loss(name: str, softmax: bool) -> torch.nn.Module:
    """The training loss (a resolved TrainConfig.loss): dice per case, dicece (+ cross-entropy), or
    batch_dice (one soft Dice over the whole batch, smooth 0.01: the paper's). For classes (softmax) the
    Dice leaves the background out and the cross-entropy takes every channel, as nnU-Net's loss does."""
    from monai.losses import DiceCELoss, DiceLoss

    act = {"softmax": True, "include_background": False} if softmax else {"sigmoid": True}
    if name == "batch_dice":
        loss = DiceLoss(batch=True, smooth_nr=0.01, smooth_dr=0.01, **act)
    else:
        loss = (DiceCELoss if name == "dicece" else DiceLoss)(**act)
    return SoftmaxLoss(loss) if softmax else loss
