"""What the benchmark scripts share; not a benchmark itself. The shell scripts' twin is benchmarks/lib.sh.

    ROOT             the repository root (the folder above benchmarks/)
    VOXTUNE          the voxtune command of the repository's venv, ROOT/.venv/bin/voxtune
    voxtune_cli      the command line of `python -m voxtune.cli ARGS` in this Python
    voxtune          runs it (check=True: a failure raises CalledProcessError)
    src_env          this process's environment with ROOT/src first on PYTHONPATH (where voxtune is not
                     installed, as on the device machine)
    span             the "median [min-max]" cell the tables print
    print_result,    one JSON line "RESULT {...}" from a search run in a fresh process, and the
    results          parent's reading of them from that process's stdout

Imported by the scripts beside it (python puts benchmarks/ on the path of a script run from there; a
heredoc run from the repository root puts "benchmarks" on sys.path itself). Standard library only, so
that gpu_bench.py imports it on the device machine too; nnunet_baseline.py stays standalone on purpose.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VOXTUNE = str(ROOT / ".venv" / "bin" / "voxtune")
RESULT = "RESULT "


def voxtune_cli(*args: str) -> list[str]:
    """`python -m voxtune.cli ARGS` in this Python, as a command list."""
    return [sys.executable, "-m", "voxtune.cli", *args]


def voxtune(*args: str, **kwargs) -> subprocess.CompletedProcess:
    """Run `python -m voxtune.cli ARGS`; a non-zero exit raises. kwargs go to subprocess.run (stdout, env...)."""
    return subprocess.run(voxtune_cli(*args), check=True, **kwargs)


def src_env() -> dict[str, str]:
    """os.environ with ROOT/src put first on PYTHONPATH, for child processes to import voxtune from the tree."""
    return {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


def span(values: list[float], digits: int = 3, alone: bool = False) -> str:
    """median [min-max] of `values`, each with `digits` decimals; with alone=True one value is printed alone."""
    if alone and len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.median(values):.{digits}f} [{min(values):.{digits}f}-{max(values):.{digits}f}]"


def print_result(result: dict) -> None:
    """Print `result` as one "RESULT {json}" line, flushed, for the parent process to read."""
    print(RESULT + json.dumps(result), flush=True)


def results(stdout: str) -> Iterator[dict]:
    """The RESULT lines of a child's stdout, in order, as dicts."""
    for line in stdout.splitlines():
        if line.startswith(RESULT):
            yield json.loads(line[len(RESULT):])
