"""`voxtune plan`: the makespan of a search in every mode, from a calibrated cost model.

voxtune.bench.model holds the constants (fitted to a bench.json, each naming the run it came from, or
DEFAULTS for the paper's setting, which are not measured); voxtune.bench.simulate plays a queue of
trials out on W workers, K per trial.

Errors: a run that fitted a constant is predicted from itself, so bench.md and `--check` report errors
only for runs that fitted nothing; `voxtune plan --calibration A/bench.json --check B/bench.json`
predicts every run of another bench of the same net, volume and machine (other trials, epochs or
batch: B's rank batches must be among those A timed), one prediction per repeat, in that repeat's
trial order, against the spread of the repeats.
"""
from __future__ import annotations

import json
import statistics
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from voxtune.bench.model import (ASSUMED, DEFAULTS, MakespanModel, calibrate, fitted_runs, rank_batch, run_label,
                                 steps)
from voxtune.bench.record import read_bench
from voxtune.bench.simulate import Asha, Trial, queue_of, schedule
from voxtune.errors import VoxtuneError
from voxtune.parallel.modes import mode_of

PAPER_SPEEDUP = (12, 14)  # Berral et al. 2022: experiment parallelism, 32 trials on 32 GPUs


def predict(m: MakespanModel, workers: int, trials: int, k: int, gpus_per_node: int | None = None,
            queue: list[Trial] | None = None, auto: bool = False, asha: Asha | None = None) -> dict[str, Any]:
    """Predicted makespan of M trials (the calibration's configs in turn, unless `queue` says) on N
    workers, K per trial (auto: from 1, growing under global-batch), and the worker-seconds left idle."""
    if auto:
        m, k = replace(m, global_batch=True), 1
    played = schedule(m, workers, k, queue if queue is not None else queue_of(m, trials), gpus_per_node, asha=asha,
                      auto=auto)
    return {"mode": "auto" if auto else mode_of(workers, k), "workers": workers, "workers_per_trial": k,
            "concurrent_trials": played["concurrent_trials"], "waves": played["waves"], "grown": played["grown"],
            "idle_worker_s": played["idle_worker_s"], "predicted_wall_s": played["wall_s"]}


def splits(workers: int) -> list[int]:
    """Every K dividing N: 1 (experiment), 1 < K < N (hybrid), N (data)."""
    return [k for k in range(1, workers + 1) if workers % k == 0]


def _calibrated(bench: dict[str, Any], path: str | Path) -> MakespanModel:
    """calibrate(bench), its errors naming the --calibration file."""
    try:
        return replace(calibrate(bench), source=f"calibrated from {path}")
    except VoxtuneError as exc:
        raise VoxtuneError(f"--calibration {path}: {exc}") from None


def load_calibration(path: str | Path | None) -> MakespanModel:
    return DEFAULTS if path is None else _calibrated(read_bench(path, "--calibration"), path)


def plan(m: MakespanModel, workers: int, trials: int, gpus_per_node: int | None = None) -> dict[str, Any]:
    """Predictions for every split of N workers and the fastest (ties go to fewer workers per trial)."""
    if workers < 1:
        raise VoxtuneError(f"--workers {workers}: need at least 1")
    if trials < 1:
        raise VoxtuneError(f"--trials {trials}: need at least 1")
    if gpus_per_node is not None and gpus_per_node < 1:
        raise VoxtuneError(f"--gpus-per-node {gpus_per_node}: need at least 1")
    serial = predict(m, 1, trials, 1, gpus_per_node)["predicted_wall_s"]
    preds = [predict(m, workers, trials, k, gpus_per_node) for k in splits(workers)]
    preds += [predict(m, workers, trials, 1, gpus_per_node, auto=True)] if workers > 1 else []
    for p in preds:
        p["predicted_speedup"] = serial / p["predicted_wall_s"]
    best = min(preds, key=lambda p: (round(p["predicted_wall_s"], 6), p["workers_per_trial"]))
    return {"workers": workers, "trials": trials, "gpus_per_node": gpus_per_node, "epochs": m.epochs,
            "calibration": m.source, "predictions": preds, "recommended": best,
            "fitted": m.fitted, "assumed": ASSUMED if m.fitted else {"every constant": m.source, **ASSUMED},
            "model": {k: v for k, v in asdict(m).items() if k not in ("source", "fitted")}}


