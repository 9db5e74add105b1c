"""Checkpoints: written atomically, loaded without ever running code from the file."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from voxtune.errors import VoxtuneError
from voxtune.files import atomic_write


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
