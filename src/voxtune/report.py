"""`voxtune report`: one self-contained HTML page about a search run (or a plain train run).

Everything is inline (figures as base64 PNG, a few lines of CSS and JS) because the page must open
on offline cluster machines and travel as one e-mail attachment. Sections for a search run:

    best trial · leaderboard (click a header to sort) · learning curves · hyperparameter effects ·
    best trial's predictions on validation cases · timing (summary.json, trial timeline, speed-up)

A missing piece (cache deleted, no bench, no best.json yet) becomes a note in the page, never a
failure: the report is most wanted exactly when a search went partly wrong.
"""
from __future__ import annotations

import base64
import csv
import datetime
import html
import io
from pathlib import Path
from typing import Any

import numpy as np

from voxtune.errors import VoxtuneError
from voxtune.files import read_json
from voxtune.formatting import number, short

_SORT_JS = """
document.querySelectorAll('table.sortable').forEach(function (table) {
  var heads = table.tHead.rows[0].cells;
  Array.prototype.forEach.call(heads, function (th, col) {
    th.addEventListener('click', function () {
      var asc = th.getAttribute('aria-sort') !== 'ascending';
      Array.prototype.forEach.call(heads, function (h) { h.removeAttribute('aria-sort'); });
      th.setAttribute('aria-sort', asc ? 'ascending' : 'descending');
      var body = table.tBodies[0];
      var rows = Array.prototype.slice.call(body.rows);
      rows.sort(function (a, b) {
        var x = a.cells[col].getAttribute('data-v'), y = b.cells[col].getAttribute('data-v');
        if (x === '' || y === '') { return (x === '') - (y === ''); }  /* blanks always last */
        var nx = Number(x), ny = Number(y);
        var c = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y);
        return asc ? c : -c;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
"""

_CSS = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1d2330;
       background: #f4f6f9; margin: 0; }
