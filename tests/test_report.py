"""`voxtune report`: one self-contained HTML page, checked as text and rendered in headless Chromium."""
from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from voxtune.cli import main

CHROMIUM = Path("/usr/bin/chromium")
needs_chromium = pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium is absent; install the "
                                    "Debian package `chromium` (listed in .ci/apt-packages.txt)")
IMG = re.compile(r'<img alt="[^"]*" src="data:image/png;base64,[A-Za-z0-9+/=]{200,}">')


def _chromium(page: Path, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    """Run headless Chromium on `page` offline; console messages go to stderr as `INFO:CONSOLE`."""
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
             f"--user-data-dir={tmp_path / 'chromium-profile'}", "--enable-logging=stderr", "--v=0"]
    return subprocess.run([str(CHROMIUM), *flags, *extra, page.as_uri()], capture_output=True, text=True,
                          timeout=180)


def _console(stderr: str) -> list[str]:
    """Console messages (errors, uncaught exceptions, failed loads); the report should log none."""
    return [line for line in stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]


def _sorted_by_click(page: Path, tmp_path: Path, header: str, clicks: int = 1) -> str:
    """The DOM after clicking `header` (a copy of the page with the clicks appended as a script)."""
    clicked = tmp_path / "clicked.html"
    text = page.read_text(encoding="utf-8")
    click = f"<script>document.querySelector('th[data-key=\"{header}\"]').click();</script>" * clicks
    clicked.write_text(text.replace("</body>", click + "</body>"), encoding="utf-8")
    result = _chromium(clicked, tmp_path, "--dump-dom")
    assert result.returncode == 0 and not _console(result.stderr), _console(result.stderr)
    return result.stdout


def _column(dom: str, key: str) -> list[str]:
    """Raw values of the first table's column `key`, in the rendered row order."""
    table = dom.split("<table", 1)[1].split("</table>", 1)[0]
    col = re.findall(r'<th data-key="([^"]*)"', table).index(key)
    rows = re.findall(r"<tr[^>]*>(.*?)</tr>", table.split("<tbody>", 1)[1])
    return [re.findall(r'<td[^>]*data-v="([^"]*)"', row)[col] for row in rows]


@pytest.fixture(scope="module")
def search_run(regions_cache_dir, tmp_path_factory):
    """A 2-trial experiment-parallel search, 1 epoch each (about 40 s: the one Ray start of this file)."""
    root = tmp_path_factory.mktemp("report_search")
    (root / "space.yaml").write_text("lr: {grid: [0.001, 0.005]}\n")
    # A child process keeps Ray out of pytest's process (and its captured, unpicklable stdout);
    # RAY_ADDRESS=local starts a private instance instead of joining one another test left running.
    result = subprocess.run([sys.executable, "-m", "voxtune.cli", "tune", "--cache", str(regions_cache_dir),
                             "--out", str(root / "run"), "--mode", "experiment", "--space", str(root / "space.yaml"),
                             "--epochs", "1", "--workers", "2"], capture_output=True, text=True, timeout=400,
                            env={**os.environ, "RAY_ADDRESS": "local"})
    assert result.returncode == 0, result.stderr[-3000:]
    return root / "run"


