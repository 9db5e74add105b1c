"""`voxtune predict`: label maps as NIfTI from a trained run, on each source image's own voxel grid.

Per image, mirroring `voxtune prepare` with the settings saved in the checkpoint (`state["prepare"]`):

    source NIfTI  [X, Y, Z, C], its spacing from the header
      -> preprocess (voxtune.data.preprocess)   [C, X', Y', Z']   Z crop (BraTS), resize or resample
                                                                  to the target spacing, normalise
      -> pad to the model's divisor, infer      probabilities [K, X', Y', Z'] (sliding window if
                                                patch-trained; the mean over a cross-validation's folds)
      -> resample probabilities back to the source grid (as prepare resampled: trilinear, the coarse
         axis of anisotropic data apart), then threshold 0.5 (regions) or argmax (classes)
      -> pad the cropped Z slices with background                 [R, X, Y, Z]
      -> the dataset's own label values (uint8 [X, Y, Z]) written with the source's affine and header.

Resampling the probabilities before deciding (not the label map after) keeps boundaries smooth when
the run was trained on another grid.
"""
from __future__ import annotations

import math
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from voxtune.errors import VoxtuneError
from voxtune.layout import RunDir, TrainDir

def resolve_checkpoints(run: str | Path | None = None, checkpoint: str | Path | None = None,
                        fold: int | None = None) -> list[Path]:
    """The best.pt files to predict with (more than one: their ensemble): `checkpoint` itself; a search
    RUN's best trial (best.json: its checkpoint, or every fold model's of a cross-validated search); a
    train RUN's checkpoints/best.pt, or its folds' (`voxtune train --folds K`). `fold` i picks fold
    i's model alone. Anything missing -> VoxtuneError naming the file."""
    if checkpoint is not None:
        path = Path(checkpoint)
        if fold is not None:
            raise VoxtuneError("--fold picks a fold model of --run; a --checkpoint is one model already: drop --fold")
        if not path.is_file():
            raise VoxtuneError(f"--checkpoint {path}: no such file")
        return [path]
    if run is None:
        raise VoxtuneError("give exactly one of --run RUN or --checkpoint FILE")
    run = Path(run)
    if not run.is_dir():
        raise VoxtuneError(f"--run {run}: no such run folder")
    best_json = RunDir(run).best
    if best_json.is_file():
        import json

        try:
            best = json.loads(best_json.read_text(encoding="utf-8"))
            rels = best.get("checkpoints") or [best["checkpoint"]]
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise VoxtuneError(f"{best_json}: unreadable ({type(exc).__name__}); re-run the search") from None
        paths = _pick_fold([run / rel for rel in rels], fold, f"{best_json} names", "checkpoints" in best)
        for path in paths:
            if not path.is_file():
                raise VoxtuneError(f"{best_json} names checkpoint {path.relative_to(run)}, but {path} is missing")
        return paths
    folds = [d.best_checkpoint for d in TrainDir(run).folds()]
    if folds and not TrainDir(run).best_checkpoint.is_file():
        return _pick_fold(folds, fold, f"{run} holds", True)
    path = TrainDir(run).best_checkpoint
    if not path.is_file():
        hint = ("the search has no best trial yet (no best.json)" if RunDir(run).leaderboard.exists()
                else "train it first (`voxtune train`)")
        raise VoxtuneError(f"--run {run}: no checkpoint ({path} missing; {hint})")
    return _pick_fold([path], fold, f"{run} holds", False)


def _pick_fold(paths: list[Path], fold: int | None, where: str, folds: bool) -> list[Path]:
    """All of `paths` (fold i's at [i]), or fold `fold`'s alone."""
    if fold is None:
        return paths
    if not folds:
        raise VoxtuneError(f"--fold {fold}: {where} one model, not a cross-validation's folds; drop --fold")
    if not 0 <= fold < len(paths):
        raise VoxtuneError(f"--fold {fold}: {where} {len(paths)} fold models (0..{len(paths) - 1})")
    return [paths[fold]]


