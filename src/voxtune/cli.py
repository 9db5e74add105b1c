"""The `voxtune` command. Each verb parses its flags and calls one library function.

Any `VoxtuneError` (bad input the user can fix) becomes one line on stderr and exit 2;
Ctrl-C exits 130. Heavy imports (torch, ray) happen inside the verbs so `--help` is fast.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from voxtune.data.commands import data_verbs
from voxtune.errors import VoxtuneError
from voxtune.parallel.modes import DEFAULT_RECIPE, HYBRID_K, RECIPES
from voxtune.supervise import CHILD_ENV


def _train_config(args: argparse.Namespace):
    """The TrainConfig of --config, then each --set key=value, then --epochs."""
    from voxtune.config import load_config, parse_overrides

    overrides = parse_overrides(args.set)
    if args.epochs is not None:
        overrides["epochs"] = args.epochs
    if getattr(args, "folds", None) is not None:
        overrides["folds"] = args.folds
    return load_config(args.config, overrides)


def cmd_train(args: argparse.Namespace) -> int:
    from voxtune.train.loop import fit

    from voxtune.data.stage import staged

    cfg = _train_config(args)
    with staged(args.cache, args.stage, args.keep_stage, log=print) as cache:
        summary = fit(cfg, cache, args.out, threads=args.threads, log=print)
    if "folds" in summary:
        last = summary["metrics"][-1] if summary["metrics"] else {}
        best = (f"cross-validated val_dice {summary['best_val_dice']:.4f} +- {last.get('cv_dice_std', 0.0):.4f} "
                f"(folds: {', '.join(f'{d:.4f}' for d in last.get('fold_best_dice', []))})")
    else:
        best = f"best val_dice {summary['best_val_dice']:.4f} at epoch {summary['best_epoch']}"
    print(f"{best}; {summary['epochs']} epochs in {summary['train_time_s']:.1f}s; run in {args.out}")
    return 0


def _search_settings(args: argparse.Namespace):
    from voxtune.parallel.space import load_space
    from voxtune.parallel.settings import SearchSettings

    return SearchSettings(cache_dir=args.cache, mode=args.mode, space=load_space(args.space), search=args.search,
                          num_samples=args.num_samples, scheduler=args.scheduler, workers=args.workers,
                          workers_per_trial=args.workers_per_trial, cpus_per_worker=args.cpus_per_worker,
                          gpus_per_worker=args.gpus_per_worker, base_config=_train_config(args).to_dict(),
                          ddp_recipe=args.ddp_recipe, auto_regroup_s=args.auto_regroup_s, stage=args.stage,
                          keep_stage=args.keep_stage)


RESUME_KEEPS = {"verb", "func", "out", "resume", "address"}  # what `tune --resume` may take: where and which cluster


def _resume_conflicts(args: argparse.Namespace) -> list[str]:
    """The flags of a `tune --resume` that ask for something other than the saved search (its search.json
    decides: a flag repeated with its saved value is fine, any other would be silently ignored)."""
    from voxtune.config import load_config, parse_overrides
    from voxtune.data.stage import stage_arg
    from voxtune.parallel.space import load_space
    from voxtune.parallel.tune import saved_settings

    defaults = vars(build_parser().parse_args(["tune", "--out", args.out]))
    given = {k: v for k, v in vars(args).items() if k not in RESUME_KEEPS and v != defaults[k]}
    if not given:
        return []
    saved = saved_settings(args.out)
    base = saved.base_config
    same = {"cache": lambda v: str(Path(v).resolve()) == saved.cache_dir,
            "space": lambda v: load_space(v) == saved.space,
            "stage": lambda v: stage_arg(v, False) == saved.stage,
            "config": lambda v: load_config(v, parse_overrides(args.set)).to_dict() == base,
            "set": lambda v: all(base.get(k) == x for k, x in parse_overrides(v).items()),
            "epochs": lambda v: base.get("epochs") == v, "folds": lambda v: base.get("folds") == v}
    return [f"--{k.replace('_', '-')}" for k, v in given.items()
            if not (same[k](v) if k in same else getattr(saved, k) == v)]


def cmd_tune(args: argparse.Namespace) -> int:
    from voxtune.layout import RunDir
    from voxtune.parallel.outputs import format_leaderboard, search_lines
    from voxtune.parallel.tune import resume_hint, run_search

    if not args.resume and (args.cache is None or args.mode is None):
        raise VoxtuneError("--cache and --mode are required (or --resume to continue the search in --out)")
    if args.resume and (given := _resume_conflicts(args)):
        raise VoxtuneError(f"--resume continues the search as {RunDir(args.out).search} saved it; {', '.join(given)} "
                           "differ from it and would be ignored: drop them (or start a new search in another --out)")
    settings = None if args.resume else _search_settings(args)
    summary = run_search(args.out, settings, address=args.address, resume=args.resume)
    print(format_leaderboard(summary["rows"], summary["searched"]))
    if summary["interrupted"]:
        print(resume_hint(args.out), file=sys.stderr)
        return 130
    if not any(summary["status"].get(k) for k in ("finished", "stopped")):
        reasons = {r["reason"] for r in summary["rows"] if r["reason"]}
        raise VoxtuneError(f"all {summary['trials']} trials failed; "
                           f"{'; '.join(sorted(reasons)) or f'see {RunDir(args.out).leaderboard}'}")
    print("\n".join(search_lines(summary, args.out)))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from voxtune.predict import predict

    if (args.run is None) == (args.checkpoint is None):
        raise VoxtuneError("give exactly one of --run RUN or --checkpoint FILE")
    predict(run=args.run, checkpoint=args.checkpoint, source=args.input, out=args.out, label=args.label,
            overlap=args.overlap, fold=args.fold)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from voxtune.report import write_report

    path = write_report(args.run, out=args.out, bench=args.bench)
    print(f"wrote {path}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from voxtune.bench.benchmark import run_bench

    base = _train_config(args).to_dict()
    run_bench(args.cache, args.out, workers=args.workers, modes=args.modes, trials=args.trials, space=args.space,
              workers_per_trial=args.workers_per_trial, cpus_per_worker=args.cpus_per_worker,
              gpus_per_worker=args.gpus_per_worker, base_config=base, address=args.address,
              recipes=args.ddp_recipe, repeats=args.repeats, target_dice=args.target_dice, scheduler=args.scheduler,
              stage=args.stage, keep_stage=args.keep_stage)
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from voxtune.bench.plan import run_check, run_plan

    if args.check:
        run_check(args.calibration, args.check, as_json=args.json)
        return 0
    if args.paper:
        from voxtune.bench.plan import format_paper_auto, paper_auto

        rows = paper_auto()
        print(json.dumps(rows, indent=2) if args.json else format_paper_auto(rows))
        return 0
    if args.workers is None or args.trials is None:
        raise VoxtuneError("plan needs --workers N and --trials M (or --check BENCH.json with --calibration)")
    run_plan(workers=args.workers, trials=args.trials, calibration=args.calibration,
             gpus_per_node=args.gpus_per_node, as_json=args.json, sweep=args.sweep, epochs=args.epochs)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from voxtune.demo import run_demo

    return run_demo(args.out, epochs=args.epochs)


def _config_flags(p: argparse.ArgumentParser, epochs: int | None, folds: bool = True) -> None:
    """The train config's flags (train, tune, bench); _train_config reads them."""
    p.add_argument("--config", help="train config YAML, or 'paper' (the published recipe)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a train-config key (repeatable)")
    p.add_argument("--epochs", type=int, default=epochs, help="epochs per trial" + (f" (default {epochs})" if epochs
                                                                                     else ""))
    if folds:
        p.add_argument("--folds", type=int, help="K >= 2: cross-validate, K fold models per config on the train and "
                       "val cases pooled, ranked by their mean (default 1: the cache's split)")


