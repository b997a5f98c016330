"""Interactive explorers for the notebooks (ipywidgets), and the numbers behind them as pure functions.

* :func:`perlin_explorer` — sliders for the Perlin scale, threshold, rotation and the opacity beta of
  Eq. 1 (notebook 01).
* :func:`threshold_explorer` — pick an image-level and a pixel-level threshold and see precision,
  recall, F1, IoU, instance recall and overlays change; "suggest" jumps to the highest threshold
  reaching a target instance recall, the operating point behind the paper's IAP@90 (notebook 06).

The numeric part needs no widgets: :func:`operating_point_stats`,
:func:`threshold_for_instance_recall`, :func:`best_f1_image_threshold`, :func:`instance_table` and
:func:`false_positive_regions`.  Instances follow Sec. 4.2: an instance is a maximal 8-connected
ground-truth region, detected at threshold t when MORE than 50 % of its pixels score >= t
(as :func:`destseg_lib.metrics.iap`).

The widgets render with matplotlib's Agg into an ``ipywidgets.Image``, so they build and update
headless (papermill, nbval, tests): set a slider's ``.value`` and the image and labels follow.
"""
from __future__ import annotations

import math

import numpy as np

from .metrics import flat_pixels, label_regions
from .thresholds import METHODS  # noqa: F401  (re-exported: the methods the explorers show)
from .thresholds import best_f1_threshold, method_outputs, recall_threshold, region_detection_thresholds


# ============================================================================ numbers

def _ratio(a: float, b: float) -> float:
    return a / b if b else math.nan


class OperatingPoints:
    """Everything needed to evaluate any threshold in O(log P + K): sorted pixel scores, sorted
    anomalous pixel scores, and each instance's detection threshold d_r (the floor(ioi*area)+1-th
    largest score in the region: the region is detected at t iff t <= d_r)."""

    def __init__(self, preds, method: str = "DeSTSeg", ioi: float = 0.5):
        maps, scores = method_outputs(preds, method)
        self.method, self.ioi = method, float(ioi)
        flat_maps, flat_masks = flat_pixels(maps), flat_pixels(preds.masks, bool)  # any map sizes
        self.sorted_all = np.sort(flat_maps)
        self.sorted_anom = np.sort(flat_maps[flat_masks])
        self.n_pixels, self.n_anom = self.sorted_all.size, self.sorted_anom.size
        regions = region_detection_thresholds(maps, preds.masks, self.ioi)
        self.region_thresholds = regions["thresholds"]
        self.region_images, self.region_areas = regions["images"], regions["areas"]
        self.scores, self.labels = np.asarray(scores, np.float64), np.asarray(preds.labels).astype(bool)
        self.map_range = (float(self.sorted_all[0]), float(self.sorted_all[-1]))
        self.score_range = (float(self.scores.min()), float(self.scores.max()))

    def pixel_stats(self, t: float) -> dict:
        pos = self.n_pixels - int(np.searchsorted(self.sorted_all, t, side="left"))  # pixels >= t
        tp = self.n_anom - int(np.searchsorted(self.sorted_anom, t, side="left"))
        fp, fn = pos - tp, self.n_anom - tp
        tn = self.n_pixels - self.n_anom - fp
        k = self.region_thresholds.size
        det = int(np.count_nonzero(self.region_thresholds >= t))
        return {"pixel_threshold": float(t), "pixel_tp": tp, "pixel_fp": fp, "pixel_fn": fn, "pixel_tn": tn,
                "pixel_precision": _ratio(tp, tp + fp), "pixel_recall": _ratio(tp, tp + fn),
                "pixel_f1": _ratio(2 * tp, 2 * tp + fp + fn), "pixel_iou": _ratio(tp, tp + fp + fn),
                "pixel_fpr": _ratio(fp, fp + tn), "instances_detected": det, "n_instances": k,
                "instance_recall": _ratio(det, k)}

    def image_stats(self, t: float) -> dict:
        flagged = self.scores >= t
        tp = int(np.count_nonzero(flagged & self.labels))
        fp = int(np.count_nonzero(flagged & ~self.labels))
        fn = int(np.count_nonzero(~flagged & self.labels))
        tn = int(np.count_nonzero(~flagged & ~self.labels))
        return {"image_threshold": float(t), "image_tp": tp, "image_fp": fp, "image_fn": fn, "image_tn": tn,
                "image_precision": _ratio(tp, tp + fp), "image_recall": _ratio(tp, tp + fn),
                "image_f1": _ratio(2 * tp, 2 * tp + fp + fn), "image_fpr": _ratio(fp, fp + tn)}

    def stats(self, pixel_threshold: float, image_threshold: float | None = None) -> dict:
        out = self.pixel_stats(pixel_threshold)
        if image_threshold is not None:
            out.update(self.image_stats(image_threshold))
        return out

    def threshold_for_instance_recall(self, target: float = 0.9) -> float:
        """The highest pixel threshold whose instance recall is >= ``target`` (the IAP@k point)."""
        if not 0 < target <= 1:
            raise ValueError(f"target={target!r}: an instance recall in (0, 1]")
        if self.region_thresholds.size == 0:
            raise ValueError("no ground-truth instance in these predictions: instance recall is undefined")
        return recall_threshold(self.region_thresholds, target)  # as metrics.iap


