"""Validated training configuration: defaults, YAML in/out, `key=value` overrides.

Unknown keys and out-of-range values raise `VoxtuneError` naming the key, at the edge
where the bad value enters (a YAML file, a `--set`, a search-space sample).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from voxtune.errors import VoxtuneError
from voxtune.models import NETWORKS

NORMS = ("bn", "gn", "in", "none")
LOSSES = ("auto", "dice", "dicece", "batch_dice")
VAL_METRICS = ("hard_dice", "soft_dice")
UNET_STYLES = ("voxtune", "paper")


@dataclass(frozen=True)
class TrainConfig:
    """One training run. Defaults follow Berral et al. 2022 (3D U-Net, filter_start 8, depth 3)."""

    model: str = "unet3d"
    filter_start: int = 8
    depth: int = 3
    norm: str = "bn"
    kernel_size: int = 3
    lr: float = 1e-3
    beta2: float = 0.999
    amsgrad: bool = False
    batch_size: int = 2
    epochs: int = 10
    patch_size: list[int] | str | None = "auto"  # auto: the cache's plan (whole volume for BraTS); null: whole volume
    loss: str = "auto"  # dice: per case (MONAI); dicece: + cross-entropy; batch_dice: over the batch (the paper);
    # auto: dice for BraTS's sigmoid regions, dicece for a dataset's classes (softmax), as nnU-Net trains them
    seed: int = 0
    amp: bool | None = None  # mixed precision; null: on where CUDA is (true without CUDA is refused)
    num_workers: int | None = None  # data-loading processes per training worker; null: from its CPUs
    scale_lr: bool = False  # multiply lr by the DDP world size, as the paper did
    augment: bool = True  # random flips of the three spatial axes (the paper: none)
    foreground_prior: float = 0.01  # the head's initial P(tumour); 0.5 = zero bias, as the paper
    val_metric: str = "hard_dice"  # hard_dice: thresholded, per case; soft_dice: on probabilities (the paper)
    precise_bn: bool = True  # recompute BatchNorm statistics with the current weights before each validation
    unet_style: str = "voxtune"  # unet3d only; paper: 3^3 up-convolutions and head, conv bias, the paper's init
    folds: int = 1  # 1: the cache's train/val split; K >= 2: train + val cases pooled, cut into K seeded folds
    fold: int | None = None  # with folds K: null trains all K fold models side by side; i trains fold i's alone
    min_rank_batch: int | None = None  # DDP: fewest cases a rank's part of a global batch may hold; null: 2 on CPU, 1 on CUDA

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


KEYS = tuple(f.name for f in fields(TrainConfig))

# `--config paper`: the published training recipe (Berral et al. 2022, their code) where it differs
# from voxtune's defaults. Pair it with a cache made by `voxtune prepare --normalise volume`.
PRESETS: dict[str, dict[str, Any]] = {
    "paper": {"epochs": 20, "augment": False, "scale_lr": True, "foreground_prior": 0.5,
              "loss": "batch_dice", "val_metric": "soft_dice", "patch_size": None, "unet_style": "paper"},
}


def _check(key: str, ok: bool, what: str) -> None:
    if not ok:
        raise VoxtuneError(f"config key '{key}': {what}")


def _coerce(key: str, value: Any) -> Any:
    """Coerce a YAML/CLI value to the field's type, or raise naming the key."""
    default = getattr(TrainConfig, key, None)
    if key in ("num_workers", "amp", "fold", "min_rank_batch"):  # null (or auto): decided by the machine the run lands on
        if value is None or (isinstance(value, str) and value.lower() in ("null", "none", "auto", "")):
            return None
        default = False if key == "amp" else 0
    if key == "patch_size":
        if value is None or (isinstance(value, str) and value.lower() in ("null", "none", "")):
            return None
        if isinstance(value, str) and value.lower() in ("auto", "plan"):
            return "auto"
        if isinstance(value, str):
            value = yaml.safe_load(value if value.startswith("[") else f"[{value}]")
        if isinstance(value, int) or (isinstance(value, list) and len(value) == 1):  # 64 means 64^3
            value = (value if isinstance(value, list) else [value]) * 3
        _check(key, isinstance(value, (list, tuple)) and len(value) == 3
               and all(isinstance(v, int) and not isinstance(v, bool) and v >= 8 for v in value),
               f"expected three integers >= 8, auto (the cache's plan) or null (whole volume), got {value!r}")
        return [int(v) for v in value]
    if isinstance(default, bool):
        if isinstance(value, str):
            low = value.lower()
            _check(key, low in ("true", "false", "1", "0", "yes", "no"), f"expected true or false, got {value!r}")
            return low in ("true", "1", "yes")
        _check(key, isinstance(value, bool), f"expected true or false, got {value!r}")
        return value
    if isinstance(default, int):
        try:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        except (TypeError, ValueError):
            raise VoxtuneError(f"config key '{key}': expected an integer, got {value!r}") from None
    if isinstance(default, float):
        try:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        except (TypeError, ValueError):
            raise VoxtuneError(f"config key '{key}': expected a number, got {value!r}") from None
    _check(key, isinstance(value, str), f"expected a string, got {value!r}")
    return value