main { max-width: 1240px; margin: 0 auto; padding: 24px 28px 60px; }
header { background: #1d2b45; color: #fff; padding: 22px 28px; }
header h1 { margin: 0 0 4px; font-size: 22px; font-weight: 600; }
header p { margin: 0; opacity: .8; font-size: 13px; }
section { background: #fff; border-radius: 8px; box-shadow: 0 1px 3px rgba(0,0,0,.08);
          padding: 18px 22px; margin: 18px 0; }
h2 { font-size: 17px; margin: 0 0 12px; color: #1d2b45; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; }
.card { background: #f0f3f8; border-radius: 6px; padding: 10px 14px; min-width: 140px; }
.card b { display: block; font-size: 20px; font-variant-numeric: tabular-nums; }
.card span { font-size: 12px; color: #5b6475; text-transform: uppercase; letter-spacing: .04em; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-size: 13px; font-variant-numeric: tabular-nums; }
th, td { padding: 5px 10px; border-bottom: 1px solid #e3e7ee; text-align: right; white-space: nowrap; }
th { background: #eef1f6; position: sticky; top: 0; }
th:first-child, td:first-child, td.text { text-align: left; }
table.sortable th { cursor: pointer; user-select: none; }
table.sortable th:hover { background: #dfe5ef; }
th[aria-sort=ascending]::after { content: " \\25B2"; font-size: 10px; }
th[aria-sort=descending]::after { content: " \\25BC"; font-size: 10px; }
tr.best td { background: #fff6d6; font-weight: 600; }
tbody tr:hover td { background: #f3f7ff; }
img { max-width: 100%; height: auto; display: block; margin: 8px 0; }
.note { background: #fff4e5; border-left: 4px solid #f0a020; padding: 8px 12px; color: #5a4200; }
dl.facts { display: grid; grid-template-columns: max-content auto; gap: 4px 18px; margin: 0; font-size: 14px; }
dl.facts dt { color: #5b6475; } dl.facts dd { margin: 0; font-variant-numeric: tabular-nums; }
"""

# summary.json keys shown under Timing, with their labels.
_TIMING = {"mode": "mode", "workers": "workers (W)", "workers_per_trial": "workers per trial (K)",
           "concurrent_trials": "concurrent trials", "trials": "trials", "epochs": "epochs per trial",
           "search": "search", "scheduler": "scheduler", "nodes": "nodes",
           "wall_time_s": "search wall time (s)", "startup_s": "start-up until first trial trains (s)",
           "ray_init_s": "Ray start (s)", "command_time_s": "whole command (s)", "interrupted": "interrupted"}
# Columns of leaderboard.csv the table leaves out: raw epoch timestamps are shown as a timeline.
_HIDDEN = ("start_ts", "attempt_start_ts", "end_ts", "node_ip", "node")  # node: rank 0's, among `nodes`


def _figure_tag(fig, alt: str) -> str:
    """A matplotlib figure as an inline <img> (base64 PNG); closes the figure."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", facecolor="white")
    plt.close(fig)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _note(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


def _table(columns: list[str], rows: list[dict[str, Any]], best: str | None = None, key: str = "") -> str:
    """A sortable table; each cell keeps its raw value in data-v so sorting is numeric."""
    head = "".join(f'<th data-key="{html.escape(c)}">{html.escape(c)}</th>' for c in columns)
    body = []
    for row in rows:
        cls = ' class="best"' if best is not None and str(row.get(key)) == best else ""
        cells = []
        for c in columns:
            raw = row.get(c, "")
            raw = "" if raw is None else raw
            shown = short(raw)
            if c in ("node", "nodes"):  # Ray node ids are 56 hex digits: the first 8 tell them apart
                shown = ";".join(n[:8] + "…" if len(n) > 12 else n for n in shown.split(";"))
            text = ' class="text"' if number(raw) is None else ""
            cells.append(f'<td{text} data-v="{html.escape(str(raw))}" title="{html.escape(str(raw))}">'
                         f"{html.escape(shown)}</td>")
        body.append(f"<tr{cls}>{''.join(cells)}</tr>")
    return (f'<div class="scroll"><table class="sortable"><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table></div>")


def _facts(items: list[tuple[str, Any]]) -> str:
    return '<dl class="facts">' + "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(short(v))}</dd>"
                                          for k, v in items if v not in (None, "")) + "</dl>"


def _cards(items: list[tuple[str, Any]]) -> str:
    return '<div class="cards">' + "".join(f'<div class="card"><b>{html.escape(short(v))}</b>'
                                           f"<span>{html.escape(k)}</span></div>" for k, v in items) + "</div>"


# ---------------------------------------------------------------- figures


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _curves(series: dict[str, list[dict]], best: str | None) -> str:
    """val_dice and train_loss vs epoch, a line per trial (the best one drawn thick)."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    colours = plt.get_cmap("tab10" if len(series) <= 10 else "viridis")
    for i, (name, records) in enumerate(series.items()):
        epochs = [r["epoch"] for r in records]
        colour = colours(i if len(series) <= 10 else i / max(len(series) - 1, 1)) if len(series) > 1 else "#1d2b45"
        width, alpha = (2.6, 1.0) if name == best else (1.3, 0.75)
        for ax, key in zip(axes, ("val_dice", "train_loss")):
            ax.plot(epochs, [r.get(key) for r in records], marker="o", ms=3, lw=width, alpha=alpha,
                    color=colour, label=key if len(series) == 1 else name + ("  (best)" if name == best else ""))
        if len(series) == 1:  # one run: room for the per-region Dice and the validation loss
            from voxtune.viz import COLOURS

            for key in (k for k in records[0] if k.startswith("val_dice_")):
                region = key.replace("val_dice_", "")
                axes[0].plot(epochs, [r.get(key) for r in records], ls="--", lw=1.4,
                             color=COLOURS.get(region), label=region.replace("_", " "))
            axes[1].plot(epochs, [r.get("val_loss") for r in records], ls="--", lw=1.4, color="#c0392b",
                         label="val_loss")
    losses = "training and validation loss" if len(series) == 1 else "training loss"
    for ax, title in zip(axes, ("validation Dice (mean over regions)", losses)):
        ax.ticklabel_format(axis="y", useOffset=False)  # near-flat curves: plain values, no offset
        ax.set_title(title, fontsize=11)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    if len(series) == 1:
        for ax in axes:
            ax.legend(fontsize=8, framealpha=0.85, loc="best")
    elif len(series) <= 12:
        axes[1].legend(fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False)
    return _figure_tag(fig, "learning curves")


def _effects(rows: list[dict], searched: list[str], best: str | None) -> str:
    """Validation Dice per value of each searched hyperparameter: box + jittered points, or a scatter."""
    plt = _plt()
    done = [r for r in rows if number(r.get("val_dice")) is not None]
    cols = min(len(searched), 4)
    nrows = -(-len(searched) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.6 * cols, 3.2 * nrows), squeeze=False, sharey=True)
    rng = np.random.default_rng(0)  # fixed jitter: the same report twice gives the same picture
    for ax, key in zip(axes.flat, searched):
        values = [str(r.get(key, "")) for r in done]
        dice = np.array([number(r["val_dice"]) for r in done])
        is_best = np.array([r["trial_id"] == best for r in done])
        numeric = [number(v) for v in values]
        levels = sorted(set(values), key=lambda v: (number(v) is None, number(v) or 0, v))
        if len(levels) <= 8:
            groups = [dice[[v == level for v in values]] for level in levels]
            if max(len(g) for g in groups) >= 3:
                ax.boxplot(groups, positions=range(len(levels)), widths=0.5, showfliers=False,
                           medianprops={"color": "#1d2b45"})
            pos = np.array([levels.index(v) for v in values]) + rng.uniform(-0.12, 0.12, len(values))
            ax.set_xticks(range(len(levels)), [short(v) for v in levels])
            ax.set_xlim(-0.6, len(levels) - 0.4)
        else:  # a continuous search (uniform/loguniform): one point per trial
            pos = np.array([n if n is not None else np.nan for n in numeric])
            positive = pos[np.isfinite(pos)]
            if positive.size and positive.min() > 0 and positive.max() / positive.min() > 20:
                ax.set_xscale("log")
        ax.scatter(pos[~is_best], dice[~is_best], s=28, color="#3b6fb6", alpha=0.8, zorder=3)
        ax.scatter(pos[is_best], dice[is_best], s=90, marker="*", color="#e8a317", zorder=4, label="best")
        ax.set_title(key, fontsize=11)
        ax.grid(alpha=0.3, axis="y")
    for ax in list(axes.flat)[len(searched):]:
        ax.axis("off")
    for ax in axes[:, 0]:
        ax.set_ylabel("best validation Dice")
    fig.tight_layout()
    return _figure_tag(fig, "hyperparameter effects")


def _predictions(checkpoint: Path, cache_dir: Path, max_cases: int = 4) -> str:
    """FLAIR slice of a few validation cases with truth (solid) and prediction (dashed) contours."""
    import torch
    from matplotlib.lines import Line2D

    from voxtune.data.cache import case_entry, case_ids, read_manifest
    from voxtune.data.loader import CaseDataset
    from voxtune.train.evaluate import load_model
    from voxtune.train.metrics import dice_per_region, infer
    from voxtune.viz import COLOURS, NAMES, display_window, grey_slice, without_background

    plt = _plt()
    manifest = read_manifest(cache_dir)
    ids = case_ids(manifest, "val")[:max_cases] or case_ids(manifest, "test")[:max_cases]
    if not ids:
        return _note(f"The cache {cache_dir} has no validation or test cases to show.")
    model, state = load_model(checkpoint)
    regions = list(state["regions"])
    cases = CaseDataset(cache_dir, ids, divisor=model.divisor)  # padded as validation pads them
    fig, axes = plt.subplots(1, len(ids), figsize=(3.4 * len(ids), 3.9), squeeze=False)
    for i, (ax, cid) in enumerate(zip(axes[0], ids)):
        padded_image, padded_label = cases[i]
        entry = case_entry(manifest, cid)
        shape = entry["image_shape"][1:]
        crop = (slice(None), slice(0, shape[0]), slice(0, shape[1]), slice(0, shape[2]))
        with torch.no_grad():
            logits = infer(model, padded_image[None].float(), state["config"].get("patch_size"))
        logits = logits[(slice(None), *crop)]
        image, label = without_background(padded_image[crop].float().numpy(), entry), padded_label[crop].numpy()
        dice = dice_per_region(logits, torch.from_numpy(label[None]))[0].tolist()
        pred = (torch.sigmoid(logits[0]) > 0.5).numpy()
        # The slice with the most tumour in truth (or in the prediction when the truth has none).
        per_z = label[0].sum(axis=(0, 1)) if label[0].any() else pred[0].sum(axis=(0, 1))
        z = int(per_z.argmax()) if per_z.max() > 0 else shape[2] // 2
        ax.imshow(grey_slice(image[0, :, :, z], display_window(image[0])), cmap="gray", origin="lower",
                  vmin=0, vmax=1, interpolation="bilinear")
        for masks, style in ((label, "solid"), (pred, "dashed")):
            for mask, name in zip(masks[:, :, :, z], regions):
                if mask.any() and not mask.all():
                    ax.contour(mask.T.astype(float), levels=[0.5], colors=[COLOURS.get(name, (1, 0, 1))],
                               linewidths=1.4, linestyles=style)
        scores = "  ".join(f"{''.join(w[0] for w in n.split('_')).upper()} {d:.2f}" for n, d in zip(regions, dice))
        ax.set_title(f"{cid}  z={z}\nDice {scores}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    handles = [Line2D([], [], color=COLOURS.get(r, (1, 0, 1)), lw=2, label=NAMES.get(r, r)) for r in regions]
    handles += [Line2D([], [], color="k", lw=1.4, ls="solid", label="truth"),
                Line2D([], [], color="k", lw=1.4, ls="dashed", label="prediction")]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False, fontsize=9,
               bbox_to_anchor=(0.5, -0.04))
    fig.tight_layout()
    return _figure_tag(fig, "predictions on validation cases")


def _timeline(rows: list[dict]) -> str | None:
    """Each trial as a bar from start to end (seconds since the first start), packed into lanes."""
    spans = sorted((number(r.get("start_ts")), number(r.get("end_ts")), r["trial_id"]) for r in rows
                   if number(r.get("start_ts")) is not None and number(r.get("end_ts")) is not None)
    if not spans:
        return None
    plt = _plt()
    t0 = spans[0][0]
    lanes: list[float] = []  # end time of the last bar in each lane
    fig, ax = plt.subplots(figsize=(12, 0.5 + 0.45 * min(len(spans), 24)))
    for start, end, tid in spans:
        lane = next((i for i, e in enumerate(lanes) if e <= start + 1e-3), None)
        if lane is None:
            lanes.append(end)
            lane = len(lanes) - 1
        lanes[lane] = end
        ax.barh(lane, end - start, left=start - t0, height=0.7, color="#3b6fb6", alpha=0.85, edgecolor="white")
        ax.text(start - t0 + (end - start) / 2, lane, tid, ha="center", va="center", color="white", fontsize=8)
    ax.set_yticks(range(len(lanes)), [f"slot {i + 1}" for i in range(len(lanes))])
    ax.invert_yaxis()
    ax.set_xlabel("seconds since the first trial started")
    ax.set_title("trial timeline (concurrent trials side by side)", fontsize=11)
    ax.grid(alpha=0.3, axis="x")
    return _figure_tag(fig, "trial timeline")


def _find_bench(run: Path, bench: str | Path | None) -> Path | None:
    """bench.json from `bench` (a folder or the file), else RUN/bench.json or RUN/bench/bench.json."""
    if bench is not None:
        path = Path(bench)
        path = path / "bench.json" if path.is_dir() else path
        if not path.is_file():
            raise VoxtuneError(f"--bench {bench}: no bench.json there (run `voxtune bench` first)")
        if read_json(path) is None:
            raise VoxtuneError(f"--bench {path}: not valid JSON")
        return path
    return next((p for p in (run / "bench.json", run / "bench" / "bench.json") if p.is_file()), None)


def _bench_section(path: Path) -> str:
    runs = (read_json(path, {}) or {}).get("runs") or []
    parts = [f"<p>From <code>{html.escape(str(path))}</code>.</p>"]
    points = [r for r in runs if number(r.get("workers")) and number(r.get("speedup"))]
    if points:
        plt = _plt()
        fig, ax = plt.subplots(figsize=(6.5, 4.2))
        groups: dict[str, list] = {}
        for r in points:
            name = r.get("mode", "?") + (f" K={r['workers_per_trial']}" if r.get("mode") == "hybrid" else "")
            groups.setdefault(name, []).append((float(r["workers"]), float(r["speedup"])))
        top = max(w for g in groups.values() for w, _ in g)
        ax.plot([1, top], [1, top], color="grey", ls=":", label="ideal")
        for name, pts in sorted(groups.items()):
            pts.sort()
            ax.plot(*zip(*pts), marker="o", label=name)
        ax.set_xticks(sorted({w for g in groups.values() for w, _ in g}))
        ax.set_xlabel("workers")
        ax.set_ylabel("speed-up")
        ax.grid(alpha=0.3)
        ax.legend(frameon=False)
        ax.set_title("speed-up over one worker", fontsize=11)
        parts.append(_figure_tag(fig, "speed-up"))
    elif (path.parent / "speedup.png").is_file():
        data = base64.b64encode((path.parent / "speedup.png").read_bytes()).decode("ascii")
        parts.append(f'<img alt="speed-up" src="data:image/png;base64,{data}">')
    if runs:
        cols = [c for c in ("mode", "workers", "workers_per_trial", "wall_s", "speedup", "efficiency")
                if any(c in r for r in runs)]
        parts.append(_table(cols, runs))
    else:
        parts.append(_note(f"{path} lists no runs."))
    return "".join(parts)


# ---------------------------------------------------------------- pages


def _search_sections(run: Path, bench: Path | None) -> list[tuple[str, str]]:
    with open(run / "leaderboard.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    summary = read_json(run / "summary.json", {}) or {}
    settings = read_json(run / "search.json", {}) or {}
    best = read_json(run / "best.json")
    searched = summary.get("searched") or list(settings.get("space") or [])
    best_id = best.get("trial_id") if best else None
    out: list[tuple[str, str]] = []

    if best:
        val, test = best.get("validation", {}), best.get("test", {})
        cards = [("best trial", best_id), ("val Dice", val.get("val_dice")), ("test Dice", test.get("test_dice")),
                 ("best epoch", val.get("best_epoch")), ("trials", len(rows))]
        cards += [(k, v) for k, v in (best.get("searched") or {}).items()]
        regions = [(f"{split} Dice, {k.split('_dice_')[1].replace('_', ' ')}", v)
                   for split, metrics in (("val", val), ("test", test))
                   for k, v in metrics.items() if "_dice_" in k]
        out.append(("Best trial", _cards(cards) + "<p></p>" + _facts(regions)))
    else:
        out.append(("Best trial", _note("No best.json: the search has not finished (or every trial failed).")))

    columns = [c for c in (rows[0].keys() if rows else []) if c not in _HIDDEN]
    out.append(("Leaderboard", (_table(columns, rows, best_id, "trial_id") if rows else _note("No trials yet."))
                + "<p><small>Click a column header to sort.</small></p>"))

    series = {}
    for r in rows:
        records = read_json(run / "trials" / r["trial_id"] / "metrics.json", [])
        if records:
            series[r["trial_id"]] = records
    out.append(("Learning curves", _curves(series, best_id) if series else _note("No trial has finished an epoch.")))
    if searched and any(number(r.get("val_dice")) is not None for r in rows):
        out.append(("Hyperparameter effects", _effects(rows, searched, best_id)))

    cache = settings.get("cache_dir")
    if not best:
        pred = _note("No best trial yet, so no predictions.")
    elif not cache:
        pred = _note("search.json does not name the cache, so predictions cannot be shown.")
    else:
        cache_dir = next((p for p in (Path(cache), run / cache) if (p / "manifest.json").is_file()), None)
        if cache_dir is None:
            pred = _note(f"The cache {cache} (from search.json) is gone or moved, so the best trial's "
                         "predictions are not shown; re-run `voxtune prepare` there to bring them back.")
        else:
            try:
                pred = _predictions(run / best["checkpoint"], cache_dir)
            except (VoxtuneError, OSError, KeyError, ValueError) as exc:
                pred = _note(f"Predictions could not be drawn: {exc}")
    out.append(("Best trial on validation cases", pred))

    facts = [(label, summary.get(k)) for k, label in _TIMING.items()]
    status = summary.get("status")
    if isinstance(status, dict):
        facts.append(("status", ", ".join(f"{n} {s}" for s, n in status.items())))
    timing = _facts(facts) if summary else _note("No summary.json.")
    timeline = _timeline(rows)
    out.append(("Timing", timing + (timeline or "")))
    if bench is not None:
        out.append(("Speed-up (voxtune bench)", _bench_section(bench)))
    return out


def _train_sections(run: Path) -> list[tuple[str, str]]:
    records = read_json(run / "metrics.json", []) or []
    if not records:
        return [("Learning curves", _note(f"{run / 'metrics.json'} holds no finished epoch yet."))]
    best = max(records, key=lambda r: r.get("val_dice", -1))
    cards = [("best val Dice", best.get("val_dice")), ("best epoch", best.get("epoch")), ("epochs", len(records)),
             ("train time (s)", sum(r.get("epoch_time_s", 0.0) for r in records))]
    out = [("Summary", _cards(cards))]
    out.append(("Learning curves", _curves({run.name: records}, run.name)))
    columns = [c for c in records[0] if c not in ("workers",)]
    out.append(("Epochs", _table(columns, records, str(best.get("epoch")), "epoch")))
    try:
        import yaml

        config = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8")) or {}
        out.append(("Config", _facts(list(config.items()))))
    except (OSError, ValueError, AttributeError):
        pass
    return out


def write_report(run: str | Path, out: str | Path | None = None, bench: str | Path | None = None) -> Path:
    """Write the HTML report of `run` to `out` (default RUN/report.html) and return its path."""
    run = Path(run)
    if not run.is_dir():
        raise VoxtuneError(f"--run {run}: no such run folder")
    bench_path = _find_bench(run, bench)
    if (run / "leaderboard.csv").is_file():
        kind, sections = "search", _search_sections(run, bench_path)
    elif (run / "metrics.json").is_file():
        kind, sections = "train run", _train_sections(run)
        if bench_path is not None:
            sections.append(("Speed-up (voxtune bench)", _bench_section(bench_path)))
    else:
        raise VoxtuneError(f"--run {run}: neither leaderboard.csv (a search) nor metrics.json (a train run)")
    out = Path(out) if out is not None else run / "report.html"
    if out.is_dir():
        raise VoxtuneError(f"--out {out}: is a folder; give a FILE.html")
    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    body = "".join(f"<section><h2>{html.escape(title)}</h2>{content}</section>" for title, content in sections)
    page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>voxtune report: {html.escape(run.resolve().name)}</title><style>{_CSS}</style></head><body>"
            f"<header><h1>voxtune report: {html.escape(run.resolve().name)}</h1>"
            f"<p>{kind} · {html.escape(str(run.resolve()))} · generated {stamp}</p></header>"
            f"<main>{body}</main><script>{_SORT_JS}</script></body></html>\n")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(out)  # a reader never sees half a page
    return out
