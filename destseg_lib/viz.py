"""Figures: loss curves, ROC / PR / PRO curves, anomaly maps and overlays, tables as text.

A leaf of the package: numpy, matplotlib and scikit-learn, plus the pure-numpy
:mod:`destseg_lib.metrics` (PRO curve) imported where used; it never imports the training, model
or experiment code.  Its inputs are arrays and the public data types (``Predictions`` and
``TestImages``-like datasets, read through their attributes).  The notebooks' set-up and the
figures that need a model live in :mod:`destseg_lib.notebook`.

Conventions, the same in every figure: anomaly maps use one colormap (:data:`ANOMALY_CMAP`);
probability maps (DeSTSeg's segmentation output) are drawn on the fixed scale 0-1 with a colorbar;
maps on another scale (the DeST product of distances) get a colorbar showing their range; legends
sit outside the curves.  Every ``plot_*`` function draws a new figure, saves it as PNG when
``path`` is given, and returns it.
"""
from __future__ import annotations

import io

import matplotlib.pyplot as plt
import numpy as np

ANOMALY_CMAP = "inferno"  # every anomaly map, distance map and overlay heat of the kit
PROB_RANGE = (0.0, 1.0)
METHOD_COLOURS = {"DeSTSeg": "tab:blue", "DeST": "tab:orange", "DeST only": "tab:orange", "NN-baseline": "tab:green"}

TITLE_PT = 10  # the size of every panel title: readable at notebook width


def title(ax, text: str, size: float = TITLE_PT, **kw) -> None:
    """``ax.set_title`` at ``size`` points, each line wrapped to the axes' width (so that a
    10-point title over a narrow panel breaks instead of running into its neighbour)."""
    import textwrap

    width_in = ax.get_position().width * ax.figure.get_figwidth()
    chars = max(10, int(width_in * 72 / (0.5 * size)))  # ~0.5 em per character
    lines = []
    for line in str(text).split("\n"):
        if len(line) > chars and " " not in line and "/" in line:  # test/broken_large: break after the "/"
            line = line.replace("/", "/ ")
        lines.append(textwrap.fill(line, chars, break_on_hyphens=False, break_long_words=False) if len(line) > chars else line)
    ax.set_title("\n".join(lines), fontsize=size, **kw)



def _save(fig, path):
    """Save ``fig`` as PNG at ``path`` (when given), atomically: a full disk leaves no truncated file."""
    if path is not None:
        from .files import atomic_write_bytes  # standard library only: viz stays a leaf

        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
        atomic_write_bytes(path, buf.getvalue())
    return fig


def to_hwc(image) -> np.ndarray:
    """3xHxW tensor / HxWx3 array in [0, 1] -> HxWx3 float numpy array.  A shape that reads both
    ways (3 x W x 3: an image 1 or 3 px tall) is taken as CHW for a tensor, HWC for an array."""
    tensor = hasattr(image, "detach")
    a = image.detach().cpu().numpy() if tensor else np.asarray(image)
    chw = a.ndim == 3 and a.shape[0] in (1, 3) and (tensor or a.shape[-1] not in (1, 3))
    return np.clip(a.transpose(1, 2, 0) if chw else a, 0, 1)


def _array(a) -> np.ndarray:
    return np.asarray(a.detach().cpu().numpy() if hasattr(a, "detach") else a)


def map_range(preds) -> tuple[float, float, str]:
    """Colour scale of ``preds.maps``: (0, 1, "probability") for DeSTSeg's segmentation output,
    else (0, max, "DeST map") for a DeST-only model (``preds.has_segmentation`` False)."""
    if getattr(preds, "has_segmentation", True):
        return 0.0, 1.0, "anomaly probability"
    return 0.0, max(max(float(np.max(m)) for m in preds.maps), 1e-8), "DeST map"


