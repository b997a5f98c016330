"""Exact, fast evaluation metrics for DeSTSeg (Zhang et al., CVPR 2023, Sec. 4.2).

The paper reports three levels of evaluation on MVTec AD:

* image level (Table 1): AUROC of one anomaly score per image -> :func:`image_auroc`;
* pixel level (Table 2): AUROC and average precision (AP) of all pixel scores
  -> :func:`pixel_auroc`, :func:`pixel_ap`;
* instance level (Table 3): instance average precision IAP and IAP@k, defined in Sec. 4.2
  -> :func:`iap`; plus the per-region overlap AUPRO of Bergmann et al. (ref. [3])
  -> :func:`aupro` / :func:`pro_curve`, which Sec. 4.2 discusses as the prior instance metric.

Everything is exact (every distinct score value is a threshold, no binning) and is computed
from one pass that shares its work (:func:`evaluate`, :class:`MetricAccumulator`):

1. the score maps are copied once into one flat buffer and that buffer is sorted once, in
   place (no arg-sort, so no 8-byte index per pixel);
2. the anomalous pixels (a few percent of the test set) are extracted together with the
   region they belong to (8-connected components of each ground-truth mask, labelled once
   with ``cv2.connectedComponents``) and arg-sorted on their own;
3. for every distinct anomalous score ``u`` two binary searches in the sorted buffer give
   ``#pixels < u`` and ``#pixels <= u``; subtracting the anomalous counts gives the normal
   counts.  Pixel AUROC (Mann-Whitney with ties counted 1/2, which is what the trapezoidal
   ROC area is), pixel AP, AUPRO and IAP are closed-form sums over these counts.

This is equivalent to the textbook "one global sort, every pixel carries a weight, cumulative
sums at distinct-value boundaries" construction -- normal pixels all have the same weight
``1/n_normal`` so their cumulative sums are just counts and never need to be materialised --
but needs O(A) extra memory for the A anomalous pixels instead of several N*H*W temporaries.
Peak extra memory of :func:`evaluate` is one copy of the maps (the sort buffer) plus about
100 bytes per anomalous pixel (on a full-size MVTec-like set: ~1.5x the float32 maps; see
bench/metrics_bench.py).  Cost: O(P log P) for the sort of the P pixels, O(A log P) for the
rest.  Per-instance IAP thresholds and region weights are computed per image while labelling.

Only numpy, scikit-learn and OpenCV are used; this module must not import torch.
"""

from __future__ import annotations

import math
import warnings
from typing import Optional, Sequence, Tuple, Union

import cv2
import numpy as np
from sklearn.metrics import roc_auc_score

__all__ = [
    "MetricError",
    "image_auroc",
    "pixel_auroc",
    "pixel_ap",
    "pro_curve",
    "aupro",
    "iap",
    "binary_resize",
    "label_regions",
    "upsample_maps",
    "evaluate",
    "MetricAccumulator",
]

SizeLike = Union[int, Sequence[int]]

# Images processed per block when validating / copying; bounds the size of temporaries.
_BLOCK = 64


class MetricError(ValueError):
    """Invalid input to a metric (bad shape, non-binary mask, NaN score, missing class...).

    Subclasses :class:`ValueError`; the message names the offending value and what to do.
    """


# --------------------------------------------------------------------------------------
# input validation
# --------------------------------------------------------------------------------------
def _check_params(fpr_limit: float, ioi: float, recall_at: float) -> None:
    if not (isinstance(fpr_limit, (int, float, np.floating)) and 0.0 < fpr_limit <= 1.0):
        raise MetricError(
            f"fpr_limit must be a number in (0, 1], got {fpr_limit!r} "
            "(the PRO integration limit; the paper's protocol uses 0.3)"
        )
    if not (isinstance(ioi, (int, float, np.floating)) and 0.0 <= ioi < 1.0):
        raise MetricError(
            f"ioi must be a number in [0, 1), got {ioi!r} (an instance is detected when MORE "
            "than this fraction of its pixels is predicted positive; Sec. 4.2 uses 0.5)"
        )
    if not (isinstance(recall_at, (int, float, np.floating)) and 0.0 < recall_at <= 1.0):
        raise MetricError(
            f"recall_at must be a number in (0, 1], got {recall_at!r} (IAP@k reports the "
            "precision at instance recall k; Sec. 4.2 uses k = 0.9)"
        )


def _float_array(x, name: str) -> np.ndarray:
    """Return ``x`` as a floating array without a copy when possible (ints -> float64)."""
    a = np.asarray(x)
    if a.dtype.kind == "f":
        if a.dtype.itemsize < 4:
            a = a.astype(np.float32)
        elif a.dtype.itemsize > 8:
            a = a.astype(np.float64)
        return a
    if a.dtype.kind in "biu":
        return a.astype(np.float64)
    raise MetricError(f"{name} must be a real-valued numeric array, got dtype {a.dtype}")


