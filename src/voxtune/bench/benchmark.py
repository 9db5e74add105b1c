"""`voxtune bench`: the same M-trial search under each mode and worker count (Berral et al. 2022, Fig. 4).

Every run trains exactly the same M configs (`bench_space`), so wall times differ only by how the
work is spread: experiment (W trials at once, 1 worker each), data (1 trial at a time over W DDP
workers) and hybrid (W/K trials of K workers). The 1-worker run is the same search in every mode,
so it runs once and is the speed-up baseline of all of them. Writes, under BENCH:

    runs/<mode>-w<W>/   each search, as `voxtune tune` leaves it
    bench.json          one row per (mode, workers) + machine + settings (the planner's calibration)
    speedup.png         speed-up vs workers, a line per mode, and the ideal line
    bench.md            the table, the scaling model's error, and its prediction for the paper's setting
"""
from __future__ import annotations

import itertools
import json
import os
import platform
from pathlib import Path
from typing import Any

from voxtune.config import make_config
from voxtune.data.cache import case_ids, read_manifest, region_names
from voxtune.errors import VoxtuneError
from voxtune.files import write_json

MODES = ("experiment", "data", "hybrid")


def bench_space(space: dict[str, Any], trials: int) -> tuple[dict[str, Any], int, list[dict[str, Any]]]:
    """Restrict a grid space to `trials` configs, as (space, repeats, configs).

    A space is a product of per-key grids, so an arbitrary set of M points cannot be written as
    one; instead take a sub-grid: walking the keys from the fastest-varying (last) one, keep the
    first t values of each, t the largest divisor of what is still needed. For M = 4 on the paper's
    space that is exactly its first 4 grid points (lr 1e-4, bn, beta2 x amsgrad). When M has a
    factor no key can hold (M = 5 there), the sub-grid is repeated `repeats` times (grid search's
    num_samples): identical trials, which is harmless for a timing benchmark and says so.
    """
    from voxtune.parallel.space import validate_space

    validate_space(space)
    if trials < 1:
        raise VoxtuneError(f"--trials {trials}: need at least 1")
    for key, spec in space.items():
        if isinstance(spec, dict) and next(iter(spec)) != "grid":
            raise VoxtuneError(f"search space key '{key}': bench needs the same trials in every run, so only "
                               f"constants and {{grid: [...]}} entries; got {{{next(iter(spec))}: ...}}")
    grid_keys = [k for k, s in space.items() if isinstance(s, dict)]
    take, remaining = {}, trials
    for key in reversed(grid_keys):
        n = len(space[key]["grid"])
        take[key] = max(d for d in range(1, min(n, remaining) + 1) if remaining % d == 0)
        remaining //= take[key]
    sub: dict[str, Any] = {}
    for key, spec in space.items():
        if key not in take:
            sub[key] = spec
            continue
        values = spec["grid"][: take[key]]
        sub[key] = {"grid": values} if len(values) > 1 else values[0]
    varying = [k for k in sub if isinstance(sub[k], dict)]
    points = [dict(zip(varying, combo)) for combo in itertools.product(*(sub[k]["grid"] for k in varying))]
    configs = [{**{k: v for k, v in sub.items() if k not in varying}, **p} for p in points] * remaining
    return sub, remaining, configs


def plan_runs(workers: list[int], modes: list[str], workers_per_trial: int | None) -> list[tuple[str, int, int]]:
    """(mode, W, K) for every run; the 1-worker baseline first and once (it is every mode's W = 1)."""
    if not workers or any(w < 1 for w in workers):
        raise VoxtuneError(f"--workers {' '.join(map(str, workers))}: each worker count must be >= 1")
    if not modes or any(m not in MODES for m in modes):
        raise VoxtuneError(f"--modes {' '.join(modes)}: choose from {', '.join(MODES)}")
    k = 2 if workers_per_trial is None else workers_per_trial
    if k < 2:
        raise VoxtuneError(f"--workers-per-trial {k}: hybrid needs at least 2 workers per trial")
    runs = [("experiment", 1, 1)]
    for w in sorted(set(workers) - {1}):
        for mode in dict.fromkeys(modes):
            if mode == "experiment":
                runs.append((mode, w, 1))
            elif mode == "data":
                runs.append((mode, w, w))
            elif w % k == 0 and k < w:
                runs.append((mode, w, k))
    return runs


