"""Atomic writes and tolerant JSON reads, shared by every layer (imports nothing from voxtune but errors).

A writer killed midway never leaves a file that reads as valid: data goes to `NAME.tmp-PID` beside
the target, is fsynced, then renamed over it. `voxtune prepare` sweeps stale `*.tmp-*` files. The
content is made in memory first, so its size is known: a full disk is one line naming the file,
the bytes it needed and the bytes free (DiskFull), never a half-written file or a serialiser's own
error.
"""
from __future__ import annotations

import errno
import io
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from voxtune.errors import VoxtuneError

TMP_MARK = ".tmp-"


class DiskFull(VoxtuneError):
    """No space (or quota) left where a file had to go: retrying in the same place cannot help."""


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def disk_full(path: Path, needed: int | None = None) -> DiskFull:
    """The one line for a full disk at `path`."""
    try:
        free = _mb(shutil.disk_usage(path.parent if not path.is_dir() else path).free)
    except OSError:
        free = "unknown"
    need = f"{_mb(needed)} to write, " if needed is not None else ""
    return DiskFull(f"{path}: no space left on its device ({need}{free} free); free space there or write "
                    "somewhere else, then run the command again (finished work is kept)")


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], Any]) -> None:
    """Call write(binary file) into memory, then put the bytes at `path` through a temp file beside it,
    fsynced and renamed. A full disk raises DiskFull; the previous file at `path`, if any, is untouched."""
    path = Path(path)
    buffer = io.BytesIO()
    write(buffer)
    data = buffer.getbuffer()
    tmp = path.with_name(f"{path.name}{TMP_MARK}{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if is_disk_full(exc):
            raise disk_full(path, len(data)) from None
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