def _load(checkpoint: Path, device):
    """(model in eval mode, checkpoint state); a file that is not a best.pt -> VoxtuneError."""
    from voxtune.train.evaluate import load_model

    try:
        model, state = load_model(checkpoint, device)
    except KeyError as exc:  # last.pt or a foreign file: weights without config/prepare
        raise VoxtuneError(f"{checkpoint}: not a voxtune best.pt (lacks {exc}); use RUN/checkpoints/best.pt") from None
    if "prepare" not in state:
        raise VoxtuneError(f"{checkpoint}: not a voxtune best.pt (lacks prepare settings)")
    return model, state


def _sources(source: str | Path) -> list[tuple[str, Path]]:
    """[(case_id, path)] for a single NIfTI file, or every `test` image of an MSD folder's dataset.json."""
    from voxtune.data.msd import case_id_from_path, read_task, resolve_case_path

    source = Path(source)
    if source.is_dir():
        task = read_task(source)
        if not task.test:
            raise VoxtuneError(f"{source / 'dataset.json'}: lists no test images to predict")
        return [(case_id_from_path(rel), resolve_case_path(task.root, rel, case_id_from_path(rel)))
                for rel in task.test]
    if not source.is_file():
        raise VoxtuneError(f"--input {source}: no such file or folder")
    return [(case_id_from_path(source.name), source)]


def prepare_settings(state: dict, channels: int | None = None) -> dict:
    """A checkpoint's prepare settings, completed for a best.pt of a version 2 cache (BraTS only: labels
    binary or regions, one normalisation for every channel, no spacing plan); `channels` where the state
    does not say how many the network takes."""
    prep = dict(state["prepare"])
    regions = list(state["regions"])
    if "label_values" not in prep:
        from voxtune.data.plan import BRATS_REGIONS

        prep["label_values"] = [BRATS_REGIONS[r] for r in regions] if len(regions) > 1 else [1]
    norm = prep.get("normalise") or "brain"
    if isinstance(norm, str):
        prep["normalise"] = [{"scheme": norm}] * int(state.get("in_channels") or channels or 1)
    for key in ("spacing", "coarse_axis", "shape"):
        prep.setdefault(key, None)
    if "crop_z" not in prep:
        prep["crop_z"] = [2, 1]
    if "source_labels" not in prep:
        prep["source_labels"] = [0, 1, 2, 3] if prep.get("labels") != "classes" else [0, *prep["label_values"]]
    return prep


def read_image(path: Path, channels: int, crop_z=None) -> tuple[Any, np.ndarray, tuple[float, float, float]]:
    """(nibabel image, data float32 [X, Y, Z, C], spacing in mm); shape and spacing are checked from the
    header before decoding."""
    from voxtune.data.msd import image_shape, nifti_data, open_nifti, spacing_of

    what = f"image {path}"
    img = open_nifti(path, what)
    shape = image_shape(img, channels, what)  # channels: what the run was trained on
    if crop_z and shape[2] <= sum(crop_z):
        raise VoxtuneError(f"{what}: only {shape[2]} slices on Z; the [{crop_z[0]}:-{crop_z[1]}] crop the run was "
                           "trained with needs more")
    return img, nifti_data(img, shape, what), spacing_of(img, what)