def _maps_masks(maps, masks, allow_empty: bool = False) -> Tuple[np.ndarray, np.ndarray]:
    """Validate shapes; return (maps as float (N,H,W), masks as array (N,H,W), not yet bool)."""
    m = _float_array(maps, "maps")
    k = np.asarray(masks)
    # Accept the (N,1,H,W) layout a segmentation network emits.
    if m.ndim == 4 and m.shape[1] == 1:
        m = m[:, 0]
    if k.ndim == 4 and k.shape[1] == 1:
        k = k[:, 0]
    if m.ndim == 2:
        m = m[None]
    if k.ndim == 2:
        k = k[None]
    if m.ndim != 3:
        raise MetricError(
            f"maps must have shape (N, H, W) (or (H, W) / (N, 1, H, W)), got shape {np.shape(maps)}"
        )
    if k.shape != m.shape:
        raise MetricError(
            f"shape mismatch: maps {m.shape} vs masks {k.shape}; every map needs a mask of the "
            f"same size. Resize first, e.g. masks = binary_resize(masks, {m.shape[1:]}) "
            "(the paper's protocol, Sec. 4.2) or maps = upsample_maps(maps, masks.shape[1:])"
        )
    if m.shape[0] == 0 and not allow_empty:
        raise MetricError("maps and masks are empty (N = 0); pass at least one image")
    return m, k


def flat_pixels(arrays, dtype=None) -> np.ndarray:
    """Every pixel of an N x H x W stack, or of a list of H_i x W_i arrays of several sizes, in one
    1-D array (image by image)."""
    if isinstance(arrays, np.ndarray):
        return arrays.reshape(-1) if dtype is None else arrays.reshape(-1).astype(dtype, copy=False)
    if len(arrays) == 0:
        return np.zeros(0, dtype or np.float32)
    return np.concatenate([np.asarray(a, dtype).reshape(-1) for a in arrays])


def _is_ragged(maps) -> bool:
    """True for a list/tuple of 2-D maps that do not all share one shape (``aspect="keep"``)."""
    if not isinstance(maps, (list, tuple)) or not maps:
        return False
    shapes = {np.shape(m) for m in maps}
    return len(shapes) > 1


def _feed(acc: "MetricAccumulator", maps, masks, scores=None, labels=None) -> None:
    """``acc.update`` for an (N,H,W) stack, or for lists of (H_i, W_i) maps and masks of several
    sizes (fed one image at a time: the same numbers as one call on images of one size)."""
    if not _is_ragged(maps):
        m, k = _maps_masks(maps, masks)
        acc._reserve(m.size, m.dtype)
        acc.update(m, k, scores, labels)
        return
    if not isinstance(masks, (list, tuple)) or len(masks) != len(maps):
        raise MetricError(f"maps is a list of {len(maps)} maps of several sizes: pass the masks as a list "
                          "of as many arrays, each the size of its map")
    s = None if scores is None else _float_array(scores, "scores").reshape(-1)
    y = None if labels is None else np.asarray(labels).reshape(-1)
    for what, v in (("image scores", s), ("image labels", y)):
        if v is not None and v.size != len(maps):
            raise MetricError(f"got {v.size} {what} for {len(maps)} maps; pass one per image")
    pairs = []
    for i, (mi, ki) in enumerate(zip(maps, masks)):
        mi, ki = np.asarray(mi), np.asarray(ki)
        if mi.ndim != 2 or mi.shape != ki.shape:
            raise MetricError(f"map {i} has shape {mi.shape} and its mask {ki.shape}: each must be one "
                              "(H, W) array of the same size")
        pairs.append((mi, ki))
    acc._reserve(sum(mi.size for mi, _ in pairs), np.result_type(*[_float_array(mi, "maps").dtype
                                                                    for mi, _ in pairs]))
    for i, (mi, ki) in enumerate(pairs):
        acc.update(mi[None], ki[None], None if s is None else s[i:i + 1], None if y is None else y[i:i + 1])


def _check_finite(m: np.ndarray, what: str, offset: int = 0) -> None:
    if np.isfinite(m).all():
        return
    bad = np.argwhere(~np.isfinite(m))[0]
    idx = tuple(int(i) for i in bad)
    val = m[idx]
    where = f"image {idx[0] + offset}, pixel {idx[1:]}" if m.ndim == 3 else f"index {idx[0] + offset}"
    raise MetricError(
        f"{what} contains a non-finite value ({val}) at {where}; metrics need finite scores. "
        "Check the model output (e.g. a division by zero in normalisation) or replace it with "
        "np.nan_to_num before evaluating"
    )


