"""Per-region Dice and whole-volume inference, shared by validation, test evaluation and predict."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.inferers import sliding_window_inference
from monai.metrics import compute_dice


def infer(model: torch.nn.Module, image: torch.Tensor, patch_size: Sequence[int] | None,
          overlap: float = 0.5) -> torch.Tensor:
    """Logits [B, R, X, Y, Z] for image [B, C, X, Y, Z].

    Whole-volume models see the volume at once; patch-trained models go through MONAI's sliding
    window with Gaussian blending, as nnU-Net does.
    """
    if patch_size is None:
        return model(image)
    return sliding_window_inference(image, roi_size=list(patch_size), sw_batch_size=2, predictor=model,
                                    overlap=overlap, mode="gaussian")


def dice_per_region(logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Hard Dice [B, R] of sigmoid(logits) > 0.5 against a binary label [B, R, X, Y, Z].

    A region absent from both prediction and truth scores 1 (MONAI ignore_empty=False), so cases
    without an enhancing tumour neither vanish from the mean nor count as failures when predicted empty.
    """
    pred = (torch.sigmoid(logits.float()) > 0.5).float()
    return compute_dice(pred, label.float(), include_background=True, ignore_empty=False)


def soft_dice_per_region(logits: torch.Tensor, label: torch.Tensor, smooth: float = 0.01) -> torch.Tensor:
    """Soft Dice [B, R] of the probabilities sigmoid(logits) against a binary label [B, R, X, Y, Z]:
    (2 sum(p y) + smooth) / (sum(p) + sum(y) + smooth), per case. Berral et al.'s code takes the same
    formula once over the whole batch (README: differences from the paper)."""
    p, y = torch.sigmoid(logits.float()).flatten(2), label.float().flatten(2)
    return (2 * (p * y).sum(-1) + smooth) / (p.sum(-1) + y.sum(-1) + smooth)
