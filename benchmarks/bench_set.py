"""What the auto benchmark scripts share: the bench's 20-case 32^3 phantom set (bench_auto.sh makes the
same one: 10 train, 6 validation, 4 test cases) and the "median [min-max]" cell their tables print.
Imported by the scripts beside it (python puts benchmarks/ on the path of a script run from there)."""
from __future__ import annotations

import statistics
import subprocess
import sys
from pathlib import Path


def make_bench_set(work: Path) -> Path:
    """WORK/Task01_BrainTumour and its cache WORK/cache, made unless the cache is there; returns the cache."""
    voxtune = [sys.executable, "-m", "voxtune.cli"]
    if not (work / "cache").exists():
        subprocess.run([*voxtune, "synth", "--out", str(work / "Task01_BrainTumour"), "--cases", "20", "--shape",
                        "32", "32", "32", "--seed", "0"], check=True)
        subprocess.run([*voxtune, "prepare", "--source", str(work / "Task01_BrainTumour"), "--out",
                        str(work / "cache"), "--split", "0.5", "0.3", "0.2"], check=True)
    return work / "cache"


def span(values: list[float], digits: int) -> str:
    """median [min-max] of `values`, each with `digits` decimals."""
    return f"{statistics.median(values):.{digits}f} [{min(values):.{digits}f}-{max(values):.{digits}f}]"
