"""`voxtune bench`: the same M-trial search under each mode and worker count (Berral et al. 2022, Fig. 4),
timed and scored, so modes are compared at equal quality and not by wall time alone.

Every run trains exactly the same M configs (`bench_space`): experiment (W trials at once, 1 worker
each), data (1 trial at a time over W DDP workers) and hybrid (W/K trials of K workers). The 1-worker
run is the same search in every mode, so it runs once and is every mode's speed-up baseline.

A DDP trial trains a comparable problem through a recipe (`--ddp-recipe`, see voxtune.parallel.modes),
recorded per run: global-batch (the default, the 1-worker problem) or scale-lr (the paper's).

Each point runs `--repeats` times (median, min and max reported). A finished run is reused only when
its search settings and voxtune's code version match; an unfinished one with matching settings is
resumed; anything else is moved to runs/stale/ and run again. Writes, under BENCH:

    runs/<mode>-w<W>[-<recipe>]-r<i>/   each search, as `voxtune tune` leaves it
    bench.json    one row per (mode, workers, recipe) with the medians, every repeat, the settings
    speedup.png   speed-up and best validation Dice against workers, a line per mode
    bench.md      the table, the scaling model's error, and its prediction for the paper's setting
"""
from __future__ import annotations

import itertools
import json
import os
import platform
import shutil
import statistics
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from voxtune.config import make_config
from voxtune.data.cache import case_ids, read_manifest, region_names
from voxtune.data.stage import stage_arg
from voxtune.errors import VoxtuneError
from voxtune.bench.record import FORMAT, bench_rows
from voxtune.bench.stepcost import for_bench
from voxtune.files import read_json, write_json
from voxtune.layout import BenchDir, RunDir
from voxtune.parallel import state
from voxtune.parallel.modes import HYBRID_K, MODES, RECIPES, recipe_config
from voxtune.provenance import code_version, git_commit

# GPU workers' steps are not timed: the driver may hold no GPU, and a CPU's batch ratios are not a GPU's.
NOT_TIMED = "GPU workers: the plan assumes a step linear in the rank batch"
TARGET_RULE = "the median of every trial's best val Dice over all runs"  # default --target-dice


