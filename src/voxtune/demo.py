"""`voxtune demo`: the main job end to end on this machine's CPUs, in a few minutes.

synth (12 phantom cases, 48^3) -> prepare -> an experiment-parallel search (lr x norm, 4 trials,
one trial per CPU) -> leaderboard, best trial on the test split, a case picture and the HTML
report. Re-running into the same folder reuses what is there (prepare skips finished cases; a
finished search is only re-reported).
"""
from __future__ import annotations

from pathlib import Path

from voxtune.layout import RunDir
from voxtune.parallel.space import validate_space

DEMO_SPACE = {"lr": {"grid": [1e-3, 5e-3]}, "norm": {"grid": ["bn", "gn"]}}


def run_demo(out: str | Path, epochs: int = 8, cases: int = 12, size: int = 48) -> int:
    from voxtune.data.cache import read_manifest
    from voxtune.data.prepare import prepare
    from voxtune.data.synthetic import make_dataset
    from voxtune.machine import usable_cpus
    from voxtune.parallel.outputs import format_leaderboard
    from voxtune.parallel.settings import SearchSettings
    from voxtune.parallel.tune import run_search
    from voxtune.report import write_report
    from voxtune.viz import visualize

    out = Path(out).resolve()
    msd, cache, run = out / "Task01_BrainTumour", out / "cache", out / "search"
    cpus = usable_cpus()

    print(f"[1/4] synthetic MSD Task01 dataset: {cases} cases at {size}^3 -> {msd}")
    if not (msd / "dataset.json").exists():
        make_dataset(msd, cases=cases, shape=(size, size, size), seed=0)
    print(f"[2/4] prepare -> {cache}")
    print("      " + prepare(msd, cache, workers=1).summary())

    print(f"[3/4] experiment-parallel search: 4 trials (lr x norm), {cpus} at once, {epochs} epochs each")
    if RunDir(run).search.exists():
        summary = run_search(run, resume=True)
    else:
        settings = SearchSettings(cache_dir=str(cache), mode="experiment", space=validate_space(DEMO_SPACE),
                                  workers=cpus, cpus_per_worker=1, base_config={"epochs": epochs})
        summary = run_search(run, settings)
    print(format_leaderboard(summary["rows"], summary["searched"]))

    print("[4/4] pictures and report")
    best_case = next(c["id"] for c in read_manifest(cache)["cases"]
                     if c["split"] == "val")
    picture = visualize(cache, best_case, out / f"{best_case}.png")
    report = write_report(run)
    print(f"""
done: {summary['trials']} trials; search wall time {summary['wall_time_s'] or 0:.0f}s, Ray and worker start-up
{summary['startup_s'] or 0:.0f}s. Where everything went:
  dataset      {msd}
  cache        {cache}
  leaderboard  {RunDir(run).leaderboard}
  best trial   {RunDir(run).best}  (its test-split Dice is in there)
  trials       {RunDir(run).trials_dir}/<trial_id>/  metrics.json, checkpoints/, tb/ (tensorboard --logdir {RunDir(run).trials_dir})
  picture      {picture}
  report       {report}""")
    return 0 if summary["status"].get("finished") else 1
