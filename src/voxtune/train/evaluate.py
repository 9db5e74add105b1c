"""Score a saved best checkpoint on one split of a cache (used once, after a search, on `test`)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from voxtune.config import make_config
from voxtune.data.cache import case_ids, read_manifest
from voxtune.data.loader import CaseDataset
from voxtune.models import build_model
from voxtune.train.checkpoint import load_checkpoint
from voxtune.train.metrics import dice_per_region, infer, soft_dice_per_region


def load_model(checkpoint: str | Path, device: torch.device | str = "cpu") -> tuple[torch.nn.Module, dict]:
    """The network of a best.pt checkpoint, in eval mode, and the checkpoint's metadata."""
    state = load_checkpoint(Path(checkpoint), map_location=device)
    cfg = make_config(state["config"])
    model = build_model(cfg, state["in_channels"], len(state["regions"]))
    model.load_state_dict(state["model"])
    return model.to(device).eval(), state


@torch.no_grad()
def evaluate(checkpoint: str | Path, cache_dir: str | Path, split: str = "test", threads: int | None = None) -> dict[str, Any]:
    """{"<split>_dice": mean over regions and cases, "<split>_dice_<region>": ..., "<split>_cases": n}."""
    if threads:
        torch.set_num_threads(threads)
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    model, state = load_model(checkpoint, device)
    ids = case_ids(read_manifest(cache_dir), split)
    patch = state["config"]["patch_size"]
    dataset = CaseDataset(cache_dir, ids, patch_size=None, augment=False, divisor=model.divisor)
    sums = torch.zeros(len(state["regions"]), dtype=torch.float64)
    for i in range(len(dataset)):
        image, label = dataset[i]
        logits = infer(model, image[None].to(device).float(), patch)
        sums += dice_per_region(logits, label[None].to(device))[0].double().cpu()
    per_region = (sums / max(len(ids), 1)).tolist()
    out: dict[str, Any] = {f"{split}_dice": sum(per_region) / len(per_region) if ids else None}
    out.update({f"{split}_dice_{name}": (d if ids else None) for name, d in zip(state["regions"], per_region)})
    out[f"{split}_cases"] = len(ids)
    return out


@torch.no_grad()
def validate_cases(model, val_set, loss_fn, cfg, device, use_amp, amp_dtype, n_regions, stop_if_aborted=lambda: None) -> list[float]:
    """[val_loss_sum, n_cases, dice_sum_region_0, ...] over this rank's share of the val cases (the
    training loop's validation; cfg.val_metric picks the Dice).

    Runs on the bare model, never the DDP wrapper: ranks hold different numbers of val cases
    and DDP's forward would wait for collectives the other ranks never make.
    """
    model.eval()
    loss_sum, n, dice_sum = 0.0, 0, torch.zeros(n_regions, dtype=torch.float64)
    for i in range(len(val_set)):
        stop_if_aborted()
        image, label = val_set[i]
        image, label = image[None].to(device).float(), label[None].to(device).float()
        with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
            logits = infer(model, image, cfg.patch_size)
        loss_sum += float(loss_fn(logits.float(), label))
        score = soft_dice_per_region if cfg.val_metric == "soft_dice" else dice_per_region
        dice_sum += score(logits, label)[0].double().cpu()
        n += 1
    return [loss_sum, n, *dice_sum.tolist()]