def colorbar(fig, image, ax, label: str | None = None, inset: str | None = None):
    """A slim colorbar for the mappable ``image``: beside ``ax`` (which it narrows a little), or with
    ``inset="right"`` / ``"below"`` in an inset just outside ``ax`` (nothing moves; use it on the
    last column / row of a grid, after ``tight_layout``)."""
    if inset is None:
        cb = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.03)
    else:
        right = inset == "right"
        cax = ax.inset_axes([1.06, 0.05, 0.07, 0.9] if right else [0.0, -0.14, 1.0, 0.07])
        cb = fig.colorbar(image, cax=cax, orientation="vertical" if right else "horizontal")
    cb.ax.tick_params(labelsize=7)
    if label:
        cb.set_label(label, fontsize=7)
    return cb


def legend_above(fig, axes, ncol: int | None = None, **kw):
    """One legend for the whole figure, above the axes (never over a curve)."""
    handles, labels = {}, []
    for ax in np.ravel(axes):
        for h, l in zip(*ax.get_legend_handles_labels()):
            if l not in handles:
                handles[l] = h
                labels.append(l)
    if labels:
        fig.legend([handles[l] for l in labels], labels, loc="lower center", bbox_to_anchor=(0.5, 1.0),
                   ncol=ncol or len(labels), frameon=False, fontsize=kw.pop("fontsize", 8), **kw)
    return fig


