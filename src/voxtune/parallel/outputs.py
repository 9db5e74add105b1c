"""Search outputs, identical in every mode: leaderboard.csv, best.json, summary.json.

Built from the files each trial leaves in RUN/trials/<trial_id>/ (trial.json, metrics.json), so a
resumed or interrupted search writes the same tables as an uninterrupted one.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from voxtune.files import atomic_write, read_json
from voxtune.layout import RunDir
from voxtune.parallel import state
from voxtune.formatting import short


def training_totals(records: list[dict[str, Any]]) -> dict[str, Any]:
    """What a trial's metrics.json records say it trained: {"epochs", "train_time_s"}."""
    return {"epochs": len(records), "train_time_s": sum(r["epoch_time_s"] for r in records)}


def worker_history(records: list[dict[str, Any]], default: Any = "") -> Any:
    """The workers that trained a trial: their number when it never changed (as in every fixed mode),
    else where each K began, e.g. "1@e1 2@e7" (--mode auto: 1 worker from epoch 1, 2 from epoch 7)."""
    changes = [(r["epoch"], r.get("workers", 1)) for i, r in enumerate(records)
               if i == 0 or r.get("workers", 1) != records[i - 1].get("workers", 1)]
    if len(changes) <= 1:
        return changes[0][1] if changes else default
    return " ".join(f"{k}@e{epoch}" for epoch, k in changes)


def best_validation(records: list[dict[str, Any]]) -> dict[str, Any]:
    """A trial's leaderboard scores: its best epoch's val_dice (and val_dice_<region>); for a
    cross-validated trial (voxtune.train.crossval) the mean of its folds' best val Dice, their spread
    (val_dice_std) and each fold's value and best epoch (";"-separated, fold 0 first)."""
    last = records[-1] if records else {}
    if "cv_dice" not in last:
        best = max(records, key=lambda r: r["val_dice"], default={})
        return {"best_epoch": best.get("epoch", ""), "val_dice": best.get("val_dice", ""),
                **{k: v for k, v in best.items() if k.startswith("val_dice_")}}
    regions = {"val_dice_" + k[len("cv_dice_"):]: v for k, v in last.items()
               if k.startswith("cv_dice_") and k != "cv_dice_std"}
    return {"best_epoch": ";".join(str(e) for e in last["fold_best_epoch"]), "val_dice": last["cv_dice"],
            **regions, "val_dice_std": last["cv_dice_std"],
            "val_dice_folds": ";".join(f"{d:.4f}" for d in last["fold_best_dice"])}


def first_epoch_start(run_dir: Path, rows: list[dict[str, Any]], since: float) -> float | None:
    """When the first epoch that ended after `since` (a search's start) began, over every trial: the end
    of a search's start-up (workers, imports, DDP groups, model build), or None when none trained."""
    starts = [r["end_ts"] - r["epoch_time_s"] for row in rows
              for r in read_json(RunDir(run_dir).trial(row["trial_id"]).metrics, [])
              if r.get("end_ts", 0) >= since]
    return min(starts, default=None)


def startup_breakdown(run_dir: Path, rows: list[dict[str, Any]], since: float) -> dict[str, float] | None:
    """Where a search's start-up went (`since`, Ray up, to the first epoch of any trial), from that
    trial's files: tune_s until its trial function started (Tune, Ray's worker process, the trainable's
    module), imports_s (torch, MONAI and torch._dynamo in that process), build_s (model, data and checkpoint:
    voxtune.train.loop's Training), other_s the rest (a DDP group's rendezvous, trial.json writes)."""
    first = None
    for row in rows:
        for r in read_json(RunDir(run_dir).trial(row["trial_id"]).metrics, []):
            start = r["end_ts"] - r["epoch_time_s"]
            if r.get("end_ts", 0) >= since and (first is None or start < first[0]):
                first = (start, r, row)
    if first is None:
        return None
    start, record, row = first
    info = state.read(RunDir(run_dir).trial(row["trial_id"]).path)
    parts = {"tune_s": max(0.0, float(info.get("attempt_start_ts") or start) - since),
             "imports_s": float(info.get("imports_s") or 0.0), "build_s": float(record.get("build_s") or 0.0)}
    return {"startup_s": start - since, **parts, "other_s": start - since - sum(parts.values())}


