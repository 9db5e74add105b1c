"""What `voxtune bench` shows: bench.md (the table, the model's error, the paper's setting) and speedup.png
(speed-up and best validation Dice against workers). Field names follow docs/tuning.md#timing-fields."""
from __future__ import annotations

from pathlib import Path
from typing import Any


def label(row: dict[str, Any]) -> str:
    """A run's name in tables and legends: its mode, and its DDP recipe when it has one."""
    return row["mode"] + (f" ({row['ddp_recipe']})" if row.get("ddp_recipe") else "")


_STYLES = list(zip("osD^v<>", ("-", "-.", ":", "--", "-", "-.", ":")))  # (marker, line style) per line


def _lines(runs: list[dict[str, Any]]) -> list[tuple[str, list[dict[str, Any]]]]:
    """(name, rows by workers) of each mode and recipe; the shared 1-worker run starts every experiment
    and data line."""
    base = next(r for r in runs if r["workers"] == 1)
    out = []
    for mode, recipe in dict.fromkeys((r["mode"], r.get("ddp_recipe")) for r in runs if r["workers"] > 1):
        rows = [r for r in runs if (r["mode"], r.get("ddp_recipe")) == (mode, recipe) and r["workers"] > 1]
        out.append((label({"mode": mode, "ddp_recipe": recipe}), ([base] if mode != "hybrid" else []) + rows))
    return out