def validate(cfg: TrainConfig) -> TrainConfig:
    """Range checks; returns cfg unchanged or raises naming the first bad key."""
    _check("model", cfg.model in NETWORKS, f"'{cfg.model}' is not one of {', '.join(NETWORKS)}")
    _check("norm", cfg.norm in NORMS, f"'{cfg.norm}' is not one of {', '.join(NORMS)}")
    _check("loss", cfg.loss in LOSSES, f"'{cfg.loss}' is not one of {', '.join(LOSSES)}")
    _check("val_metric", cfg.val_metric in VAL_METRICS, f"'{cfg.val_metric}' is not one of {', '.join(VAL_METRICS)}")
    _check("foreground_prior", 0 < cfg.foreground_prior < 1, f"{cfg.foreground_prior} must be in (0, 1)")
    _check("unet_style", cfg.unet_style in UNET_STYLES, f"'{cfg.unet_style}' is not one of {', '.join(UNET_STYLES)}")
    # Options a network would ignore or silently replace are refused, never relabelled.
    if cfg.model != "unet3d":
        _check("unet_style", cfg.unet_style == "voxtune", f"'{cfg.unet_style}': {cfg.model} is not unet3d")
    if cfg.model == "segresnet":
        _check("kernel_size", cfg.kernel_size == 3, f"{cfg.kernel_size}: SegResNet has 3x3x3 kernels only")
    if cfg.model != "unet3d":
        _check("norm", cfg.norm != "none", f"'none': {cfg.model} always normalises; choose bn, gn or in")
    _check("filter_start", 1 <= cfg.filter_start <= 512, f"{cfg.filter_start} is outside 1..512")
    _check("depth", 1 <= cfg.depth <= 6, f"{cfg.depth} is outside 1..6")
    _check("kernel_size", cfg.kernel_size in (3, 5), f"{cfg.kernel_size} must be 3 or 5")
    _check("lr", 0 < cfg.lr < 1, f"{cfg.lr} must be in (0, 1)")
    _check("beta2", 0 < cfg.beta2 < 1, f"{cfg.beta2} must be in (0, 1)")
    _check("batch_size", 1 <= cfg.batch_size <= 1024, f"{cfg.batch_size} is outside 1..1024")
    _check("epochs", 1 <= cfg.epochs <= 100000, f"{cfg.epochs} is outside 1..100000")
    _check("num_workers", cfg.num_workers is None or 0 <= cfg.num_workers <= 64,
           f"{cfg.num_workers} is outside 0..64 (or null: derived from the CPUs)")
    _check("min_rank_batch", cfg.min_rank_batch is None or 1 <= cfg.min_rank_batch <= 1024,
           f"{cfg.min_rank_batch} is outside 1..1024 (or null: 2 on CPU, 1 on CUDA)")
    _check("seed", cfg.seed >= 0, f"{cfg.seed} must be >= 0")
    _check("folds", 1 <= cfg.folds <= 20, f"{cfg.folds} is outside 1..20 (1: the cache's own train/val split)")
    if cfg.fold is not None:
        _check("fold", cfg.folds > 1 and 0 <= cfg.fold < cfg.folds,
               f"{cfg.fold}: with folds {cfg.folds} it must be null"
               + (f" or 0..{cfg.folds - 1}" if cfg.folds > 1 else ""))
    if isinstance(cfg.patch_size, list):  # auto: rounded to the network's pooling when the plan is read
        step = 2 ** cfg.depth
        _check("patch_size", all(p % step == 0 for p in cfg.patch_size),
               f"{cfg.patch_size} must be divisible by 2**depth = {step}")
    return cfg


def make_config(values: dict[str, Any] | None = None, base: TrainConfig | None = None) -> TrainConfig:
    """Build a validated config from `values` over `base` (defaults when None)."""
    merged = (base or TrainConfig()).to_dict()
    for key, value in (values or {}).items():
        if key not in KEYS:
            raise VoxtuneError(f"unknown config key '{key}'; known keys: {', '.join(KEYS)}")
        merged[key] = _coerce(key, value)
    return validate(TrainConfig(**merged))


def parse_overrides(pairs: list[str] | None) -> dict[str, Any]:
    """`["lr=0.001", "norm=gn"]` -> {"lr": "0.001", "norm": "gn"} (coerced later, per key)."""
    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise VoxtuneError(f"--set expects key=value, got '{pair}'")
        out[key.strip()] = value.strip()
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Safe-load a YAML mapping; any problem is one line naming the file."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise VoxtuneError(f"{path}: file not found") from None
    except (OSError, yaml.YAMLError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise VoxtuneError(f"{path}: not readable as YAML ({first})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise VoxtuneError(f"{path}: expected a mapping of config keys, got {type(data).__name__}")
    return data


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Defaults <- YAML file (or a preset's name: paper) <- overrides, validated."""
    values = dict(PRESETS[str(path)]) if str(path) in PRESETS else read_yaml(path) if path else {}
    try:
        cfg = make_config(values)
    except VoxtuneError as exc:
        raise VoxtuneError(f"{path}: {exc}") from None
    return make_config(overrides or {}, base=cfg)


def write_config(cfg: TrainConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
