"""The report's figures, each an inline <img> (base64 PNG): learning curves, hyperparameter effects,
predictions on validation cases, and the trial timeline. voxtune.report lays them out."""
from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np

from voxtune.formatting import number, short

def note(text: str) -> str:
    """A short remark in place of something the page cannot show."""
    return f'<p class="note">{html.escape(text)}</p>'


def figure_tag(fig, alt: str) -> str:
    """A matplotlib figure as an inline <img> (base64 PNG); closes the figure."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", facecolor="white")
    plt.close(fig)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'





def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def curves(series: dict[str, list[dict]], best: str | None) -> str:
    """val_dice and train_loss vs epoch, a line per trial (the best one drawn thick)."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    colours = plt.get_cmap("tab10" if len(series) <= 10 else "viridis")
    for i, (name, records) in enumerate(series.items()):
        epochs = [r["epoch"] for r in records]
        colour = colours(i if len(series) <= 10 else i / max(len(series) - 1, 1)) if len(series) > 1 else "#1d2b45"
        width, alpha = (2.6, 1.0) if name == best else (1.3, 0.75)
        for ax, key in zip(axes, ("val_dice", "train_loss")):
            ax.plot(epochs, [r.get(key) for r in records], marker="o", ms=3, lw=width, alpha=alpha,
                    color=colour, label=key if len(series) == 1 else name + ("  (best)" if name == best else ""))
        if len(series) == 1:  # one run: room for the per-region Dice and the validation loss
            from voxtune.viz import colour as channel_colour, label_text

            channels = [k[len("val_dice_"):] for k in records[0] if k.startswith("val_dice_")]
            for region in channels:
                axes[0].plot(epochs, [r.get(f"val_dice_{region}") for r in records], ls="--", lw=1.4,
                             color=channel_colour(region, channels), label=label_text(region))
            axes[1].plot(epochs, [r.get("val_loss") for r in records], ls="--", lw=1.4, color="#c0392b",
                         label="val_loss")
    losses = "training and validation loss" if len(series) == 1 else "training loss"
    for ax, title in zip(axes, ("validation Dice (mean over label channels)", losses)):
        ax.ticklabel_format(axis="y", useOffset=False)  # near-flat curves: plain values, no offset
        ax.set_title(title, fontsize=11)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    if len(series) == 1:
        for ax in axes:
            ax.legend(fontsize=8, framealpha=0.85, loc="best")
    elif len(series) <= 12:
        axes[1].legend(fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False)
    return figure_tag(fig, "learning curves")


def effects(rows: list[dict], searched: list[str], best: str | None) -> str:
    """Validation Dice per value of each searched hyperparameter: box + jittered points, or a scatter."""
    plt = pyplot()
    done = [r for r in rows if number(r.get("val_dice")) is not None]
    cols = min(len(searched), 4)
    nrows = -(-len(searched) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.6 * cols, 3.2 * nrows), squeeze=False, sharey=True)
    rng = np.random.default_rng(0)  # fixed jitter: the same report twice gives the same picture
    for ax, key in zip(axes.flat, searched):
        values = [str(r.get(key, "")) for r in done]
        dice = np.array([number(r["val_dice"]) for r in done])
        is_best = np.array([r["trial_id"] == best for r in done])
        numeric = [number(v) for v in values]
        levels = sorted(set(values), key=lambda v: (number(v) is None, number(v) or 0, v))
        if len(levels) <= 8:
            groups = [dice[[v == level for v in values]] for level in levels]
            if max(len(g) for g in groups) >= 3:
                ax.boxplot(groups, positions=range(len(levels)), widths=0.5, showfliers=False,
                           medianprops={"color": "#1d2b45"})
            pos = np.array([levels.index(v) for v in values]) + rng.uniform(-0.12, 0.12, len(values))
            ax.set_xticks(range(len(levels)), [short(v) for v in levels])
            ax.set_xlim(-0.6, len(levels) - 0.4)
        else:  # a continuous search (uniform/loguniform): one point per trial
            pos = np.array([n if n is not None else np.nan for n in numeric])
            positive = pos[np.isfinite(pos)]
            if positive.size and positive.min() > 0 and positive.max() / positive.min() > 20:
                ax.set_xscale("log")
        ax.scatter(pos[~is_best], dice[~is_best], s=28, color="#3b6fb6", alpha=0.8, zorder=3)
        ax.scatter(pos[is_best], dice[is_best], s=90, marker="*", color="#e8a317", zorder=4, label="best")
        ax.set_title(key, fontsize=11)
        ax.grid(alpha=0.3, axis="y")
    for ax in list(axes.flat)[len(searched):]:
        ax.axis("off")
    for ax in axes[:, 0]:
        ax.set_ylabel("best validation Dice")
    fig.tight_layout()
    return figure_tag(fig, "hyperparameter effects")


