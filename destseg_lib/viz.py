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


# ============================================================================================
# Notebook helpers (notebooks/00-06): set-up, live loss curve, and the figures of each step.
# ============================================================================================
import io as _io
import os as _os
from dataclasses import dataclass as _dataclass


def find_repo_root(start=None) -> Path:
    """The kit's checkout: the first folder at or above ``start`` (default: the working directory,
    which is ``notebooks/`` under Jupyter, papermill and nbval) holding ``destseg_lib/`` and
    ``notebooks/``; else the folder above this package; else ``start``."""
    start = Path.cwd() if start is None else Path(start)
    for d in (start.resolve(), *start.resolve().parents):
        if (d / "destseg_lib").is_dir() and (d / "notebooks").is_dir():
            return d
    here = Path(__file__).resolve().parent.parent
    return here if (here / "pyproject.toml").is_file() else start.resolve()


def resolve_device(device: str = "auto") -> str:
    """``"auto"`` -> ``"cuda"`` when available, else ``"cpu"``; anything else unchanged."""
    import torch

    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(device)


@_dataclass
class NotebookContext:
    """What every notebook needs: the config, the data split, and where runs and figures go."""
    repo: Path
    cfg: object
    split: object
    dataset: str
    category: str | None
    device: str
    out_dir: Path
    fig_dir: Path

    def savefig(self, fig, name: str) -> None:
        """Save ``fig`` as ``fig_dir/<name>.png`` (modest dpi).  Returns None: the inline backend
        shows pyplot figures at the end of the cell, so the notebook does not display it twice."""
        self.fig_dir.mkdir(parents=True, exist_ok=True)
        fig.savefig(self.fig_dir / f"{name}.png", dpi=100, bbox_inches="tight")

    def short(self, path) -> str:
        """``path`` relative to the repository (``<repo>/...``) when inside it."""
        try:
            return str(Path("<repo>") / Path(path).resolve().relative_to(self.repo))
        except ValueError:
            return str(path)

    def __str__(self) -> str:
        c = self.cfg
        return "\n".join([
            f"dataset    {self.split.name}: {len(self.split.train)} train / {len(self.split.test)} test images",
            f"preset     {c.preset}: {c.image_size}x{c.image_size}, batch {c.batch_size}, "
            f"{c.student_steps} + {c.seg_steps} steps, teacher {c.teacher}",
            f"device     {self.device}",
            f"runs in    {self.short(self.out_dir)}",
            f"figures in {self.short(self.fig_dir)}"])


def _run_name(dataset: str, category: str | None, preset: str, seed: int) -> str:
    parts = [dataset] + ([category] if category else []) + [preset] + ([f"seed{seed}"] if seed else [])
    return "_".join(str(p).replace("/", "-") for p in parts)


def check_run_dir(out_dir, cfg) -> None:
    """Refuse a run folder whose checkpoint was trained with another config (fields that may differ
    between sessions excepted), rather than silently loading the wrong model."""
    import json

    from .checkpoint import read_checkpoint
    from .train import config_differences

    out_dir = Path(out_dir)
    saved = None
    if (out_dir / "config.json").is_file():
        saved = json.loads((out_dir / "config.json").read_text())
    elif (out_dir / "checkpoints" / "last.pt").is_file():
        saved = read_checkpoint(out_dir / "checkpoints" / "last.pt")["config"]
    if saved is None:
        return
    diff = config_differences(saved, cfg)
    if diff:
        raise ValueError(f"{out_dir} holds a run trained with a different config (differs in {diff}); "
                         "delete that folder or pass another out_dir")


