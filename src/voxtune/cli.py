"""The `voxtune` command. Each verb parses its flags and calls one library function.

Any `VoxtuneError` (bad input the user can fix) becomes one line on stderr and exit 2;
Ctrl-C exits 130. Heavy imports (torch, ray) happen inside the verbs so `--help` is fast.
"""
from __future__ import annotations

import argparse
import sys

from voxtune.errors import VoxtuneError


def _shape(values: list[int] | None) -> tuple[int, int, int] | None:
    if values is None:
        return None
    if any(v < 8 for v in values):
        raise VoxtuneError(f"--shape {' '.join(map(str, values))}: each size must be >= 8")
    return tuple(values)


def cmd_synth(args: argparse.Namespace) -> int:
    from voxtune.data.synthetic import make_dataset

    root = make_dataset(args.out, cases=args.cases, shape=_shape(args.shape), seed=args.seed,
                        test_cases=args.test_cases)
    print(f"synthetic MSD dataset: {root}")
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    from voxtune.data.prepare import prepare

    result = prepare(args.source, args.out, shape=_shape(args.shape), labels=args.labels,
                     split=tuple(args.split), seed=args.seed, workers=args.workers,
                     max_voxels=args.max_voxels)
    print(result.summary())
    return 0 if result.ok else 1


def cmd_visualize(args: argparse.Namespace) -> int:
    from voxtune.viz import visualize

    path = visualize(args.cache, args.case, args.out)
    print(f"wrote {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="voxtune",
        description="Distributed hyperparameter tuning for 3D medical image segmentation.")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    p = sub.add_parser("synth", help="write a synthetic dataset in the MSD Task01_BrainTumour layout")
    p.add_argument("--out", required=True, help="dataset folder to create")
    p.add_argument("--cases", type=int, default=12, help="labelled cases (default 12)")
    p.add_argument("--test-cases", type=int, default=2, help="unlabelled imagesTs cases (default 2)")
    p.add_argument("--shape", type=int, nargs=3, metavar=("X", "Y", "Z"), default=[48, 48, 48])
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("prepare", help="preprocess an MSD dataset into a training cache")
    p.add_argument("--source", required=True, help="MSD task folder holding dataset.json")
    p.add_argument("--out", required=True, help="cache folder")
    p.add_argument("--shape", type=int, nargs=3, metavar=("X", "Y", "Z"),
                   help="resize to this shape (default: keep X, Y; crop Z [2:-1] as the paper)")
    p.add_argument("--labels", choices=("binary", "regions"), default="binary",
                   help="binary: whole tumour; regions: WT, TC, ET channels")
    p.add_argument("--split", type=float, nargs=3, metavar=("TRAIN", "VAL", "TEST"),
                   default=[0.7, 0.15, 0.15])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=1, help="cases prepared in parallel")
    p.add_argument("--max-voxels", type=int, default=64_000_000,
                   help="refuse volumes with more voxels per channel than this")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("visualize", help="picture of a cached case: PNG (modalities + label) or GIF sweep")
    p.add_argument("--cache", required=True)
    p.add_argument("--case", required=True, help="case id, e.g. BRATS_001")
    p.add_argument("--out", required=True, help="FILE.png or FILE.gif")
    p.set_defaults(func=cmd_visualize)

    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except VoxtuneError as exc:
        print(f"voxtune {args.verb}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"voxtune {args.verb}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
