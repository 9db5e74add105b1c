"""`voxtune tune`: one entry for experiment, data, hybrid and auto parallelism on Ray Tune.

A search, from the command to its last write:
    1. the settings are checked (voxtune.parallel.settings) and Ray is started or joined (cluster);
    2. RUN/search.json is written, then Ray Tune runs the trials: each reserves a placement group of
       K bundles {CPU: C, GPU: G}, so its ranks are gang-scheduled on one node or several, and runs
       voxtune.parallel.trial.run_trial, which moves its own RUN/trials/<id>/trial.json;
    3. the driver settles what no trial could write (voxtune.parallel.state), then writes
       leaderboard.csv, best.json (the best trial's test-split score) and summary.json.
Ctrl-C and SIGTERM interrupt the driver: the leaderboard so far is written, the trials still running
are marked interrupted, and `--resume` continues them from their checkpoints.
"""
from __future__ import annotations

import json
import os
import sys
import time
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any

from voxtune.config import make_config
from voxtune.data.cache import read_manifest
from voxtune.errors import VoxtuneError
from voxtune.files import read_json, write_json
from voxtune.layout import RunDir, TrialDir
from voxtune.parallel import outputs, state
from voxtune.parallel.cluster import init_ray, interrupt_on_stop
from voxtune.parallel.settings import SearchSettings, pool_name
from voxtune.parallel.space import count_trials, to_tune
from voxtune.parallel.staging import stage_nodes, staged_paths, unstage_nodes
from voxtune.provenance import code_version, git_commit


def _search_settings(run_dir: Path, settings: SearchSettings | None, resume: bool) -> SearchSettings:
    """The settings to run: those saved in RUN with --resume, else the given ones for a RUN without a search."""
    saved = RunDir(run_dir).search
    if resume:
        if not saved.exists():
            raise VoxtuneError(f"{run_dir}: no search to resume (search.json missing); start one without --resume")
        try:
            data = json.loads(saved.read_text())
            if "ddp_recipe" not in data:  # saved before the recipe was a setting: each rank took the full batch
                data["ddp_recipe"] = "per-rank" if SearchSettings(**data).per_trial() > 1 else None
            return SearchSettings(**data).checked()
        except (ValueError, TypeError) as exc:
            raise VoxtuneError(f"{saved}: unreadable search settings ({exc}); start a new search in another --out") from None
    if saved.exists() or RunDir(run_dir).trials_dir.exists():
        raise VoxtuneError(f"{run_dir} already holds a search; continue it with --resume or choose another --out")
    assert settings is not None
    return settings


def saved_settings(run_dir: str | Path) -> SearchSettings:
    """The settings a search in RUN was started with (its search.json), checked."""
    return _search_settings(Path(run_dir), None, resume=True)


def _folders_by_config(run_dir: Path, searched: list[str]) -> dict[str, str]:
    """{searched values: folder} of the trials already in RUN: a search resumed without Tune's own state
    (killed before Tune first saved it) gives its trials new ids, and they continue in these folders."""
    from voxtune.parallel.trial import config_key

    found = {}
    for trial_dir in RunDir(run_dir).trials():
        info = state.read(trial_dir.path)
        if info.get("config") is not None:
            found[config_key(info["config"], searched)] = trial_dir.name
    return found


def _tuner(settings: SearchSettings, run_dir: Path, resume: bool, staged: dict[str, str]):
    """Ray Tune's Tuner for the search (restored from RUN/ray when resuming), and the trial folders it continues (see TrialPlan.folders).
    Each call is one run of the search, with an id of its own: a trial's error is final within it
    (voxtune.parallel.trial.TrialFailed), and a --resume tries the trial again."""
    from ray import tune
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from voxtune.parallel.progress import ProgressLines
    from voxtune.parallel.trial import FinalErrors, run_trial

    space = settings.trial_space()
    tune_state = RunDir(run_dir).tune_state
    restore = resume and tune.Tuner.can_restore(str(tune_state))
    folders = _folders_by_config(run_dir, list(space)) if resume and not restore else {}
    bundle = {"CPU": settings.cpus_per_worker} | ({"GPU": settings.gpus_per_worker} if settings.gpus_per_worker else {})
    plan = settings.plan(run_dir, folders, search_id=uuid.uuid4().hex, staged=staged)
    trainable = tune.with_resources(tune.with_parameters(run_trial, plan=plan),
                                    tune.PlacementGroupFactory([bundle] * settings.per_trial()))
    if restore:
        return tune.Tuner.restore(str(tune_state), trainable, resume_unfinished=True, resume_errored=True), folders

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
    total = count_trials(settings.space, settings.search, settings.num_samples)
    progress = ProgressLines(total, epochs, list(space))
    callbacks = [progress, FinalErrors(plan), CSVLoggerCallback(), JsonLoggerCallback()]
    if settings.mode == "auto":
        from voxtune.parallel.trial import Feed

        callbacks.append(Feed(pool_name(run_dir), total))
    return tune.Tuner(
        trainable,
        param_space=to_tune(space, settings.search),
        tune_config=tune.TuneConfig(metric="val_dice", mode="max", search_alg=search_alg, scheduler=scheduler,
                                    num_samples=settings.tune_samples,
                                    max_concurrent_trials=settings.concurrent_trials,
                                    # Reuse keeps DDP groups alive across trials, ASHA's stopped
                                    # ones included (run_trial ends their thread as Tune expects).
                                    reuse_actors=True,
                                    trial_dirname_creator=lambda trial: trial.trial_id),
        run_config=tune.RunConfig(name=tune_state.name, storage_path=str(tune_state.parent),
                                  failure_config=tune.FailureConfig(max_failures=settings.max_failures),
                                  callbacks=callbacks, verbose=0),
    ), folders