def operating_point_stats(preds, pixel_threshold: float, image_threshold: float | None = None,
                          method: str = "DeSTSeg", ioi: float = 0.5) -> dict:
    """Pixel-level precision / recall / F1 / IoU / FPR (pixels >= ``pixel_threshold`` are
    predicted anomalous), instance recall (Sec. 4.2), and, with ``image_threshold``, image-level
    precision / recall / F1 / FPR (images whose score >= it are flagged).  Undefined ratios
    (0 / 0) are NaN."""
    return OperatingPoints(preds, method, ioi).stats(pixel_threshold, image_threshold)


def threshold_for_instance_recall(preds, target: float = 0.9, method: str = "DeSTSeg", ioi: float = 0.5) -> float:
    """The highest pixel threshold at which at least ``target`` of the instances are detected.
    Its pixel precision is the paper's IAP@k with k = ``target`` (Table 3 uses 0.9)."""
    return OperatingPoints(preds, method, ioi).threshold_for_instance_recall(target)


def best_f1_image_threshold(preds, method: str = "DeSTSeg") -> float:
    """The image-score threshold (one of the scores) with the best image-level F1; ties -> the
    highest threshold.  Chosen on the data it is evaluated on: a reference, not a validated value."""
    _, scores = method_outputs(preds, method)
    labels = np.asarray(preds.labels).astype(bool)
    if not labels.any():
        raise ValueError("no anomalous image: image-level F1 is undefined")
    return best_f1_threshold(scores, labels)[0]


def instance_table(preds, pixel_threshold: float, method: str = "DeSTSeg", ioi: float = 0.5) -> list[dict]:
    """One row per ground-truth instance: image index, defect type, area, the fraction of its
    pixels >= ``pixel_threshold``, whether that is > ``ioi`` (detected), its detection threshold
    and its peak score, and its mask (``region_mask``)."""
    maps, _ = method_outputs(preds, method)
    rows = []
    for i in (j for j, m in enumerate(preds.masks) if np.any(m)):
        k, lab = label_regions(preds.masks[i])
        for r in range(1, k + 1):
            region = lab == r
            vals = maps[i][region]
            covered = float(np.count_nonzero(vals >= pixel_threshold)) / vals.size
            srt = np.sort(vals)[::-1]
            rows.append({"image": int(i), "defect_type": preds.defect_types[i], "area": int(vals.size),
                         "covered": covered, "detected": covered > ioi,
                         "detect_threshold": float(srt[int(math.floor(ioi * vals.size))]),
                         "peak": float(srt[0]), "region_mask": region})
    return rows