def notebook_setup(preset: str = "ci", dataset: str = "toy", data_root=None, category=None, texture_dir=None,
                   device: str = "auto", seed: int = 0, out_dir=None) -> NotebookContext:
    """Turn the notebooks' parameters into a :class:`NotebookContext`.

    * ``data_root`` None: ``<repo>/data/toy`` for the toy data (generated on first use), else
      ``$DESTSEG_DATA`` (see ``data_download.sh``).
    * ``out_dir`` None: ``$DESTSEG_RUNS`` or ``<repo>/runs/notebooks``, then one sub-folder per
      (dataset, category, preset, seed), shared by all notebooks so that they share checkpoints.
    * figures go to ``$DESTSEG_FIG_DIR`` (set by ``notebooks/run_all.py``) or ``<out_dir>/figures``.
    * the ``ci`` preset on CPU runs single-threaded: its numbers are then bit-for-bit the same on
      every run and core count (nbval compares them with the stored outputs).
    """
    import torch

    from .config import get_preset
    from .experiment import open_split

    repo = find_repo_root()
    device = resolve_device(device)
    cfg = get_preset(preset, seed=int(seed), texture_dir=texture_dir)
    if preset == "ci" and device == "cpu":
        torch.set_num_threads(1)
    torch.manual_seed(int(seed))
    plt.rcParams.update({"figure.dpi": 72, "savefig.dpi": 100, "font.size": 9})
    _inline_jpeg()
    if dataset == "toy":
        split = open_split("toy", data_root or repo / "data" / "toy", category)
    else:
        split = open_split(dataset, data_root, category)
    if out_dir is None:
        base = Path(_os.environ["DESTSEG_RUNS"]) if _os.environ.get("DESTSEG_RUNS") else repo / "runs" / "notebooks"
        out_dir = base / _run_name(dataset, category, preset, int(seed))
    out_dir = Path(out_dir)
    check_run_dir(out_dir, cfg)
    fig_dir = Path(_os.environ["DESTSEG_FIG_DIR"]) if _os.environ.get("DESTSEG_FIG_DIR") else out_dir / "figures"
    return NotebookContext(repo, cfg, split, dataset, category, device, out_dir, fig_dir)


def _inline_jpeg(quality: int = 85) -> None:
    """Inside IPython, show figures as JPEG: the notebooks' stored outputs (read on GitHub) stay
    small.  The files written by :meth:`NotebookContext.savefig` stay PNG."""
    try:
        from IPython import get_ipython
        from matplotlib_inline.backend_inline import set_matplotlib_formats
    except ImportError:
        return
    if get_ipython() is not None:
        set_matplotlib_formats("jpeg", pil_kwargs={"quality": quality})


class LiveLossPlot:
    """A loss curve that redraws in place while :func:`destseg_lib.train` runs: pass
    ``live.update`` as ``callback``.  Uses an IPython display handle (works in JupyterLab, and
    headless under papermill / nbval, where the last drawing is what the notebook keeps)."""

    def __init__(self, title: str = "training loss", keys=("loss",), every: int = 1, log: bool = False,
                 stage: int | None = None):
        from matplotlib.figure import Figure

        self.rows, self.keys, self.every, self.stage = [], tuple(keys), max(1, int(every)), stage
        self.fig = Figure(figsize=(6, 2.8))
        self.ax = self.fig.add_subplot()
        self.title, self.log, self.handle = title, log, None

    def _draw(self):
        self.ax.clear()
        for key in self.keys:
            pts = [(r["step"], r[key]) for r in self.rows if key in r]
            if pts:
                self.ax.plot(*zip(*pts), lw=1.2, marker="." if len(pts) < 50 else None, label=key)
        self.ax.set(title=self.title, xlabel="step", yscale="log" if self.log else "linear")
        self.ax.grid(alpha=0.3)
        if len(self.keys) > 1:
            self.ax.legend(loc="upper right")
        self.fig.tight_layout()

    def _show(self) -> None:
        from IPython.display import display

        self._draw()
        if self.handle is None:
            self.handle = display(self.fig, display_id=True)
        else:
            self.handle.update(self.fig)
        self._drawn = len(self.rows)

    def update(self, row: dict) -> None:
        if self.stage is not None and row.get("stage") != self.stage:
            return
        self.rows.append(dict(row))
        if len(self.rows) % self.every == 0:
            self._show()

    def close(self):
        """Draw the last steps if ``every`` skipped them; returns the figure."""
        if self.rows and getattr(self, "_drawn", 0) != len(self.rows):
            self._show()
        return self.fig


def _hwc(image) -> np.ndarray:
    """3xHxW tensor / HxWx3 array in [0, 1] -> HxWx3 float numpy array."""
    a = image.detach().cpu().numpy() if hasattr(image, "detach") else np.asarray(image)
    return np.clip(a.transpose(1, 2, 0) if a.ndim == 3 and a.shape[0] in (1, 3) else a, 0, 1)