def sweep_speedups(m: MakespanModel, trials: int, gpus_per_node: int | None = None, top: int = 256) -> list[dict[str, Any]]:
    """Predicted speed-up per mode at 1, 2, 4, ..., `top` workers; hybrid is its best K."""
    serial = predict(m, 1, trials, 1, gpus_per_node)["predicted_wall_s"]
    rows, n = [], 1
    while n <= top:
        hybrid = [predict(m, n, trials, k, gpus_per_node) for k in splits(n) if 1 < k < n]
        best = min(hybrid, key=lambda p: p["predicted_wall_s"]) if hybrid else None
        rows.append({"workers": n,
                     "experiment": serial / predict(m, n, trials, 1, gpus_per_node)["predicted_wall_s"],
                     "data": serial / predict(m, n, trials, n, gpus_per_node)["predicted_wall_s"],
                     "hybrid": serial / best["predicted_wall_s"] if best else None,
                     "auto": serial / predict(m, n, trials, 1, gpus_per_node, auto=True)["predicted_wall_s"],
                     "hybrid_k": best["workers_per_trial"] if best else None})
        n *= 2
    return rows


def _repeat_queue(rep: dict[str, Any]) -> list[Trial] | None:
    """The trials of one bench repeat in the order they started, each with the epochs it trained (ASHA's
    stops as measured, not simulated: they depend on Dice values no cost model knows); None for an
    older bench.json."""
    order = rep.get("trial_order")
    epochs = rep.get("trial_epochs") or [None] * len(order or [])
    return [Trial(c, epochs=e) for c, e in zip(order, epochs)] if order else None


def predict_runs(m: MakespanModel, bench: dict[str, Any]) -> list[dict[str, Any]]:
    """Predict each run of a bench.json with model m at that bench's trials, epochs, cases and batch: one
    prediction per repeat, in its trial order. [{mode, ..., measured (median), measured_min/max, predicted
    (median), error_pct, fitted}]; error_pct is None for a run m was fitted to."""
    used = fitted_runs(m)
    try:
        s = bench["settings"]
        m = replace(m, train_cases=int(s["train_cases"]), val_cases=int(s["val_cases"]),
                    epochs=int(s["epochs"]))
        batch = int(s["batch_size"])
        if batch != m.batch_size:  # the step at the new batch, as the calibration timed it
            m = replace(m, step_s=m.step(batch), batch_size=batch, val_s=m.val_case_s,
                        batch_cost={b: v / m.batch_cost[batch] for b, v in m.batch_cost.items()})
        trials, out, seen = int(s["trials"]), [], set()
        for r in bench["runs"]:
            key = (r["workers"], r["workers_per_trial"], r.get("ddp_recipe"))
            if key in seen:  # W = 1 is one run listed under several modes
                continue
            seen.add(key)
            run_model = replace(m, global_batch=r.get("ddp_recipe") == "global-batch")
            k, auto = r["workers_per_trial"], r["mode"] == "auto" and r["workers"] > 1
            predicted = statistics.median(
                predict(run_model, r["workers"], trials, k, queue=_repeat_queue(rep), auto=auto)["predicted_wall_s"]
                for rep in (r.get("repeats") or [{}]))
            fitted = run_label(r) in used
            out.append({"run": run_label(r), "mode": r["mode"], "ddp_recipe": r.get("ddp_recipe"),
                        "workers": r["workers"], "workers_per_trial": k, "rank_batch": rank_batch(run_model, k),
                        "trials": trials, "epochs": m.epochs, "repeats": len(r.get("repeats") or [r]),
                        "measured": r["wall_s"], "measured_min": r.get("wall_s_min", r["wall_s"]),
                        "measured_max": r.get("wall_s_max", r["wall_s"]), "predicted": predicted, "fitted": fitted,
                        "error_pct": None if fitted or not r["wall_s"] else 100 * (predicted - r["wall_s"]) / r["wall_s"]})
    except (KeyError, TypeError, ValueError) as exc:
        raise VoxtuneError(f"not a usable bench.json: needs settings and runs ({type(exc).__name__}: {exc})") from None
    return out


