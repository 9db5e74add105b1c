"""A full disk, for real: a small tmpfs fills up under `voxtune prepare` and under a search's run folder.
One line naming the path and the space needed, no retries, every file already written still readable."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from voxtune.cli import main


@pytest.fixture
def small_disk(tmp_path):
    """A tmpfs mount point whose size the test sets with remount(size); needs root (CI runs as root)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or done.returncode}): needs root")

    def remount(size: str) -> None:
        subprocess.run(["mount", "-o", f"remount,size={size}", str(mount)], check=True)

    try:
        yield mount, remount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_prepare_on_a_full_disk_is_one_line_and_resumes(msd_dir, small_disk, capsys):
    from voxtune.data.cache import check_case, read_manifest

    disk, remount = small_disk
    cache = disk / "cache"
    assert main(["prepare", "--source", str(msd_dir), "--out", str(cache)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    assert str(cache / "cases") in err[0] and "no space left on its device" in err[0] and "to write" in err[0]
    finished = [json.loads(p.read_text()) for p in (cache / "cases").glob("*.json")]
    assert finished and not list((cache / "cases").glob("*.tmp-*"))
    for entry in finished:  # every case written before the disk filled is whole
        check_case(cache, entry)
    remount("8M")
    assert main(["prepare", "--source", str(msd_dir), "--out", str(cache)]) == 0
    out = capsys.readouterr().out
    assert f"skipped {len(finished)} already done" in out and len(read_manifest(cache)["cases"]) == 8


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["experiment", "data"])
def test_a_search_whose_run_folder_fills_up(mode, cache_dir, small_disk, tmp_path):
    """Checkpoints do not fit: each trial ends 'error' with the disk's one line, is not retried, and the
    command ends with one line too (no tracebacks, no Ray wrapper text, no colour codes)."""
    disk, remount = small_disk
    remount("1M")
    run = disk / "run"
    (tmp_path / "space.yaml").write_text("lr: {grid: [0.001, 0.005]}\n")
    done = subprocess.run([sys.executable, "-m", "voxtune.cli", "tune", "--cache", str(cache_dir), "--out", str(run),
                           "--mode", mode, "--workers", "2", "--space", str(tmp_path / "space.yaml"),
                           "--epochs", "2"], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "RAY_ADDRESS": "local"})
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("voxtune tune: error: ") and "no space left on its device" in last
    with open(run / "leaderboard.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2
    for row in rows:
        assert row["status"] == "error" and "no space left on its device" in row["reason"]
        assert "\x1b" not in row["reason"] and "Ray" not in row["reason"]
        assert json.loads((run / "trials" / row["trial_id"] / "trial.json").read_text())["attempts"] == 1
    assert json.loads((run / "search.json").read_text())["mode"] == mode  # still readable
    assert Path(run / "leaderboard.csv").stat().st_size > 0
