"""Shared fixtures: one tiny synthetic MSD dataset and its prepared caches, made once per session.

Session fixtures are shared by many tests: never modify them; copy with `msd_copy` first.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def msd_dir(tmp_path_factory) -> Path:
    """Synthetic MSD Task01 folder: 8 labelled cases + 2 test cases, 24^3, seed 0."""
    from voxtune.data.synthetic import make_dataset

    return make_dataset(tmp_path_factory.mktemp("msd") / "Task01_BrainTumour", cases=8,
                        shape=(24, 24, 24), seed=0, test_cases=2)


@pytest.fixture(scope="session")
def cache_dir(msd_dir, tmp_path_factory) -> Path:
    """Binary (whole tumour) cache of `msd_dir`: image [4, 24, 24, 21], label [1, 24, 24, 21]; split 70/15/15 seed 0."""
    from voxtune.data.prepare import prepare

    out = tmp_path_factory.mktemp("cache") / "cache"
    result = prepare(msd_dir, out)
    assert result.ok, result.failed
    return out


@pytest.fixture(scope="session")
def regions_cache_dir(msd_dir, tmp_path_factory) -> Path:
    """WT/TC/ET cache of `msd_dir`: label [3, 24, 24, 21]."""
    from voxtune.data.prepare import prepare

    out = tmp_path_factory.mktemp("cache_regions") / "cache"
    result = prepare(msd_dir, out, labels="regions")
    assert result.ok, result.failed
    return out


@pytest.fixture
def msd_copy(msd_dir, tmp_path) -> Path:
    """A private, writable copy of `msd_dir` for tests that damage files."""
    return Path(shutil.copytree(msd_dir, tmp_path / "Task01_BrainTumour"))


@pytest.fixture
def cache_copy(cache_dir, tmp_path) -> Path:
    """A private, writable copy of `cache_dir`."""
    return Path(shutil.copytree(cache_dir, tmp_path / "cache"))


@pytest.fixture(scope="session")
def regions_run(regions_cache_dir, tmp_path_factory) -> Path:
    """A 2-epoch `voxtune train` run on `regions_cache_dir` (shared by predict and report tests)."""
    from voxtune.cli import main

    out = tmp_path_factory.mktemp("regions_run") / "run"
    assert main(["train", "--cache", str(regions_cache_dir), "--out", str(out), "--epochs", "2",
                 "--threads", "1"]) == 0
    return out