def predict_volume(model, state: dict, image: np.ndarray, spacing=(1.0, 1.0, 1.0), overlap: float = 0.5) -> np.ndarray:
    """Label channels bool [R, X, Y, Z] on the source grid for a source image float32 [X, Y, Z, C] of
    voxel `spacing` (mm). `model`: one network, or a list of them (a cross-validation's fold models,
    trained on one cache): their ensemble, the mean of their probabilities."""
    import torch
    import torch.nn.functional as F

    from voxtune.data.loader import pad_to_divisor
    from voxtune.data.plan import coarse_axis
    from voxtune.data.preprocess import crop, preprocess, resample
    from voxtune.train.metrics import infer, masks, probabilities

    prep = prepare_settings(state, image.shape[-1])
    softmax = bool(state.get("softmax", False))
    x, _, background = preprocess(image, None, spacing, prep)
    prepared = x.shape[1:]
    # The values training saw: the cache stores images in this dtype (float16 by default).
    x = x.astype(prep.get("image_dtype") or "float32").astype(np.float32)
    models = model if isinstance(model, list) else [model]
    device = next(models[0].parameters()).device
    batch = torch.from_numpy(pad_to_divisor(x, models[0].divisor, background))[None].to(device)  # as validation pads
    patch = state.get("patch_size", state["config"].get("patch_size"))
    with torch.no_grad():
        probs = torch.stack([probabilities(infer(m, batch, patch, overlap=overlap), softmax) for m in models]).mean(0)
    probs = probs[..., :prepared[0], :prepared[1], :prepared[2]]
    cropped = crop(np.empty(image.shape[:3], dtype=bool), prep.get("crop_z")).shape
    if tuple(prepared) != tuple(cropped):  # back to the source grid on probabilities, then decide
        if prep.get("shape"):
            probs = F.interpolate(probs, size=cropped, mode="trilinear", align_corners=False)
        else:
            coarse = prep.get("coarse_axis")
            probs = resample(probs[0].cpu(), cropped, coarse_axis(spacing) if coarse is None else coarse)[None]
    channels = masks(probs, softmax)[0].cpu().numpy()
    lo, hi = prep.get("crop_z") or (0, 0)
    return np.pad(channels, [(0, 0), (0, 0), (0, 0), (lo, hi)])  # cropped slices -> background


def to_label_map(channels: np.ndarray, prep: dict) -> np.ndarray:
    """Label channels bool [R, X, Y, Z] -> the dataset's label values uint8 [X, Y, Z], each channel painted
    with its value in turn (BraTS's nested regions: WT 1, TC 2, ET 3, so the inner ones win; classes are
    exclusive)."""
    out = np.zeros(channels.shape[1:], dtype=np.uint8)
    for mask, value in zip(channels, prep["label_values"]):
        out[mask] = value
    return out


def region_masks(label_map: np.ndarray, prep: dict) -> np.ndarray:
    """The dataset's label values [X, Y, Z] -> label channels bool [R, X, Y, Z] (voxtune.data.plan.label_masks)."""
    from voxtune.data.plan import label_masks

    return label_masks(label_map, prep["labels"], prep["label_values"])


def score(pred: np.ndarray, truth: np.ndarray, spacing, regions: list[str]) -> dict[str, float]:
    """Per-region Dice and HD95 (mm) of masks bool [R, X, Y, Z] on the source grid.

    Dice of two empty masks is 1 (as in validation); HD95 is 0 when both are empty and inf when
    only one is (MONAI returns nan for both cases).
    """
    import torch
    from monai.metrics import compute_dice, compute_hausdorff_distance

    p = torch.from_numpy(pred[None].astype(np.float32))
    t = torch.from_numpy(truth[None].astype(np.float32))
    dice = compute_dice(p, t, include_background=True, ignore_empty=False)[0].tolist()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MONAI warns on empty masks; handled below
        hd = compute_hausdorff_distance(p, t, include_background=True, percentile=95,
                                        spacing=[float(s) for s in spacing])[0].tolist()
    out: dict[str, float] = {}
    for i, name in enumerate(regions):
        empty_p, empty_t = not pred[i].any(), not truth[i].any()
        out[f"dice_{name}"] = float(dice[i])
        out[f"hd95_{name}"] = 0.0 if empty_p and empty_t else math.inf if empty_p or empty_t else float(hd[i])
    return out


def _read_truth(path: Path, shape: tuple[int, int, int], allowed) -> np.ndarray:
    """Ground truth uint8 [X, Y, Z] in the dataset's label values, checked against the source grid."""
    from voxtune.data.msd import label_data, label_shape, open_nifti

    what = f"label {path}"
    img = open_nifti(path, what)
    if label_shape(img, what) != tuple(shape):
        raise VoxtuneError(f"{what}: shape {tuple(img.shape)} differs from the image's {tuple(shape)}")
    return label_data(img, tuple(shape), set(allowed), what)


