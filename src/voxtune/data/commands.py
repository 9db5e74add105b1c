"""The data verbs of the `voxtune` command: MSD data in, cache out (synth, prepare, verify, visualize).
voxtune.cli builds the parser and handles errors; each verb here calls one library function."""
from __future__ import annotations

import argparse

from voxtune.data.plan import LABEL_MODES, PRESETS
from voxtune.data.synthetic import TASKS


def cmd_synth(args: argparse.Namespace) -> int:
    from voxtune.data.synthetic import make_dataset

    root = make_dataset(args.out, cases=args.cases, shape=args.shape, seed=args.seed,
                        test_cases=args.test_cases, task=args.task)
    print(f"synthetic MSD dataset: {root}")
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    from voxtune.data.prepare import prepare

    result = prepare(args.source, args.out, shape=args.shape, labels=args.labels,
                     split=tuple(args.split), seed=args.seed, workers=args.workers,
                     max_voxels=args.max_voxels, image_dtype=args.dtype, normalise=args.normalise,
                     spacing=args.spacing, crop_z=args.crop_z, preset=args.preset, log=print)
    print(result.summary())
    return 0 if result.ok else 1


def cmd_verify(args: argparse.Namespace) -> int:
    from voxtune.data.cache import verify_cache

    checked, failed = verify_cache(args.cache)
    print(f"verified {checked} cases of {args.cache}: {checked - len(failed)} match their checksums, "
          f"{len(failed)} do not" + ("; re-run `voxtune prepare` to rewrite them" if failed else ""))
    return 1 if failed else 0


def cmd_visualize(args: argparse.Namespace) -> int:
    from voxtune.viz import visualize

    path = visualize(args.cache, args.case, args.out)
    print(f"wrote {path}")
    return 0


def data_verbs(sub) -> None:
    """MSD data in, cache out: synth, prepare, verify, visualize."""
    p = sub.add_parser("synth", help="write a synthetic dataset of phantoms in the MSD layout")
    p.add_argument("--out", required=True, help="dataset folder to create")
    p.add_argument("--task", default="brats", choices=TASKS,
                   help="brats (Task01: 4 MRI modalities, nested tumour labels; default), spleen-ct (CT in HU, one "
                        "class), hippocampus (MRI, two classes, small crops), prostate (T2 + ADC, two classes, "
                        "anisotropic spacing); all but brats vary in size and spacing case to case")
    p.add_argument("--cases", type=int, default=12, help="labelled cases (default 12)")
    p.add_argument("--test-cases", type=int, default=2, help="unlabelled imagesTs cases (default 2)")
    p.add_argument("--shape", type=int, nargs=3, metavar=("X", "Y", "Z"),
                   help="base shape in voxels (default: brats 48 48 48, the others the task's own)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("prepare", help="preprocess an MSD dataset into a training cache")
    p.add_argument("--source", required=True, help="MSD task folder holding dataset.json")
    p.add_argument("--out", required=True, help="cache folder")
    p.add_argument("--preset", choices=PRESETS,
                   help="brats: the paper's pipeline (Z cropped [2:-1], no resampling, brain z-score, tumour "
                        "labels); auto: plan from the data (nnU-Net style). Default: brats when dataset.json's "
                        "labels are MSD Task01's, auto otherwise")
    p.add_argument("--labels", choices=LABEL_MODES,
                   help="classes: one channel per label of dataset.json (softmax; default for every task but "
                        "BraTS); binary: all foreground as one (BraTS: whole tumour; its default); regions: BraTS's "
                        "WT, TC, ET")
    p.add_argument("--spacing", type=float, nargs=3, metavar=("X", "Y", "Z"),
                   help="resample every case to this voxel size in mm (default: the plan's target spacing; "
                        "brats: each case's own grid)")
    p.add_argument("--shape", type=int, nargs=3, metavar=("X", "Y", "Z"),
                   help="resize every case to this shape instead, whatever its spacing")
    p.add_argument("--crop-z", type=int, nargs=2, metavar=("START", "END"),
                   help="drop slices at the start and end of Z (default: brats 2 1, the paper's [2:-1]; else none)")
    p.add_argument("--split", type=float, nargs=3, metavar=("TRAIN", "VAL", "TEST"),
                   default=[0.7, 0.15, 0.15])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=1, help="cases prepared in parallel")
    p.add_argument("--max-voxels", type=int, default=64_000_000,
                   help="refuse volumes with more voxels per channel than this")
    p.add_argument("--dtype", default="float16", help="image storage: float16 (default, half the bytes) or float32")
    p.add_argument("--normalise", nargs="+", metavar="SCHEME",
                   help="one for every channel or one per channel: auto (ct for CT, brain where the background "
                        "is 0, else volume; the default but for brats), ct (clip to the foreground's 0.5-99.5 "
                        "percentiles, z-score by its mean and std), brain (z-score over non-zero voxels; brats's "
                        "default), volume (over every voxel: the paper's, for --config paper)")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("verify", help="check every file of a prepared cache against its sha256")
    p.add_argument("--cache", required=True)
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("visualize", help="picture of a cached case: PNG (modalities + label) or GIF sweep")
    p.add_argument("--cache", required=True)
    p.add_argument("--case", required=True, help="case id, e.g. BRATS_001")
    p.add_argument("--out", required=True, help="FILE.png or FILE.gif")
    p.set_defaults(func=cmd_visualize)
