"""What defines a search, and what a trial is handed.

SearchSettings: the command's settings, saved to RUN/search.json so `--resume` needs only --out;
checked once (check() returns the checked copy, never changes the one it checks). TrialPlan: what
each trial needs of them, built once by the driver and handed to every trial with
tune.with_parameters (Ray Tune's own pattern), its train config already validated.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from voxtune.config import TrainConfig, make_config
from voxtune.data.stage import stage_arg
from voxtune.errors import VoxtuneError
from voxtune.parallel import modes
from voxtune.parallel.space import count_trials, load_space, validate_space

SEARCHES = ("grid", "random", "optuna")
SCHEDULERS = ("fifo", "asha")


def pool_name(run_dir: str | Path) -> str:
    """--mode auto: the name of the search's Pool actor (voxtune.parallel.auto), one per run folder, so a
    resumed search's restored callbacks find the new one."""
    import hashlib

    return "voxtune-auto-" + hashlib.sha1(str(Path(run_dir).resolve()).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class TrialPlan:
    """What a trial needs to run: where, on what, with how many workers, and its base train config
    (the DDP recipe applied; the trial's searched values go on top of it)."""

    run_dir: str
    cache_dir: str
    config: TrainConfig
    workers_per_trial: int
    cpus: float
    gpus: float
    searched: tuple[str, ...]
    folders: dict[str, str]  # {config_key: folder}: a search resumed without Tune's state continues there
    search_id: str  # one per run of the driver: a trial's own error is final within it
    auto_pool: str | None = None  # --mode auto: the named actor that decides every trial's K
    staged: dict[str, str] = field(default_factory=dict)  # --stage: {node id: its copy of the cache}


@dataclass
class SearchSettings:
    """W workers, K workers per trial: W/K trials run at once, each over K DDP ranks (see
    voxtune.parallel.modes). Options a mode would ignore are refused."""

    cache_dir: str
    mode: str = "experiment"
    space: dict[str, Any] = field(default_factory=lambda: load_space("paper"))
    search: str = "grid"
    num_samples: int | None = None
    scheduler: str = "fifo"
    workers: int = 1
    workers_per_trial: int | None = None
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    base_config: dict[str, Any] = field(default_factory=dict)
    max_failures: int = 3
    ddp_recipe: str | None = None  # None: global-batch, or scale-lr where the config sets scale_lr
    auto_regroup_s: float | None = None  # auto: a regroup's cost until one is measured (None: estimated)
    stage: str | None = None  # a node-local folder each node copies the cache into (voxtune.data.stage)
    keep_stage: bool = False  # leave the staged copies in place at the end (a later search reuses them)
    stage_verified: bool = False  # bench: it staged and verified the copies; reuse them by size and mtime

    def checked(self) -> "SearchSettings":
        """The checked settings: a copy with K and the recipe resolved and the cache path made absolute."""
        if self.search not in SEARCHES:
            raise VoxtuneError(f"unknown --search '{self.search}'; choose one of {', '.join(SEARCHES)}")
        if self.scheduler not in SCHEDULERS:
            raise VoxtuneError(f"unknown --scheduler '{self.scheduler}'; choose one of {', '.join(SCHEDULERS)}")
        stage = stage_arg(self.stage, self.keep_stage)
        if self.stage_verified and not (self.stage and self.keep_stage):
            raise VoxtuneError("stage_verified: a search reuses copies a bench staged and keeps; give stage and keep_stage")
        if self.workers < 1:
            raise VoxtuneError(f"--workers {self.workers}: need at least 1")
        if self.cpus_per_worker <= 0 or self.gpus_per_worker < 0:
            raise VoxtuneError("--cpus-per-worker must be > 0 and --gpus-per-worker >= 0")
        if self.gpus_per_worker > 1 and not float(self.gpus_per_worker).is_integer():
            raise VoxtuneError(f"--gpus-per-worker {self.gpus_per_worker}: above 1 it must be whole")
        k = self.per_trial()
        if self.auto_regroup_s is not None and self.mode != "auto":
            raise VoxtuneError(f"--auto-regroup-s: only --mode auto regroups trials, not --mode {self.mode}; drop it")
        if self.auto_regroup_s is not None and self.auto_regroup_s < 0:
            raise VoxtuneError(f"--auto-regroup-s {self.auto_regroup_s}: a cost in seconds, >= 0")
        validate_space(self.space)
        base = make_config(self.base_config)
        if self.num_samples is not None and self.num_samples < 1:
            raise VoxtuneError(f"--num-samples {self.num_samples}: need at least 1")
        if self.search == "grid" and (self.num_samples or 1) > 1 and "seed" in self.space:
            raise VoxtuneError("--num-samples repeats the grid with seeds of its own, but the space searches "
                               "'seed' already; drop one of them")
        for key in ("folds", "fold"):
            if key in self.space:
                raise VoxtuneError(f"the search space searches '{key}', but every config of a search is judged on the "
                                   "same folds; drop it from the space and give --folds K")
        if count_trials(self.space, self.search, self.num_samples) < 1:
            raise VoxtuneError("the search space yields no trials")
        recipe = self.ddp_recipe
        if self.mode == "auto":
            recipe = self._auto_recipe(base)
        elif recipe is not None and k == 1:
            raise VoxtuneError(f"--ddp-recipe {recipe}: a trial of one worker has no DDP ranks to split a batch "
                               "over; drop it (or use --mode data or hybrid)")
        if recipe is not None and base.scale_lr and recipe != "scale-lr":
            raise VoxtuneError(f"config key 'scale_lr': true is the scale-lr recipe, but --ddp-recipe is {recipe}; "
                               "drop one of them")
        if recipe is None and k > 1 and self.mode != "auto":
            recipe = "scale-lr" if base.scale_lr else modes.DEFAULT_RECIPE
        losses = self.space.get("loss", base.loss)
        losses = next(iter(losses.values())) if isinstance(losses, dict) else [losses]
        if recipe == "global-batch" and "batch_dice" in losses:
            raise VoxtuneError("loss batch_dice under --ddp-recipe global-batch: each rank would take one Dice over "
                               "its own part of the batch, not the global batch's, so the trial would not train the "
                               "1-worker problem; use loss dice (per case) or --ddp-recipe scale-lr (the paper's)")
        checked = replace(self, workers_per_trial=None if self.mode == "auto" else k, ddp_recipe=recipe, cache_dir=str(Path(self.cache_dir).resolve()),
                          stage=stage)
        checked.trial_config()  # a batch the recipe cannot split is refused before anything runs
        return checked

    def _auto_recipe(self, base: TrainConfig) -> str:
        """Auto grows trials under global-batch only: the same problem whatever K, so a trial's result does
        not depend on when it grew. Anything else is refused."""
        if self.ddp_recipe not in (None, "global-batch"):
            raise VoxtuneError(f"--mode auto grows trials under --ddp-recipe global-batch only (a trial's result must not "
                               f"depend on when it grew), not {self.ddp_recipe}; drop --ddp-recipe or use --mode hybrid")
        if base.scale_lr or "scale_lr" in self.space:
            raise VoxtuneError("--mode auto grows trials under global-batch, and scale_lr changes the lr with K; "
                               "drop scale_lr from the config and the space")
        return "global-batch"

    def min_part(self) -> int:
        """The fewest cases a rank's part of a global batch holds: min_rank_batch, else 2 on CPU workers and
        1 on GPUs (voxtune.data.loader.GlobalBatchSampler says why)."""
        return make_config(self.base_config).min_rank_batch or (1 if self.gpus_per_worker else 2)

    def batch_one_note(self) -> str | None:
        """One line before a search whose CPU ranks would take batch 1 (global-batch over K >= batch_size / 2):
        by default those ranks pair up and the others train nothing; with min_rank_batch 1 each takes one
        case, which torch 2.13 runs outside oneDNN, slowly. None otherwise."""
        k, batch = self.per_trial(), make_config(self.base_config).batch_size
        if self.gpus_per_worker or k == 1 or self.ddp_recipe != "global-batch" or batch // k > 1:
            return None
        if (p := self.min_part()) > 1:
            used = max(1, min(k, batch // p))
            return (f"note: a trial's global batch of {batch} goes to {used} of its {k} DDP ranks ({p} cases or more "
                    "each: on CPU a batch-1 step of the 3D U-Net costs 2-6x a batch-2 step per case, "
                    f"benchmarks/cpu_batch.py), so {k - used} rank(s) train nothing and the trial runs at about "
                    f"{used} worker(s)' speed; batch_size {2 * k} (2 per rank) would use them all")
        return (f"note: each of the {k} DDP ranks of a trial takes batch 1 ({batch} / {k}, min_rank_batch 1); on CPU "
                "workers a batch-1 step of the 3D U-Net costs 2-6x a batch-2 step per case (benchmarks/cpu_batch.py), "
                f"so this trial may run slower than on one worker; batch_size {2 * k} (2 per rank) would not")

    def per_trial(self) -> int:
        return modes.workers_per_trial(self.mode, self.workers, self.workers_per_trial)

    def trial_config(self) -> TrainConfig:
        """The base train config of every rank of a trial: the command's, under the DDP recipe (auto: the
        1-worker config; the trial splits its batch when it grows)."""
        base = make_config(self.base_config).to_dict()
        return make_config(modes.recipe_config(base, self.per_trial(), self.ddp_recipe))

    def plan(self, run_dir: str | Path, folders: dict[str, str], search_id: str,
             staged: dict[str, str] | None = None) -> TrialPlan:
        return TrialPlan(run_dir=str(run_dir), cache_dir=self.cache_dir, config=self.trial_config(), staged=dict(staged or {}),
                         workers_per_trial=self.per_trial(), cpus=self.cpus_per_worker, gpus=self.gpus_per_worker,
                         searched=tuple(self.trial_space()), folders=dict(folders), search_id=search_id,
                         auto_pool=pool_name(run_dir) if self.mode == "auto" else None)

    def trial_space(self) -> dict[str, Any]:
        """The space the trials sample: grid repeats (--num-samples N) become a grid over N seeds
        (base seed, +1, ...), so repeated grid points are distinct trials, not copies."""
        repeats = self.num_samples or 1
        if self.search != "grid" or repeats == 1:
            return dict(self.space)
        seed = make_config(self.base_config).seed
        return {**self.space, "seed": {"grid": [seed + i for i in range(repeats)]}}

    @property
    def tune_samples(self) -> int:
        """Ray Tune's num_samples: grid repeats are in trial_space already."""
        return 1 if self.search == "grid" else self.num_samples or 1

    @property
    def concurrent_trials(self) -> int:
        return self.workers // self.per_trial()

    @property
    def epochs(self) -> int:
        return make_config(self.base_config).epochs
