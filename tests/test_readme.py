"""The README's own-data quick start, run as written: its one ```bash block, command by command, on a tiny
spleen-CT phantom. A flag renamed in the CLI, or mistyped in the README, fails here with the command and
its stderr.

The README's commands use relative folder names (`Task09_Spleen`, `spleen-cache`, ...); each one runs
here with the test's temporary folder as its working directory, so they land there. The test only
appends flags that shrink the work (a 2-trial space, 1 epoch, workers that fit a 2-core machine);
argparse keeps the last value of a repeated flag, and rejects any flag the README names that the CLI
does not know, so every flag of the README is still parsed as a user's shell would pass it."""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
VOXTUNE = Path(sys.executable).parent / "voxtune"  # the venv's entry point, as a user's shell finds it
SPACE = "lr: {grid: [0.003, 0.01]}\n"  # 2 trials
# Appended per verb to keep the whole quick start to seconds.
SMALLER = {"tune": ["--space", "space.yaml", "--epochs", "1", "--workers", "2", "--cpus-per-worker", "0.5",
                    "--set", "filter_start=4"]}


def quick_start() -> list[list[str]]:
    """The README's ```bash block, one argv per command line."""
    blocks = re.findall(r"^```bash\n(.*?)^```", README.read_text(), flags=re.M | re.S)
    assert len(blocks) == 1, f"README.md must hold exactly one ```bash block (the quick start), found {len(blocks)}"
    commands = [shlex.split(line, comments=True) for line in blocks[0].splitlines()]
    commands = [argv for argv in commands if argv]
    for argv in commands:
        assert argv[0] == "voxtune" and len(argv) > 1, f"not a voxtune command: {shlex.join(argv)}"
    return commands


def flag(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv[:-1] else None


def test_the_readme_quick_start_runs_as_written(tmp_path):
    commands = quick_start()
    verbs = [argv[1] for argv in commands]
    assert {"prepare", "tune", "predict", "report"} <= set(verbs), verbs
    source = flag(commands[verbs.index("prepare")], "--source")
    assert source, "the quick start's prepare names its dataset with --source"

    # A private Ray instance: without RAY_ADDRESS=local, ray.init() would join any cluster on this machine.
    env = {**os.environ, "RAY_ADDRESS": "local"}
    (tmp_path / "space.yaml").write_text(SPACE)
    synth = ["voxtune", "synth", "--task", "spleen-ct", "--out", source, "--cases", "6", "--test-cases", "1",
             "--shape", "24", "24", "16"]
    for argv in [synth, *commands]:
        run = [str(VOXTUNE), *argv[1:], *SMALLER.get(argv[1], [])]
        done = subprocess.run(run, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, (f"`{shlex.join(argv)}` exited {done.returncode} (run as "
                                      f"`{shlex.join(run[1:])}` in {tmp_path}):\n{done.stderr[-3000:]}")

    predict = commands[verbs.index("predict")]
    labels = sorted((tmp_path / flag(predict, "--out")).glob("*.nii.gz"))
    assert len(labels) == 1, f"predict wrote {labels}, expected the one imagesTs case's label map"
    report = commands[verbs.index("report")]
    page = tmp_path / (flag(report, "--out") or Path(flag(report, "--run"), "report.html"))
    assert page.is_file() and "<html" in page.read_text()[:2000].lower(), page
