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
from pathlib import Path
from typing import Any

from voxtune.errors import VoxtuneError
from voxtune.data.cache import MANIFEST
from voxtune.files import read_json
from voxtune.layout import BenchDir, RunDir, TrainDir
from voxtune.formatting import number, short
from voxtune.report_figures import curves, effects, figure_tag, note, predictions, pyplot, timeline

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
           "ray_init_s": "Ray start (s)", "command_time_s": "whole command (s)", "interrupted": "interrupted",
           "grown_trials": "trials that grew (auto)"}
# Columns of leaderboard.csv the table leaves out: raw epoch timestamps are shown as a timeline.
_HIDDEN = ("start_ts", "attempt_start_ts", "end_ts", "node_ip", "node")  # node: rank 0's, among `nodes`


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


def _find_bench(run: Path, bench: str | Path | None) -> Path | None:
    """bench.json from `bench` (a folder or the file), else RUN/bench.json or RUN/bench/bench.json."""
    if bench is not None:
        path = Path(bench)
        path = BenchDir(path).bench_json if path.is_dir() else path
        if not path.is_file():
            raise VoxtuneError(f"--bench {bench}: no bench.json there (run `voxtune bench` first)")
        if read_json(path) is None:
            raise VoxtuneError(f"--bench {path}: not valid JSON")
        return path
    return next((p for p in (BenchDir(run).bench_json, BenchDir(run / "bench").bench_json) if p.is_file()), None)


def _bench_section(path: Path) -> str:
    runs = (read_json(path, {}) or {}).get("runs") or []
    parts = [f"<p>From <code>{html.escape(str(path))}</code>.</p>"]
    points = [r for r in runs if number(r.get("workers")) and number(r.get("speedup")) and r.get("mode")]
    if any(r["workers"] == 1 for r in points):
        from voxtune.bench.tables import draw_speedup

        fig, ax = pyplot().subplots(figsize=(6.5, 4.2))
        draw_speedup(ax, points)
        ax.set_title("speed-up over one worker", fontsize=11)
        parts.append(figure_tag(fig, "speed-up"))
    elif BenchDir(path.parent).plot.is_file():
        data = base64.b64encode(BenchDir(path.parent).plot.read_bytes()).decode("ascii")
        parts.append(f'<img alt="speed-up" src="data:image/png;base64,{data}">')
    if runs:
        cols = [c for c in ("mode", "workers", "workers_per_trial", "wall_s", "speedup", "efficiency")
                if any(c in r for r in runs)]
        parts.append(_table(cols, runs))
    else:
        parts.append(note(f"{path} lists no runs."))
    return "".join(parts)


# ---------------------------------------------------------------- pages


def _folds_table(best: dict[str, Any]) -> str:
    """The best config's fold models (validation on their own fold, test) and their ensemble's test score."""
    rows = [{"model": f"fold {f['fold']}", "val Dice (its fold)": f.get("val_dice"), "best epoch": f.get("best_epoch"),
             "test Dice": (f.get("test") or {}).get("test_dice"), "checkpoint": f.get("checkpoint")}
            for f in best["folds"]]
    val = best.get("validation", {})
    rows.append({"model": f"ensemble of {len(rows)}", "val Dice (its fold)": val.get("val_dice"),
                 "best epoch": "", "test Dice": (best.get("test") or {}).get("test_dice"),
                 "checkpoint": "mean of the folds' probabilities"})
    return (_table(list(rows[0]), rows) + "<p><small>The ensemble's val Dice is the folds' mean (each fold model "
            "on the cases it never trained on); `voxtune predict --run RUN` uses the ensemble, --fold i one model."
            "</small></p>")