def _start_pool(settings: SearchSettings, run_dir: Path):
    """--mode auto: the search's Pool (voxtune.parallel.auto), told every batch_size the space can give."""
    from voxtune.data.cache import case_ids
    from voxtune.parallel.auto import start_pool

    searched = settings.space.get("batch_size")
    if isinstance(searched, dict):
        kind, arg = next(iter(searched.items()))
        batches = list(range(arg[0], arg[1])) if kind == "randint" else list(arg)
    else:
        batches = [make_config(settings.base_config).batch_size]
    train_cases = len(case_ids(read_manifest(settings.cache_dir), "train"))
    return start_pool(pool_name(run_dir), settings.workers, [int(b) for b in batches], train_cases,
                      settings.auto_regroup_s, settings.min_part())


def run_search(run_dir: str | Path, settings: SearchSettings | None = None, *, address: str | None = None,
               resume: bool = False) -> dict[str, Any]:
    """Run (or resume) a search; write leaderboard.csv, best.json, summary.json under run_dir."""
    t_command = time.perf_counter()
    run_dir = Path(run_dir).resolve()
    if settings is not None:
        settings = settings.checked()
        read_manifest(settings.cache_dir)  # a missing cache fails before RUN is created
    settings = _search_settings(run_dir, settings, resume)
    if resume:
        read_manifest(settings.cache_dir)  # the saved cache may have gone since
    if note := settings.batch_one_note():
        print(note, file=sys.stderr, flush=True)

    import ray

    # Save Tune's experiment state every few seconds (default: >= 10 s) so a killed driver
    # loses little; our own per-trial files already make finished trials safe.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")
    # Ctrl-C must not reach trials as a graceful stop (they would record an early stop and a
    # resume would skip them): let it interrupt the driver, as a kill would, and resume instead.
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    # ProgressLines print the progress; Ray's own reporter (the one RAY_AIR_NEW_OUTPUT=0 selects)
    # prints nothing at verbose=0.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Tune's default loggers include a TensorBoardX one, whose import pulls torch into the driver
    # (~3 s between Ray up and the first trial). Trials write their own TensorBoard events
    # (RUN/trials/<id>/tb); Tune keeps its CSV and JSON results, passed in explicitly below.
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
    ray_init_s, cluster = init_ray(address, settings.workers * settings.cpus_per_worker,
                                   settings.workers * settings.gpus_per_worker)
    t_search = time.time()  # the search starts with Ray up: the driver's own set-up counts
    if not resume:  # written once Ray is up: a cluster that cannot be joined leaves no half-made RUN
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json(RunDir(run_dir).search, asdict(settings))
    try:
        from voxtune.parallel.trial import quiet_final_errors

        quiet_final_errors()
        staging = (stage_nodes(settings.cache_dir, settings.stage, quick=settings.stage_verified)
                   if settings.stage else {})  # before any trial
        pool = _start_pool(settings, run_dir) if settings.mode == "auto" else None  # noqa: F841  (held: a named actor lives while a handle does)
        tuner, folders = _tuner(settings, run_dir, resume, staged_paths(staging))

        def write_outputs(results, interrupted: bool) -> dict[str, Any]:
            return _write_outputs(run_dir, settings, results, folders, interrupted, t_search, t_command, ray_init_s,
                                  cluster, staging)

        def save() -> str:  # on a stop signal, before anything asks Ray, which may be stopping too
            write_outputs([], True)
            return resume_hint(run_dir)

        with interrupt_on_stop(save):
            try:
                results = tuner.fit()
                interrupted = False
            except KeyboardInterrupt:
                results, interrupted = [], True
            summary = write_outputs(results, interrupted)
            if staging and not settings.keep_stage and not interrupted:  # an interrupted search's resume reuses them
                unstage_nodes(settings.cache_dir, settings.stage)
            ray.shutdown()  # within the grace period of a stop
        return summary
    finally:
        ray.shutdown()


