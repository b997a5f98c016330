"""Figures: loss curves, ROC / PR / PRO curves, and image | ground truth | anomaly-map overlays.

Every function draws into a new matplotlib figure, saves it as PNG when ``path`` is given, and
returns the figure (so notebooks display it).
"""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np


def _save(fig, path):
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110, bbox_inches="tight")
    return fig


def plot_losses(history: list[dict], path=None):
    """Stage-1 cosine loss and stage-2 focal / L1 losses against the step."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    s1 = [h for h in history if h["stage"] == 1]
    s2 = [h for h in history if h["stage"] == 2]
    axes[0].plot([h["step"] for h in s1], [h["loss"] for h in s1], lw=1)
    axes[0].set(title="stage 1: student cosine loss (Eq. 4)", xlabel="step", ylabel="loss")
    for key in ("focal", "l1", "loss"):
        axes[1].plot([h["step"] for h in s2], [h.get(key, np.nan) for h in s2], lw=1, label=key)
    axes[1].set(title="stage 2: segmentation loss (Eq. 7)", xlabel="step", yscale="log")
    axes[1].legend()
    fig.tight_layout()
    return _save(fig, path)


def plot_curves(preds, path=None, fpr_limit: float = 0.3):
    """Image ROC, pixel precision-recall and PRO curves for DeSTSeg and the DeST-only map."""
    from sklearn.metrics import precision_recall_curve, roc_curve

    from .metrics import pro_curve

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    runs = (("DeSTSeg", preds.maps, preds.scores), ("DeST only", preds.de_st_maps, preds.de_st_scores))
    for name, maps, scores in runs:
        if 0 < preds.labels.sum() < len(preds.labels):
            fpr, tpr, _ = roc_curve(preds.labels, scores)
            axes[0].plot(fpr, tpr, label=name)
        if preds.masks.any():
            p, r, _ = precision_recall_curve(preds.masks.ravel(), maps.ravel())
            axes[1].plot(r, p, label=name)
            f, pro = pro_curve(maps, preds.masks, fpr_limit)
            axes[2].plot(f, pro, label=name)
    axes[0].set(title="image ROC", xlabel="false positive rate", ylabel="true positive rate")
    axes[1].set(title="pixel precision-recall", xlabel="recall", ylabel="precision")
    axes[2].set(title=f"PRO up to FPR {fpr_limit}", xlabel="pixel false positive rate", ylabel="PRO")
    for ax in axes:
        ax.legend(loc="lower right")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def overlay(image: np.ndarray, amap: np.ndarray, alpha: float = 0.5, vmax: float | None = None) -> np.ndarray:
    """Image (H x W x 3 in [0, 1]) blended with a jet-coloured map."""
    vmax = float(amap.max()) if vmax is None else vmax
    heat = plt.get_cmap("jet")(np.clip(amap / max(vmax, 1e-8), 0, 1))[..., :3]
    return (1 - alpha) * image + alpha * heat


def plot_examples(dataset, preds, indices, path=None, title_fn=None):
    """Rows of image | ground truth | anomaly map | overlay, as the paper's Fig. 4."""
    indices = list(indices)
    fig, axes = plt.subplots(len(indices), 4, figsize=(10, 2.6 * max(1, len(indices))), squeeze=False)
    vmax = float(preds.maps.max()) if len(preds.maps) else 1.0
    for row, i in zip(axes, indices):
        img = dataset[i]["image"].permute(1, 2, 0).numpy()
        title = title_fn(i) if title_fn else f"{preds.defect_types[i]}  score {preds.scores[i]:.3f}"
        panels = (img, preds.masks[i], preds.maps[i], overlay(img, preds.maps[i], vmax=vmax))
        for ax, im, name in zip(row, panels, ("image", "ground truth", "anomaly map", "overlay")):
            ax.imshow(im, cmap="gray" if im.ndim == 2 and name == "ground truth" else "jet",
                      vmin=0, vmax=1 if name != "anomaly map" else vmax)
            ax.set_title(name if name != "image" else title, fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    return _save(fig, path)
