"""The Ray Tune trainable shared by every mode: one trial = one `fit` over a WorkerGroup.

Experiment mode gives each trial one worker, data mode gives one trial all workers, hybrid is in
between; this function cannot tell which, it only sees how many bundles its trial holds. It moves
its own trial.json through voxtune.parallel.state: running when an attempt starts, stopped the
moment Tune's scheduler stops it, finished or error when it ends.

How an attempt ends, and what Tune then does:
    - trained all epochs, or stopped by the scheduler: finished / stopped;
    - a VoxtuneError on any rank, at any epoch (a damaged cache file, a full disk, a diverged loss, out
      of memory): error with that rank's reason, final for this search (see TrialFailed);
    - anything else (a rank's process or node died): error, and the exception goes to Tune, which
      retries the trial from its last epoch checkpoint.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import ray
from ray import tune
from ray.tune import Callback

from voxtune.config import make_config
from voxtune.errors import VoxtuneError
from voxtune.files import DiskFull, read_json
from voxtune.layout import RunDir, TrialDir
from voxtune.machine import process_started
from voxtune.parallel import modes, outputs, state
from voxtune.parallel.ddp import WorkerGroup
from voxtune.parallel.settings import TrialPlan


class TrialFailed(VoxtuneError):
    """A trial's own error, final for this run of the search: raised to Tune so that Tune records the
    trial as failed (the searcher, Optuna included, marks it failed; ASHA drops it from its brackets)
    without a made-up metric. (A trial that returned without a report would be 'done' instead, and
    Tune's strict metric check fails the whole search on such a trial's empty last result.)

    Tune retries every error alike (FailureConfig has no rule per exception). So the driver's
    FinalErrors spends the trial's remaining retries when Tune requeues it, and that one last start
    finds trial.json holding a final error of this search and raises it again at once, training
    nothing. A later `--resume` (another search_id) does train it again: the user may have fixed the
    cause."""


class FinalErrors(Callback):
    """In the driver: a trial requeued after a final error (see TrialFailed) gets no further retries."""

    def __init__(self, plan: TrialPlan):
        self.plan = plan

    def on_trial_recover(self, iteration, trials, trial, **info):
        found = state.read(trial_folder(self.plan, trial.trial_id, trial.config))
        if found.get("status") == "error" and found.get("final_in"):  # (a new attempt clears final_in)
            trial.max_failures = 0


class Feed(Callback):
    """In the driver: tells the Pool how many trials wait for a worker (created and pending, or not yet
    created by the search algorithm), and that a trial ended whatever way it ended. Holds the Pool's
    name, not its handle: Tune pickles its callbacks with the search, and a resumed search has a new Pool."""

    def __init__(self, pool_name: str, total: int):
        self.pool_name, self.total = pool_name, total
        self._pool, self.sent = None, None

    def __getstate__(self):
        return {"pool_name": self.pool_name, "total": self.total}

    def __setstate__(self, saved):
        self.__init__(saved["pool_name"], saved["total"])

    @property
    def pool(self):
        if self._pool is None:
            self._pool = ray.get_actor(self.pool_name)
        return self._pool

    def on_step_begin(self, iteration, trials, **info):
        pending = sum(t.status == "PENDING" for t in trials)
        waiting = pending + max(0, self.total - len(trials))
        running = sorted(t.trial_id for t in trials if t.status == "RUNNING")
        if (waiting, running) != self.sent:
            self.sent = (waiting, running)
            self.pool.set_waiting.remote(waiting, running)

    def _ended(self, trial) -> None:
        self.pool.ended.remote(trial.trial_id)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._ended(trial)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._ended(trial)

    def on_trial_recover(self, iteration, trials, trial, **info):
        self._ended(trial)


class _QuietFinalErrors(logging.Filter):
    """Drops Tune's traceback of a trial that ended with its own one-line error (trial.json and the
    leaderboard hold the line; Tune's RUN/ray/<trial>/error.txt and Ray's worker logs keep the whole
    traceback), and Tune's "Trials did not complete" (the command's summary counts the failed trials).
    Any other trial failure, a worker's death say, keeps its traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.getMessage().startswith("Trials did not complete"):
            return False
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(getattr(exc, "cause", exc), TrialFailed)