def resume_hint(run_dir: str | Path) -> str:
    """What an interrupted search tells the user."""
    return (f"search interrupted; leaderboard so far in {RunDir(run_dir).leaderboard}\n"
            f"resume it with: voxtune tune --out {run_dir} --resume")


def settle_orphaned(run_dir: str | Path, command_time_s: float) -> dict[str, Any] | None:
    """After a driver that died without writing its outputs (Ray stopped under it: a plain scancel signals
    Ray and the driver at once), do it for it, without Ray: its running trials are interrupted, and the
    leaderboard and summary say so. Returns that summary with its rows, or None when RUN holds no search
    or no trial still says running (the driver wrote its outputs, or never started a trial)."""
    run_dir = Path(run_dir).resolve()
    run = RunDir(run_dir)
    if not run.search.exists() or not any(state.read(t.path).get("status") == "running" for t in run.trials()):
        return None
    settings = _search_settings(run_dir, None, resume=True)
    # What only the dead driver knew (when its search started, its Ray's resources) is not recorded.
    return _write_outputs(run_dir, settings, [], {}, True, None, time.perf_counter() - command_time_s, None, {})


def _write_outputs(run_dir: Path, settings: SearchSettings, results, folders: dict[str, str], interrupted: bool,
            t_search: float | None, t_command: float, ray_init_s: float | None,
            cluster: dict[str, float], staging: dict[str, dict] | None = None) -> dict[str, Any]:
    """Settle the trials, then write leaderboard.csv, best.json (not when interrupted) and summary.json;
    returns the summary with the leaderboard's rows. Asks Ray nothing but the best trial's test score.
    t_search None: the search's start is unknown (settle_orphaned), and so are the spans measured from it."""
    searched = list(settings.trial_space())
    _settle_trials(run_dir, settings, results, folders, interrupted)
    rows = outputs.trial_rows(run_dir, searched)
    outputs.write_leaderboard(RunDir(run_dir).leaderboard, rows)
    finished = [r for r in rows if r["status"] in state.FINAL and r["val_dice"] != ""]
    best = _write_best(run_dir, settings, finished[0]) if finished and not interrupted else None
    ends = [r["end_ts"] for r in rows if r["end_ts"] != ""]
    first_epoch = outputs.first_epoch_start(run_dir, rows, since=t_search) if t_search is not None else None
    summary = {
        "mode": settings.mode, "workers": settings.workers, "workers_per_trial": settings.per_trial(),
        "ddp_recipe": settings.ddp_recipe,
        "concurrent_trials": settings.concurrent_trials, "cpus_per_worker": settings.cpus_per_worker,
        "gpus_per_worker": settings.gpus_per_worker, "search": settings.search,
        "scheduler": settings.scheduler, "searched": searched, "epochs": settings.epochs,
        "folds": make_config(settings.base_config).folds, "trials": len(rows),
        "status": outputs.status_counts(rows), "interrupted": interrupted,
        # The timing fields, as docs/tuning.md#timing-fields defines them (every span in seconds):
        "ray_init_s": ray_init_s,
        "search_start_ts": t_search,
        "startup_s": first_epoch - t_search if first_epoch is not None else None,
        "startup_breakdown": outputs.startup_breakdown(run_dir, rows, t_search) if t_search is not None else None,
        "wall_time_s": (max(ends) - t_search) if ends and t_search is not None else None,
        "command_time_s": time.perf_counter() - t_command,
        "nodes": len({n for r in rows for n in r["nodes"].split(";") if n}),
        "best_trial": best["trial_id"] if best else None,
        "grown_trials": sum(isinstance(r["workers"], str) and "@" in r["workers"] for r in rows),
        "cluster": cluster, "staging": staging or {}, "code_version": code_version(), "git_commit": git_commit(),
    }
    write_json(RunDir(run_dir).summary, summary)
    summary["rows"] = rows
    return summary