def test_regions_run_report(regions_run, tmp_path, capsys):
    out = tmp_path / "train.html"
    assert main(["report", "--run", str(regions_run), "--out", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    page = out.read_text(encoding="utf-8")
    assert "Learning curves" in page and len(IMG.findall(page)) >= 1
    assert "http://" not in page and "https://" not in page  # nothing to fetch on an offline machine


@needs_chromium
def test_train_report_renders_and_sorts(regions_run, tmp_path):
    out = tmp_path / "train.html"
    assert main(["report", "--run", str(regions_run), "--out", str(out)]) == 0
    dom = _sorted_by_click(out, tmp_path, "epoch")  # already ascending: one click keeps 1, 2
    assert _column(dom, "epoch") == ["1", "2"]


def test_bad_report_inputs_exit_2(regions_run, msd_dir, tmp_path, capsys):
    for argv, expected in ((["--run", str(tmp_path / "none")], "no such run folder"),
                           (["--run", str(msd_dir)], "neither leaderboard.csv"),
                           (["--run", str(regions_run), "--bench", str(tmp_path)], "no bench.json")):
        assert main(["report", *argv]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and expected in err, err


@pytest.mark.slow
def test_search_report(search_run, tmp_path):
    bench = tmp_path / "bench"
    bench.mkdir()
    (bench / "bench.json").write_text(json.dumps({"runs": [
        {"mode": "experiment", "workers": w, "workers_per_trial": 1, "wall_s": 60 / s, "speedup": s,
         "efficiency": s / w} for w, s in ((1, 1.0), (2, 1.8))]}))
    out = tmp_path / "report.html"
    assert main(["report", "--run", str(search_run), "--out", str(out), "--bench", str(bench)]) == 0
    page = out.read_text(encoding="utf-8")
    with open(search_run / "leaderboard.csv", newline="") as f:
        trials = [row["trial_id"] for row in csv.DictReader(f)]
    assert len(trials) == 2 and all(f'data-v="{t}"' in page for t in trials)
    # curves, hyperparameter effects, predictions, timeline, speed-up
    assert len(IMG.findall(page)) >= 5, len(IMG.findall(page))
    for title in ("Leaderboard", "Hyperparameter effects", "Best trial on validation cases", "Timing", "Speed-up"):
        assert title in page
    assert 'class="note"' not in page  # nothing missing: cache present, best.json written

    if CHROMIUM.exists():
        shot = tmp_path / "report.png"
        result = _chromium(out, tmp_path, f"--screenshot={shot}", "--window-size=1400,2400")
        assert result.returncode == 0 and shot.stat().st_size > 10_000
        assert not _console(result.stderr), _console(result.stderr)
        # lr is the column whose values surely differ (val_dice may tie after one epoch)
        for clicks, expected in ((1, ["0.001", "0.005"]), (2, ["0.005", "0.001"])):
            dom = _sorted_by_click(out, tmp_path, "lr", clicks)
            assert _column(dom, "lr") == expected


@pytest.mark.slow
def test_search_report_without_cache(search_run, tmp_path):
    """A deleted cache becomes a note in the page, not a failure."""
    run = Path(shutil.copytree(search_run, tmp_path / "run", ignore=shutil.ignore_patterns("ray")))
    settings = json.loads((run / "search.json").read_text())
    settings["cache_dir"] = str(tmp_path / "deleted-cache")
    (run / "search.json").write_text(json.dumps(settings))
    assert main(["report", "--run", str(run)]) == 0
    page = (run / "report.html").read_text(encoding="utf-8")
    assert "is gone or moved" in page and "Learning curves" in page


def test_numbers_are_shown_short_and_ids_as_written():
    """Trial ids are not numbers, though Python's float() reads 94057_00001 as 9405700001."""
    from voxtune.formatting import number, short

    assert short("94057_00001") == "94057_00001" and number("94057_00001") is None
    assert short(0.0005) == "0.0005" and short("0.123456") == "0.1235" and short("12.0") == "12"
    assert short(None) == "" and short(True) == "true" and short("1e-4") == "0.0001"
    assert number("nan") is None and number("-2.5") == -2.5


def test_report_shows_trial_ids_as_written(tmp_path):
    from voxtune.report import write_report

    run = tmp_path / "run"
    run.mkdir()
    fields = ["trial_id", "lr", "status", "epochs", "val_dice"]
    with open(run / "leaderboard.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerow({"trial_id": "94057_00001", "lr": "0.001", "status": "finished", "epochs": 2,
                         "val_dice": 0.5})
    (run / "summary.json").write_text(json.dumps({"searched": ["lr"], "mode": "experiment"}))
    text = write_report(run).read_text()
    assert "94057_00001" in text and "9405700001" not in text
