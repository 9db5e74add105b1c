"""Where a trial process's start-up goes before its first epoch, part by part, each in a fresh process.

`voxtune tune` prints a search's start-up as Tune and the trial's process, torch and MONAI imports, and
model, data and checkpoint (summary.json `startup_breakdown`). This script splits those parts further,
in the order a trial's process meets them, each timed in a new Python process (nothing imported before
it but what the rows above it imported), alone on the machine:

    ray and ray.tune            what Tune's trial actor loads before the trial function runs
    torch
    scipy.signal, matplotlib.pyplot, pandas
                                optional packages MONAI imports at `import monai` when they are installed
                                (monai/__init__.py loads every submodule; monai.data.ultrasound_confidence_map
                                takes scipy.signal's hilbert, monai.utils.jupyter_utils matplotlib.pyplot,
                                monai.utils.profiling pandas); none of them is used by voxtune's training
    monai (the rest)
    voxtune.train.loop (the rest: TensorBoard's writer, voxtune's own modules)
    the first torch.optim.Adam  torch.optim.Optimizer.__init__ imports torch._dynamo on its first call
                                (torch/_compile.py, _disable_dynamo)
    build (model, data, loss)   voxtune.train.build.build on the bench's 32^3 cache, the optimizer's import paid

Medians of --repeats fresh processes, [min-max]. Run from the repository root:

    python benchmarks/startup_parts.py CACHE [--repeats 5]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys

from common import span

PROBE = r"""
import json, sys, time
parts = {}
def part(name, fn):
    t = time.perf_counter(); fn(); parts[name] = time.perf_counter() - t
def imp(*names):
    return lambda: [__import__(n) for n in names]
part("ray and ray.tune", imp("ray", "ray.tune"))
part("torch", imp("torch"))
part("scipy.signal, matplotlib.pyplot, pandas (MONAI's optional imports)",
     imp("scipy.signal", "matplotlib.pyplot", "pandas"))
part("monai (the rest)", imp("monai"))
part("voxtune.train.loop (the rest)", imp("voxtune.train.loop"))
import torch
part("the first torch.optim.Adam (imports torch._dynamo)",
     lambda: torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))]))
from voxtune.config import make_config
from voxtune.train.build import build
part("build: model, data, loss (optimizer import paid)",
     lambda: build(make_config({"batch_size": 4, "epochs": 1}), sys.argv[1], 0, 1, 1))
print("PARTS " + json.dumps(parts))
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("cache")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    runs: dict[str, list[float]] = {}
    for _ in range(args.repeats):
        out = subprocess.run([sys.executable, "-c", PROBE, args.cache], capture_output=True, text=True,
                             check=True).stdout
        for name, s in json.loads(next(line[6:] for line in out.splitlines() if line.startswith("PARTS "))).items():
            runs.setdefault(name, []).append(s)
    print(f"| part of a trial process's start-up | s, median of {args.repeats} fresh processes [min-max] |")
    print("|---|---:|")
    for name, values in runs.items():
        print(f"| {name} | {span(values, 2)} |")
    totals = [sum(v[i] for v in runs.values()) for i in range(args.repeats)]
    print(f"| **all, one process alone** | {span(totals, 2)} |")


if __name__ == "__main__":
    main()