def trial_rows(run_dir: Path, searched: list[str]) -> list[dict[str, Any]]:
    """One row per trial folder, as its trial.json and metrics.json say, with its best validation
    epoch's metrics; sorted by val_dice (best first)."""
    rows = []
    for trial_dir in RunDir(run_dir).trials():
        info = state.read(trial_dir.path)
        if not info:
            continue
        records = read_json(trial_dir.metrics, [])
        done = training_totals(records)
        row = {"trial_id": info.get("trial_id", trial_dir.name), **{k: info["config"].get(k) for k in searched},
               "status": info.get("status", "unknown"), "epochs": done["epochs"], **best_validation(records)}
        row.update({"train_time_s": round(done["train_time_s"], 3),
                    "node": info.get("node", ""),  # rank 0's; nodes: every rank's
                    "nodes": ";".join(dict.fromkeys(info.get("nodes") or [info.get("node", "")])),
                    "node_ip": info.get("node_ip", ""),
                    "workers": worker_history(records, info.get("workers", "")), "setup_s": round(info.get("setup_s", 0.0), 3),
                    "start_ts": info.get("start_ts", ""), "attempt_start_ts": info.get("attempt_start_ts", ""),
                    "end_ts": info.get("end_ts", ""), "reason": info.get("reason", "")})
        rows.append(row)
    rows.sort(key=lambda r: (r["val_dice"] if r["val_dice"] != "" else -1.0), reverse=True)
    return rows


def write_leaderboard(path: Path, rows: list[dict[str, Any]]) -> None:
    fields: list[str] = []
    for row in rows:
        fields += [k for k in row if k not in fields]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields or ["trial_id"], restval="")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(path, lambda f: f.write(buf.getvalue().encode()))


def status_counts(rows: list[dict[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    return counts


def format_leaderboard(rows: list[dict[str, Any]], searched: list[str], limit: int = 10) -> str:
    """A terminal table of the top trials."""
    folds = any(r.get("val_dice_std", "") != "" for r in rows)  # a cross-validated search: the folds' spread
    cols = ["trial_id", *searched, "status", "epochs", "val_dice", *(["val_dice_std"] if folds else []),
            "train_time_s", "workers"]
    table = [[short(r.get(c, "")) for c in cols] for r in rows[:limit]]
    widths = [max(len(c), *(len(t[i]) for t in table)) if table else len(c) for i, c in enumerate(cols)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths))  # noqa: E731
    return "\n".join([line(cols), *(line(t) for t in table)])


def search_lines(summary: dict[str, Any], out: str | Path) -> list[str]:
    """What `voxtune tune` prints under the leaderboard: the trials' ends, the start-up, the outputs."""
    run = RunDir(out)
    counts = ", ".join(f"{n} {'failed' if status == 'error' else status}" for status, n in summary["status"].items())
    lines = [f"{summary['trials']} trials: {counts} in {summary['wall_time_s'] or 0:.1f}s "
             + (f"(auto: {summary['workers']} workers, {summary['grown_trials']} trial(s) grew)"
                if summary["mode"] == "auto"
                else f"({summary['mode']}: {summary['workers']} workers, {summary['workers_per_trial']} per trial)")
             + (f"; why each failed: {run.leaderboard}" if summary["status"].get("error") else "")]
    if summary.get("startup_breakdown"):
        b = summary["startup_breakdown"]
        lines.append(f"start-up {b['startup_s']:.1f}s from Ray up to the first epoch: Tune and the trial's process "
                     f"{b['tune_s']:.1f}s, imports (torch, MONAI, torch._dynamo) {b['imports_s']:.1f}s, model, data and "
                     f"checkpoint {b['build_s']:.1f}s, the rest {b['other_s']:.1f}s")
    lines.append(f"outputs: {run.leaderboard}  {run.best.name}  {run.summary.name}  {run.trials_dir.name}/<trial_id>/")
    return lines
