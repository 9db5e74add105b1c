"""Checkpoints: written atomically, loaded without ever running code from the file; what a run saves
after each epoch (last.pt, best.pt, metrics.json, TensorBoard) and how it resumes from last.pt."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from voxtune.config import TrainConfig, make_config, read_yaml
from voxtune.errors import VoxtuneError
from voxtune.files import atomic_write, disk_full, is_disk_full, write_json
from voxtune.layout import TrainDir

if TYPE_CHECKING:
    from voxtune.train.build import Trainer


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load with weights_only=True: a checkpoint can carry tensors and plain values, never code."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise VoxtuneError(f"{path}: checkpoint not found") from None
    except Exception as exc:  # unpickling errors come in many types
        raise VoxtuneError(f"{path}: not a readable voxtune checkpoint ({type(exc).__name__}); "
                           "delete it to restart that run from scratch") from None


def check_same_run(cfg: TrainConfig, run: TrainDir, world: int, state: dict[str, Any], saved_world: int) -> None:
    """Refuse to resume a run whose saved config differs (other than a longer `epochs`). The ranks may
    change where the problem does not: the same global batch (batch_size x ranks: each rank takes its
    part of the same global batches, voxtune.data.loader.GlobalBatchSampler) and no lr x ranks."""
    out_dir, saved_path = run.path, run.config
    if "config" not in state and not saved_path.exists():
        return
    # The checkpoint's own config: rank 0 rewrites config.yaml as it starts, maybe before a peer reads it.
    saved = make_config(state.get("config") or read_yaml(saved_path)).to_dict()
    ours = cfg.to_dict()
    diff = [k for k in ours if k not in ("epochs", "batch_size") and saved.get(k) != ours[k]]
    if saved["batch_size"] * saved_world != cfg.batch_size * world:
        diff.append(f"batch_size: a global batch of {saved['batch_size'] * saved_world} there, "
                    f"{cfg.batch_size * world} here")
    elif saved_world != world and cfg.scale_lr:
        diff.append(f"scale_lr: lr x {saved_world} ranks there, x {world} here")
    if diff:
        raise VoxtuneError(f"{out_dir} holds a run with a different config ({', '.join(diff)}); "
                           "choose another --out or delete it")


def resume(t: Trainer, run: TrainDir, world: int,
            log: Callable[[str], None] | None) -> tuple[list[dict[str, Any]], float, int]:
    """(records, best val Dice, its epoch) of the epochs a run folder's last.pt holds, its weights,
    optimiser and RNG loaded into `t`; ([], -1, 0) for a new run."""
    if not run.last_checkpoint.exists():
        return [], -1.0, 0
    state = load_checkpoint(run.last_checkpoint, map_location=t.device)
    records = [r for r in state["metrics"] if r["epoch"] <= state["epoch"]]
    check_same_run(t.cfg, run, world, state, saved_world=(records or [{}])[-1].get("workers", 1))
    t.model.load_state_dict(state["model"])
    t.optimizer.load_state_dict(state["optimizer"])
    t.scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["torch_rng"].cpu())
    if log:
        log(f"resuming {run.path} after epoch {state['epoch']}")
    return records, state["best_val_dice"], state["best_epoch"]


def save_epoch(t: Trainer, run: TrainDir, writer, records: list[dict[str, Any]], best: float,
                best_epoch: int) -> None:
    """Rank 0, after every epoch: last.pt (the resume point), metrics.json and TensorBoard scalars."""
    record = records[-1]
    save_checkpoint(run.last_checkpoint, {"model": t.model.state_dict(), "optimizer": t.optimizer.state_dict(),
                                          "scaler": t.scaler.state_dict(), "epoch": record["epoch"],
                                          "best_val_dice": best, "best_epoch": best_epoch,
                                          "torch_rng": torch.get_rng_state(), "metrics": records,
                                          "config": t.cfg.to_dict()})
    write_json(run.metrics, records)
    for key, value in record.items():
        if key not in ("epoch", "workers", "end_ts", "build_s"):
            writer.add_scalar(key, value, record["epoch"])
    try:
        writer.flush()
    except OSError as exc:  # TensorBoard writes from its own thread and re-raises here
        if is_disk_full(exc):
            raise disk_full(run.tensorboard) from None
        raise


PREPARE_KEYS = ("preset", "labels", "regions", "label_values", "source_labels", "modalities", "shape", "spacing", "coarse_axis",
                "crop_z", "image_dtype", "normalise")


def best_state(t: Trainer, record: dict) -> dict[str, Any]:
    """Everything predict needs: weights, the config and what its `auto` values resolved to (patch,
    pooling, softmax: Layout.checkpoint), and how the cache was preprocessed."""
    return {"model": t.model.state_dict(), "config": t.cfg.to_dict(), "regions": t.regions,
            "in_channels": t.manifest["cases"][0]["image_shape"][0],
            "prepare": {k: t.manifest.get(k) for k in PREPARE_KEYS}, **t.layout.checkpoint(),
            "epoch": record["epoch"], "val": {k: v for k, v in record.items() if k.startswith("val_")}}