def _write(label_map: np.ndarray, src, path: Path) -> None:
    """Save uint8 [X, Y, Z] with the source's affine and header (dims and dtype updated)."""
    import nibabel as nib

    header = src.header.copy()
    header.set_data_dtype(np.uint8)
    out = nib.Nifti1Image(label_map, src.affine, header=header)
    out.header.set_slope_inter(1.0, 0.0)  # the source's intensity scaling must not apply to labels
    out.header["cal_min"], out.header["cal_max"] = 0, int(label_map.max())
    suffix = ".nii.gz" if path.name.endswith(".nii.gz") else ".nii"
    tmp = path.with_name(f".{path.name[:-len(suffix)]}.tmp{suffix}")
    nib.save(out, str(tmp))  # nibabel picks gzip by suffix, so the temp name keeps it
    tmp.replace(path)


def _format(case_id: str, metrics: dict[str, float], regions: list[str]) -> str:
    lines = [f"{case_id}: label channel       dice     hd95_mm"]
    for name in regions:
        hd = metrics[f"hd95_{name}"]
        lines.append(f"  {name:<24}{metrics[f'dice_{name}']:.4f}   {'inf' if math.isinf(hd) else f'{hd:.2f}'}")
    return "\n".join(lines)


def predict(run: str | Path | None = None, checkpoint: str | Path | None = None, *, source: str | Path,
            out: str | Path, label: str | Path | None = None, overlap: float = 0.5,
            fold: int | None = None) -> list[dict]:
    """Write a label map per source image into `out`; return one record per image.

    Record: {"case_id", "source", "output", "shape"} plus "dice_<region>", "hd95_<region>" with `label`.
    A case of an MSD folder that cannot be read is reported on stderr and skipped; the others are
    still written, then a VoxtuneError lists the failures.
    """
    import torch
    from tqdm import tqdm

    if not 0.0 <= float(overlap) < 1.0:
        raise VoxtuneError(f"--overlap {overlap}: must be in [0, 1)")
    items = _sources(source)
    if label is not None and Path(source).is_dir():
        raise VoxtuneError("--label needs a single image as --input, not an MSD folder")
    ckpts = resolve_checkpoints(run, checkpoint, fold)
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    loaded = [_load(c, device) for c in ckpts]
    model, state = [m for m, _ in loaded], loaded[0][1]
    for c, (_, other) in zip(ckpts[1:], loaded[1:]):
        if (other["prepare"], other["regions"], other["in_channels"]) != (state["prepare"], state["regions"],
                                                                           state["in_channels"]):
            raise VoxtuneError(f"{c}: prepared or labelled unlike {ckpts[0]}; an ensemble needs models of one cache")
    regions, prep = list(state["regions"]), prepare_settings(state)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise VoxtuneError(f"--out {out}: exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)

    records, failed = [], []
    for case_id, path in tqdm(items, desc="predict", unit="case", disable=None):
        target = out / path.name
        try:
            if target.resolve() == path.resolve():
                raise VoxtuneError(f"--out {out}: would overwrite the input {path}; choose another folder")
            src, image, spacing = read_image(path, state["in_channels"], prep.get("crop_z"))
            truth = _read_truth(Path(label), image.shape[:3], prep["source_labels"]) if label is not None else None
        except VoxtuneError as exc:
            if len(items) == 1:
                raise
            failed.append(f"{case_id}: {exc}")
            tqdm.write(f"case {case_id}: {exc}", file=sys.stderr)
            continue
        label_map = to_label_map(predict_volume(model, state, image, spacing, overlap), prep)
        _write(label_map, src, target)
        record: dict[str, Any] = {"case_id": case_id, "source": str(path), "output": str(target),
                                  "shape": list(label_map.shape)}
        if truth is not None:
            # Score what was written: masks re-derived from the label map, on the source grid.
            record.update(score(region_masks(label_map, prep), region_masks(truth, prep), spacing, regions))
            tqdm.write(_format(case_id, record, regions))
        records.append(record)
    used = (f"checkpoint {ckpts[0]}" if len(ckpts) == 1
            else f"ensemble of the {len(ckpts)} fold models of {ckpts[0].parents[3]}")
    print(f"wrote {len(records)} label map{'s' if len(records) != 1 else ''} to {out} ({used})")
    if failed:
        raise VoxtuneError(f"{len(failed)} of {len(items)} images failed: " + "; ".join(failed))
    return records
