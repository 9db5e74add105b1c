"""nnU-Net v2's 3d_fullres on one voxtune phantom task, on exactly voxtune's split: the yardstick.

    python benchmarks/nnunet_baseline.py --msd DIR --cache CACHE --work WORK [--venv .nnunet-venv]
        [--trainer nnUNetTrainer_5epochs] [--fold 0] [--dataset-id 501] [--task NAME] [--processes N] [--nice N]

1. convert: the MSD folder DIR (dataset.json, imagesTr, labelsTr) becomes nnU-Net's raw dataset
   WORK/nnUNet_raw/DatasetNNN_Name: imagesTr/<case>_0000.nii.gz (a 4D image is split into one 3D file per
   channel, _0000, _0001, ...), labelsTr/<case>.nii.gz and dataset.json, holding only the cases that
   voxtune's CACHE/manifest.json puts in train or val. Its test cases go to WORK/test_images instead.
2. plan+preprocess: nnUNetv2_plan_and_preprocess -c 3d_fullres --verify_dataset_integrity; then
   splits_final.json gets one fold: train = voxtune's train ids, val = voxtune's val ids.
3. train: nnUNetv2_train ID 3d_fullres FOLD -tr TRAINER -device cpu (its own validation on the val
   cases at the end included).
4. predict: nnUNetv2_predict on the test images, nnU-Net's defaults (mirroring on, step 0.5).
5. score: Dice per label of dataset.json (lower-case names) against each test label, on the source
   grid (nnU-Net writes predictions in the input's geometry); a class absent from both scores 1.

Each nnU-Net stage runs through the venv's own console scripts, with nnUNet_raw, nnUNet_preprocessed and
nnUNet_results under WORK, and logs to WORK/logs/<stage>.log. Prints a line per stage with its wall
seconds and ends with the result as one JSON line; writes it to WORK/result.json too. Any failure is
one line on stderr naming the stage (and its log) and exit status 1. Needs numpy and nibabel only.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np

CONFIG = "3d_fullres"


class StageError(Exception):
    """A stage failed; the message is the one line printed on stderr."""


def read_json(path: Path, stage: str) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise StageError(f"{stage}: cannot read {path} ({type(exc).__name__}: {exc})") from None


def case_id(rel: str) -> str:
    """'./imagesTr/spleen_1.nii.gz' -> 'spleen_1'."""
    return Path(rel).name.removesuffix(".nii.gz")


def voxtune_split(cache: Path, msd_cases: dict[str, dict]) -> dict[str, list[str]]:
    """{"train": [ids], "val": [ids], "test": [ids]} from CACHE/manifest.json, checked against the MSD folder."""
    manifest = cache / "manifest.json"
    split: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for case in read_json(manifest, "split")["cases"]:
        if case["split"] not in split:
            raise StageError(f"split: {manifest}: case {case['id']} has split {case['split']!r}")
        if case["id"] not in msd_cases:
            raise StageError(f"split: {manifest} lists case {case['id']}, which the MSD dataset.json has not "
                             "(prepared from another folder?)")
        split[case["split"]].append(case["id"])
    for name, ids in split.items():
        if not ids:
            raise StageError(f"split: {manifest} has no {name} case; prepare more cases or another --split")
    return split


def write_channels(src: str | Path, dest_dir: Path, cid: str, channels: int) -> None:
    """One 3D NIfTI per channel, <cid>_0000.nii.gz...: copied as is when 3D, sliced off the last axis when 4D."""
    if channels == 1:
        shutil.copyfile(src, dest_dir / f"{cid}_0000.nii.gz")
        return
    img = nib.load(str(src))
    data = np.asanyarray(img.dataobj)  # [X, Y, Z, C], the file's own dtype
    if data.ndim != 4 or data.shape[3] != channels:
        raise StageError(f"convert: {src}: shape {data.shape}, expected [X, Y, Z, {channels}] "
                         "(dataset.json's modality count)")
    for c in range(channels):
        out = nib.Nifti1Image(np.ascontiguousarray(data[..., c]), img.affine, header=img.header)
        nib.save(out, str(dest_dir / f"{cid}_{c:04d}.nii.gz"))


def convert(msd: Path, meta: dict, split: dict[str, list[str]], raw: Path, test_dir: Path) -> None:
    """Write nnU-Net's raw dataset (train + val cases) and the test images to predict."""
    cases = {case_id(e["image"]): e for e in meta["training"]}
    channels = len(meta["modality"])
    for sub in ("imagesTr", "labelsTr"):
        (raw / sub).mkdir(parents=True)
    test_dir.mkdir(parents=True)
    for cid in split["train"] + split["val"]:
        write_channels(msd / cases[cid]["image"], raw / "imagesTr", cid, channels)
        shutil.copyfile(msd / cases[cid]["label"], raw / "labelsTr" / f"{cid}.nii.gz")
    for cid in split["test"]:
        write_channels(msd / cases[cid]["image"], test_dir, cid, channels)
    dataset = {
        "channel_names": {k: v for k, v in sorted(meta["modality"].items(), key=lambda kv: int(kv[0]))},
        "labels": {name: int(v) for v, name in sorted(meta["labels"].items(), key=lambda kv: int(kv[0]))},
        "numTraining": len(split["train"]) + len(split["val"]),
        "file_ending": ".nii.gz",
        "name": meta.get("name", raw.name),
        "description": f"voxtune phantom {msd}, voxtune's train + val cases (nnunet_baseline.py)",
    }
    (raw / "dataset.json").write_text(json.dumps(dataset, indent=2), encoding="utf-8")


