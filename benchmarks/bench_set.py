"""What carry_over.py and prestart.py share: the bench's 20-case 32^3 phantom set (bench_auto.sh, bench_cpu.sh
and rank_pairs.sh make the same one with lib.sh's bench_phantoms: 10 train, 6 validation, 4 test cases) and
the bench's 4-trial search space. The "median [min-max]" cell their tables print is common.span.
Imported by the scripts beside it (python puts benchmarks/ on the path of a script run from there)."""
from __future__ import annotations

from pathlib import Path

from common import voxtune

SPACE = {"lr": {"grid": [0.001, 0.005]}, "norm": {"grid": ["bn", "gn"]}}  # lr {1e-3, 5e-3} x norm {bn, gn}


def make_bench_set(work: Path) -> Path:
    """WORK/Task01_BrainTumour and its cache WORK/cache, made unless the cache is there; returns the cache."""
    if not (work / "cache").exists():
        voxtune("synth", "--out", str(work / "Task01_BrainTumour"), "--cases", "20", "--shape", "32", "32", "32",
                "--seed", "0")
        voxtune("prepare", "--source", str(work / "Task01_BrainTumour"), "--out", str(work / "cache"), "--split",
                "0.5", "0.3", "0.2")
    return work / "cache"