def quiet_final_errors() -> None:
    """Install _QuietFinalErrors on Tune's loggers (in the driver, once per process)."""
    for name in ("ray.tune.execution.tune_controller", "ray.tune.tune"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _QuietFinalErrors) for f in logger.filters):
            logger.addFilter(_QuietFinalErrors())


# Kept across trials of a reused Tune actor: the DDP group's start-up is paid once. (ddp imports
# torch and MONAI only when a group starts, so the driver, which imports this module, never does.)
_GROUP: WorkerGroup | None = None


_FRESH = [True]  # this process has not started a trial yet


def _startup_since(t_start: float) -> float:
    """Where this attempt's start-up began, as auto's Pool counts it (what a regroup's new rank pays too):
    in a process's first trial, the process's own start (its Python, Ray and Tune before any trial code
    runs; measured from the trial's start alone, a regroup looked ~2 s cheaper than it was); in a reused
    one, the trial's start."""
    fresh, _FRESH[0] = _FRESH[0], False
    started = process_started() if fresh else None
    return min(t_start, started) if started is not None else t_start


def config_key(config: dict[str, Any], searched: list[str]) -> str:
    """What identifies a trial across Tune's trial ids: its searched values."""
    return json.dumps({k: config.get(k) for k in searched}, sort_keys=True, default=str)


def trial_folder(plan: TrialPlan, trial_id: str, config: dict[str, Any]) -> Path:
    """RUN/trials/<trial_id>, or the folder of an earlier attempt at the same config when the search is
    resumed without Tune's own state (it was killed before Tune first saved it; Tune gave new ids)."""
    found = plan.folders.get(config_key(config, list(plan.searched)))
    return RunDir(plan.run_dir).trial(found or trial_id).path


