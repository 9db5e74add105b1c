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
from voxtune.train.metrics import as_logits, dice_per_region, infer, probabilities, soft_dice_per_region


def load_model(checkpoint: str | Path, device: torch.device | str = "cpu") -> tuple[torch.nn.Module, dict]:
    """The network of a best.pt checkpoint, in eval mode, and the checkpoint's metadata (with its
    "patch_size", "strides" and "softmax" as the run resolved them)."""
    state = load_checkpoint(Path(checkpoint), map_location=device)
    cfg = make_config(state["config"])
    softmax = bool(state.get("softmax", False))
    regions = len(state["regions"])
    model = build_model(cfg, state["in_channels"], regions + 1 if softmax else regions, strides=state.get("strides"),
                        softmax=softmax)
    model.load_state_dict(state["model"])
    state.setdefault("patch_size", state["config"].get("patch_size"))
    state["softmax"] = softmax
    return model.to(device).eval(), state


@torch.no_grad()
def evaluate(checkpoint: str | Path, cache_dir: str | Path, split: str = "test", threads: int | None = None) -> dict[str, Any]:
    """{"<split>_dice": mean over regions and cases, "<split>_dice_<region>": ..., "<split>_cases": n}."""
    return evaluate_models([checkpoint], cache_dir, split, threads)["models"][0]


@torch.no_grad()
def evaluate_models(checkpoints: list[str | Path], cache_dir: str | Path, split: str = "test",
                    threads: int | None = None) -> dict[str, Any]:
    """Scores (as evaluate's) of each checkpoint, "models", and of their ensemble, "ensemble": the mean of
    the models' probabilities (sigmoid or softmax) [1, K, X, Y, Z], then thresholded at 0.5 or its argmax
    taken (nnU-Net's and MONAI Auto3DSeg's fold ensemble). One model: its ensemble is itself."""
    if threads:
        torch.set_num_threads(threads)
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    loaded = [load_model(c, device) for c in checkpoints]
    regions, softmax = loaded[0][1]["regions"], loaded[0][1]["softmax"]
    ids = case_ids(read_manifest(cache_dir), split)
    dataset = CaseDataset(cache_dir, ids, patch_size=None, augment=False, divisor=loaded[0][0].divisor)
    sums = torch.zeros(len(loaded) + 1, len(regions), dtype=torch.float64)  # each model's, then the ensemble's
    for i in range(len(dataset)):
        image, label = dataset[i]
        image, label = image[None].to(device).float(), label[None].to(device)
        logits = [infer(model, image, state["patch_size"]).float() for model, state in loaded]
        mean = torch.stack([probabilities(x, softmax) for x in logits]).mean(0)
        for j, x in enumerate([*logits, as_logits(mean, softmax)]):
            sums[j] += dice_per_region(x, label, softmax)[0].double().cpu()

    def scores(per_region: list[float]) -> dict[str, Any]:
        out: dict[str, Any] = {f"{split}_dice": sum(per_region) / len(per_region) if ids else None}
        out.update({f"{split}_dice_{name}": (d if ids else None) for name, d in zip(regions, per_region)})
        out[f"{split}_cases"] = len(ids)
        return out

    per_model = [scores((row / max(len(ids), 1)).tolist()) for row in sums]
    return {"models": per_model[:-1], "ensemble": per_model[-1]}


@torch.no_grad()
def validate_cases(model, val_set, loss_fn, val_metric, layout, device, use_amp, amp_dtype,
                   stop_if_aborted=lambda: None) -> list[float]:
    """[val_loss_sum, n_cases, dice_sum_region_0, ...] over this rank's share of the val cases (the
    training loop's validation; val_metric picks the Dice; layout is the run's voxtune.train.build.Layout).

    Runs on the bare model, never the DDP wrapper: ranks hold different numbers of val cases
    and DDP's forward would wait for collectives the other ranks never make.
    """
    model.eval()
    loss_sum, n, dice_sum = 0.0, 0, torch.zeros(layout.regions, dtype=torch.float64)
    for i in range(len(val_set)):
        stop_if_aborted()
        image, label = val_set[i]
        image, label = image[None].to(device).float(), label[None].to(device).float()
        with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
            logits = infer(model, image, layout.patch_size)
        loss_sum += float(loss_fn(logits.float(), label))
        score = soft_dice_per_region if val_metric == "soft_dice" else dice_per_region
        dice_sum += score(logits, label, softmax=layout.softmax)[0].double().cpu()
        n += 1
    return [loss_sum, n, *dice_sum.tolist()]