def false_positive_regions(preds, pixel_threshold: float, method: str = "DeSTSeg") -> list[dict]:
    """The false-positive pixels (``map >= pixel_threshold`` outside the ground truth) as connected
    regions (8-connected), largest first: image, defect type, ``area`` (pixels), ``peak`` score,
    ``beside_truth`` (the region borders a ground-truth pixel: a halo that spills past a defect,
    rather than a false alarm elsewhere) and ``region_mask``.

    Regions are cut at the ground truth, so an over-segmented defect's halo counts as what it is —
    false-positive pixels — instead of hiding inside the region of the true positive it touches.
    Largest first: the false positives that cost the most pixel precision lead."""
    maps, _ = method_outputs(preds, method)
    rows = []
    for i in range(len(maps)):
        truth = preds.masks[i]
        k, lab = label_regions((maps[i] >= pixel_threshold) & ~truth)
        if not k:
            continue
        grown = _dilate8(truth)
        for r in range(1, k + 1):
            region = lab == r
            rows.append({"image": i, "defect_type": preds.defect_types[i], "area": int(region.sum()),
                         "peak": float(maps[i][region].max()), "beside_truth": bool((region & grown).any()),
                         "region_mask": region})
    return sorted(rows, key=lambda r: (-r["area"], -r["peak"], r["image"]))


def _dilate8(mask: np.ndarray) -> np.ndarray:
    """``mask`` grown by one pixel in the 8 directions (the pixels 8-adjacent to it, and itself)."""
    out = mask.copy()
    padded = np.pad(mask, 1)
    h, w = mask.shape
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            out |= padded[dy:dy + h, dx:dx + w]
    return out


def format_stats(stats: dict) -> str:
    """The numbers of :func:`operating_point_stats` as a few aligned lines of text."""
    f = lambda v: "n/a" if isinstance(v, float) and not math.isfinite(v) else f"{v:.3f}"
    lines = [f"pixel threshold {stats['pixel_threshold']:.5f}: precision {f(stats['pixel_precision'])}  "
             f"recall {f(stats['pixel_recall'])}  F1 {f(stats['pixel_f1'])}  IoU {f(stats['pixel_iou'])}  "
             f"FPR {f(stats['pixel_fpr'])}",
             f"instances detected {stats['instances_detected']}/{stats['n_instances']}  "
             f"(instance recall {f(stats['instance_recall'])})"]
    if "image_threshold" in stats:
        lines.append(f"image threshold {stats['image_threshold']:.5f}: precision {f(stats['image_precision'])}  "
                     f"recall {f(stats['image_recall'])}  F1 {f(stats['image_f1'])}  FPR {f(stats['image_fpr'])}  "
                     f"(flagged {stats['image_tp'] + stats['image_fp']} of "
                     f"{stats['image_tp'] + stats['image_fp'] + stats['image_fn'] + stats['image_tn']} images)")
    return "\n".join(lines)


# ============================================================================ widgets
def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height))


def _png(fig) -> bytes:
    from .viz import figure_png

    return figure_png(fig, dpi=72)


def _import_widgets():
    try:
        import ipywidgets
    except ImportError as e:  # pragma: no cover - ipywidgets is in the notebooks extra
        raise ImportError("the explorers need ipywidgets: pip install -e '.[notebooks]'") from e
    return ipywidgets


