"""Checkpoints and JSON files written atomically: a killed writer never leaves a file that reads as valid."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from voxtune.errors import VoxtuneError


def atomic_write_bytes(path: Path, write) -> None:
    """Call write(file_object) on a temp file beside `path`, fsync, then rename over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; results are for the whole group to read
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, data: Any) -> None:
    text = json.dumps(data, indent=2, sort_keys=False).encode()
    atomic_write_bytes(Path(path), lambda f: f.write(text))


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    atomic_write_bytes(Path(path), lambda f: torch.save(state, f))


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load with weights_only=True: a checkpoint can carry tensors and plain values, never code."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise VoxtuneError(f"{path}: checkpoint not found") from None
    except Exception as exc:  # unpickling errors come in many types
        raise VoxtuneError(f"{path}: not a readable voxtune checkpoint ({type(exc).__name__}); "
                           "delete it to restart that run from scratch") from None
