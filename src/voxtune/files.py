"""Atomic writes and tolerant JSON reads, shared by every layer (imports nothing from voxtune).

A writer killed midway never leaves a file that reads as valid: data goes to `NAME.tmp-PID` beside
the target, is fsynced, then renamed over it. `voxtune prepare` sweeps stale `*.tmp-*` files.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

TMP_MARK = ".tmp-"


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], Any]) -> None:
    """Call write(binary file) on a temp file beside `path`, fsync, then rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}{TMP_MARK}{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json(path: str | Path, data: Any) -> None:
    text = (json.dumps(data, indent=2) + "\n").encode()
    atomic_write(path, lambda f: f.write(text))


def read_json(path: str | Path, default: Any = None) -> Any:
    """The parsed file, or `default` when it is missing or not JSON (a run still being written)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return default