def perlin_explorer(image, textures=None, seed: int = 0, grayscale: bool = False):
    """Sliders for the anomaly synthesis of Sec. 3.1 on one image (HxWx3 in [0, 1], or 3xHxW tensor):
    Perlin scale 2^kx x 2^ky, threshold, rotation, opacity beta of Eq. 1, noise and texture seeds.
    Returns an ``ipywidgets.VBox`` (display it) with ``.sliders`` (name -> slider), ``.image``
    (the rendered panels), ``.label`` (mask area), ``.render()`` and ``.figure()`` (a static
    matplotlib figure of the current state)."""
    w = _import_widgets()
    from .synthesis import blend_anomaly, perlin_noise, rotate
    from .textures import make_texture_source
    from .viz import colorbar, title as set_panel_title, to_hwc

    img = to_hwc(image).astype(np.float32)
    textures = textures if textures is not None else make_texture_source(None)
    style = {"description_width": "110px"}
    lay = w.Layout(width="330px")
    sliders = {
        "scale_x_exp": w.IntSlider(2, min=0, max=5, description="x scale 2^k", style=style, layout=lay),
        "scale_y_exp": w.IntSlider(2, min=0, max=5, description="y scale 2^k", style=style, layout=lay),
        "threshold": w.FloatSlider(0.5, min=-0.9, max=0.95, step=0.05, description="threshold", style=style, layout=lay),
        "rotation": w.FloatSlider(0.0, min=-90, max=90, step=5, description="rotation (deg)", style=style, layout=lay),
        "beta": w.FloatSlider(0.3, min=0.0, max=0.95, step=0.05, description="beta (Eq. 1)", style=style, layout=lay),
        "noise_seed": w.IntSlider(seed, min=0, max=99, description="noise seed", style=style, layout=lay),
        "texture_seed": w.IntSlider(seed, min=0, max=99, description="texture seed", style=style, layout=lay),
    }
    view, label = w.Image(format="png"), w.HTML()

    def panels() -> dict:
        v = {k: s.value for k, s in sliders.items()}
        shape = img.shape[:2]
        noise = perlin_noise(shape, (2 ** v["scale_y_exp"], 2 ** v["scale_x_exp"]),
                             np.random.default_rng(v["noise_seed"]))
        noise = rotate(noise, v["rotation"], border_value=-1.0)
        mask = (noise > v["threshold"]).astype(np.float32)
        tex = textures.sample(np.random.default_rng(v["texture_seed"]), shape, grayscale)
        return {"noise": noise, "mask": mask, "texture": tex, "anomalous": blend_anomaly(img, tex, mask, v["beta"]),
                **v}

    def figure():
        p = panels()
        fig = _figure(9.6, 2.5)
        axes = fig.subplots(1, 5)
        shown = (("image I", img, None), ("rotated Perlin noise", p["noise"], "RdBu_r"),
                 (f"mask M (noise > {p['threshold']:.2f})", p["mask"], "gray"), ("texture A", p["texture"], None),
                 (f"I_a, beta = {p['beta']:.2f}", p["anomalous"], None))
        for ax, (title, a, cmap) in zip(axes, shown):
            im = ax.imshow(a, cmap=cmap, **({"vmin": -1, "vmax": 1} if cmap == "RdBu_r" else
                                            {"vmin": 0, "vmax": 1} if cmap else {}))
            set_panel_title(ax, title)
            ax.axis("off")
            if cmap == "RdBu_r":  # the noise's colour legend, the threshold marked on it
                cb = colorbar(fig, im, ax, inset="below")
                cb.ax.axvline(p["threshold"], color="k", lw=1.5)
                cb.set_label("noise (black: threshold)", fontsize=8)
        fig.tight_layout(rect=(0, 0.08, 1, 1))
        return fig, p

    def render(*_):
        fig, p = figure()
        view.value = _png(fig)
        label.value = (f"scale {2 ** p['scale_x_exp']} x {2 ** p['scale_y_exp']} cells, mask covers "
                       f"{100 * p['mask'].mean():.1f}% of the image; texture opacity 1 - beta = "
                       f"{1 - p['beta']:.2f}")

    for s in sliders.values():
        s.observe(render, names="value")
    box = w.VBox([w.HBox([w.VBox(list(sliders.values())[:4]), w.VBox(list(sliders.values())[4:])]), label, view])
    box.sliders, box.image, box.label = sliders, view, label
    box.render, box.figure, box.panels = render, (lambda: figure()[0]), panels
    render()
    return box