def bench_space(space: dict[str, Any], trials: int) -> tuple[dict[str, Any], int, list[dict[str, Any]]]:
    """Restrict a grid space to `trials` configs, as (space, repeats, configs).

    A space is a product of per-key grids, so an arbitrary set of M points cannot be written as
    one; instead take a sub-grid: walking the keys from the fastest-varying (last) one, keep the
    first t values of each, t the largest divisor of what is still needed. For M = 4 on the paper's
    space that is exactly its first 4 grid points (lr 1e-4, bn, beta2 x amsgrad). When M has a
    factor no key can hold (M = 5 there), the sub-grid is repeated `repeats` times (grid search's
    num_samples; repeats get their own seeds, see voxtune.parallel.space).
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


def plan_runs(workers: list[int], modes: list[str], workers_per_trial: int | None,
              recipes: list[str]) -> list[tuple[str, int, int, str | None]]:
    """(mode, W, K, recipe) for every point; the 1-worker baseline first and once (every mode's W = 1)."""
    if not workers or any(w < 1 for w in workers):
        raise VoxtuneError(f"--workers {' '.join(map(str, workers))}: each worker count must be >= 1")
    if not modes or any(m not in MODES for m in modes):
        raise VoxtuneError(f"--modes {' '.join(modes)}: choose from {', '.join(MODES)}")
    if not recipes or any(r not in RECIPES for r in recipes):
        raise VoxtuneError(f"--ddp-recipe {' '.join(recipes)}: choose from {', '.join(RECIPES)}")
    if workers_per_trial is not None and "hybrid" not in modes:
        raise VoxtuneError(f"--workers-per-trial {workers_per_trial}: only hybrid runs use it; add hybrid to "
                           "--modes or drop it")
    k = HYBRID_K if workers_per_trial is None else workers_per_trial
    if k < 2:
        raise VoxtuneError(f"--workers-per-trial {k}: hybrid needs at least 2 workers per trial")
    runs: list[tuple[str, int, int, str | None]] = [("experiment", 1, 1, None)]
    for w in sorted(set(workers) - {1}):
        for mode in dict.fromkeys(modes):
            if mode == "experiment":
                runs.append((mode, w, 1, None))
            elif mode == "auto":  # starts at K = 1 and grows under global-batch (voxtune.parallel.auto)
                runs.append((mode, w, 1, "global-batch"))
            elif mode == "data" or (w % k == 0 and k < w):
                runs += [(mode, w, w if mode == "data" else k, r) for r in dict.fromkeys(recipes)]
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
    """bench.json fields of one finished search: times (s, worker-s for idle) and quality."""
    metrics = {r["trial_id"]: read_json(RunDir(run_dir).trial(r["trial_id"]).metrics, []) for r in rows}
    epochs = [e for records in metrics.values() for e in records]
    k = summary["workers_per_trial"]
    wall = summary["wall_time_s"] or 0.0
    startup = summary["startup_s"] or 0.0
    train = [float(r["train_time_s"]) for r in rows if r.get("train_time_s", "") != ""]
    busy = sum(e["epoch_time_s"] * e.get("workers", k) for e in epochs)  # worker-seconds (auto: K per epoch)
    started = sorted(rows, key=lambda r: float(r["start_ts"] or 0))
    epoch_time = sum(e["epoch_time_s"] for e in epochs)
    best = read_json(RunDir(run_dir).best, {})
    searched = [k for k in summary.get("searched") or [] if k != "seed"]  # repeats of a config share its cost
    key = lambda r: json.dumps({k: r.get(k) for k in searched}, sort_keys=True, default=str)  # noqa: E731
    return {
        "workers": summary["workers"], "workers_per_trial": k, "concurrent_trials": summary["concurrent_trials"],
        "trials": summary["trials"], "epochs": summary["epochs"], "status": summary["status"],
        "wall_s": wall, "startup_s": startup, "wall_after_startup_s": max(0.0, wall - startup),
        "ray_init_s": summary["ray_init_s"], "command_s": summary["command_time_s"],
        "trial_compute_s": sum(train) / len(train) if train else 0.0,
        "trial_outside_s": _later_outside(rows, summary["concurrent_trials"]),
        # Worker-seconds held but not in a training loop: start-up, between-trial gaps, the tail wave.
        "idle_worker_s": summary["workers"] * wall - busy,
        "per_epoch_s": epoch_time / len(epochs) if epochs else 0.0,
        "data_wait_share": sum(e["data_wait_s"] for e in epochs) / epoch_time if epoch_time else 0.0,
        "val_dice": {tid: max((e["val_dice"] for e in records), default=None) for tid, records in metrics.items()},
        # Each config's mean epoch and the order trials started in: the cost model's config costs and queue.
        "trial_epoch_s": {key(r): statistics.fmean(e["epoch_time_s"] for e in metrics[r["trial_id"]])
                          for r in rows if metrics[r["trial_id"]]},
        "trial_order": [key(r) for r in started],
        "trial_epochs": [len(metrics[r["trial_id"]]) for r in started],  # fewer where ASHA stopped a trial
        "best_val_dice": max((e["val_dice"] for e in epochs), default=None),
        # auto: each regroup's critical path (the last epoch end at the old K to the first at the new)
        "regroups": [g for r in rows for g in state.read(RunDir(run_dir).trial(r["trial_id"]).path).get("regroups", [])],
        "test_dice": (best.get("test") or {}).get("test_dice"),
        # (seconds since the search's start, val Dice) of every epoch: time to a target is read off these.
        "curve": (curve := sorted((e["end_ts"] - summary["search_start_ts"], e["val_dice"]) for e in epochs)),
        "anytime": (best_so_far := anytime(curve)),
        # When the search's final best model was trained (its epoch's end): what a user waits for.
        "final_best_s": best_so_far[-1][0] if best_so_far else None,
    }


def _later_outside(rows: list[dict[str, Any]], slots: int) -> float | None:
    """Median seconds a trial after the first wave spends outside its training loop (model build,
    checkpoints, Tune); None when every trial ran in the first wave. The first wave's own set-up
    (worker processes, imports, DDP groups) is in the search's start-up instead."""
    outside = [o for _, o in sorted(
        (float(r["start_ts"]), float(r["end_ts"]) - float(r["start_ts"]) - float(r["train_time_s"]))
        for r in rows if "" not in (r.get("start_ts", ""), r.get("end_ts", ""), r.get("train_time_s", "")))]
    later = sorted(outside[slots:])
    return later[len(later) // 2] if later else None


def anytime(curve: list[list[float]]) -> list[list[float]]:
    """The anytime curve of a search: [seconds, best val Dice so far] at each epoch that raised it."""
    out: list[list[float]] = []
    for t, dice in curve:
        if not out or dice > out[-1][1]:
            out.append([t, dice])
    return out


def default_target(points: dict[Any, list[dict[str, Any]]]) -> float:
    """The time-to-target Dice: the median of every trial's best val Dice over every run, so that at least
    half the trials reach it and no single trial's order in the queue decides when it is first met."""
    bests = sorted(d for reps in points.values() for r in reps for d in r["val_dice"].values() if d is not None)
    return bests[(len(bests) - 1) // 2] if bests else 0.0


def repeat_seed(base_seed: int, repeat: int) -> int:
    """Repeat r (from 1) of every point trains with this seed: repeats differ, points of one repeat pair up."""
    return base_seed + repeat - 1


def shuffled_space(space: dict[str, Any], seed: int) -> dict[str, Any]:
    """The same grid with each key's values in a seeded order, so each repeat queues the trials differently."""
    import random

    rng = random.Random(seed)
    return {k: {"grid": rng.sample(v["grid"], len(v["grid"]))} if isinstance(v, dict) else v for k, v in space.items()}


def search_dirs(bench_dir: str | Path) -> list[Path]:
    """The searches a bench has started (see _run_one)."""
    return [run.path for run in BenchDir(bench_dir).searches()]


def _run_one(bench_dir: Path, name: str, settings, address: str | None) -> tuple[dict[str, Any], str]:
    """Run one search into runs/<name>; reuse or resume it when settings and code match. Returns
    (summary with rows, how: "ran" | "reused" | "resumed")."""
    from dataclasses import asdict

    from voxtune.parallel import outputs
    from voxtune.parallel.tune import run_search

    bench = BenchDir(bench_dir)
    run = bench.run(name)
    run_dir, stamp = run.path, bench.code_stamp(run)
    settings = settings.checked()
    want = json.loads(json.dumps(asdict(settings)))
    if run_dir.exists():
        same = read_json(run.search) == want and read_json(stamp, {}).get("code_version") == code_version()
        summary = read_json(run.summary)
        if same and summary and not summary["interrupted"] and set(summary["status"]) <= {"finished"}:
            summary["rows"] = outputs.trial_rows(run_dir, summary["searched"])
            return summary, "reused"
        if same and run.search.exists():
            return _unless_interrupted(run_search(run_dir, address=address, resume=True), name), "resumed"
        stale = bench.stale(name).path
        shutil.rmtree(stale, ignore_errors=True)
        stale.parent.mkdir(parents=True, exist_ok=True)
        run_dir.rename(stale)
        print(f"bench: {name} was made by other code or settings; moved to {stale}, running it again", flush=True)
    run_dir.mkdir(parents=True)
    write_json(stamp, {"code_version": code_version(), "git_commit": git_commit()})
    return _unless_interrupted(run_search(run_dir, settings, address=address), name), "ran"


def _unless_interrupted(summary: dict[str, Any], name: str) -> dict[str, Any]:
    """A search the driver's interrupt (Ctrl-C, a time limit, scancel) stopped stops the bench too: running
    the same command again continues it."""
    if summary["interrupted"]:
        raise KeyboardInterrupt(f"bench run {name} interrupted")
    return summary


def run_order(runs: list, repeats: int) -> list[tuple[Any, int]]:
    """(point, repeat) in the order the bench runs them. Repeat by repeat, every point in each: a spell of
    load on the machine (minutes, on a shared one) slows one repeat of every mode, not every repeat of one.
    And repeat r starts r - 1 points further on: whatever a run leaves behind (processes still exiting, a
    warm or cold page cache) falls on a different mode in each repeat, not always on the one after it."""
    return [(runs[(rep - 1 + i) % len(runs)], rep) for rep in range(1, repeats + 1) for i in range(len(runs))]


def _run_points(runs, repeats: int, layout: BenchDir, cache, space: dict[str, Any], grid_repeats: int, base,
                trials: int, cpus_per_worker: float, gpus_per_worker: float, address: str | None, scheduler: str,
                stage: str | None = None):
    """Run every (mode, W, K, recipe) point `repeats` times: ({point: [measured repeat]}, [failed run])."""
    from voxtune.parallel.settings import SearchSettings

    points: dict[tuple[str, int, str | None], list[dict[str, Any]]] = {}
    failed: list[dict[str, Any]] = []  # runs whose every trial failed
    total = len(runs) * repeats
    order = run_order(runs, repeats)
    for i, ((mode, w, k, recipe), rep) in enumerate(order, start=1):
        name = f"{mode}-w{w}" + (f"-{recipe}" if recipe and k > 1 else "") + f"-r{rep}"
        seed = repeat_seed(base.seed, rep)
        settings = SearchSettings(cache_dir=str(Path(cache).resolve()), mode=mode, space=shuffled_space(space, seed),
                                  search="grid", num_samples=grid_repeats, scheduler=scheduler, workers=w,
                                  workers_per_trial=k if mode == "hybrid" else None,
                                  cpus_per_worker=cpus_per_worker, gpus_per_worker=gpus_per_worker,
                                  base_config={**base.to_dict(), "seed": seed}, ddp_recipe=recipe if k > 1 else None,
                                  stage=stage, keep_stage=bool(stage), stage_verified=bool(stage))
        load = _load()
        print(f"[bench {i}/{total}] {name}: {trials} trials, {w // k} at once x {k} worker(s), "
              f"{base.epochs} epochs ... (load {load})", flush=True)
        summary, how = _run_one(layout.path, name, settings, address)
        run = layout.relative(layout.run(name))
        if not any(summary["status"].get(status) for status in state.FINAL):
            # Every trial failed: nothing to time. Recorded as failed, and the bench goes on.
            reasons = sorted({r["reason"] for r in summary["rows"] if r["reason"]})
            failed.append({"run": run, "mode": mode, "workers": w, "ddp_recipe": recipe, "repeat": rep,
                           "status": summary["status"], "reasons": reasons})
            print(f"[bench {i}/{total}] {name}: failed, every trial ({summary['status']}): "
                  f"{'; '.join(reasons) or 'see its leaderboard'}; going on with the next run", flush=True)
            continue
        row = {**measure_run(layout.run(name).path, summary, summary["rows"]), "run": run, "how": how,
               "seed": seed, "load_before": load}
        points.setdefault((mode, w, recipe), []).append(row)
        print(f"[bench {i}/{total}] {name}: {how}, wall {row['wall_s']:.1f}s, {row['per_epoch_s']:.2f}s/epoch, "
              f"best val Dice {row['best_val_dice'] or 0:.3f}, status {row['status']}", flush=True)
        if set(row["status"]) - {"finished", "stopped"} or row["trials"] != trials:  # (stopped: by ASHA)
            print(f"bench: warning: {name} did not finish all {trials} trials ({row['status']}); its times "
                  "are not comparable with the other runs", flush=True)
    return points, failed


def run_bench(cache: str | Path, out: str | Path, *, workers: list[int], modes: list[str], trials: int,
              space: str | dict[str, Any] = "paper", workers_per_trial: int | None = None,
              cpus_per_worker: float = 1.0, gpus_per_worker: float = 0.0,
              base_config: dict[str, Any] | None = None, address: str | None = None,
              recipes: list[str] | None = None, repeats: int = 1, target_dice: float | None = None,
              scheduler: str = "fifo", stage: str | None = None, keep_stage: bool = False) -> dict[str, Any]:
    """Run every point of the benchmark `repeats` times; write bench.json, speedup.png, bench.md. stage: a
    node-local folder, staged once before the first search (voxtune.parallel.staging.cluster_staged)."""
    from voxtune.bench.tables import bench_markdown, write_plot
    from voxtune.parallel.space import load_space
    from voxtune.parallel.staging import cluster_staged

    recipes = list(recipes or ["global-batch"])
    runs = plan_runs(list(workers), list(modes), workers_per_trial, recipes)
    if repeats < 1:
        raise VoxtuneError(f"--repeats {repeats}: need at least 1")
    if scheduler not in ("fifo", "asha"):
        raise VoxtuneError(f"--scheduler {scheduler}: choose fifo or asha")
    if target_dice is not None and not 0 < target_dice <= 1:
        raise VoxtuneError(f"--target-dice {target_dice}: must be in (0, 1]")
    stage = stage_arg(stage, keep_stage)
    manifest = read_manifest(cache)
    base = make_config(base_config or {})
    if base.scale_lr and len(runs) > 1:
        raise VoxtuneError("config key 'scale_lr': bench sets it per run from --ddp-recipe; drop it")
    if base.folds > 1:  # (its tables score one model per trial: a fold mean would be read as one)
        raise VoxtuneError("config key 'folds': voxtune bench times the modes on the cache's own split; drop it "
                           "(benchmarks/bench_folds.sh measures cross-validated search)")
    full_space = load_space(space) if isinstance(space, (str, Path)) else space
    sub, grid_repeats, configs = bench_space(full_space, trials)
    for mode, w, k, recipe in runs:
        recipe_config(base.to_dict(), k, recipe)  # an impossible recipe fails before anything runs
    bench_dir = Path(out).resolve()
    bench_dir.mkdir(parents=True, exist_ok=True)
    layout = BenchDir(bench_dir)
    timed = for_bench(base, manifest, {recipe_config(base.to_dict(), k, r)["batch_size"] for _, _, k, r in runs},
                      cpus_per_worker) if not gpus_per_worker else {"step_s_by_batch": {}, "skipped": NOT_TIMED}
    if 1 not in workers:
        print("bench: adding the 1-worker run: every speed-up is measured against it")
    if grid_repeats > 1:
        print(f"bench: {trials} trials = {len(configs) // grid_repeats} grid points x {grid_repeats} seeds "
              "(no sub-grid of the space has exactly that many points)")

    with cluster_staged(str(Path(cache).resolve()), stage, address, keep_stage) if stage else nullcontext({}) as staging:
        points, failed = _run_points(runs, repeats, layout, cache, sub, grid_repeats, base, trials,
                                     cpus_per_worker, gpus_per_worker, address, scheduler, stage)

    if not any(w == 1 for _, w, _ in points):
        write_json(layout.bench_json, {"format": FORMAT, "runs": [], "failed_runs": failed})
        raise VoxtuneError(f"every 1-worker run failed, and every speed-up is measured against it: "
                           f"{'; '.join(sorted({x for f in failed for x in f['reasons']})) or 'see its leaderboard'} "
                           f"(in {layout.bench_json})")
    target = target_dice if target_dice is not None else default_target(points)
    rows = bench_rows(points, modes, target)
    in_channels = manifest["cases"][0]["image_shape"][0]
    params = _param_count(base, in_channels, len(region_names(manifest)))
    bench = {
        "format": FORMAT, "runs": rows, "failed_runs": failed,
        "machine": machine_info() | {"load_after": _load()},
        "code": {"code_version": code_version(), "git_commit": git_commit()},
        "settings": {
            "cache": str(Path(cache).resolve()), "trials": trials, "epochs": base.epochs, "grid_repeats": grid_repeats,
            "repeats": repeats, "configs": configs, "space": sub, "workers": sorted(set(workers) | {1}),
            "modes": list(modes), "ddp_recipes": recipes, "scheduler": scheduler, "hybrid_workers_per_trial": HYBRID_K if workers_per_trial is None
            else workers_per_trial, "cpus_per_worker": cpus_per_worker, "gpus_per_worker": gpus_per_worker,
            "address": address, "stage": stage, "staging": staging, "base_config": base.to_dict(), "target_dice": target,
            "target_dice_rule": "given" if target_dice is not None else TARGET_RULE,
            "train_cases": len(case_ids(manifest, "train")), "val_cases": len(case_ids(manifest, "val")),
            "batch_size": base.batch_size, "min_part": base.min_rank_batch or (1 if gpus_per_worker else 2),
            "image_shape": manifest["cases"][0]["image_shape"],
            "model_params": params, "param_bytes": params * 4, "step_s_by_batch": timed["step_s_by_batch"],
            "step_timing": {k: v for k, v in timed.items() if k != "step_s_by_batch"},
        },
    }
    write_json(layout.bench_json, bench)
    write_plot(bench, layout.plot)
    layout.markdown.write_text(bench_markdown(bench))
    print(f"bench: wrote {layout.bench_json}, {layout.plot.name}, {layout.markdown.name}")
    return bench


def _param_count(cfg, in_channels: int, out_channels: int) -> int:
    """Trainable parameters: DDP all-reduces 4 bytes (fp32 gradients) of each per step."""
    from voxtune.models import build_model

    return sum(p.numel() for p in build_model(cfg, in_channels, out_channels).parameters() if p.requires_grad)
