"""`voxtune tune`: one entry for experiment, data and hybrid parallelism on Ray Tune.

W workers, K workers per trial: W/K trials run at once, each over K DDP ranks
(experiment: K = 1; data: K = W; hybrid: 1 < K < W). Each trial reserves a placement group of K
bundles of {CPU: C, GPU: G}, so Ray gang-schedules its ranks, on one node or several.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from voxtune.config import make_config
from voxtune.data.cache import read_manifest
from voxtune.errors import VoxtuneError
from voxtune.files import read_json, write_json
from voxtune.parallel import outputs
from voxtune.parallel.modes import MODES
from voxtune.parallel.space import count_trials, load_space, to_tune, validate_space
from voxtune.provenance import code_version, git_commit

SEARCHES = ("grid", "random", "optuna")
SCHEDULERS = ("fifo", "asha")


@dataclass
class SearchSettings:
    """Everything that defines a search; saved to RUN/search.json so `--resume` needs only --out."""

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

    @property
    def concurrent_trials(self) -> int:
        return self.workers // self.per_trial()

    @property
    def epochs(self) -> int:
        return make_config(self.base_config).epochs


def _check_reachable(address: str, timeout_s: float = 10.0) -> None:
    """Fail in seconds, with one line, when nothing listens at a HOST:PORT --address.

    Ray itself retries an unreachable GCS for minutes, logging as it goes; "auto" and ray://
    addresses are left to Ray.
    """
    host, sep, port = address.rpartition(":")
    if not sep or not host or "://" in address or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise VoxtuneError(f"--address {address}: no Ray head answers there ({exc.strerror or exc}); start one "
                           "with `ray start --head --port PORT` on that node, or fix the address") from None


def _init_ray(address: str | None, settings: SearchSettings) -> float:
    """Start or join Ray; returns seconds spent. Local: dashboard off, token auth as Ray sets it (on)."""
    import ray

    t0 = time.perf_counter()
    kwargs: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": True}
    if address:
        _check_reachable(address)
        kwargs["address"] = address
    else:  # "local": always a fresh instance, never silently joining a cluster found on this machine
        # A saturated laptop CPU can starve the raylet's heartbeats; give it a minute, not 15 s.
        kwargs.update(address="local", include_dashboard=False,
                      _system_config={"health_check_failure_threshold": 20, "health_check_timeout_ms": 10000})
    try:
        ray.init(**kwargs)
    except ConnectionError as exc:
        raise VoxtuneError(f"--address {address}: cannot join the Ray cluster ({exc}); is `ray start --head` "
                           "running there, and is RAY_AUTH_TOKEN_PATH set to its token?") from None
    except Exception as exc:
        if address:
            raise
        # Ray gives its own raylet a fixed 30 s to register; an overloaded machine can miss that.
        # Nothing of the search exists yet (RUN is made after Ray is up), so a plain retry loses nothing.
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        raise VoxtuneError(f"could not start a local Ray instance ({str(exc).splitlines()[0][:200]}); the "
                           f"1-minute load average is {load:.1f} on {os.cpu_count()} CPUs: run the command again "
                           "when the machine is quieter, or start Ray yourself (`ray start --head`) and pass "
                           "--address HOST:PORT") from None
    have = ray.cluster_resources()
    need_cpu = settings.workers * settings.cpus_per_worker
    need_gpu = settings.workers * settings.gpus_per_worker
    if have.get("CPU", 0) < need_cpu or have.get("GPU", 0) < need_gpu:
        ray.shutdown()
        raise VoxtuneError(f"{settings.workers} workers need {need_cpu:g} CPUs and {need_gpu:g} GPUs, but the "
                           f"Ray cluster has {have.get('CPU', 0):g} CPUs and {have.get('GPU', 0):g} GPUs; "
                           "lower --workers or --cpus-per-worker, or add nodes")
    return time.perf_counter() - t0


def _search_settings(run_dir: Path, settings: SearchSettings | None, resume: bool) -> SearchSettings:
    """The settings to run: those saved in RUN with --resume, else the given ones for a RUN without a search."""
    saved = run_dir / "search.json"
    if resume:
        if not saved.exists():
            raise VoxtuneError(f"{run_dir}: no search to resume (search.json missing); start one without --resume")
        try:
            return SearchSettings(**json.loads(saved.read_text())).check()
        except (ValueError, TypeError) as exc:
            raise VoxtuneError(f"{saved}: unreadable search settings ({exc}); start a new search in another --out") from None
    if saved.exists() or (run_dir / "trials").exists():
        raise VoxtuneError(f"{run_dir} already holds a search; continue it with --resume or choose another --out")
    assert settings is not None
    return settings


def _tuner(settings: SearchSettings, run_dir: Path, resume: bool):
    from ray import tune
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from voxtune.parallel.progress import ProgressLines
    from voxtune.parallel.trial import run_trial

    k = settings.per_trial()
    bundle = {"CPU": settings.cpus_per_worker}
    if settings.gpus_per_worker:
        bundle["GPU"] = settings.gpus_per_worker
    trial_settings = {"run_dir": str(run_dir), "cache_dir": str(Path(settings.cache_dir).resolve()),
                      "base_config": settings.base_config, "workers_per_trial": k,
                      "cpus": settings.cpus_per_worker, "gpus": settings.gpus_per_worker}
    trainable = tune.with_resources(tune.with_parameters(run_trial, settings=trial_settings),
                                    tune.PlacementGroupFactory([bundle] * k))
    total = count_trials(settings.space, settings.search, settings.num_samples)
    progress = ProgressLines(total, settings.epochs, list(settings.space))
    experiment = run_dir / "ray"
    if resume and tune.Tuner.can_restore(str(experiment)):
        return tune.Tuner.restore(str(experiment), trainable, resume_unfinished=True, resume_errored=True)

    search_alg = None
    if settings.search == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        search_alg = OptunaSearch(seed=make_config(settings.base_config).seed)
    elif settings.search == "random":
        from ray.tune.search import BasicVariantGenerator

        search_alg = BasicVariantGenerator(random_state=make_config(settings.base_config).seed)
    epochs = settings.epochs
    scheduler = (ASHAScheduler(time_attr="epoch", max_t=epochs, grace_period=max(1, epochs // 4),
                               reduction_factor=2) if settings.scheduler == "asha" else FIFOScheduler())
    return tune.Tuner(
        trainable,
        param_space=to_tune(settings.space, settings.search),
        tune_config=tune.TuneConfig(metric="val_dice", mode="max", search_alg=search_alg, scheduler=scheduler,
                                    num_samples=settings.num_samples or 1,
                                    max_concurrent_trials=settings.concurrent_trials,
                                    # Reuse keeps DDP groups alive across trials, ASHA's stopped
                                    # ones included (run_trial ends their thread as Tune expects).
                                    reuse_actors=True,
                                    trial_dirname_creator=lambda trial: trial.trial_id),
        run_config=tune.RunConfig(name="ray", storage_path=str(run_dir),
                                  failure_config=tune.FailureConfig(max_failures=settings.max_failures),
                                  callbacks=[progress, CSVLoggerCallback(), JsonLoggerCallback()], verbose=0),
    )


def run_search(run_dir: str | Path, settings: SearchSettings | None = None, *, address: str | None = None,
               resume: bool = False) -> dict[str, Any]:
    """Run (or resume) a search; write leaderboard.csv, best.json, summary.json under run_dir."""
    t_command = time.perf_counter()
    run_dir = Path(run_dir).resolve()
    if settings is not None:
        read_manifest(settings.check().cache_dir)  # a missing cache fails before RUN is created
    settings = _search_settings(run_dir, settings, resume)
    if resume:
        read_manifest(settings.cache_dir)  # the saved cache may have gone since
    searched = list(settings.space)

    import ray

    # Save Tune's experiment state every few seconds (default: >= 10 s) so a killed driver
    # loses little; our own per-trial files already make finished trials safe.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")
    # Ctrl-C must not reach trials as a graceful stop (they would record an early stop and a
    # resume would skip them): let it interrupt the driver, as a kill would, and resume instead.
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    # Our ProgressLines replace Ray's tables; the legacy reporter at verbose=0 prints nothing.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Tune's default loggers include a TensorBoardX one, whose import pulls torch into the driver
    # (~3 s between Ray up and the first trial). Trials write their own TensorBoard events
    # (RUN/trials/<id>/tb); Tune keeps its CSV and JSON results, passed in explicitly below.
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
    ray_init_s = _init_ray(address, settings)
    t_search = time.time()  # the search starts with Ray up: the driver's own set-up counts
    if not resume:  # written once Ray is up: a cluster that cannot be joined leaves no half-made RUN
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json(run_dir / "search.json", asdict(settings))
    try:
        tuner = _tuner(settings, run_dir, resume)
        interrupted = False
        try:
            results = tuner.fit()
            errors = {Path(r.path).name: f"{type(r.error).__name__}: {r.error}".splitlines()[0][:300]
                      for r in results if r.error is not None}
            _settle_trials(run_dir, settings, [(Path(r.path).name, r.config) for r in results], errors)
        except KeyboardInterrupt:
            interrupted, errors = True, {}
        rows = outputs.trial_rows(run_dir, searched, errors)
        interrupted = interrupted or any(r["status"] == "running" for r in rows)
        for row in rows:
            if row["status"] == "running":
                row["status"] = "interrupted"
        outputs.write_leaderboard(run_dir / "leaderboard.csv", rows)
        finished = [r for r in rows if r["status"] in ("finished", "stopped") and r["val_dice"] != ""]
        best = _write_best(run_dir, settings, finished[0]) if finished and not interrupted else None
        ends = [r["end_ts"] for r in rows if r["end_ts"] != ""]
        first_epoch = outputs.first_epoch_start(run_dir, rows, since=t_search)
        summary = {
            "mode": settings.mode, "workers": settings.workers, "workers_per_trial": settings.per_trial(),
            "concurrent_trials": settings.concurrent_trials, "cpus_per_worker": settings.cpus_per_worker,
            "gpus_per_worker": settings.gpus_per_worker, "search": settings.search,
            "scheduler": settings.scheduler, "searched": searched, "epochs": settings.epochs, "trials": len(rows),
            "status": outputs.status_counts(rows), "interrupted": interrupted,
            # The timing fields, as the README's glossary defines them (every span in seconds):
            "ray_init_s": ray_init_s,
            "search_start_ts": t_search,
            "startup_s": first_epoch - t_search if first_epoch is not None else None,
            "wall_time_s": (max(ends) - t_search) if ends else None,
            "command_time_s": time.perf_counter() - t_command,
            "nodes": len({r["node"] for r in rows if r["node"]}),
            "best_trial": best["trial_id"] if best else None,
            "cluster": ray.cluster_resources(),
            "code_version": code_version(), "git_commit": git_commit(),
        }
        write_json(run_dir / "summary.json", summary)
        summary["rows"] = rows
        return summary
    finally:
        ray.shutdown()


def _settle_trials(run_dir: Path, settings: SearchSettings, ended: list[tuple[str, dict[str, Any]]],
                   errors: dict[str, str]) -> None:
    """After a search that ran to its end, make each trial's trial.json agree with how Tune ended it.

    `ended`: (trial_id, config) of every trial in Tune's results. A trial that failed before it ever
    ran gets its row. A trial still marked running was stopped by the scheduler and then lost its
    actor, which Tune kills once no trial is left to reuse it, before the trial's own last write
    (a race the full suite caught): Tune's verdict stands, so it is marked finished or stopped.
    """
    for trial_id, config in ended:
        trial_json = run_dir / "trials" / trial_id / "trial.json"
        info = read_json(trial_json, {})
        if not info:
            write_json(trial_json, {"trial_id": trial_id, "status": "error",
                                    "config": {k: config.get(k) for k in settings.space},
                                    "reason": errors.get(trial_id, "never started")})
        elif info.get("status") == "running" and trial_id not in errors:
            metrics = trial_json.parent / "metrics.json"
            records = read_json(metrics, [])
            epochs = make_config(config, base=make_config(settings.base_config)).epochs
            done = bool(records) and records[-1]["epoch"] >= epochs
            info.update(status="finished" if done else "stopped", **outputs.trained(records),
                        end_ts=metrics.stat().st_mtime if records else time.time())
            write_json(trial_json, info)


def _evaluate(checkpoint: str, cache_dir: str, split: str, threads: int) -> dict[str, Any]:
    """voxtune.train.evaluate.evaluate, imported in the Ray worker: the driver never loads torch or MONAI."""
    from voxtune.train.evaluate import evaluate

    return evaluate(checkpoint, cache_dir, split, threads)


def _write_best(run_dir: Path, settings: SearchSettings, row: dict[str, Any]) -> dict[str, Any]:
    """best.json: the best trial's config, its validation metrics, and test metrics of its best checkpoint."""
    import ray

    trial_dir = run_dir / "trials" / row["trial_id"]
    info = json.loads((trial_dir / "trial.json").read_text())
    checkpoint = trial_dir / "checkpoints" / "best.pt"
    resources = {"num_cpus": settings.cpus_per_worker, "num_gpus": settings.gpus_per_worker}
    threads = max(1, int(settings.cpus_per_worker))
    try:
        test = ray.get(ray.remote(**resources)(_evaluate).remote(str(checkpoint), settings.cache_dir, "test", threads))
    except ray.exceptions.RayTaskError as exc:
        if isinstance(exc.cause, VoxtuneError):
            raise exc.cause from None
        raise
    best = {"trial_id": row["trial_id"], "config": make_config(info["config"],
                                                                 base=make_config(settings.base_config)).to_dict(),
            "searched": info["config"], "checkpoint": str(checkpoint.relative_to(run_dir)),
            "validation": {k: v for k, v in row.items() if k.startswith("val_dice")} | {"best_epoch": row["best_epoch"]},
            "test": test}
    write_json(run_dir / "best.json", best)
    return best