def _search_flags(p: argparse.ArgumentParser) -> None:
    """The flags a search and a bench share: the space and where its workers come from."""
    p.add_argument("--space", default="paper", help="'paper' (32-trial grid) or a search-space YAML")
    p.add_argument("--workers-per-trial", type=int, help=f"K: DDP workers per trial (hybrid; bench's default {HYBRID_K})")
    p.add_argument("--cpus-per-worker", type=float, default=1.0)
    p.add_argument("--gpus-per-worker", type=float, default=0.0, help="fractions pack trials on one GPU")
    p.add_argument("--address", help="join a running Ray cluster (multi-node), e.g. HEAD_IP:6379")


def _stage_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--stage", metavar="DIR", help="read a copy of the cache in this node-local folder ($VARS expand per node)")
    p.add_argument("--keep-stage", action="store_true", help="leave the staged copy for the next run to reuse")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="voxtune",
        description="Distributed hyperparameter tuning for 3D medical image segmentation.")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    data_verbs(sub)
    _training_verbs(sub)
    _result_verbs(sub)
    return parser


def _training_verbs(sub) -> None:
    """Training and searching: train, tune, bench, plan."""
    p = sub.add_parser("train", help="one training run on one worker")
    p.add_argument("--cache", required=True, help="cache folder made by `voxtune prepare`")
    p.add_argument("--out", required=True, help="run folder (re-running into it resumes)")
    _config_flags(p, epochs=None)
    p.add_argument("--threads", type=int, help="torch CPU threads (default: the CPUs this process may use)")
    _stage_flags(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("tune", help="hyperparameter search on Ray: experiment, data, hybrid or auto parallelism")
    p.add_argument("--cache", help="cache folder made by `voxtune prepare`")
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--mode", help="experiment | data | hybrid | auto (trials start on one worker each; a worker "
                                  "no waiting trial can use joins a running trial)")
    p.add_argument("--search", default="grid", help="grid | random | optuna")
    p.add_argument("--num-samples", type=int, help="grid: repeats of the grid; random/optuna: trials")
    p.add_argument("--scheduler", default="fifo", help="fifo | asha")
    p.add_argument("--workers", type=int, default=1, help="W: workers in total")
    p.add_argument("--ddp-recipe", choices=RECIPES,
                   help="the problem a trial of K > 1 workers trains: global-batch (default; each rank takes "
                        "batch_size/K, the 1-worker problem), scale-lr (the paper's: lr x K) or per-rank")
    p.add_argument("--auto-regroup-s", type=float,
                   help="auto: what growing a trial costs, in seconds, until a regroup is measured (default: "
                        "the epochs it trains at its old K while the new rank warms up, about a trial's start-up, "
                        "and 1 s for the join)")
    _search_flags(p)
    _config_flags(p, epochs=None)
    _stage_flags(p)
    p.add_argument("--resume", action="store_true", help="continue the search saved in --out")
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser("bench", help="the paper's benchmark: the same search per mode and worker count")
    p.add_argument("--cache", required=True)
    p.add_argument("--out", required=True, help="BENCH folder: bench.json, speedup.png, bench.md")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--modes", nargs="+", default=["experiment", "data"], help="experiment data hybrid auto")
    p.add_argument("--trials", type=int, default=4, help="M trials per search (first M of the space's grid)")
    p.add_argument("--ddp-recipe", nargs="+", default=[DEFAULT_RECIPE],
                   help=f"the DDP recipe(s) of the K > 1 runs, each a run of its own: {', '.join(RECIPES)}")
    _search_flags(p)
    _config_flags(p, epochs=4, folds=False)
    p.add_argument("--repeats", type=int, default=1, help="runs per point; tables give median, min and max")
    p.add_argument("--scheduler", default="fifo", help="fifo | asha (every run of the bench uses it)")
    p.add_argument("--target-dice", type=float,
                   help="time-to-target Dice (default: the median of every trial's best val Dice over all runs, "
                        "so that at least half the trials reach it)")
    _stage_flags(p)
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("plan", help="predict the makespan of every mode and split; recommend one")
    p.add_argument("--workers", type=int)
    p.add_argument("--trials", type=int)
    p.add_argument("--calibration", help="bench.json of a `voxtune bench` run")
    p.add_argument("--check", metavar="BENCH_JSON",
                   help="instead of planning: predict the runs of another bench.json (same cache, model and "
                        "machine; other trials, epochs or workers) and print the model's out-of-sample error")
    p.add_argument("--gpus-per-node", type=int, help="workers per node (all-reduce crosses nodes above it)")
    p.add_argument("--epochs", type=int, help="epochs per trial (default: the calibration's)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--sweep", action="store_true", help="predicted speed-up from 1 to 256 workers")
    p.add_argument("--paper", action="store_true",
                   help="instead of planning: the paper's 32 trials on 8-64 GPUs under experiment, data and auto, "
                        "FIFO and ASHA (default constants, not measured)")
    p.set_defaults(func=cmd_plan)


def _result_verbs(sub) -> None:
    """What a run gives: predict, report, and the demo of it all."""
    p = sub.add_parser("predict", help="label maps as NIfTI from a trained run or checkpoint")
    p.add_argument("--run", help="a train run or a search run (its best trial)")
    p.add_argument("--checkpoint", help="a best.pt file")
    p.add_argument("--input", required=True, help="a 4D NIfTI image or an MSD folder (predicts its test images)")
    p.add_argument("--out", required=True, help="folder for the label maps")
    p.add_argument("--label", help="ground-truth NIfTI: print per-region Dice and HD95")
    p.add_argument("--overlap", type=float, default=0.5, help="sliding-window overlap (patch-trained runs)")
    p.add_argument("--fold", type=int, help="a cross-validated run: fold i's model alone (default: the folds' ensemble)")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("report", help="one self-contained HTML report of a search")
    p.add_argument("--run", required=True)
    p.add_argument("--out", help="FILE.html (default RUN/report.html)")
    p.add_argument("--bench", help="a BENCH folder or bench.json to include its speed-up plot")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("demo", help="the main job end to end on this machine's CPUs (a few minutes)")
    p.add_argument("--out", default="demo-run", help="folder for everything the demo makes")
    p.add_argument("--epochs", type=int, default=8)
    p.set_defaults(func=cmd_demo)


AGAIN = {"bench": "; run the same command again to continue it (finished runs are kept)"}


def _supervised(args: argparse.Namespace, argv: list[str]) -> int:
    """tune and bench run as a child driver under voxtune.supervise (see there why)."""
    from voxtune.supervise import supervise

    out = Path(args.out).resolve()
    if args.verb == "tune":
        def hint() -> str:
            from voxtune.parallel.tune import resume_hint

            return resume_hint(out)

        return supervise(argv, lambda: [out], hint)

    def searches() -> list[Path]:
        from voxtune.bench.benchmark import search_dirs

        return search_dirs(out)

    return supervise(argv, searches, lambda: f"voxtune bench: interrupted{AGAIN['bench']}")


def main(argv: list[str] | None = None) -> int:
    """The command line (argv None: this process's own). A search from the command line (`tune`, `bench`)
    runs its Ray driver in a child process (voxtune.supervise); called from Python, it runs here."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if argv is None and args.verb in ("tune", "bench") and not os.environ.get(CHILD_ENV):
        return _supervised(args, sys.argv[1:])
    try:
        return args.func(args)
    except VoxtuneError as exc:
        print(f"voxtune {args.verb}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"voxtune {args.verb}: interrupted{AGAIN.get(args.verb, '')}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