# ============================================================================================ curves
def plot_losses(history: list[dict], path=None):
    """Stage-1 cosine loss and stage-2 focal / L1 losses against the step."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.3))
    s1 = [h for h in history if h["stage"] == 1]
    s2 = [h for h in history if h["stage"] == 2]
    axes[0].plot([h["step"] for h in s1], [h["loss"] for h in s1], lw=1, c="k")
    axes[0].set(title="stage 1: student cosine loss (Eq. 4)", xlabel="step", ylabel="loss")
    for key, c in (("loss", "k"), ("focal", "tab:red"), ("l1", "tab:blue")):
        axes[1].plot([h["step"] for h in s2], [h.get(key, np.nan) for h in s2], lw=1, c=c,
                     label={"loss": "total (Eq. 7)", "focal": "focal (Eq. 5)", "l1": "L1 (Eq. 6)"}[key])
    axes[1].set(title="stage 2: segmentation loss", xlabel="step", yscale="log" if s2 else "linear")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    return _save(fig, path)


def plot_curves(preds, path=None, fpr_limit: float = 0.3):
    """Image ROC, pixel precision-recall and PRO curves for DeSTSeg and the DeST-only map, with the
    chance levels dashed (ROC diagonal; PR: the fraction of defective pixels)."""
    from sklearn.metrics import precision_recall_curve, roc_curve

    from .metrics import flat_pixels, pro_curve

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    runs = [("DeST only", preds.de_st_maps, preds.de_st_scores)]
    if getattr(preds, "has_segmentation", True):
        runs.insert(0, ("DeSTSeg", preds.maps, preds.scores))
    both_labels = 0 < preds.labels.sum() < len(preds.labels)
    flat_masks = flat_pixels(preds.masks, bool)  # maps of several sizes (aspect="keep") too
    for name, maps, scores in runs:
        c = METHOD_COLOURS[name]
        if both_labels:
            fpr, tpr, _ = roc_curve(preds.labels, scores)
            axes[0].plot(fpr, tpr, c=c, label=name)
        if flat_masks.any():
            p, r, _ = precision_recall_curve(flat_masks, flat_pixels(maps))
            axes[1].plot(r, p, c=c, label=name)
            f, pro = pro_curve(maps, preds.masks, fpr_limit)
            axes[2].plot(f, pro, c=c, label=name)
    axes[0].plot([0, 1], [0, 1], ls="--", c="0.6", lw=1, label="chance")
    if flat_masks.any():
        axes[1].axhline(float(flat_masks.mean()), ls="--", c="0.6", lw=1)
    axes[0].set(title="image ROC (Table 1: AUROC)", xlabel="false positive rate", ylabel="true positive rate")
    axes[1].set(title="pixel precision-recall (Table 2: AP)", xlabel="recall", ylabel="precision")
    axes[2].set(title=f"PRO up to FPR {fpr_limit} (AUPRO)", xlabel="pixel false positive rate", ylabel="PRO")
    for ax in axes:
        ax.set(xlim=(0, 1.0 if ax is not axes[2] else fpr_limit), ylim=(0, 1.02))
        ax.grid(alpha=0.3)
    fig.tight_layout()
    legend_above(fig, axes)
    return _save(fig, path)


def plot_precision_instance_recall(recall, precision, point=None, path=None):
    """Pixel precision against instance recall (Sec. 4.2), one point per detection threshold: the
    raw curve and the interpolated one (each precision replaced by the best at any higher recall),
    whose average is IAP.  ``point`` = (recall, precision, label) marks an operating point."""
    recall, precision = np.asarray(recall, float), np.asarray(precision, float)
    interp = np.maximum.accumulate(precision[::-1])[::-1] if precision.size else precision
    fig, ax = plt.subplots(figsize=(5.2, 3.2))
    ax.plot(recall, precision, ".", c="0.55", ms=4, label="raw precision")
    ax.step(recall, interp, where="post", c="tab:blue", label="interpolated (IAP averages it)")
    ax.axvline(0.9, ls="--", c="0.6", lw=1)
    if point is not None:
        ax.plot(point[0], point[1], "o", c="tab:red", label=point[2])
    ax.set(xlabel="instance recall", ylabel="pixel precision", xlim=(0, 1.02), ylim=(0, 1.02),
           title="precision vs instance recall")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    return _save(fig, path)


# ============================================================================================ maps
def overlay(image: np.ndarray, amap: np.ndarray, alpha: float = 0.5, vmax: float = 1.0,
            vmin: float = 0.0) -> np.ndarray:
    """Image (H x W x 3 in [0, 1]) blended with the map coloured on the FIXED scale [vmin, vmax]
    (default 0-1: a flat map of 0.48 stays a flat mid colour, it is not stretched)."""
    norm = np.clip((np.asarray(amap, float) - vmin) / max(vmax - vmin, 1e-8), 0, 1)
    heat = plt.get_cmap(ANOMALY_CMAP)(norm)[..., :3]
    return (1 - alpha) * to_hwc(image) + alpha * heat


def plot_examples(dataset, preds, indices, path=None, title_fn=None):
    """Rows of image | ground truth | anomaly map | overlay, as the paper's Fig. 3 / 4.  The map is
    on the fixed 0-1 probability scale (a DeST-only map on 0-max), with a colorbar."""
    indices = list(indices)
    vmin, vmax, label = map_range(preds)
    fig, axes = plt.subplots(len(indices), 4, figsize=(10.4, 2.5 * max(1, len(indices))), squeeze=False)
    for row, i in zip(axes, indices):
        img = to_hwc(dataset[i]["image"])
        heading = title_fn(i) if title_fn else f"{preds.defect_types[i]}  score {preds.scores[i]:.3f}"
        row[0].imshow(img)
        row[1].imshow(preds.masks[i], cmap="gray", vmin=0, vmax=1)
        im = row[2].imshow(preds.maps[i], cmap=ANOMALY_CMAP, vmin=vmin, vmax=vmax)
        colorbar(fig, im, row[2])
        row[3].imshow(overlay(img, preds.maps[i], vmin=vmin, vmax=vmax))
        for ax, name in zip(row, (heading, "ground truth", f"{label}", "overlay")):
            title(ax, name)
            ax.axis("off")
    fig.tight_layout()
    return _save(fig, path)


def plot_image_rows(rows: dict, titles=None, path=None, cmaps=None, size: float = 1.6, ranges=None,
                    colorbars=()):
    """A grid: one row per entry of ``rows`` (name -> list of images / masks / maps).

    ``cmaps``: name -> colormap (2-D arrays default to gray on 0-1); ``ranges``: name -> (vmin,
    vmax), shared by the whole row; ``colorbars``: names of the rows that get a colorbar; ``titles``:
    one list for the panels of the first row, or one list per row."""
    names = list(rows)
    per_row = bool(titles) and isinstance(titles[0], (list, tuple))
    n = max(len(v) for v in rows.values())
    fig, axes = plt.subplots(len(names), n, figsize=(size * n, size * len(names) + 0.2), squeeze=False)
    bars = []
    for r, name in enumerate(names):
        last = None
        for c in range(n):
            ax = axes[r, c]
            ax.axis("off")
            if c >= len(rows[name]):
                continue
            a = rows[name][c]
            a = to_hwc(a) if np.ndim(a) == 3 else _array(a)
            cmap = (cmaps or {}).get(name, "gray" if a.ndim == 2 else None)
            lim = (ranges or {}).get(name, (0, 1) if a.ndim == 2 and cmap == "gray" else None)
            last = ax.imshow(a, cmap=cmap, **({"vmin": lim[0], "vmax": lim[1]} if lim else {}))
            if titles is not None and (per_row or r == 0):
                row_titles = titles[r] if per_row else titles
                if c < len(row_titles):
                    title(ax, row_titles[c])
        axes[r, 0].text(-0.08, 0.5, name, transform=axes[r, 0].transAxes, rotation=90, ha="right",
                        va="center", fontsize=8)
        if name in colorbars and last is not None:
            bars.append((last, axes[r, len(rows[name]) - 1]))
    fig.tight_layout()
    for mappable, ax in bars:
        colorbar(fig, mappable, ax, inset="right")
    return _save(fig, path)


def plot_distance_maps(clean, corrupted, masks, levels_clean, de_clean, levels_bad, de_bad, path=None):
    """Per example: the clean image and its teacher-student distance maps, then the corrupted image
    and its maps, and the synthetic mask.  Distances D (Eq. 3) on the fixed scale 0-1 (larger
    values saturate), the DeST product on 0-max of the figure; colorbars on the last row."""
    n = len(clean)
    fig, axes = plt.subplots(2 * n, 6, figsize=(10.5, 1.7 * 2 * n), squeeze=False)
    de_max = max(float(np.max(de_clean)), float(np.max(de_bad)), 1e-6)
    mappables = {}
    for i in range(n):
        for r, (img, lv, de, tag) in enumerate(((clean, levels_clean, de_clean, "clean"),
                                               (corrupted, levels_bad, de_bad, "corrupted"))):
            row = axes[2 * i + r]
            row[0].imshow(to_hwc(img[i]))
            title(row[0], f"{tag} input")
            m = _array(masks[i, 0])
            if r == 1 and m.any():
                row[0].contour(m, levels=[0.5], colors="c", linewidths=0.8)
            for k, a in enumerate([lv_k[i] for lv_k in lv] + [de[i]]):
                vmax = 1.0 if k < 3 else de_max
                mappables[k] = row[1 + k].imshow(a, cmap=ANOMALY_CMAP, vmin=0, vmax=vmax)
                title(row[1 + k], f"D level {k + 1} (stride {4 * 2 ** k})" if k < 3 else "DeST (product)")
            row[5].imshow(m if r else np.zeros_like(m), cmap="gray", vmin=0, vmax=1)
            title(row[5], "synthetic mask" if r else "no anomaly")
            for ax in row:
                ax.axis("off")
    fig.tight_layout()
    for k, mappable in mappables.items():
        colorbar(fig, mappable, axes[-1, 1 + k], inset="below")
    return _save(fig, path)


def plot_segmentation_channels(image, mask, level_sums, channels, path=None):
    """The segmentation net's input (Eq. 2) for one image: per level the channel sum of
    -(T_hat * S_hat), which is minus the cosine similarity, on the fixed scale [-1, 1]."""
    fig, axes = plt.subplots(1, 2 + len(level_sums), figsize=(10.5, 2.2))
    axes[0].imshow(to_hwc(image))
    title(axes[0], "input")
    axes[1].imshow(_array(mask), cmap="gray", vmin=0, vmax=1)
    title(axes[1], "synthetic mask")
    for k, (part, ch) in enumerate(zip(level_sums, channels)):
        im = axes[2 + k].imshow(part, cmap=ANOMALY_CMAP, vmin=-1, vmax=1)
        title(axes[2 + k], f"level {k + 1}: {ch} channels, summed")
        colorbar(fig, im, axes[2 + k])
    for ax in axes:
        ax.axis("off")
    fig.tight_layout()
    return _save(fig, path)


def plot_top_t(dataset, preds, index: int, t: int, path=None):
    """The image score of Sec. 3.4 on one image: the map (fixed scale) with its ``t`` highest
    pixels marked, and the sorted map values with the top-t mean (the score), the max and the mean."""
    amap = preds.maps[index]
    vmin, vmax, label = map_range(preds)
    flat = np.sort(amap.ravel())[::-1]
    t = min(t, flat.size)
    top = np.zeros(amap.shape, bool)
    top.ravel()[np.argsort(-amap.ravel(), kind="stable")[:t]] = True
    fig, axes = plt.subplots(1, 3, figsize=(10.5, 2.9), gridspec_kw={"width_ratios": [1, 1.15, 1.5]})
    axes[0].imshow(to_hwc(dataset[index]["image"]))
    axes[0].contour(preds.masks[index], levels=[0.5], colors="c", linewidths=0.8)
    title(axes[0], f"{preds.defect_types[index]} (ground truth in cyan)")
    im = axes[1].imshow(amap, cmap=ANOMALY_CMAP, vmin=vmin, vmax=vmax)
    colorbar(fig, im, axes[1], label)
    ys, xs = np.nonzero(top)
    axes[1].scatter(xs, ys, s=3, c="c", marker="s", linewidths=0)
    title(axes[1], f"map, top-{t} pixels in cyan")
    for ax in axes[:2]:
        ax.axis("off")
    axes[2].plot(np.arange(1, flat.size + 1), flat, lw=1, c="k")
    axes[2].axvspan(1, t, color="tab:red", alpha=0.15, label=f"top {t}")
    for v, name, c in ((flat[0], "max", "tab:purple"), (flat[:t].mean(), f"top-{t} mean = score", "tab:red"),
                       (flat.mean(), "mean of the map", "tab:gray")):
        axes[2].axhline(v, ls="--", lw=1, c=c, label=f"{name}: {v:.3f}")
    axes[2].set(xscale="log", xlim=(1, flat.size), xlabel="pixel rank", ylabel="map value",
                title="sorted map values")
    axes[2].legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.28), ncol=2, frameon=False)
    fig.tight_layout()
    return _save(fig, path)


def plot_instances(dataset, preds, rows: list[dict], pixel_threshold: float, maps=None, path=None):
    """Instance-level cases (rows from ``widgets.instance_table`` / ``widgets.false_positive_regions``):
    image with the region outlined | ground truth | map (fixed scale) | prediction at ``pixel_threshold``."""
    maps = preds.maps if maps is None else maps
    vmin, vmax, label = map_range(preds)
    n = max(1, len(rows))
    fig, axes = plt.subplots(n, 4, figsize=(9.2, 2.2 * n), squeeze=False)
    for ax_row, r in zip(axes, rows):
        i = r["image"]
        img = to_hwc(dataset[i]["image"])
        ax_row[0].imshow(img)
        ax_row[0].contour(r["region_mask"], levels=[0.5], colors="c", linewidths=1.2)
        title(ax_row[0], r.get("title", f"image {i}"))
        ax_row[1].imshow(preds.masks[i], cmap="gray", vmin=0, vmax=1)
        title(ax_row[1], "ground truth")
        im = ax_row[2].imshow(maps[i], cmap=ANOMALY_CMAP, vmin=vmin, vmax=vmax)
        colorbar(fig, im, ax_row[2])
        title(ax_row[2], label)
        ax_row[3].imshow(prediction_overlay(img, maps[i] >= pixel_threshold, preds.masks[i]))
        ax_row[3].contour(r["region_mask"], levels=[0.5], colors="c", linewidths=1.2)
        title(ax_row[3], f"map >= {pixel_threshold:.3f}, the region in cyan")
        for ax in ax_row:
            ax.axis("off")
    for ax in axes[len(rows):].ravel():
        ax.axis("off")
    fig.tight_layout(rect=(0, 0.45 / fig.get_figheight(), 1, 1))
    overlay_legend(fig, {"the region (cyan)": ("c", "line")})
    return _save(fig, path)


OVERLAY_COLOURS = {"true positive": (0.1, 0.9, 0.1), "false positive": (1.0, 0.1, 0.1),
                   "false negative": (0.15, 0.35, 1.0)}


def overlay_legend(fig, extra: dict | None = None, y: float = 0.0) -> None:
    """A legend under ``fig`` naming :func:`prediction_overlay`'s colours, plus ``extra``
    (label -> (colour, "patch" | "line")): e.g. the ground-truth outline of the threshold explorer."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles = [Patch(color=c, label=k) for k, c in OVERLAY_COLOURS.items()]
    for label, (colour, kind) in (extra or {}).items():
        handles.append(Line2D([], [], color=colour, lw=1.5, label=label) if kind == "line"
                       else Patch(color=colour, label=label))
    fig.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, y), ncol=len(handles),
               frameon=False, fontsize=9)


