"""Where everything voxtune writes lives: the one owner of every file and folder name under a run.

    TRAIN (voxtune train --out, or a search's trial)     RUN (voxtune tune --out)
      config.yaml    the resolved TrainConfig              search.json       the search's settings (--resume)
      metrics.json   one record per finished epoch         leaderboard.csv   one row per trial
      checkpoints/   last.pt (resume), best.pt (predict)   best.json         the best trial and its test score
      tb/            TensorBoard events                    summary.json      counts and timings
      trial.json     (a trial only) its state              trials/<id>/      a TRAIN folder per trial
      folds/<i>/     (folds K) fold i's model: a TRAIN folder; metrics.json above holds the fold means
                                                           ray/              Ray Tune's own state
    BENCH (voxtune bench --out)
      bench.json  bench.md  speedup.png  runs/<name>/ (a RUN per search)  runs/stale/<name>/

Every other module asks these classes for a path and never spells a name itself, so a layout change
is made here once. They only name paths: reading and writing stay with the module that owns the
content (voxtune.parallel.state owns trial.json, voxtune.parallel.outputs the search's tables).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class _Folder:
    path: Path

    def __post_init__(self):
        object.__setattr__(self, "path", Path(self.path))  # a str is welcome too


@dataclass(frozen=True)
class TrainDir(_Folder):
    """One training run's folder; a search's trial is one too (TrialDir)."""

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def config(self) -> Path:
        return self.path / "config.yaml"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.json"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoints / "last.pt"

    @property
    def best_checkpoint(self) -> Path:
        return self.checkpoints / "best.pt"

    @property
    def tensorboard(self) -> Path:
        return self.path / "tb"

    @property
    def report(self) -> Path:
        return self.path / "report.html"

    def fold(self, i: int) -> TrainDir:
        """A cross-validated run's fold i (config folds K >= 2): its own model, metrics and checkpoints."""
        return TrainDir(self.path / "folds" / str(i))

    def folds(self) -> list[TrainDir]:
        """A cross-validated run's fold folders, fold 0 first (none for a run of one model)."""
        found = [p for p in (self.path / "folds").glob("*/") if p.name.isdigit()]
        return [TrainDir(p) for p in sorted(found, key=lambda p: int(p.name))]


@dataclass(frozen=True)
class TrialDir(TrainDir):
    """RUN/trials/<id>: a TrainDir plus the trial's state file."""

    @property
    def state(self) -> Path:
        return self.path / "trial.json"


@dataclass(frozen=True)
class RunDir(_Folder):
    """A search's folder."""

    @property
    def search(self) -> Path:
        return self.path / "search.json"

    @property
    def leaderboard(self) -> Path:
        return self.path / "leaderboard.csv"

    @property
    def best(self) -> Path:
        return self.path / "best.json"

    @property
    def summary(self) -> Path:
        return self.path / "summary.json"

    @property
    def report(self) -> Path:
        return self.path / "report.html"

    @property
    def tune_state(self) -> Path:
        """Ray Tune's experiment folder (RunConfig name "ray" under storage_path RUN)."""
        return self.path / "ray"

    @property
    def trials_dir(self) -> Path:
        return self.path / "trials"

    def trial(self, folder: str) -> TrialDir:
        return TrialDir(self.trials_dir / folder)

    def trials(self) -> list[TrialDir]:
        """Every trial folder, in name order."""
        return [TrialDir(p) for p in sorted(self.trials_dir.glob("*/"))]


@dataclass(frozen=True)
class BenchDir(_Folder):
    """A bench's folder: its tables and one RunDir per search."""

    @property
    def bench_json(self) -> Path:
        return self.path / "bench.json"

    @property
    def markdown(self) -> Path:
        return self.path / "bench.md"

    @property
    def plot(self) -> Path:
        return self.path / "speedup.png"

    def run(self, name: str) -> RunDir:
        return RunDir(self.path / "runs" / name)

    def stale(self, name: str) -> RunDir:
        """Where a run made by other code or settings is moved before it is run again."""
        return RunDir(self.path / "runs" / "stale" / name)

    def code_stamp(self, run: RunDir) -> Path:
        """The code version a bench run was started with (a run is reused only by the same code)."""
        return run.path / "bench-code.json"

    def relative(self, run: RunDir) -> str:
        """A run's name in bench.json: its path from BENCH."""
        return run.path.relative_to(self.path).as_posix()

    def searches(self) -> list[RunDir]:
        """The searches this bench has started (each holds its search.json)."""
        return [RunDir(p.parent) for p in sorted((self.path / "runs").glob("*/search.json"))]