def predictions(checkpoint: Path, cache_dir: Path, max_cases: int = 4,
                splits: tuple[str, ...] = ("val", "test")) -> str:
    """FLAIR slice of a few cases of the first of `splits` that has any, with truth (solid) and
    prediction (dashed) contours."""
    import torch
    from matplotlib.lines import Line2D

    from voxtune.data.cache import case_entry, case_ids, read_manifest
    from voxtune.data.loader import CaseDataset
    from voxtune.train.evaluate import load_model
    from voxtune.train.metrics import dice_per_region, infer, masks as predicted_masks, probabilities
    from voxtune.viz import colour, display_window, grey_slice, label_text, without_background

    plt = pyplot()
    manifest = read_manifest(cache_dir)
    ids = next((found[:max_cases] for found in (case_ids(manifest, split) for split in splits) if found), [])
    if not ids:
        return note(f"The cache {cache_dir} has no {' or '.join(splits)} cases to show.")
    model, state = load_model(checkpoint)
    regions = list(state["regions"])
    cases = CaseDataset(cache_dir, ids, divisor=model.divisor)  # padded as validation pads them
    fig, axes = plt.subplots(1, len(ids), figsize=(3.4 * len(ids), 3.9), squeeze=False)
    for i, (ax, cid) in enumerate(zip(axes[0], ids)):
        padded_image, padded_label = cases[i]
        entry = case_entry(manifest, cid)
        shape = entry["image_shape"][1:]
        crop = (slice(None), slice(0, shape[0]), slice(0, shape[1]), slice(0, shape[2]))
        with torch.no_grad():
            logits = infer(model, padded_image[None].float(), state["patch_size"])
        logits = logits[(slice(None), *crop)]
        image, label = without_background(padded_image[crop].float().numpy(), entry), padded_label[crop].numpy()
        dice = dice_per_region(logits, torch.from_numpy(label[None]), state["softmax"])[0].tolist()
        pred = predicted_masks(probabilities(logits, state["softmax"]), state["softmax"])[0].numpy()
        # The slice with the most foreground in truth (or in the prediction when the truth has none).
        per_z = label[0].sum(axis=(0, 1)) if label[0].any() else pred[0].sum(axis=(0, 1))
        z = int(per_z.argmax()) if per_z.max() > 0 else shape[2] // 2
        ax.imshow(grey_slice(image[0, :, :, z], display_window(image[0])), cmap="gray", origin="lower",
                  vmin=0, vmax=1, interpolation="bilinear")
        for masks, style in ((label, "solid"), (pred, "dashed")):
            for mask, name in zip(masks[:, :, :, z], regions):
                if mask.any() and not mask.all():
                    ax.contour(mask.T.astype(float), levels=[0.5], colors=[colour(name, regions)],
                               linewidths=1.4, linestyles=style)
        scores = "  ".join(f"{''.join(w[0] for w in n.split('_')).upper()} {d:.2f}" for n, d in zip(regions, dice))
        ax.set_title(f"{cid}  z={z}\nDice {scores}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    handles = [Line2D([], [], color=colour(r, regions), lw=2, label=label_text(r)) for r in regions]
    handles += [Line2D([], [], color="k", lw=1.4, ls="solid", label="truth"),
                Line2D([], [], color="k", lw=1.4, ls="dashed", label="prediction")]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False, fontsize=9,
               bbox_to_anchor=(0.5, -0.04))
    fig.tight_layout()
    return figure_tag(fig, "predictions on validation cases")


def timeline(rows: list[dict]) -> str | None:
    """Each trial as a bar from start to end (seconds since the first start), packed into lanes."""
    spans = sorted((number(r.get("start_ts")), number(r.get("end_ts")), r["trial_id"]) for r in rows
                   if number(r.get("start_ts")) is not None and number(r.get("end_ts")) is not None)
    if not spans:
        return None
    plt = pyplot()
    t0 = spans[0][0]
    lanes: list[float] = []  # end time of the last bar in each lane
    fig, ax = plt.subplots(figsize=(12, 0.5 + 0.45 * min(len(spans), 24)))
    for start, end, tid in spans:
        lane = next((i for i, e in enumerate(lanes) if e <= start + 1e-3), None)
        if lane is None:
            lanes.append(end)
            lane = len(lanes) - 1
        lanes[lane] = end
        ax.barh(lane, end - start, left=start - t0, height=0.7, color="#3b6fb6", alpha=0.85, edgecolor="white")
        ax.text(start - t0 + (end - start) / 2, lane, tid, ha="center", va="center", color="white", fontsize=8)
    ax.set_yticks(range(len(lanes)), [f"slot {i + 1}" for i in range(len(lanes))])
    ax.invert_yaxis()
    ax.set_xlabel("seconds since the first trial started")
    ax.set_title("trial timeline (concurrent trials side by side)", fontsize=11)
    ax.grid(alpha=0.3, axis="x")
    return figure_tag(fig, "trial timeline")