def _as_bool(k: np.ndarray, what: str, offset: int = 0) -> np.ndarray:
    """Binary array (bool / 0-1 of any numeric dtype) -> bool array; MetricError otherwise."""
    if k.dtype == bool:
        return k
    if k.dtype.kind not in "biuf":
        raise MetricError(f"{what} must be binary (bool or 0/1), got dtype {k.dtype}")
    if k.dtype.kind in "iu" and k.size and k.min() >= 0 and k.max() <= 1:
        return k != 0
    bad = (k != 0) & (k != 1)
    if bad.any():
        pos = tuple(int(i) for i in np.argwhere(bad)[0])
        vals = np.unique(k[bad])[:5]
        where = f"image {pos[0] + offset}" if k.ndim >= 2 else f"index {pos[0] + offset}"
        hint = (
            " These look like 0/255 PNG masks: pass masks > 127."
            if k.dtype.kind in "iuf" and np.all(np.isin(vals, (255,)))
            else " Threshold soft masks first (e.g. binary_resize(...) rounds at 0.5, Sec. 4.2)."
        )
        raise MetricError(
            f"{what} must be binary (values 0/1 or True/False); found value(s) "
            f"{', '.join(repr(v.item()) for v in vals)} (dtype {k.dtype}) first at {where}.{hint}"
        )
    return k != 0


