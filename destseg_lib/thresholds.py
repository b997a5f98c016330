"""Decision thresholds chosen on a validation split, never on the test set.

The paper reports threshold-free metrics (AUROC, AP, AUPRO) and the IAP operating point; an
engineer who ships the model needs decisions: "is this image anomalous?" and "which pixels?".
Here both thresholds are chosen on a *validation split* — part of the labelled test data held out
before evaluation (:func:`split_off_validation`, ``val_fraction`` in the config) — by a stated rule,
stored beside the checkpoint (``model.thresholds.json``) with the rule and the data they came from, and reported on the other part.

Rules (``threshold_rule``):

* ``"best_f1"`` — image threshold: the image score with the best image-level F1 on the validation
  images; pixel threshold: the map value with the best pixel-level F1 over all validation pixels.
  Ties -> the highest threshold.
* ``"instance_recall"`` — image threshold: the highest score at which at least ``target_recall`` of
  the anomalous validation images are flagged; pixel threshold: the highest map value at which at
  least ``target_recall`` of the ground-truth instances (8-connected regions) are detected, a region
  counting as detected when more than half of its pixels reach the threshold — the operating point
  of the paper's IAP@k (Sec. 4.2, Table 3 uses k = 0.9).

Pure numpy / OpenCV; :mod:`destseg_lib.widgets` uses :func:`region_detection_thresholds` too.
"""
from __future__ import annotations

import math
import re

import numpy as np

from .metrics import flat_pixels, label_regions

RULES = ("best_f1", "instance_recall")
METHODS = ("DeSTSeg", "DeST")


def method_outputs(preds, method: str) -> tuple[np.ndarray, np.ndarray]:
    """(maps, scores) of ``method`` in a :class:`~destseg_lib.infer.Predictions`: the DeSTSeg
    segmentation maps, or the DeST-only product of cosine distances."""
    if method not in METHODS:
        raise ValueError(f"method={method!r}: choose 'DeSTSeg' or 'DeST'")
    return (preds.maps, preds.scores) if method == "DeSTSeg" else (preds.de_st_maps, preds.de_st_scores)


# ----------------------------------------------------------------------------- validation split
def split_off_validation(samples: list, fraction: float, seed: int = 0) -> tuple[list, list]:
    """``samples`` (:class:`~destseg_lib.data.Sample`) split into (validation, test), stratified by
    ``defect_type`` ("good" is a type too): within each type the samples, sorted by path, are
    permuted with ``np.random.default_rng([seed, k])`` (k = the type's index in sorted order) and the
    first ``round(fraction * n)`` go to validation — at least one, and at least one left for test,
    when the type has two or more.  Both parts keep the input order.  ``fraction=0``: no validation.

    The split depends on ``seed`` and the file names only, not on the training seed: runs with
    different training seeds are scored on the same test half."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"val_fraction={fraction!r}: a fraction in [0, 1) of the test split "
                         "(0 = no validation split)")
    if fraction == 0 or not samples:
        return [], list(samples)
    types = sorted({s.defect_type for s in samples})
    chosen: set[str] = set()
    for k, kind in enumerate(types):
        members = sorted((s.path for s in samples if s.defect_type == kind))
        n = len(members)
        if n < 2:
            continue  # a single image stays in the test part
        n_val = min(max(int(round(fraction * n)), 1), n - 1)
        perm = np.random.default_rng([int(seed), k]).permutation(n)
        chosen.update(members[i] for i in perm[:n_val])
    val = [s for s in samples if s.path in chosen]
    test = [s for s in samples if s.path not in chosen]
    return val, test


# ----------------------------------------------------------------------------- instance detection
def region_detection_thresholds(maps: np.ndarray, masks: np.ndarray, ioi: float = 0.5) -> dict:
    """Every ground-truth instance's detection threshold: an 8-connected region of ``masks[i]`` is
    detected at threshold t when more than ``ioi`` of its pixels score >= t, i.e. iff
    t <= d_r = the (floor(ioi * area) + 1)-th largest map value inside it.  Returns arrays
    ``thresholds`` (d_r), ``images`` (index i) and ``areas`` (pixels), one entry per region."""
    d, img, area = [], [], []
    for i, mask in enumerate(masks):  # an N x H x W stack or a list of masks of several sizes
        mask = np.asarray(mask, bool)
        if not mask.any():
            continue
        n, lab = label_regions(mask)
        for r in range(1, n + 1):
            vals = np.sort(np.asarray(maps[i])[lab == r])[::-1]
            d.append(vals[int(math.floor(ioi * vals.size))])
            img.append(int(i))
            area.append(vals.size)
    return {"thresholds": np.asarray(d, np.float64), "images": np.asarray(img, int),
            "areas": np.asarray(area, int)}


def recall_threshold(detection_thresholds, target: float) -> float:
    """The highest t such that at least ``target`` of the items are detected (item j detected iff
    t <= detection_thresholds[j]): the ceil(target * k)-th largest detection threshold."""
    if not 0 < target <= 1:
        raise ValueError(f"target_recall={target!r}: a recall in (0, 1]")
    d = np.sort(np.asarray(detection_thresholds, np.float64))[::-1]
    if d.size == 0:
        raise ValueError("nothing to detect: the recall is undefined")
    j = next(i for i in range(d.size) if (i + 1) / d.size >= target)
    return float(d[j])


# ----------------------------------------------------------------------------- best F1
def best_f1_threshold(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(threshold, F1): the value t among ``scores`` maximising the F1 of "score >= t" against the
    boolean ``labels`` (ties -> the highest t).  Exact, O(n log n): scores sorted once, counts of
    positives above each distinct value by cumulative sums."""
    s = np.asarray(scores, np.float64).ravel()
    y = np.asarray(labels, bool).ravel()
    n_pos = int(y.sum())
    if n_pos == 0:
        raise ValueError("no positive (anomalous) sample: F1 is undefined")
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    tp = np.cumsum(y)
    flagged = np.arange(1, s.size + 1)
    last = np.r_[s[1:] != s[:-1], True]  # the last index of each run of equal scores
    tp, flagged, t = tp[last], flagged[last], s[last]
    f1 = 2 * tp / (flagged + n_pos)
    k = int(np.argmax(f1))  # first maximum = highest threshold
    return float(t[k]), float(f1[k])