def _settle_trials(run_dir: Path, settings: SearchSettings, results, folders: dict[str, str], interrupted: bool) -> None:
    """Write, through voxtune.parallel.state, what no trial could write itself. `results`: Tune's
    ResultGrid (empty when interrupted). Each trial Tune ended gets Tune's verdict if its trial.json
    still says running; every other trial still running was interrupted, or lost with a search
    killed before Tune first saved it (its config was not run again)."""
    from voxtune.parallel.trial import trial_folder

    plan = settings.plan(run_dir, folders, search_id="")
    ended = set()
    for result in results:
        folder = trial_folder(plan, Path(result.path).name, result.config)
        ended.add(folder.name)
        info = state.read(folder)
        if result.error is not None:  # the worker died on every attempt, or the trial never started
            if info.get("status") in (None, "running"):  # else the trial wrote its own, better reason
                reason = state.reason_of(result.error)
                fields = {} if info else {"trial_id": folder.name, "config": dict(result.config)}
                state.end(folder, "error", reason=reason if info else f"never started: {reason}", **fields)
        elif info.get("status") == "running":
            # Tune ended it (its scheduler's stop, or the last epoch) and tore its actor down before the
            # trial's own last write: Tune's verdict stands.
            records = read_json(TrialDir(folder).metrics, [])
            epochs = make_config(result.config, base=plan.config).epochs
            done = bool(records) and records[-1]["epoch"] >= epochs
            state.end(folder, "finished" if done else "stopped", **outputs.training_totals(records),
                      end_ts=TrialDir(folder).metrics.stat().st_mtime if records else time.time())
    for trial_dir in RunDir(run_dir).trials():
        if trial_dir.name not in ended and state.read(trial_dir.path).get("status") == "running":
            if interrupted:
                state.end(trial_dir.path, "interrupted")
            else:
                state.end(trial_dir.path, "error", reason="lost: the search was killed before Ray Tune first saved "
                                                     "it, and this config was not run again")


def _evaluate(checkpoints: list[str], cache_dir: str, split: str, threads: int) -> dict[str, Any]:
    """voxtune.train.evaluate.evaluate_models, imported in the Ray worker: the driver never loads torch or MONAI."""
    from voxtune.train.evaluate import evaluate_models

    return evaluate_models(checkpoints, cache_dir, split, threads)


def _write_best(run_dir: Path, settings: SearchSettings, row: dict[str, Any]) -> dict[str, Any]:
    """best.json: the best trial's config, its validation metrics, and test metrics of its best checkpoint;
    of a cross-validated trial, each fold model's and their ensemble's (test: the ensemble's; checkpoint:
    the fold model best on its validation fold; checkpoints: every fold's, which predict ensembles)."""
    import ray

    trial_dir = RunDir(run_dir).trial(row["trial_id"])
    info = state.read(trial_dir.path)
    config = make_config(info["config"], base=make_config(settings.base_config))
    folds = [trial_dir.fold(i) for i in range(config.folds)] if config.folds > 1 and config.fold is None else []
    checkpoints = [d.best_checkpoint for d in folds] or [trial_dir.best_checkpoint]
    resources = {"num_cpus": settings.cpus_per_worker, "num_gpus": settings.gpus_per_worker}
    threads = max(1, int(settings.cpus_per_worker))
    try:
        test = ray.get(ray.remote(**resources)(_evaluate).remote([str(c) for c in checkpoints], settings.cache_dir,
                                                                  "test", threads))
    except ray.exceptions.RayTaskError as exc:
        if isinstance(exc.cause, VoxtuneError):
            raise exc.cause from None
        raise
    rel = [str(c.relative_to(run_dir)) for c in checkpoints]
    best = {"trial_id": row["trial_id"], "config": config.to_dict(),
            "searched": info["config"], "ddp_recipe": settings.ddp_recipe, "workers_per_trial": settings.per_trial(),
            "checkpoint": rel[0],
            "validation": {k: v for k, v in row.items() if k.startswith("val_dice")} | {"best_epoch": row["best_epoch"]},
            "test": test["models"][0]}
    if folds:
        last = (read_json(trial_dir.metrics, []) or [{}])[-1]
        dice, epochs = last.get("fold_best_dice", [None] * len(folds)), last.get("fold_best_epoch", [None] * len(folds))
        best |= {"checkpoint": rel[max(range(len(folds)), key=lambda i: dice[i] or -1.0)], "checkpoints": rel,
                 "folds": [{"fold": i, "checkpoint": rel[i], "val_dice": dice[i], "best_epoch": epochs[i],
                            "test": test["models"][i]} for i in range(len(folds))],
                 "test": test["ensemble"]}
    write_json(RunDir(run_dir).best, best)
    return best