def _scores_labels(scores, labels, n: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
    s = _float_array(scores, "scores").reshape(-1) if np.ndim(scores) else None
    if s is None:
        raise MetricError(f"scores must be a 1-D array of image scores, got {scores!r}")
    y = np.asarray(labels).reshape(-1)
    if s.shape != y.shape:
        raise MetricError(
            f"shape mismatch: {s.size} image scores vs {y.size} labels; pass one score and one "
            "label per image"
        )
    if n is not None and s.size != n:
        raise MetricError(f"got {s.size} image scores/labels for {n} maps; pass one per image")
    _check_finite(s, "scores")
    return s, _as_bool(y, "labels")


# --------------------------------------------------------------------------------------
# the shared core
# --------------------------------------------------------------------------------------
class _Core:
    """Counts shared by all pixel metrics, computed from the sorted pixel buffer."""

    def __init__(self, sorted_all: np.ndarray, anom_chunks: list, inv_chunks: Optional[list],
                 n_regions: int, thr_chunks: list):
        # Chunks are concatenated here so that every A-sized temporary can be freed early.
        dtype = np.result_type(sorted_all.dtype, *[c.dtype for c in anom_chunks])
        self.sorted_all = sorted_all if sorted_all.dtype == dtype else sorted_all.astype(dtype)
        anom = np.concatenate(anom_chunks).astype(dtype, copy=False)
        self.T = int(sorted_all.size)
        self.A = A = int(anom.size)
        self.n_neg = self.T - self.A
        self.K = int(n_regions)
        self.thresholds = (np.concatenate(thr_chunks).astype(dtype, copy=False) if thr_chunks
                           else np.zeros(0, dtype))
        order = np.argsort(anom, kind="stable")
        a_s = anom[order]
        del anom
        new = np.empty(A, dtype=bool)
        new[:1] = True
        np.not_equal(a_s[1:], a_s[:-1], out=new[1:])
        starts = np.flatnonzero(new)  # first index of each distinct value = #anomalous < u
        del new
        self.u = u = a_s[starts]  # distinct anomalous values, ascending
        del a_s
        if inv_chunks:
            inv = np.concatenate(inv_chunks)
            inv = inv[order]
            self.W = np.add.reduceat(inv, starts)  # sum of 1/area over pixels equal to u
            del inv
        else:
            self.W = None
        del order
        ends = np.empty_like(starts)  # #anomalous <= u
        ends[:-1] = starts[1:]
        ends[-1:] = A
        self.starts, self.ends = starts, ends
        self.neg_lt = np.searchsorted(self.sorted_all, u, side="left")
        self.neg_lt -= starts  # normal pixels < u
        self.neg_le = np.searchsorted(self.sorted_all, u, side="right")
        self.neg_le -= ends  # normal pixels <= u

    # -- pixel level (Table 2) -----------------------------------------------------------
    def pixel_auroc(self) -> float:
        # P(score_anom > score_normal) + 1/2 P(tie) == trapezoidal ROC area (sklearn).
        cnt = (self.ends - self.starts).astype(np.int64)
        s = int(np.dot(cnt, (self.neg_lt + self.neg_le).astype(np.int64)))
        return s / (2.0 * self.A * self.n_neg)

    def pixel_ap(self) -> float:
        # Step-wise AP = sum_k (R_k - R_{k-1}) P_k; recall only moves at anomalous values.
        tp = (self.A - self.starts).astype(np.float64)  # anomalous >= u
        fp = (self.n_neg - self.neg_lt).astype(np.float64)  # normal >= u
        tp /= tp + fp
        return float(np.dot(self.ends - self.starts, tp) / self.A)

    # -- AUPRO -----------------------------------------------------------------------------
    def _fpr_bounds(self) -> Tuple[np.ndarray, np.ndarray]:
        n = float(self.n_neg)
        a = (self.n_neg - self.neg_le) / n  # FPR just above u  (normal > u)
        b = (self.n_neg - self.neg_lt) / n  # FPR at threshold u (normal >= u)
        return a, b

    def aupro(self, fpr_limit: float) -> float:
        # PRO(F) is piecewise linear in F; each anomalous pixel i (weight w_i) contributes
        # w_i * g_i(F) with g_i = 0 before a_i, a linear ramp on [a_i, b_i] (normal pixels tied
        # with it), 1 after b_i.  Integrating g_i on [0, L] in closed form is exactly the
        # trapezoid rule over all distinct thresholds with linear interpolation at L.
        L = float(fpr_limit)
        a, b = self._fpr_bounds()
        W = self.W
        G = np.zeros_like(a)
        full = b < L
        G[full] = 0.5 * (b[full] - a[full]) + (L - b[full])
        part = (a < L) & ~full
        d = a[part]
        G[part] = (L - d) ** 2 / (2.0 * (b[part] - d))
        return float(np.dot(W, G) / (self.K * L))

    def pro_curve(self, fpr_limit: float) -> Tuple[np.ndarray, np.ndarray]:
        L = float(fpr_limit)
        a, b = self._fpr_bounds()
        W = self.W
        # descending thresholds
        a, b, W = a[::-1], b[::-1], W[::-1]
        p_ge = np.minimum(np.cumsum(W) / self.K, 1.0)
        p_gt = np.concatenate(([0.0], p_ge[:-1]))
        x = np.empty(2 * a.size + 2)
        y = np.empty_like(x)
        x[0], y[0] = 0.0, 0.0
        x[1:-1:2], y[1:-1:2] = a, p_gt
        x[2:-1:2], y[2:-1:2] = b, p_ge
        x[-1], y[-1] = 1.0, 1.0
        keep = np.ones(x.size, dtype=bool)
        keep[1:] = (x[1:] != x[:-1]) | (y[1:] != y[:-1])
        x, y = x[keep], y[keep]
        # drop interior points of vertical / horizontal runs (collinear), keep the polyline
        if x.size > 2:
            dx0, dx1 = x[1:-1] - x[:-2], x[2:] - x[1:-1]
            dy0, dy1 = y[1:-1] - y[:-2], y[2:] - y[1:-1]
            mid = ((dx0 == 0) & (dx1 == 0)) | ((dy0 == 0) & (dy1 == 0))
            keep = np.concatenate(([True], ~mid, [True]))
            x, y = x[keep], y[keep]
        ins = int(np.searchsorted(x, L, side="right"))  # x[ins-1] <= L < x[ins]
        if x[ins - 1] == L or ins == x.size:
            return x[:ins].copy(), y[:ins].copy()
        x0, x1, y0, y1 = x[ins - 1], x[ins], y[ins - 1], y[ins]
        yl = y0 + (y1 - y0) * (L - x0) / (x1 - x0)
        return np.append(x[:ins], L), np.append(y[:ins], yl)

    # -- IAP (Table 3) ---------------------------------------------------------------------
    def iap(self, recall_at: float, interpolated: bool = False) -> Tuple[float, float]:
        d = np.sort(self.thresholds)[::-1]  # detection thresholds, descending = recall order
        # every d is an anomalous score, so it is one of the distinct values u
        tp = self.A - self.starts[np.searchsorted(self.u, d, side="left")]  # anomalous >= d
        pos = self.T - np.searchsorted(self.sorted_all, d, side="left")  # all pixels >= d
        prec = tp / pos.astype(np.float64)
        if interpolated:
            prec = np.maximum.accumulate(prec[::-1])[::-1]
        K = self.K
        # first (highest) threshold whose instance recall count/K >= k
        j = next(i for i in range(K) if (i + 1) / K >= recall_at)
        return float(np.mean(prec)), float(prec[j])


# --------------------------------------------------------------------------------------
# the accumulator (streaming) -- evaluate() is a thin wrapper around it
# --------------------------------------------------------------------------------------
class MetricAccumulator:
    """Collect score maps batch by batch and compute every metric once at the end.

    ``update(maps_batch, masks_batch, scores_batch=None)`` copies the maps into the pixel
    buffer (one copy, the same memory :func:`evaluate` needs), labels the ground-truth regions
    of each anomalous mask once (8-connected, ``cv2.connectedComponents``) and keeps the
    anomalous pixels' scores, their PRO weights (1/region area) and, per region, its IAP
    detection threshold.  ``compute()`` sorts
    the buffer once and returns exactly what :func:`evaluate` returns for the concatenated
    batches.  ``compute()`` may be called again after further updates.

    Args:
        fpr_limit: AUPRO integration limit (Bergmann et al.; 0.3).
        ioi: IAP instance criterion -- detected when MORE than this fraction of the region's
            pixels scores >= t (Sec. 4.2: 0.5).
        recall_at: k of IAP@k (Sec. 4.2: 0.9).
    """

    def __init__(self, fpr_limit: float = 0.3, ioi: float = 0.5, recall_at: float = 0.9):
        _check_params(fpr_limit, ioi, recall_at)
        self.fpr_limit = float(fpr_limit)
        self.ioi = float(ioi)
        self.recall_at = float(recall_at)
        self._need_regions = True
        self._buf: Optional[np.ndarray] = None  # preallocated buffer (evaluate)
        self._fill = 0
        self._chunks: list = []  # flat pixel-score arrays
        self._sorted = False
        self._anom: list = []
        self._inv_area: list = []
        self._thr: list = []
        self._img_scores: list = []
        self._img_labels: list = []
        self._scores_given: Optional[bool] = None
        self._n_images = 0
        self._n_pixels = 0
        self._n_anom = 0
        self._n_regions = 0

    # internal: evaluate() knows the total size and avoids the final concatenation
    def _reserve(self, n: int, dtype) -> None:
        self._buf = np.empty(n, dtype=dtype)
        self._fill = 0

    def update(self, maps_batch, masks_batch, scores_batch=None, labels_batch=None) -> None:
        """Add a batch: maps (B,H,W) float, masks (B,H,W) bool/0-1, optional image scores (B,)
        (default: max of each map) and image labels (B,) (default: mask has a positive pixel)."""
        maps, masks = _maps_masks(maps_batch, masks_batch, allow_empty=True)
        n = maps.shape[0]
        if n == 0:
            return
        given = scores_batch is not None
        if self._scores_given is not None and given != self._scores_given:
            raise MetricError(
                "scores_batch was given for some batches and not for others; pass image scores "
                "for every batch or for none (default: max of each map)"
            )
        self._scores_given = given
        if given:
            s = _float_array(scores_batch, "scores_batch").reshape(-1)
            if s.size != n:
                raise MetricError(f"got {s.size} image scores for {n} maps; pass one per image")
            _check_finite(s, "scores_batch", self._n_images)
        if labels_batch is not None:
            y = _as_bool(np.asarray(labels_batch).reshape(-1), "labels_batch", self._n_images)
            if y.size != n:
                raise MetricError(f"got {y.size} image labels for {n} maps; pass one per image")
        for lo in range(0, n, _BLOCK):
            m = maps[lo:lo + _BLOCK]
            off = self._n_images + lo
            _check_finite(m, "maps", off)
            k = _as_bool(masks[lo:lo + _BLOCK], "masks", off)
            self._store(m)
            flat_k = k.reshape(len(k), -1)
            if not given:
                self._img_scores.append(m.reshape(len(m), -1).max(axis=1))
            if labels_batch is None:
                self._img_labels.append(flat_k.any(axis=1))
            for i in np.flatnonzero(flat_k.any(axis=1)):
                self._add_regions(m[i], k[i])
        if given:
            self._img_scores.append(s)
        if labels_batch is not None:
            self._img_labels.append(y)
        self._n_images += n

    def _store(self, m: np.ndarray) -> None:
        size = m.size
        if self._buf is not None and self._fill + size <= self._buf.size:
            self._buf[self._fill:self._fill + size] = m.reshape(-1)
            self._fill += size
        else:
            self._chunks.append(np.array(m, copy=True).reshape(-1))
            self._sorted = False
        self._n_pixels += size

    def _add_regions(self, m2: np.ndarray, k2: np.ndarray) -> None:
        sc = m2[k2]
        self._n_anom += sc.size
        self._anom.append(sc)
        if not self._need_regions:
            return
        n_regions, lab = label_regions(k2)
        rid = lab[k2]
        area = np.bincount(rid, minlength=n_regions + 1)[1:]
        self._inv_area.append((1.0 / area)[rid - 1])
        order = np.lexsort((sc, rid))  # by region, then score ascending
        ends = np.cumsum(area)
        need = np.floor(self.ioi * area).astype(np.int64) + 1  # count > ioi*area
        self._thr.append(sc[order][ends - need])  # the need-th largest score of each region
        self._n_regions += n_regions

    def _sorted_pixels(self) -> np.ndarray:
        chunks = self._chunks
        if self._buf is not None:
            chunks = [self._buf[:self._fill]] + chunks
            self._buf = None
        self._chunks = []
        if len(chunks) == 1 and self._sorted:
            out = chunks[0]
        else:
            dtype = np.result_type(*[c.dtype for c in chunks])
            if len(chunks) == 1 and chunks[0].dtype == dtype:
                out = chunks[0]
            else:
                out = np.empty(sum(c.size for c in chunks), dtype=dtype)
                pos = 0
                while chunks:  # release each chunk as soon as it is copied
                    c = chunks.pop(0)
                    out[pos:pos + c.size] = c
                    pos += c.size
                    del c
            out.sort()
        self._chunks = [out]
        self._sorted = True
        return out

    def _core(self) -> _Core:
        sorted_all = self._sorted_pixels()
        inv = self._inv_area if self._need_regions else None
        return _Core(sorted_all, self._anom, inv, self._n_regions, self._thr)

    def _pixel_problem(self) -> Optional[str]:
        if self._n_anom == 0:
            return (f"no anomalous pixel in the {self._n_images} masks (all-normal test set); "
                    "pixel AUROC/AP, AUPRO and IAP are undefined")
        if self._n_anom == self._n_pixels:
            return "no normal pixel in the masks; pixel AUROC/AP, AUPRO and IAP are undefined"
        return None

    def _image_labels_scores(self) -> Tuple[np.ndarray, np.ndarray]:
        return np.concatenate(self._img_labels), np.concatenate(self._img_scores)

    def compute(self) -> dict:
        """Return the dict of :func:`evaluate` for everything added so far."""
        if self._n_images == 0:
            raise MetricError("MetricAccumulator.compute(): no batch was added; call update() first")
        labels, scores = self._image_labels_scores()
        k_key = "iap90" if self.recall_at == 0.9 else f"iap@{self.recall_at:g}"
        out = {}
        n_anom_img = int(labels.sum())
        if 0 < n_anom_img < labels.size:
            out["image_auroc"] = float(roc_auc_score(labels, scores))
        else:
            warnings.warn(
                f"image_auroc set to NaN: the {labels.size} images are all "
                f"{'anomalous' if n_anom_img else 'normal'}; image AUROC needs both classes",
                RuntimeWarning, stacklevel=2,
            )
            out["image_auroc"] = math.nan
        problem = self._pixel_problem()
        if problem is None:
            core = self._core()
            out["pixel_auroc"] = core.pixel_auroc()
            out["pixel_ap"] = core.pixel_ap()
            out["aupro"] = core.aupro(self.fpr_limit)
            out["iap"], out[k_key] = core.iap(self.recall_at)
            # the paper's Table 3 numbers come from the official code's interpolated IAP
            out["iap_interp"], out[k_key + "_interp"] = core.iap(self.recall_at, interpolated=True)
        else:
            warnings.warn(f"pixel metrics set to NaN: {problem}", RuntimeWarning, stacklevel=2)
            for key in ("pixel_auroc", "pixel_ap", "aupro", "iap", k_key, "iap_interp", k_key + "_interp"):
                out[key] = math.nan
        out["n_images"] = int(self._n_images)
        out["n_anomalous_images"] = n_anom_img
        out["n_regions"] = int(self._n_regions)
        return out


# --------------------------------------------------------------------------------------
# public single-metric functions
# --------------------------------------------------------------------------------------
def _strict_core(maps, masks, fpr_limit=0.3, ioi=0.5, recall_at=0.9, regions=True,
                 what="this metric") -> _Core:
    acc = MetricAccumulator(fpr_limit, ioi, recall_at)
    acc._need_regions = regions
    n = len(maps) if _is_ragged(maps) else _maps_masks(maps, masks)[0].shape[0]
    _feed(acc, maps, masks, np.zeros(n))
    if acc._n_anom == 0:
        raise MetricError(
            f"{what} needs at least one anomalous pixel, but all {acc._n_pixels} mask pixels "
            "are 0 (an all-normal set). Evaluate on a set that contains anomalous images, or "
            "use evaluate(), which reports NaN for pixel metrics in that case"
        )
    if acc._n_anom == acc._n_pixels:
        raise MetricError(
            f"{what} needs at least one normal pixel, but all {acc._n_pixels} mask pixels are "
            "1. Check that the masks are not inverted (1 = anomalous) and include normal pixels"
        )
    return acc._core()


def image_auroc(scores, labels) -> float:
    """Image-level AUROC (Table 1): probability that an anomalous image scores higher than a
    normal one (ties count 1/2), i.e. the area under the ROC curve of the image scores.

    Args:
        scores: (N,) image anomaly scores (DeSTSeg: mean of the top-T map values, Sec. 3.4).
        labels: (N,) 1/True = anomalous image.
    """
    s, y = _scores_labels(scores, labels)
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == y.size:
        which = "anomalous" if n_pos == 0 else "normal"
        raise MetricError(
            f"image_auroc needs both normal and anomalous images, but there is no {which} image "
            f"among the {y.size} labels; AUROC is undefined for a single class"
        )
    return float(roc_auc_score(y, s))


def pixel_auroc(maps, masks) -> float:
    """Pixel-level AUROC (Table 2): probability that an anomalous pixel scores higher than a
    normal pixel (ties 1/2), pooled over all pixels of all images; equals sklearn
    ``roc_auc_score(masks.ravel(), maps.ravel())``.

    Args:
        maps: (N,H,W) float anomaly maps.  masks: (N,H,W) bool/0-1 ground truth.
    """
    return _strict_core(maps, masks, regions=False, what="pixel_auroc").pixel_auroc()


def pixel_ap(maps, masks) -> float:
    """Pixel-level average precision (Table 2; preferred by Sec. 4.2 for the heavily
    imbalanced pixel classes): step-wise AP = sum_k (R_k - R_{k-1}) P_k over every distinct
    threshold, exactly scikit-learn's ``average_precision_score`` (not the trapezoid)."""
    return _strict_core(maps, masks, regions=False, what="pixel_ap").pixel_ap()


def pro_curve(maps, masks, fpr_limit: float = 0.3) -> Tuple[np.ndarray, np.ndarray]:
    """Per-region-overlap curve (Bergmann et al., ref. [3] of the paper, discussed in Sec. 4.2).

    At threshold t: PRO = mean over ALL ground-truth regions (8-connected components of every
    mask) of the fraction of the region's pixels with score >= t; FPR = fraction of all normal
    pixels with score >= t.  Returns ``(fpr, pro)`` float64 arrays: the vertices of the exact
    piecewise-linear curve through the points of every distinct score value, starting at
    (0, 0), collinear interior points of vertical/horizontal runs removed (the area is
    unchanged), cut at ``fpr_limit`` with the last point linearly interpolated at the limit.
    ``np.trapezoid(pro, fpr) / fpr_limit == aupro(...)`` up to rounding.
    """
    _check_params(fpr_limit, 0.5, 0.9)
    return _strict_core(maps, masks, fpr_limit, what="pro_curve").pro_curve(fpr_limit)


def aupro(maps, masks, fpr_limit: float = 0.3) -> float:
    """Normalised area under the PRO curve up to ``fpr_limit`` (perfect map -> 1.0).

    Bergmann et al.'s definition (MVTec AD reference code): every region weighs the same
    whatever its size (each anomalous pixel carries 1/(n_regions * region_area), each normal
    pixel 1/n_normal), the trapezoid rule over every distinct score value, the last point
    interpolated at the limit, and the area divided by ``fpr_limit``.

    Why not the official DeSTSeg number: its ``model/metrics.py`` copies anomalib's AUPRO
    (<= v2.2), which builds one ROC per region on (background | region), resamples every
    per-region curve to a common index grid and divides the area by the *averaged* FPR end
    point instead of the limit.  That normalisation inflates the score whenever the averaged
    end point falls short of the limit (it can even exceed 1; anomalib issues #1651, #3718).
    We compute the reference definition exactly.
    """
    _check_params(fpr_limit, 0.5, 0.9)
    return _strict_core(maps, masks, fpr_limit, what="aupro").aupro(fpr_limit)


def iap(maps, masks, ioi: float = 0.5, recall_at: float = 0.9, *,
        interpolated: bool = False) -> Tuple[float, float]:
    """Instance average precision IAP and IAP@k (Sec. 4.2, Table 3).

    An instance is a maximal 8-connected ground-truth region; it is detected at threshold t
    when MORE than ``ioi`` (50 %) of its pixels score >= t.  At each threshold the pixel-level
    precision (anomalous pixels >= t / all pixels >= t, over all images) is paired with the
    instance-level recall (fraction of instances detected).  IAP is the step-wise average
    precision of that curve (sum over recall increments of the precision at that threshold,
    as sklearn's AP); IAP@k is the precision at the first (highest) threshold whose instance
    recall is >= k ("when 90 % of anomaly instances are detected, the pixel-level precision").

    Efficient form: instance r becomes detected exactly at its floor(ioi*area)+1-th largest
    score d_r (count(score >= t) > ioi*area  <=>  t <= d_r, ties included), so recall only
    increases at the d_r and IAP = mean_r precision(d_r).

    ``interpolated=True`` reproduces the official DeSTSeg code (``IAPS`` in model/metrics.py),
    which replaces every precision by the maximum precision at any higher-or-equal recall
    (VOC-style envelope) before averaging and before reading IAP@k.  (The official code also
    counts ``preds * target >= t`` as true positives, which is wrong for t <= 0; we do not.)

    Returns:
        (iap, iap_at_k) as floats.
    """
    _check_params(0.3, ioi, recall_at)
    return _strict_core(maps, masks, 0.3, ioi, recall_at, what="iap").iap(recall_at, interpolated)


def evaluate(maps, masks, scores=None, labels=None, fpr_limit: float = 0.3, ioi: float = 0.5,
             recall_at: float = 0.9) -> dict:
    """All DeSTSeg metrics (Tables 1-3) from one pass that shares its work.

    One copy + one in-place sort of all pixel scores serves pixel AUROC, pixel AP, AUPRO and
    IAP; the ground-truth regions are labelled once.

    Args:
        maps: (N,H,W) float anomaly maps (float32 recommended; kept in its own precision), or a
            list of N (H_i, W_i) maps of several sizes (inputs that kept their aspect ratio).
        masks: (N,H,W) bool/0-1 ground truth at the same size (see :func:`binary_resize`), or a
            list of N masks, each the size of its map.
        scores: (N,) image scores.  Default: the max of each map.  (The DeSTSeg scorer passes
            the mean of the top-T map values, Sec. 3.4 -- pass those here to match Table 1.)
        labels: (N,) image labels.  Default: an image is anomalous iff its mask has a
            positive pixel.
        fpr_limit, ioi, recall_at: see :func:`aupro` and :func:`iap`.

    Returns:
        dict with float ``image_auroc, pixel_auroc, pixel_ap, aupro, iap`` and ``iap90`` (named
        ``iap@{recall_at:g}`` when recall_at != 0.9), the same two from the interpolated
        precision curve, ``iap_interp`` and ``iap90_interp`` (``iap(..., interpolated=True)``:
        what the paper's Table 3 reports, see :func:`iap`), plus int ``n_images,
        n_anomalous_images, n_regions``.  When the set has no anomalous (or no normal) pixel
        the pixel metrics are NaN and a RuntimeWarning says why; likewise image_auroc when the
        images are all of one class.
    """
    acc = MetricAccumulator(fpr_limit, ioi, recall_at)
    _feed(acc, maps, masks, scores, labels)
    return acc.compute()


# --------------------------------------------------------------------------------------
# resizing helpers (Sec. 4.2, "Ground truth downsampling method")
# --------------------------------------------------------------------------------------
def _hw(size: SizeLike) -> Tuple[int, int]:
    if isinstance(size, (int, np.integer)):
        h = w = int(size)
    else:
        try:
            h, w = (int(v) for v in size)
        except (TypeError, ValueError):
            raise MetricError(f"size must be an int or a (height, width) pair, got {size!r}") from None
    if h <= 0 or w <= 0:
        raise MetricError(f"size must be positive, got {size!r}")
    return h, w


def _resize_stack(a: np.ndarray, h: int, w: int) -> np.ndarray:
    single = a.ndim == 2
    st = a[None] if single else a
    if st.ndim != 3:
        raise MetricError(f"expected an (H, W) or (N, H, W) array, got shape {a.shape}")
    out = np.empty((st.shape[0], h, w), dtype=st.dtype)
    for i in range(st.shape[0]):
        out[i] = cv2.resize(np.ascontiguousarray(st[i]), (w, h), interpolation=cv2.INTER_LINEAR)
    return out[0] if single else out


def label_regions(mask) -> tuple[int, np.ndarray]:
    """The instances of a bool mask (Sec. 4.2): maximal 8-connected regions.  Returns (number of
    regions, H x W int32 labels with 0 = background and 1..n the regions) -- the one labelling that
    the metrics (AUPRO, IAP), the thresholds and the explorers share."""
    m = np.ascontiguousarray(np.asarray(mask, dtype=bool))
    n, lab = cv2.connectedComponents(m.view(np.uint8), connectivity=8, ltype=cv2.CV_32S)
    return n - 1, lab


def binary_resize(mask, size: SizeLike) -> np.ndarray:
    """Resize a 0/1 mask with OpenCV's bilinear filter (``cv2.INTER_LINEAR``) to ``size`` ((size,
    size) or (h, w)), then ``>= 0.5`` -> bool (the rule of Sec. 4.2; the kit's evaluation resizes test
    masks with :func:`destseg_lib.data.resize_mask`, the official code's antialiased filter).
    This keeps the shape of the mask without over- or under-estimating it (paper Fig. 2).

    Works on one (H, W) mask or an (N, H, W) stack.  Note: the official DeSTSeg code uses
    torchvision's bilinear resize with ``antialias=True``, which can differ from OpenCV's
    bilinear on pixels near the 0.5 boundary when shrinking by more than 2x.
    """
    m = np.asarray(mask)
    m = _as_bool(m, "mask").astype(np.float32)
    h, w = _hw(size)
    return _resize_stack(m, h, w) >= 0.5


def upsample_maps(maps, size: SizeLike) -> np.ndarray:
    """Bilinear resize (``cv2.INTER_LINEAR``, half-pixel centres like
    ``F.interpolate(..., mode='bilinear', align_corners=False)``) of one (H, W) map or an
    (N, H, W) stack to ``size`` -- for evaluating at the masks' native resolution."""
    m = _float_array(maps, "maps")
    if m.dtype not in (np.float32, np.float64):
        m = m.astype(np.float32)
    h, w = _hw(size)
    return _resize_stack(m, h, w)
