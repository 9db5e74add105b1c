"""bench.json: its format version, and the one reader that `voxtune plan` and `voxtune report` use.

`voxtune bench` (voxtune.bench.benchmark) writes it: {"format", "runs": one row per (mode, workers,
recipe) with its medians and every repeat, "failed_runs", "machine", "code", "settings"}.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from voxtune.errors import VoxtuneError

FORMAT = 2  # bench.json layout; `voxtune plan` calibrates from this one only


def read_bench(path: str | Path, flag: str) -> dict[str, Any]:
    """The bench.json at `path`; a missing or unreadable file is one line naming `flag` and the path."""
    path = Path(path)
    try:
        bench = json.loads(path.read_text())
    except FileNotFoundError:
        raise VoxtuneError(f"{flag} {path}: file not found; run `voxtune bench` to make one") from None
    except (OSError, ValueError) as exc:
        raise VoxtuneError(f"{flag} {path}: not readable as JSON ({str(exc).splitlines()[0]})") from None
    if not isinstance(bench, dict):
        raise VoxtuneError(f"{flag} {path}: expected a bench.json object")
    return bench
