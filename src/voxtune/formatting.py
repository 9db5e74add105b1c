"""How values read from CSV/JSON outputs are shown: one rule for the terminal leaderboard and the report."""
from __future__ import annotations

import math
import re
from typing import Any

# A plain decimal or scientific number; Python's float() also takes "94057_00001" (digit grouping),
# which would show a trial id as a number.
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$|^[+-]?(inf|nan)$", re.IGNORECASE)


def number(value: Any) -> float | None:
    """A finite float for numbers and numeric strings, None for anything else (ids, names, blanks)."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, str) and not _NUMBER.match(value.strip()):
        return None
    try:
        result = float(value)
    except (TypeError, ValueError):
        return None
    return result if math.isfinite(result) else None


def short(value: Any) -> str:
    """4 significant digits for floats, whole numbers without a point, the rest as written
    (lr 0.0005 stays 0.0005; trial 94057_00001 stays 94057_00001; None is blank)."""
    if isinstance(value, bool) or value is None:
        return "" if value is None else str(value).lower()
    result = number(value)
    if result is None:
        return str(value)
    return str(int(result)) if result.is_integer() and abs(result) < 1e15 else f"{result:.4g}"