def format_rows(rows: list[dict], columns=None, floats: str = "{:.3f}") -> str:
    """A fixed-width text table of ``rows`` (dicts); floats formatted with ``floats``."""
    columns = list(columns or (rows[0].keys() if rows else []))
    cells = [[floats.format(r[c]) if isinstance(r.get(c), float) else str(r.get(c, "")) for c in columns]
             for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(columns)]
    line = lambda vals: "  ".join(v.rjust(w) if i else v.ljust(w) for i, (v, w) in enumerate(zip(vals, widths)))
    return "\n".join([line(columns), "-" * len(line(columns))] + [line(r) for r in cells])


def dataset_stats(split) -> list[dict]:
    """One row per (part, defect type): image count, native sizes, and the defect area as a
    fraction of the image (mean / min / max over that type's masks)."""
    from .data import _image_hw, read_mask

    groups: dict[tuple, list] = {}
    for part, samples in (("train", split.train), ("test", split.test)):
        for s in samples:
            groups.setdefault((part, s.defect_type), []).append(s)
    rows = []
    for (part, kind), samples in groups.items():
        sizes = sorted({_image_hw(s.path) for s in samples})
        fr = [float(read_mask(s.mask_path).mean()) for s in samples if s.mask_path]
        rows.append({"part": part, "type": kind, "images": len(samples),
                     "size (HxW)": ", ".join(f"{h}x{w}" for h, w in sizes[:3]) + (" ..." if len(sizes) > 3 else ""),
                     "area mean": float(np.mean(fr)) if fr else "-", "area min": float(np.min(fr)) if fr else "-",
                     "area max": float(np.max(fr)) if fr else "-"})
    return rows