def prediction_overlay(image: np.ndarray, predicted: np.ndarray, truth: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    """Image with true positives green, false positives red, false negatives blue."""
    out = np.array(image, dtype=np.float32, copy=True)
    for sel, colour in zip((predicted & truth, predicted & ~truth, ~predicted & truth), OVERLAY_COLOURS.values()):
        out[sel] = (1 - alpha) * out[sel] + alpha * np.array(colour)
    return np.clip(out, 0, 1)


def plot_dataset_grid(columns, path=None):
    """``columns``: (title, image HxWx3 uint8/float, mask HxW bool) triples.  Top row: the images
    with the defect outlined in red; bottom row: the masks."""
    fig, axes = plt.subplots(2, len(columns), figsize=(1.45 * len(columns), 3.2), squeeze=False)
    for j, (name, img, mask) in enumerate(columns):
        axes[0, j].imshow(img)
        if mask.any():
            axes[0, j].contour(mask, levels=[0.5], colors="r", linewidths=0.8)
        axes[1, j].imshow(mask, cmap="gray", vmin=0, vmax=1)
        title(axes[0, j], name)
        for ax in axes[:, j]:
            ax.axis("off")
    title(axes[1, 0], "masks", loc="left")
    fig.tight_layout()
    return _save(fig, path)


def plot_perlin_lattice(noise: np.ndarray, angles: np.ndarray, path=None):
    """Perlin noise next to its ingredients: the unit gradients (arrows, angles ``angles``) on the
    (sy+1) x (sx+1) lattice corners, and the noise they produce (on the fixed scale -1..1)."""
    size = noise.shape[0]
    sy, sx = angles.shape[0] - 1, angles.shape[1] - 1
    fig, axes = plt.subplots(1, 2, figsize=(7.5, 3.4))
    for ax, show_noise in zip(axes, (False, True)):
        for g in range(sy + 1):
            ax.axhline(g * size / sy - 0.5, c="0.6", lw=0.6, zorder=0)
        for g in range(sx + 1):
            ax.axvline(g * size / sx - 0.5, c="0.6", lw=0.6, zorder=0)
        if show_noise:
            im = ax.imshow(noise, cmap="RdBu_r", vmin=-1, vmax=1, extent=(-0.5, size - 0.5, size - 0.5, -0.5))
            colorbar(fig, im, ax)
        gy, gx = np.mgrid[0:sy + 1, 0:sx + 1]
        py, px = gy * size / sy - 0.5, gx * size / sx - 0.5
        ax.quiver(px, py, np.cos(angles), np.sin(angles), angles="xy", scale_units="xy",
                  scale=1 / (0.35 * size / max(sy, sx)), color="k", width=0.008)
        ax.plot(px.ravel(), py.ravel(), "o", c="k", ms=3)
        ax.set(xlim=(-size * 0.12, size * 1.12), ylim=(size * 1.12, -size * 0.12), aspect="equal",
               title="noise = faded blend of corner dot products" if show_noise else
               f"random gradients on a {sy + 1}x{sx + 1} lattice")
        ax.set_xticks([]), ax.set_yticks([])
        ax.grid(False)
    fig.tight_layout()
    return _save(fig, path)


KEY_TITLES = {"image_auroc": "image AUROC", "pixel_auroc": "pixel AUROC", "pixel_ap": "pixel AP", "aupro": "AUPRO",
              "iap": "IAP", "iap90": "IAP@90"}


def plot_per_defect(rows: list[dict], keys=("image_auroc", "pixel_ap", "iap"), path=None):
    """Grouped bars: one panel per metric (percent, as the tables), one group per defect type,
    DeSTSeg vs DeST only."""
    kinds = sorted({r["defect_type"] for r in rows})
    methods = sorted({r["method"] for r in rows}, key=lambda m: m != "DeSTSeg")
    fig, axes = plt.subplots(1, len(keys), figsize=(3.4 * len(keys), 2.8), squeeze=False)
    width = 0.8 / max(1, len(methods))
    for ax, key in zip(axes[0], keys):
        for j, m in enumerate(methods):
            vals = [100 * next((r[key] for r in rows if r["defect_type"] == k and r["method"] == m), np.nan)
                    for k in kinds]  # percent, as the tables
            ax.bar(np.arange(len(kinds)) + (j - (len(methods) - 1) / 2) * width, vals, width, label=m,
                   color=METHOD_COLOURS.get(m))
        ax.set_xticks(np.arange(len(kinds)), kinds, rotation=30, fontsize=8)
        ax.set(title=KEY_TITLES.get(key, key), ylim=(0, 100), yticks=np.linspace(0, 100, 6), ylabel="percent")
        ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    legend_above(fig, axes)
    return _save(fig, path)


# ============================================================================================ text
def format_rows(rows: list[dict], columns=None, floats: str = "{:.3f}") -> str:
    """A fixed-width text table of ``rows`` (dicts); floats formatted with ``floats``."""
    columns = list(columns or (rows[0].keys() if rows else []))
    cells = [[floats.format(r[c]) if isinstance(r.get(c), float) else str(r.get(c, "")) for c in columns]
             for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(columns)]

    def line(vals):
        return "  ".join(v.rjust(w) if i else v.ljust(w) for i, (v, w) in enumerate(zip(vals, widths)))

    return "\n".join([line(columns), "-" * len(line(columns))] + [line(r) for r in cells])


def format_per_defect(rows: list[dict], keys=("image_auroc", "pixel_auroc", "pixel_ap", "aupro", "iap", "iap90")) -> str:
    """``experiment.per_defect`` rows as text: percentages with one decimal ("n/a" when undefined)."""
    import math

    table = [{"defect type": r["defect_type"], "method": r["method"],
              "defective": str(r.get("n_defect_images", r.get("n_anomalous_images", ""))),
              "normal": str(r["n_images"] - r["n_anomalous_images"]) if "n_anomalous_images" in r else "",
              **{k: "n/a" if not math.isfinite(r[k]) else f"{100 * r[k]:.1f}" for k in keys}} for r in rows]
    return format_rows(table)


def figure_png(fig, dpi: int = 72) -> bytes:
    """PNG bytes of a matplotlib figure (for ipywidgets.Image)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return buf.getvalue()


def resolve_device(device: str = "auto") -> str:
    """``"auto"`` -> ``"cuda"`` when available, else ``"cpu"``; anything else unchanged.  (Kept here,
    torch imported only when called, because ``destseg_lib.cli`` imports it from this module.)"""
    if device in (None, "auto"):
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(device)