def model_error(bench_json: str | Path | dict[str, Any]) -> list[dict[str, Any]]:
    """Calibrate on a bench.json and predict each of its own runs: an error only for runs that fitted nothing."""
    bench = json.loads(Path(bench_json).read_text()) if not isinstance(bench_json, dict) else bench_json
    return predict_runs(calibrate(bench), bench)


# What must match for a calibration's per-step time to carry over to another bench's runs (the batch may
# differ where the calibration timed the other bench's rank batches).
SAME_SETUP = {"settings": ("image_shape", "model_params", "cpus_per_worker", "gpus_per_worker"),
              "machine": ("cpus", "gpus", "gpu_name")}


def _net(bench: dict[str, Any]) -> dict[str, Any]:
    """The trained net and its input as configured; epochs, seed and batch may differ between benches."""
    config = (bench.get("settings") or {}).get("base_config") or {}
    return {k: v for k, v in config.items() if k not in ("epochs", "seed", "batch_size")}


def check(calibration: str | Path, other: str | Path) -> dict[str, Any]:
    """Out-of-sample error: the model calibrated on one bench.json predicting another's measured runs."""
    cal, runs = read_bench(calibration, "--calibration"), read_bench(other, "--check")
    differ = [k for part, keys in SAME_SETUP.items() for k in keys
              if (cal.get(part) or {}).get(k) != (runs.get(part) or {}).get(k)]
    differ += ["model config"] if _net(cal) != _net(runs) else []
    if differ:
        raise VoxtuneError(f"--check {other}: its {', '.join(differ)} differ from --calibration {calibration}'s, "
                           "so the calibrated step time does not apply; bench the same cache, model and "
                           "machine for both")
    model = _calibrated(cal, calibration)
    try:
        batch = int(runs["settings"]["batch_size"])
        wanted = {max(1, batch // r["workers_per_trial"]) if r.get("ddp_recipe") == "global-batch" else batch
                  for r in runs["runs"]}
        rows = predict_runs(model, runs) if batch == model.batch_size or wanted <= set(model.batch_cost) else None
    except (KeyError, TypeError, ValueError) as exc:
        raise VoxtuneError(f"--check {other}: not a usable bench.json: needs settings and runs "
                           f"({type(exc).__name__}: {exc})") from None
    except VoxtuneError as exc:
        raise VoxtuneError(f"--check {other}: {exc}") from None
    missing = sorted(wanted - set(model.batch_cost))
    if rows is None:
        raise VoxtuneError(f"--check {other}: its runs step at rank batch {', '.join(map(str, missing))}, which "
                           f"--calibration {calibration} did not time; bench the calibration with this voxtune, "
                           "which times every rank batch up to its batch")
    for r in rows:  # a constant fitted to another bench is not fitted to this one
        r["fitted"] = False
        r["error_pct"] = 100 * (r["predicted"] - r["measured"]) / r["measured"] if r["measured"] else float("nan")
        r["within_spread"] = r["measured_min"] <= r["predicted"] <= r["measured_max"]
    return {"calibration": str(calibration), "checked": str(other), "runs": rows, "fitted": model.fitted,
            "max_abs_error_pct": max((abs(r["error_pct"]) for r in rows), default=float("nan"))}


def format_check(result: dict[str, Any]) -> str:
    lines = [f"voxtune plan: model calibrated on {result['calibration']},",
             f"predicting the runs measured in {result['checked']} (out of sample)", "",
             f"{'run':<34}{'b':>3}{'trials':>7}{'epochs':>7}{'measured, median [min-max]':>30}{'predicted':>11}"
             f"{'error':>8}"]
    for r in result["runs"]:
        spread = f"{r['measured']:.1f} [{r['measured_min']:.1f}-{r['measured_max']:.1f}] s"
        lines.append(f"{r['run']:<34}{r['rank_batch']:>3}{r['trials']:>7}{r['epochs']:>7}{spread:>30}"
                     f"{r['predicted']:>10.1f}s{r['error_pct']:>+7.1f}%")
    lines += ["", f"largest error: {result['max_abs_error_pct']:.1f}%; predicted within the repeats' spread: "
              f"{sum(r['within_spread'] for r in result['runs'])} of {len(result['runs'])} runs",
              "b: each rank's batch. One prediction per repeat, in that repeat's trial order; the median is shown."]
    return "\n".join(lines)


def format_constants(m: MakespanModel) -> str:
    """Each fitted constant, its value and the run it came from; then what is assumed."""
    if not m.fitted:
        return f"constants: {m.source}\n" + "\n".join(f"  assumed {k}: {v}" for k, v in ASSUMED.items())
    lines = ["fitted constants (value <- run: how):"]
    for f in m.fitted:
        value = f["value"]
        shown = (", ".join(f"{k}: {v:.3g}" for k, v in value.items()) if isinstance(value, dict) else f"{value:.4g}")
        lines.append(f"  {f['constant']} = {shown} <- {'; '.join(f['from'])}: {f['how']}")
    if not any(f["constant"] == "batch_cost" for f in m.fitted):
        lines.append("  assumed: a step's cost linear in the rank batch (this bench.json timed no rank batch)")
    lines += [f"  assumed {k}: {v}" for k, v in ASSUMED.items()]
    return "\n".join(lines)


def _hours(s: float) -> str:
    return f"{s / 3600:.2f} h" if s >= 3600 else f"{s:.1f} s"


def paper_prediction(trials: int = 32, gpus_per_node: int = 4) -> str:
    """Markdown: the default model at 1-32 GPUs for the paper's 32 trials, beside its measured x12-14."""
    rows = sweep_speedups(DEFAULTS, trials, gpus_per_node, top=32)
    exp32 = rows[-1]["experiment"]
    lo, hi = PAPER_SPEEDUP
    lines = [f"## The paper's setting: {trials} trials, 1-32 V100s, {gpus_per_node} per node (default constants)",
             "", "| GPUs | experiment | data | best hybrid (K) |", "|---|---:|---:|---:|"]
    lines += [f"| {r['workers']} | x{r['experiment']:.1f} | x{r['data']:.1f} | "
              + (f"x{r['hybrid']:.1f} ({r['hybrid_k']}) |" if r["hybrid"] else "- |") for r in rows]
    lines += ["", f"Berral et al. 2022 measured x{lo}-{hi} for experiment parallelism at 32 GPUs; this model "
              f"predicts x{exp32:.1f}. With one wave of 32 trials the model's only losses are start-up and "
              f"per-trial overhead, so the gap means each trial ran {32 / hi:.1f}-{32 / lo:.1f}x slower with 32 "
              "running at once than alone (shared-filesystem reads, host CPU and input pipeline contention, "
              "stragglers) - a contention factor this model takes from a calibration, and the defaults leave "
              "at 1. Data parallelism stays below experiment parallelism here because each step still pays an "
              "all-reduce, per-trial start-up repeats 32 times in series, and the step count rounds up "
              f"(339 cases over 32 ranks at batch 2: {steps(DEFAULTS, 32)} steps)."]
    return "\n".join(lines) + "\n"


def paper_auto(trials: int = 32, gpus_per_node: int = 4, gpus: tuple[int, ...] = (8, 16, 32, 64)) -> list[dict[str, Any]]:
    """The default model's wall time for the paper's search under experiment, data and auto, FIFO and ASHA
    (voxtune's ASHA: grace epochs/4, eta 2). ASHA ranks trials by a quality the model cannot know; here
    trial i of the queue has quality (7 i mod 32) / 32, a fixed shuffle, the same for every mode."""
    queue = [Trial(quality=(7 * i % trials) / trials) for i in range(trials)]
    rows = []
    for scheduler, asha in (("fifo", None), ("asha", Asha.of(DEFAULTS.epochs))):
        for n in gpus:
            walls = {"experiment": predict(DEFAULTS, n, trials, 1, gpus_per_node, queue, asha=asha),
                     "data": predict(DEFAULTS, n, trials, n, gpus_per_node, queue, asha=asha),
                     "auto": predict(DEFAULTS, n, trials, 1, gpus_per_node, queue, auto=True, asha=asha)}
            rows.append({"scheduler": scheduler, "gpus": n, **{k: v["predicted_wall_s"] for k, v in walls.items()},
                         "auto_grown": walls["auto"]["grown"]})
    return rows


def format_paper_auto(rows: list[dict[str, Any]]) -> str:
    """Markdown of paper_auto: hours per mode, and auto against the better fixed mode."""
    lines = ["| scheduler | GPUs | experiment h | data h (paper's: lr x K) | auto h | auto / best fixed | trials grown |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        best = min(r["experiment"], r["data"])
        lines.append(f"| {r['scheduler']} | {r['gpus']} | {r['experiment'] / 3600:.2f} | {r['data'] / 3600:.2f} | "
                     f"{r['auto'] / 3600:.2f} | {r['auto'] / best:.2f} | {r['auto_grown']} |")
    return "\n".join(lines)


def format_plan(result: dict[str, Any]) -> str:
    header = ["mode", "K", "trials at once", "waves", "predicted wall", "speed-up", "idle worker-h"]
    table = [[p["mode"], str(p["workers_per_trial"]), str(p["concurrent_trials"]), str(p["waves"]),
              _hours(p["predicted_wall_s"]), f"x{p['predicted_speedup']:.2f}", f"{p['idle_worker_s'] / 3600:.2f}"]
             for p in result["predictions"]]
    widths = [max(len(h), *(len(t[i]) for t in table)) for i, h in enumerate(header)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths))  # noqa: E731
    b = result["recommended"]
    return "\n".join([f"voxtune plan: {result['trials']} trials x {result['epochs']} epochs on {result['workers']} "
                      f"workers" + (f", {result['gpus_per_node']} per node" if result["gpus_per_node"] else ""),
                      f"model: {result['calibration']}", "", line(header), *(line(t) for t in table), "",
                      f"recommended: {b['mode']} ({b['workers_per_trial']} worker(s) per trial, "
                      f"{b['concurrent_trials']} at once): {_hours(b['predicted_wall_s'])} predicted"])


def format_sweep(rows: list[dict[str, Any]], m: MakespanModel, trials: int) -> str:
    out = [f"predicted speed-up vs 1 worker, {trials} trials (model: {m.source})",
           f"{'workers':>7}  {'experiment':>10}  {'data':>8}  {'hybrid (K)':>12}  {'auto':>8}"]
    for r in rows:
        hyb = f"x{r['hybrid']:.2f} ({r['hybrid_k']})" if r["hybrid"] else "-"
        out.append(f"{r['workers']:>7}  {'x%.2f' % r['experiment']:>10}  {'x%.2f' % r['data']:>8}  {hyb:>12}  "
                   f"{'x%.2f' % r['auto']:>8}")
    return "\n".join(out)


def run_check(calibration: str | Path | None, other: str | Path, as_json: bool = False) -> dict[str, Any]:
    """`voxtune plan --calibration A --check B`: print the model's out-of-sample error on B's runs."""
    if calibration is None:
        raise VoxtuneError("--check needs --calibration: the bench.json whose model predicts the checked runs")
    result = check(calibration, other)
    print(json.dumps(result, indent=2) if as_json else format_check(result))
    return result


def run_plan(*, workers: int, trials: int, calibration: str | Path | None = None, gpus_per_node: int | None = None,
             as_json: bool = False, sweep: bool = False, epochs: int | None = None) -> dict[str, Any]:
    """`voxtune plan`: print the table (or JSON) and, with sweep, speed-ups from 1 to 256 workers; `epochs` per
    trial instead of the calibration's (the paper's 20 by default)."""
    if epochs is not None and epochs < 1:
        raise VoxtuneError(f"--epochs {epochs}: need at least 1")
    m = load_calibration(calibration)
    m = replace(m, epochs=epochs) if epochs is not None else m
    result = plan(m, workers, trials, gpus_per_node)
    if sweep:
        result["sweep"] = sweep_speedups(m, trials, gpus_per_node)
    print(json.dumps(result, indent=2) if as_json else format_plan(result)
          + ("\n\n" + format_sweep(result["sweep"], m, trials) if sweep else "") + "\n\n" + format_constants(m))
    return result