def run_stage(name: str, cmd: list[str], env: dict, logs: Path, nice: int) -> float:
    """Run an nnU-Net console script, stdout + stderr to logs/<name>.log; its wall seconds."""
    log, tool = logs / f"{name}.log", Path(cmd[0]).name
    if nice:
        cmd = ["nice", "-n", str(nice), *cmd]
    t0 = time.monotonic()
    with open(log, "w", encoding="utf-8") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        rc = subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT).returncode
    seconds = time.monotonic() - t0
    if rc != 0:
        # The first exception line is the cause; nnU-Net's data-loader threads add their own after it.
        lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
        errors = [ln.strip() for ln in lines if re.match(r"\w+(Error|Exception)\b", ln)]
        cause = errors[:1] or [ln.strip() for ln in lines if ln.strip()][-1:]
        raise StageError(f"{name}: {tool} exited {rc} after {seconds:.0f} s; log: {log}"
                         + (f"; {cause[0]}" if cause else ""))
    print(f"{name}: {seconds:.1f} s", flush=True)
    return seconds


def dice(pred: np.ndarray, truth: np.ndarray, value: int) -> float:
    p, t = pred == value, truth == value
    denom = int(p.sum()) + int(t.sum())
    return 1.0 if denom == 0 else 2.0 * int((p & t).sum()) / denom


def score(msd: Path, meta: dict, test_ids: list[str], pred_dir: Path) -> dict[str, dict[str, float]]:
    """{case: {label name (lower-case): Dice}} for every test case, on the source label's grid."""
    labels = {int(v): name.lower() for v, name in meta["labels"].items() if int(v) != 0}
    cases = {case_id(e["image"]): e for e in meta["training"]}
    out = {}
    for cid in test_ids:
        pred_path = pred_dir / f"{cid}.nii.gz"
        if not pred_path.is_file():
            raise StageError(f"score: nnU-Net wrote no prediction {pred_path}")
        truth = np.asanyarray(nib.load(str(msd / cases[cid]["label"])).dataobj)
        pred = np.asanyarray(nib.load(str(pred_path)).dataobj)
        if pred.shape != truth.shape:
            raise StageError(f"score: {pred_path} has shape {pred.shape}, its label {truth.shape}")
        out[cid] = {name: round(dice(pred, truth, v), 4) for v, name in sorted(labels.items())}
    return out