def _search_sections(run: Path, bench: Path | None) -> list[tuple[str, str]]:
    layout = RunDir(run)
    with open(layout.leaderboard, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    summary = read_json(layout.summary, {}) or {}
    settings = read_json(layout.search, {}) or {}
    best = read_json(layout.best)
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
                   for k, v in metrics.items() if "_dice_" in k and k not in ("val_dice_std", "val_dice_folds")]
        out.append(("Best trial", _cards(cards) + "<p></p>" + _facts(regions)))
        if best.get("folds"):
            out.append(("Cross-validation folds", _folds_table(best)))
    else:
        out.append(("Best trial", note("No best.json: the search has not finished (or every trial failed).")))

    columns = [c for c in (rows[0].keys() if rows else []) if c not in _HIDDEN]
    out.append(("Leaderboard", (_table(columns, rows, best_id, "trial_id") if rows else note("No trials yet."))
                + "<p><small>Click a column header to sort.</small></p>"))

    series = {}
    for r in rows:
        records = read_json(layout.trial(r["trial_id"]).metrics, [])
        if records:
            series[r["trial_id"]] = records
    out.append(("Learning curves", curves(series, best_id) if series else note("No trial has finished an epoch.")))
    if searched and any(number(r.get("val_dice")) is not None for r in rows):
        out.append(("Hyperparameter effects", effects(rows, searched, best_id)))

    cache = settings.get("cache_dir")
    if not best:
        pred = note("No best trial yet, so no predictions.")
    elif not cache:
        pred = note("search.json does not name the cache, so predictions cannot be shown.")
    else:
        cache_dir = next((p for p in (Path(cache), run / cache) if (p / MANIFEST).is_file()), None)
        if cache_dir is None:
            pred = note(f"The cache {cache} (from search.json) is gone or moved, so the best trial's "
                         "predictions are not shown; re-run `voxtune prepare` there to bring them back.")
        else:
            try:
                # A fold model trained on the cache's val cases but one fold's: it is shown on test cases.
                pred = predictions(run / best["checkpoint"], cache_dir,
                                   splits=("test",) if best.get("folds") else ("val", "test"))
            except (VoxtuneError, OSError, KeyError, ValueError) as exc:
                pred = note(f"Predictions could not be drawn: {exc}")
    out.append(("Best fold model on test cases" if best and best.get("folds") else "Best trial on validation cases",
                pred))

    facts = [(label, summary.get(k)) for k, label in _TIMING.items()]
    status = summary.get("status")
    if isinstance(status, dict):
        facts.append(("status", ", ".join(f"{n} {s}" for s, n in status.items())))
    timing = _facts(facts) if summary else note("No summary.json.")
    out.append(("Timing", timing + (timeline(rows) or "")))
    if bench is not None:
        out.append(("Speed-up (voxtune bench)", _bench_section(bench)))
    return out


def _train_sections(run: Path) -> list[tuple[str, str]]:
    records = read_json(TrainDir(run).metrics, []) or []
    if not records:
        return [("Learning curves", note(f"{TrainDir(run).metrics} holds no finished epoch yet."))]
    best, last = max(records, key=lambda r: r.get("val_dice", -1)), records[-1]
    cards = [("best val Dice", best.get("val_dice")), ("best epoch", best.get("epoch"))]
    if "cv_dice" in last:  # `voxtune train --folds K`: the folds' bests, each fold model at its own best epoch
        cards = [("cross-validated val Dice", last["cv_dice"]), ("spread (sd)", last["cv_dice_std"]),
                 ("folds' best", ", ".join(f"{d:.3f}" for d in last["fold_best_dice"]))]
    cards += [("epochs", len(records)), ("train time (s)", sum(r.get("epoch_time_s", 0.0) for r in records))]
    out = [("Summary", _cards(cards))]
    out.append(("Learning curves", curves({run.name: records}, run.name)))
    columns = [c for c, v in records[0].items() if c != "workers" and not isinstance(v, list)]
    out.append(("Epochs", _table(columns, records, str(best.get("epoch")), "epoch")))
    try:
        import yaml

        config = yaml.safe_load(TrainDir(run).config.read_text(encoding="utf-8")) or {}
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
    if RunDir(run).leaderboard.is_file():
        kind, sections = "search", _search_sections(run, bench_path)
    elif TrainDir(run).metrics.is_file():
        kind, sections = "train run", _train_sections(run)
        if bench_path is not None:
            sections.append(("Speed-up (voxtune bench)", _bench_section(bench_path)))
    else:
        raise VoxtuneError(f"--run {run}: neither leaderboard.csv (a search) nor metrics.json (a train run)")
    out = Path(out) if out is not None else RunDir(run).report
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