# ----------------------------------------------------------------------------- choosing
def choose_thresholds(maps: np.ndarray, masks: np.ndarray, scores: np.ndarray, labels: np.ndarray,
                      rule: str = "best_f1", target_recall: float = 0.9) -> dict:
    """Image and pixel thresholds for ``rule`` (see the module docstring) from validation
    predictions: maps / masks N x H x W (or lists of H_i x W_i arrays), scores / labels N.  Returns ``{"image": t_img, "pixel":
    t_pix, "rule": ..., "target_recall": ..., "image_f1" / "pixel_f1" (best_f1) ...}``; a threshold
    that the data cannot define (no anomalous image, no anomalous pixel) is None."""
    if rule not in RULES:
        raise ValueError(f"threshold_rule={rule!r}: choose one of {RULES}")
    labels = np.asarray(labels).astype(bool)
    out: dict = {"rule": rule, "image": None, "pixel": None}
    if rule == "best_f1":
        if labels.any():
            out["image"], out["image_f1"] = best_f1_threshold(scores, labels)
        flat_masks = flat_pixels(masks, bool)
        if flat_masks.any():
            out["pixel"], out["pixel_f1"] = best_f1_threshold(flat_pixels(maps), flat_masks)
    else:
        out["target_recall"] = float(target_recall)
        if labels.any():
            out["image"] = recall_threshold(np.asarray(scores)[labels], target_recall)
        regions = region_detection_thresholds(maps, masks)["thresholds"]
        if regions.size:
            out["pixel"] = recall_threshold(regions, target_recall)
    return out


def decision_stats(maps: np.ndarray, masks: np.ndarray, scores: np.ndarray, labels: np.ndarray,
                   image_threshold: float | None, pixel_threshold: float | None) -> dict:
    """Counts, precision, recall and F1 of the decisions "score >= image_threshold" (images) and
    "map >= pixel_threshold" (pixels) against the ground truth; NaN for 0 / 0; a None threshold
    leaves its half out."""
    def stats(flag: np.ndarray, truth: np.ndarray, prefix: str) -> dict:
        tp = int(np.count_nonzero(flag & truth))
        fp = int(np.count_nonzero(flag & ~truth))
        fn = int(np.count_nonzero(~flag & truth))
        tn = int(truth.size - tp - fp - fn)
        ratio = (lambda a, b: a / b if b else math.nan)
        return {f"{prefix}_tp": tp, f"{prefix}_fp": fp, f"{prefix}_fn": fn, f"{prefix}_tn": tn,
                f"{prefix}_precision": ratio(tp, tp + fp), f"{prefix}_recall": ratio(tp, tp + fn),
                f"{prefix}_f1": ratio(2 * tp, 2 * tp + fp + fn)}
    out: dict = {}
    if image_threshold is not None:
        out.update(stats(np.asarray(scores) >= image_threshold, np.asarray(labels).astype(bool), "image"))
    if pixel_threshold is not None:
        out.update(stats(flat_pixels(maps) >= pixel_threshold, flat_pixels(masks, bool), "pixel"))
    return out


def validation_of(ckpt: dict, cfg) -> tuple[float, int]:
    """``(val_fraction, val_seed)`` of the validation split that a checkpoint's stored thresholds
    were chosen on — which may differ from its training config (a later ``destseg run --set
    val_fraction=0.3`` stores thresholds in a model trained without one) — else the config's."""
    t = ckpt.get("thresholds") or {}
    if "val_fraction" in t:
        return float(t["val_fraction"]), int(t.get("val_seed", cfg.val_seed))
    m = re.search(r"val_fraction=([0-9.eE+-]+), val_seed=(-?\d+)", str(t.get("chosen_on", "")))
    if m:  # thresholds stored before the split was recorded by value
        return float(m.group(1)), int(m.group(2))
    return float(cfg.val_fraction), int(cfg.val_seed)