def machine_info() -> dict[str, Any]:
    import ray
    import torch

    from voxtune.machine import usable_cpus

    return {"cpus": usable_cpus(), "gpus": torch.cuda.device_count(), "torch": torch.__version__, "ray": ray.__version__,
            "python": platform.python_version(), "platform": platform.platform(),
            "gpu_name": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def _load() -> float | None:
    """1-minute load average: a busy machine makes every number here slower, so it is recorded."""
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def measure_run(run_dir: Path, summary: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """bench.json fields of one finished search (times in seconds, worker-seconds for idle)."""
    epochs = []
    for row in rows:
        try:
            epochs += json.loads((run_dir / "trials" / row["trial_id"] / "metrics.json").read_text())
        except (OSError, ValueError):
            pass
    k = summary["workers_per_trial"]
    wall = summary["wall_time_s"] or 0.0
    train = [float(r["train_time_s"]) for r in rows if r.get("train_time_s", "") != ""]
    epoch_time = sum(e["epoch_time_s"] for e in epochs)
    search_start = max(0.0, summary["startup_s"] - summary["ray_init_s"])  # wall_time_s excludes ray.init
    first, later = _outside_loop(rows, summary["concurrent_trials"])
    warmup = max(0.0, first - later) if later is not None else 0.0
    return {
        "workers": summary["workers"], "workers_per_trial": k, "concurrent_trials": summary["concurrent_trials"],
        "trials": summary["trials"], "epochs": summary["epochs"], "status": summary["status"],
        "wall_s": wall, "command_s": summary["command_time_s"],
        "trial_compute_s": sum(train) / len(train) if train else 0.0,
        "startup_s": summary["startup_s"], "ray_init_s": summary["ray_init_s"],
        "first_trial_outside_s": first, "trial_outside_s": later, "warmup_s": warmup,
        # Steady state: a minutes-long CPU run carries a fixed worker start-up and warm-up that the paper's
        # hours-long runs did not, so the wall time without them is reported too (speedup_after_startup).
        "wall_after_startup_s": max(0.0, wall - search_start - warmup),
        # Worker-seconds held but not in a training loop: start-up, between-trial gaps, the tail wave.
        "idle_worker_s": summary["workers"] * wall - sum(train) * k,
        "per_epoch_s": epoch_time / len(epochs) if epochs else 0.0,
        "data_wait_share": sum(e["data_wait_s"] for e in epochs) / epoch_time if epoch_time else 0.0,
    }


def _outside_loop(rows: list[dict[str, Any]], slots: int) -> tuple[float, float | None]:
    """Seconds trials spend outside their training loop (DDP group start, imports, model build,
    checkpoints): (mean of the first `slots` trials, median of the later ones or None). The first trial
    on each fresh worker also pays one-off imports, allocations and its DDP group's start: a warm-up
    paid once per slot, not once per trial (groups are reused; without reuse later trials pay it too)."""
    outside = [o for _, o in sorted(
        (float(r["start_ts"]), float(r["end_ts"]) - float(r["start_ts"]) - float(r["train_time_s"]))
        for r in rows if "" not in (r.get("start_ts", ""), r.get("end_ts", ""), r.get("train_time_s", "")))]
    if not outside:
        return 0.0, None
    first, later = outside[:slots], sorted(outside[slots:])
    return sum(first) / len(first), later[len(later) // 2] if later else None


def _run_one(bench_dir: Path, name: str, settings, address: str | None) -> tuple[dict[str, Any], bool]:
    """Run one search into runs/<name>, or reuse it when a previous bench finished the same search there."""
    from dataclasses import asdict

    from voxtune.parallel.tune import run_search

    run_dir = bench_dir / "runs" / name
    saved, done = run_dir / "search.json", run_dir / "summary.json"
    if done.exists() and saved.exists():
        if json.loads(saved.read_text()) == json.loads(json.dumps(asdict(settings.check()))):
            summary = json.loads(done.read_text())
            from voxtune.parallel import outputs

            summary["rows"] = outputs.trial_rows(run_dir, summary["searched"])
            return summary, True
    if run_dir.exists():
        raise VoxtuneError(f"{run_dir} holds a different or unfinished search; delete it (or choose another "
                           "--out) and run bench again")
    return run_search(run_dir, settings, address=address), False


def run_bench(cache: str | Path, out: str | Path, *, workers: list[int], modes: list[str], trials: int,
              space: str | dict[str, Any] = "paper", workers_per_trial: int | None = None,
              cpus_per_worker: float = 1.0, gpus_per_worker: float = 0.0,
              base_config: dict[str, Any] | None = None, address: str | None = None) -> dict[str, Any]:
    """Run every (mode, workers) search of the benchmark; write bench.json, speedup.png, bench.md."""
    from voxtune.parallel.space import load_space
    from voxtune.parallel.tune import SearchSettings

    runs = plan_runs(list(workers), list(modes), workers_per_trial)
    manifest = read_manifest(cache)
    base = make_config(base_config or {})
    full_space = load_space(space) if isinstance(space, (str, Path)) else space
    sub, repeats, configs = bench_space(full_space, trials)
    bench_dir = Path(out).resolve()
    bench_dir.mkdir(parents=True, exist_ok=True)
    if 1 not in workers:
        print("bench: adding the 1-worker run: every speed-up is measured against it")
    if repeats > 1:
        print(f"bench: {trials} trials = {len(configs) // repeats} grid points x {repeats} repeats "
              "(no sub-grid of the space has exactly that many points)")
    hybrid_k = 2 if workers_per_trial is None else workers_per_trial
    if "hybrid" in modes and not any(m == "hybrid" for m, _, _ in runs):
        print(f"bench: no hybrid run: K = {hybrid_k} must divide W and be below it for some --workers W")

    measured: dict[tuple[str, int], dict[str, Any]] = {}
    for i, (mode, w, k) in enumerate(runs, start=1):
        name = f"{mode}-w{w}"
        settings = SearchSettings(cache_dir=str(Path(cache).resolve()), mode=mode, space=sub, search="grid",
                                  num_samples=repeats, scheduler="fifo", workers=w,
                                  workers_per_trial=k if mode == "hybrid" else None,
                                  cpus_per_worker=cpus_per_worker, gpus_per_worker=gpus_per_worker,
                                  base_config=base.to_dict())
        load = _load()
        print(f"[bench {i}/{len(runs)}] {name}: {trials} trials, {w // k} at once x {k} worker(s), "
              f"{base.epochs} epochs ... (load {load})", flush=True)
        summary, reused = _run_one(bench_dir, name, settings, address)
        row = {"mode": mode, **measure_run(bench_dir / "runs" / name, summary, summary["rows"]),
               "run": f"runs/{name}", "reused": reused, "load_before": load}
        measured[(mode, w)] = row
        print(f"[bench {i}/{len(runs)}] {name}: {'reused' if reused else 'done'}, wall {row['wall_s']:.1f}s, "
              f"{row['per_epoch_s']:.2f}s/epoch, status {row['status']}", flush=True)
        if set(row["status"]) != {"finished"} or row["trials"] != trials:
            print(f"bench: warning: {name} did not finish all {trials} trials ({row['status']}); its times "
                  "are not comparable with the other runs", flush=True)

    base_run = measured[("experiment", 1)]
    rows = []
    for mode in [m for m in MODES if m in modes]:
        if mode != "hybrid":
            rows.append({**base_run, "mode": mode})  # W = 1 is the same search in experiment and data
        rows += [r for (m, w), r in sorted(measured.items(), key=lambda kv: kv[0][1]) if m == mode and w > 1]
    for row in rows:
        row["speedup"] = base_run["wall_s"] / row["wall_s"] if row["wall_s"] else 0.0
        row["efficiency"] = row["speedup"] / row["workers"]
        after = row["wall_after_startup_s"]
        row["speedup_after_startup"] = base_run["wall_after_startup_s"] / after if after else 0.0

    model = base.to_dict()
    in_channels = manifest["cases"][0]["image_shape"][0]
    params = _param_count(base, in_channels, len(region_names(manifest)))
    bench = {
        "runs": rows,
        "machine": machine_info() | {"load_after": _load()},
        "settings": {
            "cache": str(Path(cache).resolve()), "trials": trials, "epochs": base.epochs, "repeats": repeats,
            "configs": configs, "space": sub, "workers": sorted(set(workers) | {1}), "modes": list(modes),
            "hybrid_workers_per_trial": hybrid_k, "cpus_per_worker": cpus_per_worker,
            "gpus_per_worker": gpus_per_worker, "address": address, "base_config": model,
            "train_cases": len(case_ids(manifest, "train")), "val_cases": len(case_ids(manifest, "val")),
            "batch_size": base.batch_size, "image_shape": manifest["cases"][0]["image_shape"],
            "model_params": params, "param_bytes": params * 4,
        },
    }
    write_json(bench_dir / "bench.json", bench)
    write_plot(bench, bench_dir / "speedup.png")
    (bench_dir / "bench.md").write_text(bench_markdown(bench))
    print(f"bench: wrote {bench_dir}/bench.json, speedup.png, bench.md")
    return bench


def _param_count(cfg, in_channels: int, out_channels: int) -> int:
    """Trainable parameters: DDP all-reduces 4 bytes (fp32 gradients) of each per step."""
    from voxtune.models import build_model

    return sum(p.numel() for p in build_model(cfg, in_channels, out_channels).parameters() if p.requires_grad)


def write_plot(bench: dict[str, Any], path: Path) -> None:
    """Speed-up vs workers, one line per mode, and the ideal (speed-up = workers)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2), dpi=120)
    workers = sorted({r["workers"] for r in bench["runs"]})
    ax.plot(workers, workers, "k--", lw=1, label="ideal")
    for mode, marker, style in zip(MODES, "osD", ("-", "-.", ":")):  # distinct styles: lines may coincide
        pts = sorted((r["workers"], r["speedup"]) for r in bench["runs"] if r["mode"] == mode)
        if pts:
            k = next(r["workers_per_trial"] for r in bench["runs"] if r["mode"] == mode and r["workers"] > 1) \
                if mode == "hybrid" else None
            ax.plot(*zip(*pts), marker=marker, linestyle=style, markersize=9 if mode == "experiment" else 6,
                    label=f"{mode}" + (f" (K={k})" if k else ""))
    if len(workers) > 2:
        ax.set_xscale("log", base=2)
    ax.set_xticks(workers, [str(w) for w in workers])
    s = bench["settings"]
    ax.set_xlabel("workers (CPU cores or GPUs)")
    ax.set_ylabel("speed-up vs 1 worker (wall time)")
    ax.set_title(f"voxtune bench: {s['trials']} trials x {s['epochs']} epoch(s), same trials in every run",
                 fontsize=10)
    ax.set_ylim(0, max(workers) * 1.08)  # from 0: a cropped axis would exaggerate the gap between modes
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _table(header: list[str], rows: list[list[Any]]) -> str:
    fmt = lambda v: f"{v:.2f}" if isinstance(v, float) else str(v)  # noqa: E731
    rule = "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|"
    lines = ["| " + " | ".join(header) + " |", rule]
    return "\n".join(lines + ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows])


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def bench_markdown(bench: dict[str, Any]) -> str:
    """bench.md: measured table, the scaling model's in-sample error, and its paper-setting prediction."""
    from voxtune.bench.plan import model_error, paper_prediction

    s, m = bench["settings"], bench["machine"]
    loads = [r.get("load_before") for r in bench["runs"]] + [m.get("load_after")]
    out = [f"# voxtune bench: {s['trials']} trials x {s['epochs']} epoch(s)",
           "",
           f"Machine: {m['cpus']} CPUs, {m['gpus']} GPUs ({m.get('gpu_name') or 'none'}), torch {m['torch']}, "
           f"ray {m['ray']}; 1-minute load average around the runs: "
           f"{', '.join(str(x) for x in loads if x is not None)} (a busy machine slows every run).",
           f"Cache: {s['train_cases']} train / {s['val_cases']} val cases of shape {s['image_shape']}, "
           f"batch {s['batch_size']}, model {s['base_config']['model']} ({s['model_params']:,} parameters); "
           f"{s['cpus_per_worker']:g} CPU and {s['gpus_per_worker']:g} GPU per worker.",
           "",
           _table(["mode", "workers", "K", "trials at once", "wall s", "speed-up", "efficiency",
                   "speed-up after start-up", "trial compute s", "start-up s", "idle worker-s", "s/epoch",
                   "data wait"],
                  [[r["mode"], r["workers"], r["workers_per_trial"], r["concurrent_trials"], r["wall_s"],
                    r["speedup"], r["efficiency"], r.get("speedup_after_startup", float("nan")),
                    r["trial_compute_s"], r["wall_s"] - r.get("wall_after_startup_s", float("nan")), r["idle_worker_s"], r["per_epoch_s"],
                    f"{100 * r['data_wait_share']:.1f}%"] for r in bench["runs"]]),
           "",
           "K: workers per trial. Wall: Ray up to the last trial's end (ray.init itself, "
           f"{_mean([r['ray_init_s'] for r in bench['runs']]):.1f} s here, is not in it). Speed-up: the",
           "1-worker run's wall (that run is shared by every mode) over this run's; after start-up: the same with",
           "each run's start-up taken off both. Start-up s: Ray up to the first trials' training, beyond a later",
           "trial's usual overhead (worker processes, importing torch and MONAI, DDP group start), paid once per",
           "search. Idle worker-s: workers x wall - sum of trial training time x K.",
           "",
           "## Scaling model vs measured (calibrated on these runs, so this is in-sample error)",
           "",
           _table(["mode", "workers", "measured s", "predicted s", "error"],
                  [[e["mode"], e["workers"], e["measured"], e["predicted"], f"{e['error_pct']:+.1f}%"]
                   for e in model_error(bench)]),
           "",
           paper_prediction()]
    return "\n".join(out) + "\n"