def run_trial(config: dict[str, Any], plan: TrialPlan) -> None:
    """Train one trial: `config` (its searched values) over plan.config, on plan.workers_per_trial ranks."""
    global _GROUP
    t_start = time.time()
    state.quiet_exit_in_finalisers()
    tune_id = tune.get_context().get_trial_id()
    out = trial_folder(plan, tune_id, config)
    out.mkdir(parents=True, exist_ok=True)
    cfg = make_config(config, base=plan.config)

    if _nothing_to_train(out, plan):
        return
    state.start_attempt(out, out.name, config, tune_trial_id=tune_id, workers=plan.workers_per_trial,
                        node=ray.get_runtime_context().get_node_id())
    pool = _join_pool(plan, tune_id, cfg.batch_size)

    reported: list[int] = []  # epochs reported in this attempt
    stopped_by_tune = False
    regroup, regrouped = asked = ([], [(_startup_since(t_start), "start")])  # auto: [K asked], [(since when, what)]

    def report(record: dict[str, Any]) -> bool:
        nonlocal stopped_by_tune
        if not reported:  # the attempt's first epoch: what its start-up went into
            state.write(out, imports_s=getattr(_GROUP, "imports_s", None), build_s=record.get("build_s"))
        reported.append(record["epoch"])
        try:
            tune.report(record)
        except SystemExit:  # Tune's scheduler stopped this trial: let every rank leave cleanly
            stopped_by_tune = True
            # Written at once: with no next trial, Tune may kill this actor before the ranks have left.
            # (ASHA also stops a trial at its last epoch, max_t: that one finished.)
            state.end(out, "finished" if record["epoch"] >= cfg.epochs else "stopped",
                      **outputs.training_totals(read_json(TrialDir(out).metrics, [])))
            return True
        if pool is not None:
            regroup.extend(_regroup(pool, tune_id, record, cfg, regrouped, out))
        return bool(regroup)  # True: every rank stops after this epoch; the trial continues on the new K

    try:
        if _GROUP is None:
            _GROUP = WorkerGroup(plan.workers_per_trial, plan.cpus, plan.gpus)
        state.write(out, node_ip=_GROUP.nodes[0], nodes=_GROUP.node_ids, node_ips=_GROUP.nodes,
                    group_id=_GROUP.group_id, pids=_GROUP.pids, setup_s=time.time() - t_start)
        summary = (_GROUP.fit(cfg, plan.cache_dir, out, report, plan.staged) if pool is None
                   else _fit_growing(_GROUP, cfg, plan, out, report, asked, pool, tune_id))
    except VoxtuneError as exc:
        # The one place a trial's own error ends it, at whatever epoch: recorded, then raised to Tune.
        _drop_group(pool, tune_id)
        if not stopped_by_tune:
            reason = state.plain(str(exc))
            try:
                state.end(out, "error", reason=reason, final_in=plan.search_id)
            except DiskFull:
                pass  # the run folder's disk is full too: Tune's error carries the line to the driver
            raise TrialFailed(reason) from None
    except BaseException as exc:
        _drop_group(pool, tune_id)
        if not stopped_by_tune:
            state.end(out, "error", reason=f"{type(exc).__name__}: {exc}")
            raise
        # Tune stopped this trial and, with no trial to hand the actor to, is tearing it down: a DDP
        # peer killed with the placement group fails the last collective. The trial stays stopped.
    else:
        if not reported and summary["metrics"]:
            # Killed after its last epoch's checkpoint but before trial.json said so: the resumed
            # run trains nothing, yet Tune must still receive the trial's metric.
            tune.report(summary["metrics"][-1])
        if not stopped_by_tune:
            state.end(out, "stopped" if summary["stopped_early"] else "finished",
                      **outputs.training_totals(summary["metrics"]))
    if pool is not None:
        _give_back(pool, tune_id, out)
    if stopped_by_tune:
        # End the trial's thread the way Tune asked (SystemExit 0), not by returning: a return makes
        # Tune's function runner report once more and block, so a reused actor could not be reset
        # for the next trial ("Could not re-use actor").
        raise SystemExit(0)


def _nothing_to_train(out: Path, plan: TrialPlan) -> bool:
    """True for a trial done before the driver died, Tune's state lagging behind (reported again, never
    retrained); raises TrialFailed for Tune's retry of a final error of this search; else False."""
    info = state.read(out)
    if info.get("status") in state.FINAL:
        tune.report((read_json(TrialDir(out).metrics, []) or [{}])[-1])
        return True
    if info.get("status") == "error" and info.get("final_in") == plan.search_id:
        raise TrialFailed(info["reason"])
    return False


def _join_pool(plan: TrialPlan, tune_id: str, batch_size: int):
    """--mode auto: the search's Pool, told this trial runs (on one worker); None in the other modes."""
    if plan.auto_pool is None:
        return None
    pool = ray.get_actor(plan.auto_pool)
    ray.get(pool.started.remote(tune_id, batch_size))
    return pool


