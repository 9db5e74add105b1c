"""--stage DIR: a node-local copy of the cache, checked file by file (voxtune.data.stage), and `train --stage`.
The Ray side (one stager per node, each rank reading its node's copy) runs in tests/test_tune.py's
two-node auto test."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import voxtune.data.cache as cache_mod
import voxtune.data.stage as stage_mod
from voxtune.cli import main
from voxtune.data.cache import MANIFEST, load_case, read_manifest, verify_cache
from voxtune.data.stage import stage_cache, stage_folder, unstage
from voxtune.errors import VoxtuneError
from voxtune.files import TMP_MARK


def _files(manifest: dict) -> list[str]:
    return [c["files"][k] for c in manifest["cases"] for k in ("image", "label", "foreground")]


def test_a_staged_copy_is_the_cache_file_for_file(cache_dir, tmp_path):
    done = stage_cache(cache_dir, tmp_path / "local")
    manifest = read_manifest(cache_dir)
    assert done.path == str(stage_folder(tmp_path / "local", cache_dir))
    assert done.files_copied == len(_files(manifest)) and done.files_reused == 0 and done.bytes_copied > 0
    assert (cache_dir / MANIFEST).read_bytes() == (stage_folder(tmp_path / "local", cache_dir) / MANIFEST).read_bytes()
    assert verify_cache(done.path) == (len(manifest["cases"]), [])
    cid = manifest["cases"][0]["id"]
    for a, b in zip(load_case(cache_dir, cid), load_case(done.path, cid)):
        np.testing.assert_array_equal(a, b)
    assert unstage(cache_dir, tmp_path / "local") == []  # nothing left behind
    assert list((tmp_path / "local").iterdir()) == []


def test_a_complete_copy_is_reused_and_a_damaged_file_copied_anew(cache_dir, tmp_path):
    first = stage_cache(cache_dir, tmp_path)
    again = stage_cache(cache_dir, tmp_path)
    assert again.path == first.path and again.files_copied == 0 and again.files_reused == first.files_copied
    rel = _files(read_manifest(cache_dir))[0]
    damaged = tmp_path / first.path / rel
    data = bytearray(damaged.read_bytes())
    data[-1] ^= 0xFF  # same size: only the sha256 on reuse can tell
    damaged.write_bytes(bytes(data))
    fixed = stage_cache(cache_dir, tmp_path)
    assert fixed.files_copied == 1 and damaged.read_bytes() == (cache_dir / rel).read_bytes()


def test_a_quick_reuse_trusts_the_verified_record_not_a_file_changed_since(cache_dir, tmp_path, monkeypatch):
    """bench stages once; its searches reuse the copy by each file's size and mtime as last verified (no
    hashing inside a timed search), and a file written since (a new mtime) is still copied anew."""
    first = stage_cache(cache_dir, tmp_path)
    hashed = []
    real = stage_mod.sha256_file
    monkeypatch.setattr(stage_mod, "sha256_file", lambda path: hashed.append(path) or real(path))
    again = stage_cache(cache_dir, tmp_path, quick=True)
    assert again.files_reused == first.files_copied and again.files_copied == 0 and hashed == []
    assert "as last verified" in again.note
    rel = _files(read_manifest(cache_dir))[0]
    damaged = tmp_path / first.path / rel
    data = bytearray(damaged.read_bytes())
    data[-1] ^= 0xFF
    damaged.write_bytes(bytes(data))
    fixed = stage_cache(cache_dir, tmp_path, quick=True)
    assert fixed.files_copied == 1 and damaged.read_bytes() == (cache_dir / rel).read_bytes()
    hashed.clear()
    assert stage_cache(cache_dir, tmp_path).files_reused == first.files_copied and len(hashed) == first.files_copied


def test_a_half_copy_left_by_a_dead_stager_is_never_trusted(cache_dir, tmp_path):
    done = stage_cache(cache_dir, tmp_path)
    folder = stage_folder(tmp_path, cache_dir)
    rel = _files(read_manifest(cache_dir))[1]
    src = (cache_dir / rel).read_bytes()
    (folder / rel).write_bytes(src[: len(src) // 2])  # cut short under its own name
    (folder / MANIFEST).unlink()  # the stager died before the manifest, which goes last
    (folder / (rel + f"{TMP_MARK}999")).write_bytes(src[:10])  # and its temporary file
    again = stage_cache(cache_dir, tmp_path)
    assert again.path == done.path and again.files_copied == 1
    assert (folder / rel).read_bytes() == src and not list(folder.rglob(f"*{TMP_MARK}*"))
    assert (folder / MANIFEST).read_bytes() == (cache_dir / MANIFEST).read_bytes()


def test_a_cache_prepared_again_replaces_its_staged_copy(cache_copy, tmp_path):
    stage_cache(cache_copy, tmp_path)
    folder = stage_folder(tmp_path, cache_copy)
    (folder / "cases" / "left-over.npy").write_bytes(b"old")
    manifest = json.loads((cache_copy / MANIFEST).read_text())
    manifest["seed"] = manifest.get("seed", 0) + 1  # a re-prepared cache: another manifest
    (cache_copy / MANIFEST).write_text(json.dumps(manifest))
    again = stage_cache(cache_copy, tmp_path)
    assert again.files_reused == 0 and again.files_copied == len(_files(manifest))
    assert not (folder / "cases" / "left-over.npy").exists()
    assert (folder / MANIFEST).read_bytes() == (cache_copy / MANIFEST).read_bytes()


def test_too_little_space_falls_back_to_the_shared_copy_with_one_line(cache_dir, tmp_path, monkeypatch):
    real = shutil.disk_usage
    monkeypatch.setattr(stage_mod.shutil, "disk_usage", lambda p: real(p)._replace(free=1000))
    done = stage_cache(cache_dir, tmp_path)
    assert done.path is None and done.files_copied == 0
    assert "staging needs" in done.note and "1000 free" in done.note and str(cache_dir.resolve()) in done.note
    assert not (stage_folder(tmp_path, cache_dir) / MANIFEST).exists()


def test_a_damaged_shared_file_is_refused_and_never_lands(cache_copy, tmp_path):
    rel = _files(read_manifest(cache_copy))[2]
    data = bytearray((cache_copy / rel).read_bytes())
    data[-1] ^= 0xFF
    (cache_copy / rel).write_bytes(bytes(data))
    with pytest.raises(VoxtuneError, match=f"{rel.split('/')[-1]}: checksum does not match the manifest while staging"):
        stage_cache(cache_copy, tmp_path)
    folder = stage_folder(tmp_path, cache_copy)
    assert not (folder / rel).exists() and not (folder / MANIFEST).exists()
    assert not list(folder.rglob(f"*{TMP_MARK}*"))


def test_stage_dir_expands_variables_on_the_node(cache_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("NODE_SCRATCH", str(tmp_path / "scratch"))
    assert stage_folder("$NODE_SCRATCH", cache_dir).parent == tmp_path / "scratch"


def test_train_reads_the_staged_copy_and_removes_it(cache_dir, tmp_path, monkeypatch, capsys):
    opened = []
    real = cache_mod._file
    monkeypatch.setattr(cache_mod, "_file", lambda c, e, k: opened.append(str(c)) or real(c, e, k))
    stage = tmp_path / "local"
    assert main(["train", "--cache", str(cache_dir), "--out", str(tmp_path / "run"), "--epochs", "1", "--threads", "1",
                 "--stage", str(stage)]) == 0
    folder = str(stage_folder(stage, cache_dir))
    assert opened and set(opened) == {folder}  # every case file the loaders opened was the local copy's
    assert f"stage: {folder}: " in capsys.readouterr().out
    assert list(stage.iterdir()) == []  # removed at the end (no --keep-stage)

    opened.clear()
    assert main(["train", "--cache", str(cache_dir), "--out", str(tmp_path / "run2"), "--epochs", "1", "--threads", "1",
                 "--stage", str(stage), "--keep-stage"]) == 0
    assert set(opened) == {folder} and (stage_folder(stage, cache_dir) / MANIFEST).is_file()


def test_keep_stage_without_stage_is_refused(cache_dir, tmp_path, capsys):
    assert main(["train", "--cache", str(cache_dir), "--out", str(tmp_path / "run"), "--keep-stage"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--keep-stage" in err[0] and "without --stage" in err[0]
    assert main(["tune", "--cache", str(cache_dir), "--out", str(tmp_path / "run"), "--mode", "experiment",
                 "--keep-stage"]) == 2
    assert "without --stage" in capsys.readouterr().err and not (tmp_path / "run").exists()


@pytest.mark.slow
def test_a_search_staging_a_damaged_cache_stops_with_one_line(cache_copy, tmp_path, capsys):
    rel = _files(read_manifest(cache_copy))[0]
    data = bytearray((cache_copy / rel).read_bytes())
    data[-1] ^= 0xFF  # found by the staging, before any trial opens the file
    (cache_copy / rel).write_bytes(bytes(data))
    space = tmp_path / "space.yaml"
    space.write_text("lr: {grid: [0.003]}\n")
    assert main(["tune", "--cache", str(cache_copy), "--out", str(tmp_path / "run"), "--mode", "experiment",
                 "--space", str(space), "--epochs", "1", "--stage", str(tmp_path / "local")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "checksum does not match the manifest while staging" in err[0] and rel.split("/")[-1] in err[0]
    assert not (tmp_path / "run" / "trials").exists() or not any((tmp_path / "run" / "trials").iterdir())
