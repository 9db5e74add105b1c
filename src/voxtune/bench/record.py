"""bench.json: its format version, its rows, and the one reader that `voxtune plan` and `voxtune report` use.

`voxtune bench` (voxtune.bench.benchmark) writes it: {"format", "runs": one row per (mode, workers,
recipe) with its medians and every repeat (bench_rows), "failed_runs", "machine", "code", "settings"}.
"""
from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from voxtune.errors import VoxtuneError
from voxtune.parallel.modes import MODES

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


def time_to_target(curve: list[list[float]], target: float) -> float | None:
    """Seconds from the search's start until some trial first reached val Dice >= target (None: never)."""
    return next((t for t, dice in curve if dice >= target), None)


_TIMES = ("wall_s", "startup_s", "wall_after_startup_s", "trial_compute_s", "per_epoch_s", "idle_worker_s",
          "data_wait_share", "command_s", "ray_init_s", "final_best_s")


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def bench_rows(points: dict[tuple[str, int, str | None], list[dict[str, Any]]], modes: list[str],
          target: float) -> list[dict[str, Any]]:
    """One bench.json row per point: medians over its repeats (min and max of wall and time to target),
    speed-ups against the 1-worker point, every repeat kept under "repeats"."""
    out = []
    for (mode, w, recipe), reps in points.items():
        for r in reps:
            r["time_to_target_s"] = time_to_target(r["curve"], target)
        first = reps[0]
        row = {"mode": mode, "ddp_recipe": recipe if first["workers_per_trial"] > 1 or mode == "auto" else None,
               **{k: first[k] for k in ("workers", "workers_per_trial", "concurrent_trials", "trials", "epochs")},
               **{k: _median([r.get(k) for r in reps]) for k in _TIMES},
               "trial_outside_s": _median([r["trial_outside_s"] for r in reps]),
               "wall_s_min": min(r["wall_s"] for r in reps), "wall_s_max": max(r["wall_s"] for r in reps),
               "best_val_dice": _median([r["best_val_dice"] for r in reps]),
               "best_val_dice_min": min((r["best_val_dice"] or 0.0) for r in reps),
               "best_val_dice_max": max((r["best_val_dice"] or 0.0) for r in reps),
               "test_dice": _median([r["test_dice"] for r in reps]),
               "time_to_target_s": _median([r["time_to_target_s"] for r in reps]),
               "time_to_target_reached": sum(r["time_to_target_s"] is not None for r in reps),
               "status": first["status"], "repeats": reps}
        out.append(row)
    base = next(r for r in out if r["workers"] == 1)
    ordered = []
    for mode in [m for m in MODES if m in modes]:
        if mode != "hybrid":
            ordered.append({**base, "mode": mode})  # W = 1 is the same search in experiment and data
        ordered += sorted((r for r in out if r["mode"] == mode and r["workers"] > 1),
                          key=lambda r: (r["workers"], r["ddp_recipe"] or ""))
    for row in ordered:
        row["speedup"] = base["wall_s"] / row["wall_s"] if row["wall_s"] else 0.0
        row["efficiency"] = row["speedup"] / row["workers"]
        after = row["wall_after_startup_s"]
        row["speedup_after_startup"] = base["wall_after_startup_s"] / after if after else 0.0
    return ordered