def to_xyz(values: list, plans_file: dict) -> list:
    """A plans' per-axis list (transposed z, y, x) in the source's x, y, z order."""
    back = plans_file["transpose_backward"]
    return [values[back[i]] for i in range(3)][::-1]


def nnunet_versions(venv: Path) -> dict:
    """nnunetv2's and torch's versions, and whether nnunet_baseline.sh removed the Primus trainers."""
    code = ("import importlib.metadata as m, json, os, torch, nnunetv2; "
            "primus = os.path.join(os.path.dirname(nnunetv2.__file__), 'training', 'nnUNetTrainer', 'primus'); "
            "print(json.dumps({'nnunetv2': m.version('nnunetv2'), 'torch': torch.__version__, "
            "'primus_removed': not os.path.isdir(primus)}))")
    res = subprocess.run([str(venv / "bin" / "python"), "-c", code], capture_output=True, text=True)
    if res.returncode != 0:
        raise StageError(f"venv: {venv}/bin/python cannot import nnunetv2 and torch: "
                         f"{(res.stderr.strip().splitlines() or ['?'])[-1]}")
    return json.loads(res.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--msd", type=Path, required=True, help="MSD task folder (voxtune synth's output)")
    ap.add_argument("--cache", type=Path, required=True, help="voxtune prepare's cache of it: the split")
    ap.add_argument("--work", type=Path, required=True, help="folder to create for everything nnU-Net writes")
    ap.add_argument("--venv", type=Path, default=Path(".nnunet-venv"), help="venv with nnunetv2 installed")
    ap.add_argument("--trainer", default="nnUNetTrainer_5epochs", help="nnU-Net trainer class (-tr)")
    ap.add_argument("--fold", type=int, default=0, help="the fold splits_final.json defines (its only one)")
    ap.add_argument("--dataset-id", type=int, default=501, help="nnU-Net dataset id (WORK is its own tree)")
    ap.add_argument("--task", help="task name for the result (default: dataset.json's name, lower-case)")
    ap.add_argument("--processes", type=int, default=os.cpu_count() or 1,
                    help="nnU-Net's -np/-npfp/-npp/-nps (default: the CPU count)")
    ap.add_argument("--nice", type=int, default=0, help="run nnU-Net's stages under nice -n N")
    args = ap.parse_args()
    try:
        result = benchmark(args)
    except StageError as exc:
        print(f"nnunet_baseline: {exc}", file=sys.stderr)
        sys.exit(1)
    (args.work / "result.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result), flush=True)


def benchmark(args: argparse.Namespace) -> dict:
    bin_dir = args.venv.resolve() / "bin"
    for tool in ("nnUNetv2_plan_and_preprocess", "nnUNetv2_train", "nnUNetv2_predict"):
        if not (bin_dir / tool).is_file():
            raise StageError(f"venv: no {bin_dir / tool}; run benchmarks/nnunet_baseline.sh to create the venv")
    versions = nnunet_versions(args.venv.resolve())
    if args.fold != 0:
        raise StageError(f"splits: --fold {args.fold}: voxtune's split is one fold, fold 0")
    if args.work.exists():
        raise StageError(f"work: {args.work} exists; remove it or pass another --work")
    msd = args.msd.resolve()
    meta = read_json(msd / "dataset.json", "convert")
    msd_cases = {case_id(e["image"]): e for e in meta.get("training", [])}
    split = voxtune_split(args.cache, msd_cases)

    work = args.work.resolve()
    name = re.sub(r"[^A-Za-z0-9]", "", meta.get("name", "")) or "Phantom"
    dataset = f"Dataset{args.dataset_id:03d}_{name}"
    raw, pre, res = work / "nnUNet_raw", work / "nnUNet_preprocessed", work / "nnUNet_results"
    test_dir, pred_dir, logs = work / "test_images", work / "predictions", work / "logs"
    logs.mkdir(parents=True)
    t0 = time.monotonic()
    try:
        convert(msd, meta, split, raw / dataset, test_dir)
    except (OSError, KeyError, nib.filebasedimages.ImageFileError) as exc:
        raise StageError(f"convert: {type(exc).__name__}: {exc} (source {msd})") from None
    seconds = {"convert": time.monotonic() - t0}
    print(f"convert: {seconds['convert']:.1f} s ({len(split['train'])} train, {len(split['val'])} val, "
          f"{len(split['test'])} test cases)", flush=True)

    env = {**os.environ, "nnUNet_raw": str(raw), "nnUNet_preprocessed": str(pre), "nnUNet_results": str(res)}
    did, np_ = str(args.dataset_id), str(args.processes)
    seconds["plan_preprocess"] = run_stage("plan_preprocess", [
        str(bin_dir / "nnUNetv2_plan_and_preprocess"), "-d", did, "-c", CONFIG, "--verify_dataset_integrity",
        "-np", np_, "-npfp", np_], env, logs, args.nice)
    folds = [{"train": split["train"], "val": split["val"]}]
    (pre / dataset / "splits_final.json").write_text(json.dumps(folds, indent=2), encoding="utf-8")
    seconds["train"] = run_stage("train", [
        str(bin_dir / "nnUNetv2_train"), did, CONFIG, str(args.fold), "-tr", args.trainer, "-device", "cpu"],
        env, logs, args.nice)
    seconds["predict"] = run_stage("predict", [
        str(bin_dir / "nnUNetv2_predict"), "-i", str(test_dir), "-o", str(pred_dir), "-d", did, "-c", CONFIG,
        "-f", str(args.fold), "-tr", args.trainer, "-npp", np_, "-nps", np_, "-device", "cpu",
        "--disable_progress_bar"], env, logs, args.nice)

    plans_file = read_json(pre / dataset / "nnUNetPlans.json", "plans")
    plans = plans_file["configurations"][CONFIG]
    fold_dir = res / dataset / f"{args.trainer}__nnUNetPlans__{CONFIG}" / f"fold_{args.fold}"
    debug = read_json(fold_dir / "debug.json", "train")
    val = fold_dir / "validation" / "summary.json"
    val_dice = read_json(val, "train")["foreground_mean"]["Dice"] if val.is_file() else None
    per_case = score(msd, meta, split["test"], pred_dir)
    classes = list(next(iter(per_case.values())))
    mean = {c: round(float(np.mean([d[c] for d in per_case.values()])), 4) for c in classes}
    mean["mean"] = round(float(np.mean(list(mean.values()))), 4)
    return {
        "task": args.task or name.lower(), "dataset": dataset, "configuration": CONFIG,
        "nnunetv2": versions["nnunetv2"], "torch": versions["torch"], "device": "cpu",
        "cpu_count": os.cpu_count(), "processes": args.processes, "trainer": args.trainer,
        "epochs": int(debug["num_epochs"]), "iterations_per_epoch": int(debug["num_iterations_per_epoch"]),
        "val_iterations_per_epoch": int(debug["num_val_iterations_per_epoch"]),
        "batch_size": plans["batch_size"],
        # nnU-Net's plans list axes as SimpleITK reads them (z, y, x), then transposed; _xyz is nibabel's order.
        "patch_size": plans["patch_size"], "spacing": plans["spacing"],
        "patch_size_xyz": to_xyz(plans["patch_size"], plans_file), "spacing_xyz": to_xyz(plans["spacing"], plans_file),
        "primus_trainers_removed": versions["primus_removed"],
        "test_time_mirroring": True,
        "split": {k: len(v) for k, v in split.items()},
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
        "total_s": round(seconds["plan_preprocess"] + seconds["train"] + seconds["predict"], 1),
        "nnunet_val_dice": None if val_dice is None else round(float(val_dice), 4),
        "test_dice": per_case, "test_dice_mean": mean,
    }


if __name__ == "__main__":
    main()
