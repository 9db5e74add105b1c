"""The ways to spend W workers on a search, and the rules that come with them: one home for each.

    experiment  W trials at once, 1 worker each;
    data        1 trial at a time over W DDP workers;
    hybrid      W/K trials at once, K DDP workers each (1 < K < W, K divides W);
    auto        W trials at once, 1 worker each to start; a worker no waiting trial can use joins a
                running trial's DDP group at its next epoch boundary (voxtune.parallel.auto), under
                global-batch only, so K must divide batch_size (auto_sizes).

A trial over K > 1 workers trains a problem chosen by its DDP recipe:
    global-batch  each of the K ranks takes batch_size / K: the global batch, the steps per epoch and
                  the lr are the 1-worker trial's (the default: the same optimisation problem);
    scale-lr      each rank takes batch_size and lr is multiplied by K, as the paper did (K x fewer,
                  K x larger steps);
    per-rank      each rank takes batch_size, the config as it is (K x the global batch; voxtune
                  tune's behaviour before global-batch became its default).
`voxtune tune`, `voxtune bench` and `voxtune plan` all ask this module, so a word means one thing in
every command.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

from voxtune.errors import VoxtuneError

MODES = ("experiment", "data", "hybrid", "auto")
RECIPES = ("global-batch", "scale-lr", "per-rank")
DEFAULT_RECIPE = "global-batch"
HYBRID_K = 2  # bench's K for hybrid runs when --workers-per-trial is not given
# Auto keeps a trial's growth when its first epoch at the new K takes at most this share of its last
# one at the old K (voxtune.parallel.auto; voxtune.bench.simulate plays the same rule).
GOODPUT_GAIN = 0.95


def workers_per_trial(mode: str, workers: int, k: int | None = None) -> int:
    """K, the DDP workers of each trial, for `mode` on `workers` workers (`k`: --workers-per-trial as given).
    A K the mode would ignore, or one that does not divide W, is refused."""
    if mode not in MODES:
        raise VoxtuneError(f"unknown --mode '{mode}'; choose one of {', '.join(MODES)}")
    if mode == "experiment" and k not in (None, 1):
        raise VoxtuneError("--mode experiment runs one worker per trial; drop --workers-per-trial or use hybrid")
    if mode == "auto" and k is not None:
        raise VoxtuneError("--mode auto chooses each trial's workers as the search runs; drop --workers-per-trial "
                           "(or use --mode hybrid for a fixed K)")
    if mode == "data" and k not in (None, workers):
        raise VoxtuneError(f"--mode data runs every trial over all --workers {workers}; drop "
                           "--workers-per-trial or use --mode hybrid")
    per_trial = {"experiment": 1, "auto": 1, "data": workers}.get(mode, k)
    if per_trial is None:
        raise VoxtuneError("--mode hybrid needs --workers-per-trial K (DDP workers in each trial)")
    if per_trial < 1 or workers % per_trial:
        raise VoxtuneError(f"--workers-per-trial {per_trial} must divide --workers {workers}")
    return per_trial


def splits(batch_size: int, k: int, min_part: int = 1) -> bool:
    """Global-batch can give each of K ranks batch_size / K cases, at least min_part (CPU ranks: 2,
    voxtune.data.loader.GlobalBatchSampler says why; a rank that would get fewer would train nothing)."""
    return k == 1 or (batch_size % k == 0 and batch_size // k >= min_part)


def auto_sizes(workers: int, batch_size: int, min_part: int = 1) -> list[int]:
    """The K an auto trial may train on: 1, and every K <= W that global-batch can split batch_size over."""
    return [k for k in range(1, workers + 1) if splits(batch_size, k, min_part)]


def mode_of(workers: int, k: int) -> str:
    """The mode a split of W workers into trials of K is called by."""
    return "experiment" if k == 1 else "data" if k == workers else "hybrid"


def recipe_config(base: dict[str, Any], k: int, recipe: str | None) -> dict[str, Any]:
    """The train config of each rank of a K-worker trial under a DDP recipe (K = 1 or no recipe: the
    base config unchanged). A batch that global-batch cannot split over K ranks is refused."""
    if k == 1 or recipe is None:
        return dict(base)
    if recipe not in RECIPES:
        raise VoxtuneError(f"--ddp-recipe {recipe}: choose from {', '.join(RECIPES)}")
    if recipe == "global-batch":
        if base["batch_size"] % k:
            raise VoxtuneError(f"--ddp-recipe global-batch splits batch_size {base['batch_size']} over {k} ranks, "
                               f"and {k} does not divide {base['batch_size']}; set a batch_size divisible by {k} "
                               "or use --ddp-recipe scale-lr")
        return {**base, "batch_size": base["batch_size"] // k, "scale_lr": False}
    if recipe == "scale-lr":
        return {**base, "scale_lr": True}
    return dict(base)


@dataclass
class Running:
    """What auto's rule knows of a running trial (the Pool's view, voxtune.parallel.auto, or the
    simulation's, voxtune.bench.simulate)."""

    started: float
    k: int = 1
    batch_size: int = 0
    best: float = -math.inf
    epoch_s: dict[int, float] = field(default_factory=dict)  # last epoch's seconds at each K
    grew_from: int | None = None  # the K before its last growth, until that growth is judged
    epochs_left: int = 0
    # Its last epoch ran while no trial started, ended or regrouped: its epoch_s is what it costs now (an
    # epoch beside a trial that has since ended was slowed by it, and would promise a growth a gain it cannot have).
    steady: bool = True


def decide(me: str, running: dict[str, Running], workers: int, waiting: int, sizes: list[int],
           slow: set[tuple[int, int]], worth: Callable[[Running, int], bool] = lambda r, k: True,
           min_part: int = 1) -> int:
    """The K trial `me` trains its next epoch on. `sizes`: the K a search's batch allows (a trial's
    own batch_size must split over its K too, min_part cases a rank at least); `slow`: the (batch_size,
    K) whose growth did not pay; `worth(trial, K)`: whether growing that trial to K saves more than a
    regroup costs."""

    def fits(r: Running, k: int) -> bool:
        return splits(r.batch_size, k, min_part) and (k == 1 or ((r.batch_size, k) not in slow and (k <= r.k or worth(r, k))))

    trial = running[me]
    allowed = [k for k in sizes if fits(trial, k)]
    if waiting > 0:  # lent workers go back first; a trial on its own worker keeps it
        return max(k for k in allowed if k <= max(1, trial.k - waiting))
    free = workers - sum(r.k for r in running.values())
    if free <= 0:
        return trial.k
    can_grow = [t for t, r in running.items() if any(r.k < k <= r.k + free and fits(r, k) for k in sizes)]
    if me not in can_grow or max(can_grow, key=lambda t: (running[t].best, -running[t].started)) != me:
        return trial.k
    return max(k for k in allowed if k <= trial.k + free)
