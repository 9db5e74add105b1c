"""The Ray Tune trainable shared by every mode: one trial = one `fit` over a WorkerGroup.

Experiment mode gives each trial one worker, data mode gives one trial all workers, hybrid is in
between; this function cannot tell which, it only sees how many bundles its trial holds.
Writes RUN/trials/<trial_id>/trial.json beside what `fit` writes there.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import ray
from ray import tune

from voxtune.config import make_config
from voxtune.errors import VoxtuneError
from voxtune.files import read_json, write_json
from voxtune.parallel import outputs
from voxtune.parallel.ddp import WorkerGroup

# Kept across trials of a reused Tune actor: the DDP group's start-up is paid once. (ddp imports
# torch and MONAI only when a group starts, so the driver, which imports this module, never does.)
_GROUP: WorkerGroup | None = None


def run_trial(config: dict[str, Any], settings: dict[str, Any]) -> None:
    """Train one trial. `settings`: run_dir, cache_dir, base_config, workers_per_trial, cpus, gpus."""
    global _GROUP
    t_start = time.time()
    trial_id = tune.get_context().get_trial_id()
    out = Path(settings["run_dir"]) / "trials" / trial_id
    out.mkdir(parents=True, exist_ok=True)
    cfg = make_config(config, base=make_config(settings["base_config"]))

    info = read_json(out / "trial.json", {})
    if info.get("status") in ("finished", "stopped"):
        # Done before the driver died and Tune's state lagged behind: report, never retrain.
        records = read_json(out / "metrics.json", []) or [{}]
        tune.report(records[-1])
        return
    info.update({"trial_id": trial_id, "config": dict(config), "status": "running", "reason": "",
                 "node": ray.get_runtime_context().get_node_id(), "workers": settings["workers_per_trial"],
                 "attempts": info.get("attempts", 0) + 1, "attempt_start_ts": t_start})
    info.setdefault("start_ts", t_start)
    write_json(out / "trial.json", info)  # before anything can fail, so the leaderboard lists it

    reported: list[int] = []  # epochs reported in this attempt
    stopped_by_tune = False

    def stopped() -> dict[str, Any]:
        return {"status": "stopped", **outputs.trained(read_json(out / "metrics.json", []))}

    def report(record: dict[str, Any]) -> bool:
        nonlocal stopped_by_tune
        reported.append(record["epoch"])
        try:
            tune.report(record)
        except SystemExit:  # Tune's scheduler stopped this trial: let every rank leave cleanly
            stopped_by_tune = True
            # Said at once: with no next trial, Tune may kill this actor before the ranks have left.
            write_json(out / "trial.json", {**info, **stopped(), "end_ts": time.time()})
            return True
        return False

    try:
        if _GROUP is None:
            _GROUP = WorkerGroup(settings["workers_per_trial"], settings["cpus"], settings["gpus"])
        info.update({"node_ip": _GROUP.nodes[0], "nodes": _GROUP.nodes, "group_id": _GROUP.group_id,
                     "pids": _GROUP.pids, "setup_s": time.time() - t_start})
        write_json(out / "trial.json", info)
        summary = _GROUP.fit(cfg, settings["cache_dir"], out, report)
        if not reported and summary["metrics"]:
            # Killed after its last epoch's checkpoint but before trial.json said so: the resumed
            # run trains nothing, yet Tune must still receive the trial's metric.
            tune.report(summary["metrics"][-1])
        info.update(status="stopped" if summary["stopped_early"] else "finished",
                    train_time_s=summary["train_time_s"], epochs=summary["epochs"])
    except VoxtuneError as exc:
        # A diverged trial or a bad input (a cache file failing its checksum) is not fixed by a
        # retry: record why, leave the group to the next trial, and let the search go on.
        _GROUP = None
        info.update(status="error", reason=str(exc))
    except BaseException as exc:
        _GROUP = None
        if not stopped_by_tune:
            info.update(status="error", reason=f"{type(exc).__name__}: {exc}".splitlines()[0][:300])
            info["end_ts"] = time.time()
            write_json(out / "trial.json", info)
            raise
        # Tune stopped this trial and, with no trial to hand the actor to, is tearing it down: a DDP
        # peer killed with the placement group fails the last collective or ray.get. The trial
        # ended as the scheduler decided, not in error.
        info.update(stopped())
    info["end_ts"] = time.time()
    write_json(out / "trial.json", info)
    if stopped_by_tune:
        # End the trial's thread the way Tune asked (SystemExit 0), not by returning: a return makes
        # Tune's function runner report once more and block, so a reused actor could not be reset
        # for the next trial ("Could not re-use actor").
        raise SystemExit(0)
