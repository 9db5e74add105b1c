"""What defines a search: SearchSettings, saved to RUN/search.json so `--resume` needs only --out."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from voxtune.config import make_config
from voxtune.errors import VoxtuneError
from voxtune.parallel.modes import MODES
from voxtune.parallel.space import count_trials, load_space, validate_space

SEARCHES = ("grid", "random", "optuna")
SCHEDULERS = ("fifo", "asha")


@dataclass
class SearchSettings:
    """W workers, K workers per trial: W/K trials run at once, each over K DDP ranks (experiment:
    K = 1; data: K = W; hybrid: 1 < K < W). Options a mode would ignore are refused."""

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

    def check(self) -> "SearchSettings":
        if self.mode not in MODES:
            raise VoxtuneError(f"unknown --mode '{self.mode}'; choose one of {', '.join(MODES)}")
        if self.search not in SEARCHES:
            raise VoxtuneError(f"unknown --search '{self.search}'; choose one of {', '.join(SEARCHES)}")
        if self.scheduler not in SCHEDULERS:
            raise VoxtuneError(f"unknown --scheduler '{self.scheduler}'; choose one of {', '.join(SCHEDULERS)}")
        if self.workers < 1:
            raise VoxtuneError(f"--workers {self.workers}: need at least 1")
        if self.cpus_per_worker <= 0 or self.gpus_per_worker < 0:
            raise VoxtuneError("--cpus-per-worker must be > 0 and --gpus-per-worker >= 0")
        if self.gpus_per_worker > 1 and not float(self.gpus_per_worker).is_integer():
            raise VoxtuneError(f"--gpus-per-worker {self.gpus_per_worker}: above 1 it must be whole")
        self.workers_per_trial = self.per_trial()
        self.cache_dir = str(Path(self.cache_dir).resolve())  # Ray workers run in other folders
        validate_space(self.space)
        make_config(self.base_config)
        if self.num_samples is not None and self.num_samples < 1:
            raise VoxtuneError(f"--num-samples {self.num_samples}: need at least 1")
        if self.search == "grid" and (self.num_samples or 1) > 1 and "seed" in self.space:
            raise VoxtuneError("--num-samples repeats the grid with seeds of its own, but the space searches "
                               "'seed' already; drop one of them")
        if count_trials(self.space, self.search, self.num_samples) < 1:
            raise VoxtuneError("the search space yields no trials")
        return self

    def per_trial(self) -> int:
        k = {"experiment": 1, "data": self.workers}.get(self.mode, self.workers_per_trial)
        if k is None:
            raise VoxtuneError("--mode hybrid needs --workers-per-trial K (DDP workers in each trial)")
        if self.mode == "experiment" and self.workers_per_trial not in (None, 1):
            raise VoxtuneError("--mode experiment runs one worker per trial; drop --workers-per-trial or use hybrid")
        if self.mode == "data" and self.workers_per_trial not in (None, self.workers):
            raise VoxtuneError(f"--mode data runs every trial over all --workers {self.workers}; drop "
                               "--workers-per-trial or use --mode hybrid")
        if k < 1 or self.workers % k:
            raise VoxtuneError(f"--workers-per-trial {k} must divide --workers {self.workers}")
        return k

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
