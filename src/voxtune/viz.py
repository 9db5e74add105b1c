"""Pictures of a prepared case: a PNG figure (four modalities + label overlay) or a GIF slice sweep.

Axial slices are `image[c, :, :, z]` shown transposed with the origin at the bottom, so X runs
left-right and Y bottom-top as in the NIfTI voxel grid.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from voxtune.data.cache import case_entry, load_case, read_manifest, region_names
from voxtune.errors import VoxtuneError

# Region colours (RGB 0-1): WT yellow, TC red, ET cyan; drawn in this order so inner regions show.
COLOURS = {"whole_tumour": (1.0, 0.82, 0.1), "tumour_core": (0.95, 0.2, 0.15),
           "enhancing_tumour": (0.1, 0.85, 1.0)}
# A dataset's own classes take these in label order.
PALETTE = [(1.0, 0.82, 0.1), (0.1, 0.85, 1.0), (0.95, 0.2, 0.15), (0.35, 0.9, 0.3), (0.85, 0.4, 1.0),
           (1.0, 0.55, 0.1), (0.2, 0.45, 1.0), (0.95, 0.95, 0.95)]


def colour(name: str, channels: list[str]) -> tuple[float, float, float]:
    """A label channel's colour: BraTS's regions their own, a dataset's classes the palette in order."""
    return COLOURS.get(name) or PALETTE[channels.index(name) % len(PALETTE)]


def label_text(name: str) -> str:
    """A channel name as a legend shows it: "tumour_core" -> "tumour core"."""
    return name.replace("_", " ")


def without_background(image: np.ndarray, entry: dict) -> np.ndarray:
    """image [C, X, Y, Z] shifted so that each channel's background is 0, as the display assumes (a cache
    normalised over the whole volume holds a negative background)."""
    return image - np.asarray(entry["background"], dtype=image.dtype)[:, None, None, None]


def display_window(volume: np.ndarray) -> tuple[float, float]:
    """Display range: 1st-99.5th percentile of the non-zero (brain) voxels."""
    brain = volume[volume != 0]
    if brain.size == 0:
        return -1.0, 1.0
    lo, hi = np.percentile(brain, [1, 99.5])
    return float(lo), float(max(hi, lo + 1e-6))


def grey_slice(slice_2d: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """[X, Y] slice -> display grey [Y, X] in 0-1, background black."""
    lo, hi = window
    grey = np.clip((slice_2d - lo) / (hi - lo), 0, 1)
    grey[slice_2d == 0] = 0.0
    return grey.T


def _overlay(grey: np.ndarray, masks: np.ndarray, regions: list[str], alpha: float = 0.5) -> np.ndarray:
    """grey [H, W] + masks [R, W, H] (voxel order) -> RGB [H, W, 3], each voxel tinted by its innermost region.

    BraTS regions are nested (WT > TC > ET): painting them in order and blending once shows the
    sub-regions in their own colours instead of muddy mixtures.
    """
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    tint = np.zeros_like(rgb)
    hit = np.zeros(grey.shape, dtype=bool)
    for mask, name in zip(masks, regions):
        m = mask.T.astype(bool)
        tint[m] = colour(name, regions)
        hit |= m
    rgb[hit] = (1 - alpha) * rgb[hit] + alpha * tint[hit]
    return rgb


def _png(image, label, regions, modalities, case_id, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    per_slice = label.any(axis=0).reshape(-1, label.shape[-1]).sum(axis=0)
    z = int(per_slice.argmax()) if per_slice.max() > 0 else label.shape[-1] // 2
    n = len(modalities) + 1
    aspect = image.shape[2] / image.shape[1]  # displayed slice is [Y, X]
    height = 2.0 * aspect + 0.9  # panels 2 in wide, plus room for titles and the legend
    fig, axes = plt.subplots(1, n, figsize=(2.0 * n, height), dpi=150)
    fig.subplots_adjust(left=0.005, right=0.995, wspace=0.03, top=1 - 0.5 / height, bottom=0.4 / height)
    for ax, c, name in zip(axes, range(len(modalities)), modalities):
        ax.imshow(grey_slice(image[c, :, :, z], display_window(image[c])), cmap="gray", origin="lower",
                  vmin=0, vmax=1, interpolation="bilinear")
        ax.set_title(name, fontsize=10)
    flair = grey_slice(image[0, :, :, z], display_window(image[0]))
    axes[-1].imshow(_overlay(flair, label[:, :, :, z], regions), origin="lower", interpolation="nearest")
    for mask, name in zip(label[:, :, :, z], regions):
        if mask.any():
            axes[-1].contour(mask.T, levels=[0.5], colors=[colour(name, regions)], linewidths=0.7)
    axes[-1].set_title(f"{modalities[0]} + label", fontsize=10)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
    handles = [Patch(color=colour(r, regions), label=label_text(r)) for r in regions]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False, fontsize=9,
               bbox_to_anchor=(0.5, 0.01))
    fig.suptitle(f"{case_id}: axial slice z = {z} (most labelled voxels)", fontsize=11)
    fig.savefig(out, bbox_inches="tight", facecolor="white")
    plt.close(fig)


def _gif(image, label, regions, case_id, out: Path) -> None:
    from PIL import Image, ImageDraw

    window = display_window(image[0])
    brain_z = np.flatnonzero((image[0] != 0).any(axis=(0, 1)))
    zs = range(int(brain_z[0]), int(brain_z[-1]) + 1) if brain_z.size else range(image.shape[-1])
    zs = list(zs)[:: max(1, len(zs) // 80)]  # at most ~80 frames keeps the file small
    scale = max(1, 256 // max(image.shape[1], image.shape[2]))
    frames = []
    for z in zs:
        rgb = _overlay(grey_slice(image[0, :, :, z], window), label[:, :, :, z], regions)
        frame = Image.fromarray((np.flipud(rgb) * 255).astype(np.uint8))  # origin at the bottom
        frame = frame.resize((frame.width * scale, frame.height * scale), Image.NEAREST)
        ImageDraw.Draw(frame).text((4, 2), f"{case_id}  z={z}", fill=(255, 255, 255))
        frames.append(frame.convert("P", palette=Image.ADAPTIVE, colors=128))
    frames[0].save(out, save_all=True, append_images=frames[1:], duration=70, loop=0)


def visualize(cache_dir: str | Path, case_id: str, out: str | Path) -> Path:
    """Write a picture of a cached case to `out` (.png figure or .gif axial sweep); return the path."""
    out = Path(out)
    suffix = out.suffix.lower()
    if suffix not in (".png", ".gif"):
        raise VoxtuneError(f"--out {out}: unsupported picture type {suffix or '(none)'}; use .png or .gif")
    manifest = read_manifest(cache_dir)
    image, label = load_case(cache_dir, case_id, manifest=manifest)
    image = without_background(image, case_entry(manifest, case_id))
    regions = region_names(manifest)
    out.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".png":
        _png(image, label, regions, manifest["modalities"], case_id, out)
    else:
        _gif(image, label, regions, case_id, out)
    return out