def threshold_explorer(preds, test_set, method: str = "DeSTSeg", indices=None, target_recall: float = 0.9,
                       image_threshold: float | None = None, pixel_threshold: float | None = None):
    """Pick an image-level and a pixel-level threshold; see, live, the numbers of
    :func:`operating_point_stats` and overlays (TP green, FP red, FN blue) of a few test images.

    ``indices``: which test images to draw (default: up to 4 anomalous of different types + 2
    normal).  The "suggest" button sets the pixel threshold to
    :func:`threshold_for_instance_recall` at the chosen target recall (the IAP@k operating point).
    Returns an ``ipywidgets.VBox`` with ``.pixel_slider``, ``.image_slider``, ``.target_slider``,
    ``.suggest_button``, ``.stats`` (HTML), ``.image`` (overlays), ``.current()`` (the numbers),
    ``.suggest(target=None)`` and ``.figure()`` (a static matplotlib figure of the current state).
    """
    w = _import_widgets()
    from .viz import overlay_legend, prediction_overlay, title as set_panel_title, to_hwc

    ops = OperatingPoints(preds, method)
    maps, scores = method_outputs(preds, method)
    if indices is None:
        indices, seen = [], set()
        for i in np.argsort(-scores, kind="stable"):
            if preds.labels[i] == 1 and preds.defect_types[i] not in seen and len(indices) < 4:
                indices.append(int(i))
                seen.add(preds.defect_types[i])
        indices += [int(i) for i in np.argsort(-scores, kind="stable") if preds.labels[i] == 0][:2]
    indices = [int(i) for i in indices]
    images = {i: to_hwc(test_set[i]["image"]) for i in indices}
    if ops.region_thresholds.size and pixel_threshold is None:
        pixel_threshold = ops.threshold_for_instance_recall(target_recall)
    lo, hi = ops.map_range
    slo, shi = ops.score_range
    style, lay = {"description_width": "150px"}, w.Layout(width="520px")
    pixel = w.FloatSlider(pixel_threshold if pixel_threshold is not None else (lo + hi) / 2, min=lo, max=hi,
                          step=max((hi - lo) / 500, 1e-9), readout_format=".5f", continuous_update=False,
                          description="pixel threshold", style=style, layout=lay)
    image_t = image_threshold if image_threshold is not None else (
        best_f1_image_threshold(preds, method) if preds.labels.any() else (slo + shi) / 2)
    image = w.FloatSlider(image_t, min=slo, max=shi, step=max((shi - slo) / 500, 1e-9), readout_format=".5f",
                          continuous_update=False, description="image threshold", style=style, layout=lay)
    target = w.FloatSlider(target_recall, min=0.05, max=1.0, step=0.05, description="target instance recall",
                           style=style, layout=w.Layout(width="360px"))
    button = w.Button(description="suggest pixel threshold", layout=w.Layout(width="200px"))
    stats_html, view = w.HTML(), w.Image(format="png")

    def figure():
        pt, it = pixel.value, image.value
        fig = _figure(1.75 * len(indices), 4.0)
        axes = fig.subplots(2, len(indices), squeeze=False)
        for c, i in enumerate(indices):
            flagged = scores[i] >= it
            axes[0, c].imshow(images[i])
            if preds.masks[i].any():
                axes[0, c].contour(preds.masks[i], levels=[0.5], colors="y", linewidths=0.8)
            set_panel_title(axes[0, c], f"{preds.defect_types[i]}\nscore {scores[i]:.4f}: "
                            f"{'FLAGGED' if flagged else 'passed'}",
                            color="tab:red" if flagged != bool(preds.labels[i]) else "k")
            axes[1, c].imshow(prediction_overlay(images[i], maps[i] >= pt, preds.masks[i]))
            set_panel_title(axes[1, c], f"{100 * np.mean(maps[i] >= pt):.1f}% of pixels >= t")
            for ax in axes[:, c]:
                ax.axis("off")
        fig.tight_layout(rect=(0, 0.07, 1, 1))
        overlay_legend(fig, {"ground truth (top row)": ("y", "line"), "red title: wrong decision": ("tab:red", "patch")})
        return fig

    def current() -> dict:
        return ops.stats(pixel.value, image.value)

    def render(*_):
        s = current()
        text = format_stats(s).replace("\n", "<br>")
        stats_html.value = f"<pre style='font-size:11px;line-height:1.3'>{method} map<br>{text}</pre>"
        view.value = _png(figure())

    def suggest(target_value=None):
        t = ops.threshold_for_instance_recall(target.value if target_value is None else target_value)
        pixel.value = min(max(t, pixel.min), pixel.max)
        return pixel.value

    for s in (pixel, image):
        s.observe(render, names="value")
    button.on_click(lambda _: suggest())
    if not ops.region_thresholds.size:
        button.disabled = True
    box = w.VBox([pixel, image, w.HBox([target, button]), stats_html, view])
    box.pixel_slider, box.image_slider, box.target_slider, box.suggest_button = pixel, image, target, button
    box.stats, box.image, box.ops, box.indices = stats_html, view, ops, indices
    box.current, box.suggest, box.render, box.figure = current, suggest, render, figure
    render()
    return box