def plot_dataset_grid(split, per_type: int = 2, path=None):
    """Columns: normal training images, then ``per_type`` test images of each type; the masks of
    defective images are drawn as a red outline and shown in the row below."""
    import cv2

    from .data import read_image, read_mask

    cols = [("train/good", s) for s in split.train[:per_type]]
    for kind in sorted({s.defect_type for s in split.test}, key=lambda k: (k != "good", k)):
        cols += [(f"test/{kind}", s) for s in [t for t in split.test if t.defect_type == kind][:per_type]]
    fig, axes = plt.subplots(2, len(cols), figsize=(1.45 * len(cols), 3.2), squeeze=False)
    for j, (name, s) in enumerate(cols):
        img = read_image(s.path)
        mask = read_mask(s.mask_path) if s.mask_path else np.zeros(img.shape[:2], bool)
        shown = img.copy()
        if mask.any():
            contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
            cv2.drawContours(shown, contours, -1, (255, 0, 0), max(1, img.shape[0] // 100))
        axes[0, j].imshow(shown)
        axes[1, j].imshow(mask, cmap="gray", vmin=0, vmax=1)
        axes[0, j].set_title(name, fontsize=7)
        for ax in axes[:, j]:
            ax.axis("off")
    axes[1, 0].set_title("masks", fontsize=7, loc="left")
    fig.tight_layout()
    return _save(fig, path)


def plot_perlin_lattice(scale=(3, 3), seed: int = 0, size: int = 96, path=None):
    """Perlin noise next to its ingredients: the random unit gradients on the (sy+1) x (sx+1)
    lattice corners (arrows) and the noise they produce (Sec. 3.1, from DRAEM)."""
    from .synthesis import perlin_noise

    sy, sx = scale
    noise = perlin_noise((size, size), (sy, sx), np.random.default_rng(seed))
    angles = np.random.default_rng(seed).uniform(0.0, 2 * np.pi, size=(sy + 1, sx + 1))  # same draws
    fig, axes = plt.subplots(1, 2, figsize=(7.5, 3.4))
    for ax, show_noise in zip(axes, (False, True)):
        for g in range(sy + 1):
            ax.axhline(g * size / sy - 0.5, c="0.6", lw=0.6, zorder=0)
        for g in range(sx + 1):
            ax.axvline(g * size / sx - 0.5, c="0.6", lw=0.6, zorder=0)
        if show_noise:
            im = ax.imshow(noise, cmap="RdBu_r", vmin=-1, vmax=1, extent=(-0.5, size - 0.5, size - 0.5, -0.5))
            fig.colorbar(im, ax=ax, fraction=0.046)
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


def plot_image_rows(rows: dict, titles=None, path=None, cmaps=None, size: float = 1.6):
    """A grid: one row per entry of ``rows`` (name -> list of images / masks / maps)."""
    names = list(rows)
    n = max(len(v) for v in rows.values())
    fig, axes = plt.subplots(len(names), n, figsize=(size * n, size * len(names) + 0.2), squeeze=False)
    for r, name in enumerate(names):
        for c in range(n):
            ax = axes[r, c]
            ax.axis("off")
            if c >= len(rows[name]):
                continue
            a = rows[name][c]
            a = _hwc(a) if np.ndim(a) == 3 else np.asarray(a.detach().cpu() if hasattr(a, "detach") else a)
            cmap = (cmaps or {}).get(name, "gray" if a.ndim == 2 else None)
            ax.imshow(a, cmap=cmap, **({"vmin": 0, "vmax": 1} if a.ndim == 2 and cmap == "gray" else {}))
            if titles is not None and r == 0:
                ax.set_title(titles[c], fontsize=7)
        axes[r, 0].text(-0.08, 0.5, name, transform=axes[r, 0].transAxes, rotation=90, ha="right",
                        va="center", fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def feature_distances(model, images):
    """Teacher vs student cosine distance maps (Eq. 3) for ``images`` (B x 3 x H x W in [0, 1]):
    a list of three B x h x w arrays (strides 4, 8, 16) and the DeST map (their product,
    upsampled), as numpy."""
    import torch

    model.eval()
    with torch.no_grad():
        out = model(images.to(next(model.parameters()).device))
    return [c[:, 0].float().cpu().numpy() for c in out["cosine_maps"]], out["de_st"][:, 0].float().cpu().numpy()


def feature_distance_stats(model, clean, corrupted, masks) -> list[dict]:
    """Mean teacher-student cosine distance per level on the clean images, and on the corrupted
    images outside / inside the synthetic anomaly.  Each feature cell is weighted by the fraction of
    it the mask covers (area-downsampled mask), so small anomalies still count at stride 16."""
    import torch.nn.functional as F

    levels_clean, _ = feature_distances(model, clean)
    levels_bad, _ = feature_distances(model, corrupted)
    rows = []
    for k, (dc, db) in enumerate(zip(levels_clean, levels_bad)):
        w = F.interpolate(masks.float(), size=db.shape[-2:], mode="area")[:, 0].numpy()
        inside = float((db * w).sum() / w.sum()) if w.sum() > 0 else float("nan")
        outside = float((db * (1 - w)).sum() / (1 - w).sum()) if (1 - w).sum() > 0 else float("nan")
        rows.append({"level": f"{k + 1} (stride {4 * 2 ** k})", "clean image": float(dc.mean()),
                     "corrupted, outside mask": outside, "corrupted, inside mask": inside})
    return rows


def plot_feature_distances(model, clean, corrupted, masks, path=None):
    """Per example: clean image and its distance maps, corrupted image and its distance maps, and
    the synthetic mask.  One colour scale per level, shared by both rows: a denoising student
    leaves the clean image dark and lights up the corrupted region."""
    levels_c, de_c = feature_distances(model, clean)
    levels_b, de_b = feature_distances(model, corrupted)
    n = clean.shape[0]
    fig, axes = plt.subplots(2 * n, 6, figsize=(9.5, 1.65 * 2 * n), squeeze=False)
    vmax = [max(float(a.max()), float(b.max()), 1e-6) for a, b in zip(levels_c + [de_c], levels_b + [de_b])]
    for i in range(n):
        for r, (img, lv, de, tag) in enumerate(((clean, levels_c, de_c, "clean"), (corrupted, levels_b, de_b, "corrupted"))):
            row = axes[2 * i + r]
            row[0].imshow(_hwc(img[i]))
            row[0].set_title(f"{tag} input", fontsize=7)
            if r == 1:
                row[0].contour(masks[i, 0].numpy(), levels=[0.5], colors="w", linewidths=0.8)
            for k, a in enumerate([m[i] for m in lv] + [de[i]]):
                row[1 + k].imshow(a, cmap="magma", vmin=0, vmax=vmax[k])
                row[1 + k].set_title(f"D level {k + 1}" if k < 3 else "DeST (product)", fontsize=7)
            row[5].imshow(masks[i, 0].numpy() if r else np.zeros_like(masks[i, 0].numpy()), cmap="gray", vmin=0, vmax=1)
            row[5].set_title("synthetic mask" if r else "no anomaly", fontsize=7)
            for ax in row:
                ax.axis("off")
    fig.tight_layout()
    return _save(fig, path)


def plot_segmentation_input(model, images, masks, index: int = 0, path=None):
    """The segmentation net's input (Eq. 2 / Table 6 "product"): for one image, the channel sum of
    -(T_hat * S_hat) per level, which is minus the cosine similarity, next to the mask."""
    import torch

    from .models import segmentation_input

    model.eval()
    with torch.no_grad():
        t, s = model.features(images[index:index + 1].to(next(model.parameters()).device))
        x = segmentation_input(t, s, "product")[0].cpu()
    bounds = np.cumsum([0, *[f.shape[1] for f in t]])
    fig, axes = plt.subplots(1, 5, figsize=(9.5, 2.1))
    axes[0].imshow(_hwc(images[index]))
    axes[0].set_title("input", fontsize=8)
    axes[1].imshow(masks[index, 0].numpy(), cmap="gray", vmin=0, vmax=1)
    axes[1].set_title("synthetic mask", fontsize=8)
    for k in range(3):
        part = x[bounds[k]:bounds[k + 1]].sum(0).numpy()
        im = axes[2 + k].imshow(part, cmap="magma")
        axes[2 + k].set_title(f"level {k + 1}: {bounds[k + 1] - bounds[k]} ch, summed", fontsize=8)
        fig.colorbar(im, ax=axes[2 + k], fraction=0.046)
    for ax in axes:
        ax.axis("off")
    fig.tight_layout()
    return _save(fig, path)


def plot_segmentation_predictions(model, images, masks, path=None, n: int = 6):
    """Synthetic anomalies: input | synthetic mask | predicted map (segmentation net, upsampled)."""
    from .infer import predict

    model.eval()
    out = predict(model, images[:n].to(next(model.parameters()).device), top_t=1)
    rows = {"input": list(images[:n]), "synthetic mask": [m[0] for m in masks[:n]],
            "prediction": list(out["anomaly_map"].float().cpu().numpy())}
    fig = plot_image_rows(rows, cmaps={"prediction": "jet"})
    for ax in fig.axes[2 * len(rows["input"]):]:
        for im in ax.get_images():
            im.set_clim(0, 1)
    return _save(fig, path)


def format_per_defect(rows: list[dict], keys=("image_auroc", "pixel_auroc", "pixel_ap", "aupro", "iap", "iap90")) -> str:
    """``experiment.per_defect`` rows as text: percentages with one decimal ("n/a" when undefined)."""
    import math

    table = [{"defect type": r["defect_type"], "method": r["method"],
              "defective": str(r.get("n_defect_images", r.get("n_anomalous_images", ""))),
              "normal": str(r["n_images"] - r["n_anomalous_images"]) if "n_anomalous_images" in r else "",
              **{k: "n/a" if not math.isfinite(r[k]) else f"{100 * r[k]:.1f}" for k in keys}} for r in rows]
    return format_rows(table)


def plot_per_defect(rows: list[dict], keys=("image_auroc", "pixel_ap", "iap"), path=None):
    """Grouped bars: one panel per metric, one group per defect type, DeSTSeg vs DeST only."""
    kinds = sorted({r["defect_type"] for r in rows})
    methods = sorted({r["method"] for r in rows}, key=lambda m: m != "DeSTSeg")
    fig, axes = plt.subplots(1, len(keys), figsize=(3.4 * len(keys), 2.8), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for j, m in enumerate(methods):
            vals = [next((r[key] for r in rows if r["defect_type"] == k and r["method"] == m), np.nan) for k in kinds]
            ax.bar(np.arange(len(kinds)) + (j - 0.5) * 0.38, vals, 0.38, label=m)
        ax.set_xticks(np.arange(len(kinds)), kinds, rotation=30, fontsize=8)
        ax.set(title=key, ylim=(0, 1.18), yticks=np.linspace(0, 1, 6))
        ax.grid(alpha=0.3, axis="y")
    axes[0, 0].legend(fontsize=8, ncol=2, loc="upper center")
    fig.tight_layout()
    return _save(fig, path)


def plot_top_t(dataset, preds, index: int, t: int, path=None):
    """The image score of Sec. 3.4 on one image: the map with its ``t`` highest pixels marked, and
    the sorted map values with the top-t mean (the score) next to the max and the mean."""
    amap = preds.maps[index]
    flat = np.sort(amap.ravel())[::-1]
    t = min(t, flat.size)
    top = np.zeros(amap.shape, bool)
    top.ravel()[np.argsort(-amap.ravel(), kind="stable")[:t]] = True
    fig, axes = plt.subplots(1, 3, figsize=(9.5, 2.8), gridspec_kw={"width_ratios": [1, 1, 1.6]})
    axes[0].imshow(_hwc(dataset[index]["image"]))
    axes[0].contour(preds.masks[index], levels=[0.5], colors="y", linewidths=0.8)
    axes[0].set_title(f"{preds.defect_types[index]} (ground truth in yellow)", fontsize=8)
    axes[1].imshow(amap, cmap="jet")
    ys, xs = np.nonzero(top)
    axes[1].scatter(xs, ys, s=4, c="w", marker="s", linewidths=0)
    axes[1].set_title(f"map, top-{t} pixels in white", fontsize=8)
    for ax in axes[:2]:
        ax.axis("off")
    axes[2].plot(np.arange(1, flat.size + 1), flat, lw=1, c="k")
    axes[2].axvspan(1, t, color="tab:red", alpha=0.2, label=f"top {t}")
    for v, name, c in ((flat[0], "max", "tab:purple"), (flat[:t].mean(), f"top-{t} mean = score", "tab:red"),
                       (flat.mean(), "mean", "tab:gray")):
        axes[2].axhline(v, ls="--", lw=1, c=c, label=f"{name}: {v:.4f}")
    axes[2].set(xscale="log", xlim=(1, flat.size), xlabel="pixel rank", ylabel="map value",
                title="sorted map values")
    axes[2].legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    return _save(fig, path)


def plot_instances(dataset, preds, rows: list[dict], pixel_threshold: float, maps=None, path=None):
    """Instance-level cases (rows from ``widgets.instance_table`` / ``widgets.false_positive_regions``):
    image with the region outlined | ground truth | map | prediction at ``pixel_threshold``."""
    maps = preds.maps if maps is None else maps
    n = max(1, len(rows))
    fig, axes = plt.subplots(n, 4, figsize=(8.4, 2.2 * n), squeeze=False)
    for ax_row, r in zip(axes, rows):
        i = r["image"]
        img = _hwc(dataset[i]["image"])
        region = r["region_mask"]
        ax_row[0].imshow(img)
        ax_row[0].contour(region, levels=[0.5], colors="c", linewidths=1.2)
        ax_row[0].set_title(r.get("title", f"image {i}"), fontsize=7)
        ax_row[1].imshow(preds.masks[i], cmap="gray", vmin=0, vmax=1)
        ax_row[1].set_title("ground truth", fontsize=7)
        ax_row[2].imshow(maps[i], cmap="jet", vmin=float(maps.min()), vmax=float(maps.max()))
        ax_row[2].set_title("anomaly map", fontsize=7)
        ax_row[3].imshow(prediction_overlay(img, maps[i] >= pixel_threshold, preds.masks[i]))
        ax_row[3].set_title("TP green / FP red / FN blue", fontsize=7)
        for ax in ax_row:
            ax.axis("off")
    for ax in axes[len(rows):].ravel():
        ax.axis("off")
    fig.tight_layout()
    return _save(fig, path)


def prediction_overlay(image: np.ndarray, predicted: np.ndarray, truth: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    """Image with true positives green, false positives red, false negatives blue."""
    out = np.array(image, dtype=np.float32, copy=True)
    for sel, colour in ((predicted & truth, (0.1, 0.9, 0.1)), (predicted & ~truth, (1.0, 0.1, 0.1)),
                        (~predicted & truth, (0.15, 0.35, 1.0))):
        out[sel] = (1 - alpha) * out[sel] + alpha * np.array(colour)
    return np.clip(out, 0, 1)


def figure_png(fig, dpi: int = 72) -> bytes:
    """PNG bytes of a matplotlib figure (for ipywidgets.Image)."""
    buf = _io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return buf.getvalue()
