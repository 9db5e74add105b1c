"""Search spaces: the YAML format, the paper's preset, and their translation to Ray Tune.

A space maps train-config keys to a constant or to one of
`{grid: [...]}`, `{choice: [...]}`, `{uniform: [lo, hi]}`, `{loguniform: [lo, hi]}`,
`{randint: [lo, hi]}` (hi exclusive, as Ray Tune's). Every value is checked against the
train config here, so a bad space fails before any worker starts.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from voxtune.config import KEYS, make_config, read_yaml
from voxtune.errors import VoxtuneError

KINDS = ("grid", "choice", "uniform", "loguniform", "randint")

# Berral et al. 2022, Table I: 4 x 2 x 2 x 2 = 32 trials.
PAPER_SPACE: dict[str, Any] = {
    "lr": {"grid": [1e-4, 5e-4, 1e-3, 5e-3]},
    "norm": {"grid": ["bn", "gn"]},
    "beta2": {"grid": [0.99, 0.999]},
    "amsgrad": {"grid": [True, False]},
}


def _where(source: str, key: str) -> str:
    return f"{source}: '{key}'"


def validate_space(space: Any, source: str = "search space") -> dict[str, Any]:
    """Return the space unchanged when every entry is well formed, else raise naming the entry."""
    if not isinstance(space, dict) or not space:
        raise VoxtuneError(f"{source}: expected a mapping of config keys to values or distributions")
    for key, spec in space.items():
        if key not in KEYS:
            raise VoxtuneError(f"{_where(source, key)} is not a train-config key; known keys: {', '.join(KEYS)}")
        if not isinstance(spec, dict):
            _check_value(key, spec, source)
            continue
        if len(spec) != 1 or next(iter(spec)) not in KINDS:
            raise VoxtuneError(f"{_where(source, key)} must be a constant or one of "
                               + ", ".join(f"{{{k}: ...}}" for k in KINDS))
        kind, arg = next(iter(spec.items()))
        if not isinstance(arg, list) or not arg:
            raise VoxtuneError(f"{_where(source, key)}: {kind} needs a non-empty list, got {arg!r}")
        if kind in ("grid", "choice"):
            for value in arg:
                _check_value(key, value, source)
            continue
        if len(arg) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in arg):
            raise VoxtuneError(f"{_where(source, key)}: {kind} needs [lo, hi] numbers, got {arg!r}")
        lo, hi = arg
        if not lo < hi or (kind == "loguniform" and lo <= 0):
            raise VoxtuneError(f"{_where(source, key)}: {kind} needs lo < hi"
                               + (" and lo > 0" if kind == "loguniform" else "") + f", got {arg!r}")
        if kind == "randint" and not (float(lo).is_integer() and float(hi).is_integer()):
            raise VoxtuneError(f"{_where(source, key)}: randint needs integers, got {arg!r}")
        for value in (lo, hi - 1 if kind == "randint" else hi):
            _check_value(key, value, source)
    return space


def _check_value(key: str, value: Any, source: str) -> None:
    try:
        make_config({key: value})
    except VoxtuneError as exc:
        raise VoxtuneError(f"{source}: {exc}") from None


def load_space(spec: str | Path) -> dict[str, Any]:
    """`paper` or a YAML file path -> a validated space."""
    if str(spec) == "paper":
        return PAPER_SPACE
    return validate_space(read_yaml(spec), str(spec))


def grid_size(space: dict[str, Any]) -> int:
    return math.prod(len(s["grid"]) for s in space.values() if isinstance(s, dict) and "grid" in s)


def has_random(space: dict[str, Any]) -> bool:
    return any(isinstance(s, dict) and next(iter(s)) != "grid" for s in space.values())


def count_trials(space: dict[str, Any], search: str, num_samples: int | None) -> int:
    """Trials the search will run: grid search repeats the grid num_samples times (default 1)."""
    if search == "grid":
        return grid_size(space) * (num_samples or 1)
    if not num_samples:
        raise VoxtuneError(f"--search {search} needs --num-samples N (trials to sample)")
    return num_samples


def to_tune(space: dict[str, Any], search: str) -> dict[str, Any]:
    """Ray Tune param_space. Random and Optuna search sample grid entries as choices."""
    from ray import tune

    out: dict[str, Any] = {}
    for key, spec in space.items():
        if not isinstance(spec, dict):
            out[key] = spec
            continue
        kind, arg = next(iter(spec.items()))
        if kind == "grid":
            out[key] = tune.grid_search(list(arg)) if search == "grid" else tune.choice(list(arg))
        elif kind == "choice":
            out[key] = tune.choice(list(arg))
        elif kind == "uniform":
            out[key] = tune.uniform(*arg)
        elif kind == "loguniform":
            out[key] = tune.loguniform(*arg)
        else:
            out[key] = tune.randint(int(arg[0]), int(arg[1]))
    return out