def draw_speedup(ax, runs: list[dict[str, Any]]) -> None:
    """Speed-up against workers on `ax`: a line per mode and recipe, and the ideal (the plot of
    speedup.png and of `voxtune report`)."""
    workers = sorted({r["workers"] for r in runs})
    ax.plot(workers, workers, "k--", lw=1, label="ideal")
    for (name, rows), (marker, style) in zip(_lines(runs), _STYLES):
        ax.plot([r["workers"] for r in rows], [r["speedup"] for r in rows], marker=marker, linestyle=style,
                markersize=8, label=name)
    if len(workers) > 2:
        ax.set_xscale("log", base=2)
    ax.set_xticks(workers, [str(w) for w in workers])
    ax.set_xlabel("workers (CPU cores or GPUs)")
    ax.set_ylabel("speed-up vs 1 worker (median wall time)")
    ax.set_ylim(0, max(workers) * 1.08)  # from 0: a cropped axis would exaggerate the gap between modes
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def write_plot(bench: dict[str, Any], path: Path) -> None:
    """Left: speed-up vs workers, a line per mode and recipe, and the ideal. Middle: the best validation
    Dice each search reached (median over repeats, bars from min to max). Right: the anytime curves (best
    validation Dice so far against time) of every repeat of the runs with the most workers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, qx, tx) = plt.subplots(1, 3, figsize=(16, 4.2), dpi=120)
    draw_speedup(ax, bench["runs"])
    workers = sorted({r["workers"] for r in bench["runs"]})
    for (name, rows), (marker, style) in zip(_lines(bench["runs"]), _STYLES):
        dice = [r["best_val_dice"] or 0.0 for r in rows]
        spread = [[d - r["best_val_dice_min"] for d, r in zip(dice, rows)],
                  [r["best_val_dice_max"] - d for d, r in zip(dice, rows)]]
        qx.errorbar([r["workers"] for r in rows], dice, yerr=spread, marker=marker, linestyle=style, capsize=3,
                    label=name)
    if len(workers) > 2:
        qx.set_xscale("log", base=2)
    qx.set_xticks(workers, [str(w) for w in workers])
    qx.set_xlabel("workers (CPU cores or GPUs)")
    qx.grid(alpha=0.3)
    qx.legend(fontsize=8)
    s = bench["settings"]
    ax.set_title(f"{s['trials']} trials x {s['epochs']} epoch(s), {s['repeats']} repeat(s)", fontsize=10)
    qx.set_ylabel("best val Dice of the search")
    qx.set_ylim(0, 1.02)
    qx.axhline(s["target_dice"], color="grey", lw=1, ls=":")
    qx.set_title(f"quality (dotted: the time-to-target Dice, {s['target_dice']:.3f})", fontsize=10)
    draw_anytime(tx, bench["runs"], s["target_dice"])
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def draw_anytime(ax, runs: list[dict[str, Any]], target: float) -> None:
    """Best validation Dice so far against seconds since Ray up: each repeat of the 1-worker run and of
    every run at the most workers, a colour per run, the target dotted."""
    top = max(r["workers"] for r in runs)
    shown = [r for r in runs if r["workers"] == 1][:1] + [r for r in runs if r["workers"] == top and top > 1]
    for i, row in enumerate(shown):
        name = "1 worker" if row["workers"] == 1 else f"{label(row)}, {row['workers']} workers"
        for j, rep in enumerate(row["repeats"]):
            points = rep.get("anytime") or []
            if points:  # a step up at each epoch that raised the best, held until the search's end
                xs = [t for t, _ in points] + [rep["wall_s"]]
                ys = [d for _, d in points] + [points[-1][1]]
                ax.step(xs, ys, where="post", color=f"C{i}", alpha=0.8, label=name if j == 0 else None)
    ax.axhline(target, color="grey", lw=1, ls=":")
    ax.set_xlabel("seconds since Ray up")
    ax.set_ylabel("best val Dice so far")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[1]:
        ax.legend(fontsize=8)
    ax.set_title("anytime curves, every repeat", fontsize=10)


def _table(header: list[str], rows: list[list[Any]]) -> str:
    fmt = lambda v: "-" if v is None else f"{v:.2f}" if isinstance(v, float) else str(v)  # noqa: E731
    rule = "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|"
    lines = ["| " + " | ".join(header) + " |", rule]
    return "\n".join(lines + ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows])


def _span(row: dict[str, Any], key: str) -> str:
    if row[key] is None:
        return "-"
    low, high = row.get(f"{key}_min"), row.get(f"{key}_max")
    return f"{row[key]:.1f}" + (f" [{low:.1f}-{high:.1f}]" if low is not None and high is not None else "")


def _to_target(row: dict[str, Any]) -> str:
    reps = len(row["repeats"])
    if row["time_to_target_s"] is None:
        return "not reached"
    return f"{row['time_to_target_s']:.1f}" + (f" ({row['time_to_target_reached']}/{reps})"
                                               if row["time_to_target_reached"] < reps else "")


def bench_markdown(bench: dict[str, Any]) -> str:
    """bench.md: the measured table, the scaling model's in-sample error, and its paper-setting prediction."""
    from voxtune.bench.model import calibrate
    from voxtune.bench.plan import format_constants, model_error, paper_prediction

    s, m = bench["settings"], bench["machine"]
    loads = [r.get("load_before") for row in bench["runs"] for r in row["repeats"]] + [m.get("load_after")]
    recipes = ", ".join(s["ddp_recipes"])
    out = [f"# voxtune bench: {s['trials']} trials x {s['epochs']} epoch(s), {s['repeats']} repeat(s) per point",
           "",
           f"Machine: {m['cpus']} CPUs, {m['gpus']} GPUs ({m.get('gpu_name') or 'none'}), torch {m['torch']}, "
           f"ray {m['ray']}; voxtune code {bench['code']['code_version']} ({bench['code']['git_commit'] or 'no git'}); "
           f"1-minute load average around the runs: {', '.join(str(x) for x in loads if x is not None)}.",
           f"Cache: {s['train_cases']} train / {s['val_cases']} val cases of shape {s['image_shape']}, "
           f"batch {s['batch_size']}, model {s['base_config']['model']} ({s['model_params']:,} parameters), norm "
           f"{s['base_config']['norm']}; {s['cpus_per_worker']:g} CPU and {s['gpus_per_worker']:g} GPU per worker; "
           f"DDP recipe(s): {recipes}.",
           "",
           _table(["mode", "workers", "K", "trials at once", "wall s, median [min-max]", "speed-up",
                   f"time to Dice {s['target_dice']:.3f} s", "final best s", "best val Dice", "test Dice", "start-up s",
                   "s/epoch", "idle worker-s", "data wait", "runs"],
                  [[label(r), r["workers"], r["workers_per_trial"], r["concurrent_trials"], _span(r, "wall_s"),
                    r["speedup"], _to_target(r), r.get("final_best_s"), r["best_val_dice"], r["test_dice"], r["startup_s"],
                    r["per_epoch_s"],
                    r["idle_worker_s"], f"{100 * r['data_wait_share']:.1f}%",
                    "/".join(sorted({x["how"] for x in r["repeats"]}))] for r in bench["runs"]]),
           "",
           "Medians over the repeats; repeat r of every point trains with seed base + r - 1 and queues the trials "
           "in an order of its own (the seeds are in bench.json), so the spread is seed to seed, not timing "
           "noise alone. K: workers per trial. Wall: Ray up to the last trial's end. Speed-up: the "
           "1-worker median wall over this one's. Time to Dice: Ray up until some trial first validated at or above "
           f"the target ({s['target_dice_rule']}); (n/m): reached in n of m repeats. Best val Dice: the search's best "
           "trial; test Dice: its best checkpoint on the test split. Start-up: Ray up to the first epoch's start "
           "(Tune, worker processes, imports, DDP groups, data checks). Final best: Ray up until the epoch that "
           "trained the search's best model ended. Idle worker-s: workers x wall - every epoch's time x the "
           "workers that trained it. Auto: trials start on one worker each and grow (global-batch) onto workers "
           "no waiting trial can use. DDP recipes: global-batch = each of the K ranks takes batch/K, the same problem as 1 "
           "worker; scale-lr = each rank takes the full batch, lr x K (the paper's). Runs: ran, reused (same "
           "settings and code) or resumed.",
           *([""] + [f"Failed: {f['run']}, every trial ({'; '.join(f['reasons']) or 'see its leaderboard'}); "
                     "not timed, not in the table." for f in bench.get("failed_runs", [])]),
           "",
           "## Scaling model vs measured",
           "",
           "Calibrated on these runs: a run that fitted a constant is predicted from itself, so it shows no "
           "error; `voxtune plan --calibration bench.json --check OTHER/bench.json` measures the error out of "
           "sample. One prediction per repeat, in its trial order; the median is shown.",
           "",
           _table(["mode", "workers", "measured s", "predicted s", "error"],
                  [[label(e), e["workers"], e["measured"], e["predicted"],
                    "fitted" if e["error_pct"] is None else f"{e['error_pct']:+.1f}%"] for e in model_error(bench)]),
           "",
           "```", format_constants(calibrate(bench)), "```",
           "",
           paper_prediction()]
    return "\n".join(out) + "\n"