def _regroup(pool, tune_id: str, record: dict[str, Any], cfg, regrouped: list, out: Path) -> list[int]:
    """[the K to train the next epoch on] when the trial stops after this epoch to change it, else [].
    `regrouped`: [(when, "regroup")] from the last epoch end at the old K, [(when, "start")] as the attempt
    starts, emptied once reported: a regroup's critical path (recorded in trial.json's regroups), or what
    it took this process to reach its first epoch, which is what a new rank pays too.

    Growth is warm: the Pool's first answer above this K starts the new ranks (WorkerGroup.warm) and the
    trial trains on at its K; it stops to join them at the first epoch end after they are ready. A lower
    answer meanwhile (a trial waits) cancels them, their workers back within this epoch."""
    since, what = regrouped.pop() if regrouped else (None, None)
    gap = record["end_ts"] - record["epoch_time_s"] - since if since is not None else 0.0
    if what == "regroup":
        regroups = state.read(out).get("regroups", [])
        regroups[-1:] = [{**regroups[-1], "critical_s": round(gap, 3)}] if regroups else []
        state.write(out, regroups=regroups)
    if record["epoch"] >= cfg.epochs:
        return []
    k = ray.get(pool.epoch_end.remote(tune_id, record["workers"], cfg.batch_size, record["val_dice"],
                                      record["epoch_time_s"], cfg.epochs - record["epoch"],
                                      gap if what == "regroup" else 0.0, gap if what == "start" else 0.0))
    warming = getattr(_GROUP, "warming", None)
    if k <= record["workers"] and warming is not None:
        _GROUP.cancel_warm()
        state.write(out, warm_cancelled=[*state.read(out).get("warm_cancelled", []), record["epoch"]])
    if k > record["workers"] and warming is None:
        _GROUP.warm(k)
        return []
    if k < record["workers"] or (k > record["workers"] and warming["to"] == k and _GROUP.warm_ready()):
        regrouped[:] = [(record["end_ts"], "regroup")]
        return [k]
    return []


def _fit_growing(group: WorkerGroup, cfg, plan: TrialPlan, out: Path, report,
                 asked: tuple[list[int], list[tuple[float, str]]], pool, tune_id: str) -> dict[str, Any]:
    """--mode auto: fit on the group's K, regrouping where the Pool asks (the loop stopped after that
    epoch's checkpoint; the next fit continues from it on the new K, the batch split by global-batch):
    a growth joins the ranks warmed up meanwhile, a shrink restarts the group's peers.
    asked: ([the K asked for], [(the last epoch end at the old K, "regroup")]), shared with run_trial's report."""
    regroup, _ = asked
    while True:
        k_cfg = make_config(modes.recipe_config(cfg.to_dict(), group.workers, "global-batch"))
        summary = group.fit(k_cfg, plan.cache_dir, out, report, plan.staged)
        if not regroup:
            return summary
        target = regroup.pop()
        k = group.join_warm() if group.warming is not None and target > group.workers else group.resize(target)
        pool.resized.remote(tune_id, k)
        regroups = [*state.read(out).get("regroups", []),
                    {"after_epoch": summary["epochs"], **getattr(group, "last_resize", {})}]
        state.write(out, workers=k, nodes=group.node_ids, node_ips=group.nodes, pids=group.pids, regroups=regroups)


def _give_back(pool, tune_id: str, out: Path) -> None:
    """A trial of --mode auto ends: its lent workers go back to Ray now (the actor may be reused by the
    next trial, which starts on one worker), and the Pool stops counting it. A warm growth the trial's
    end overtook is cancelled, and trial.json says when it had started."""
    global _GROUP
    pool.ended.remote(tune_id)
    if getattr(_GROUP, "warming", None) is not None:
        state.write(out, warm_unjoined={"to": _GROUP.warming["to"], "started_ts": _GROUP.warming["t0"]})
        _GROUP.cancel_warm()
    if _GROUP is not None and _GROUP.workers > 1:
        try:
            _GROUP.resize(1)
        except Exception:  # noqa: BLE001  (a group that cannot shrink is dropped, and its peers with it)
            _GROUP.close()
            _GROUP = None


def _drop_group(pool, tune_id: str) -> None:
    """After a failure: the group is not reused; lent workers (auto) go back to Ray at once."""
    global _GROUP
    if pool is not None:
        pool.ended.remote(tune_id)
    if getattr(_GROUP, "lent", None) or getattr(_GROUP, "warming", None):  # (only auto lends; a test's stand-in has none)
        try:
            _GROUP.close()
        except Exception:  # noqa: BLE001  (the placement group goes with this actor in any case)
            pass
    _GROUP = None
