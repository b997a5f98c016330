"""Tests for destseg_lib.metrics: exactness against independent references + hand-made cases.

References used here are deliberately naive and written from the definitions:
scikit-learn for ROC AUC / AP, scipy.ndimage (not OpenCV) for the 8-connected regions, and
per-threshold loops for PRO and IAP (Sec. 4.2 of the DeSTSeg paper).
"""

import bisect
import math
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import average_precision_score, roc_auc_score

from destseg_lib.metrics import (
    MetricAccumulator,
    MetricError,
    aupro,
    binary_resize,
    evaluate,
    iap,
    image_auroc,
    pixel_ap,
    pixel_auroc,
    pro_curve,
    upsample_maps,
)

SEEDS = range(20)
TOL = 1e-9


# ----------------------------------------------------------------------------------------
# random inputs with ties
# ----------------------------------------------------------------------------------------
def random_case(seed, quantise=True):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(3, 6))
    h, w = (int(v) for v in rng.integers(6, 13, size=2))
    if not quantise:
        h, w = min(h, 8), min(w, 8)
    masks = np.zeros((n, h, w), dtype=bool)
    for i in range(n):
        if i == 0 or rng.random() < 0.6:  # anomalous image (image 0 always)
            for _ in range(int(rng.integers(1, 4))):
                y0, x0 = rng.integers(0, h - 1), rng.integers(0, w - 1)
                dy, dx = rng.integers(1, 4, size=2)
                masks[i, y0:y0 + dy, x0:x0 + dx] = True
            masks[i] |= rng.random((h, w)) < 0.04  # specks: diagonal neighbours, 1-px regions
    masks[-1] = False  # at least one normal image
    maps = masks * rng.uniform(0.1, 0.6) + rng.random(masks.shape)
    if quantise:
        maps = np.round(maps * rng.integers(2, 6)) / 4.0  # few levels -> many ties
    return maps.astype(np.float32 if seed % 2 else np.float64), masks


def regions_of(masks):
    out = []
    for i, m in enumerate(masks):
        lab, n = ndimage.label(m, structure=np.ones((3, 3), dtype=int))
        out.extend((i, lab == r) for r in range(1, n + 1))
    return out


def brute_pro_points(maps, masks):
    regions = regions_of(masks)
    normal = ~masks
    fprs, pros = [0.0], [0.0]
    for t in np.unique(maps)[::-1]:
        pos = maps >= t
        fprs.append(np.count_nonzero(pos & normal) / np.count_nonzero(normal))
        pros.append(np.mean([np.count_nonzero(pos[i] & r) / np.count_nonzero(r) for i, r in regions]))
    return np.array(fprs), np.array(pros)


def trapezoid_to_limit(x, y, limit):
    """Trapezoid area of y(x) on [0, limit], last point linearly interpolated at the limit."""
    correction = 0.0
    if not np.any(x == limit):
        ins = bisect.bisect(list(x), limit)
        y_at = y[ins - 1] + (y[ins] - y[ins - 1]) * (limit - x[ins - 1]) / (x[ins] - x[ins - 1])
        correction = 0.5 * (y_at + y[ins - 1]) * (limit - x[ins - 1])
    keep = x <= limit
    x, y = x[keep], y[keep]
    return float(np.sum(0.5 * (y[1:] + y[:-1]) * (x[1:] - x[:-1])) + correction)


def brute_aupro(maps, masks, limit=0.3):
    fprs, pros = brute_pro_points(maps, masks)
    return trapezoid_to_limit(fprs, pros, limit) / limit


def brute_iap(maps, masks, ioi=0.5, k=0.9):
    """Straight from Sec. 4.2: every distinct threshold; detected iff count(>= t) > ioi*area."""
    regions = regions_of(masks)
    precs, recs = [], []
    for t in np.unique(maps)[::-1]:
        pos = maps >= t
        precs.append(np.count_nonzero(pos & masks) / np.count_nonzero(pos))
        det = sum(np.count_nonzero(pos[i] & r) > ioi * np.count_nonzero(r) for i, r in regions)
        recs.append(det / len(regions))
    ap, prev = 0.0, 0.0
    for p, r in zip(precs, recs):
        ap += (r - prev) * p
        prev = r
    at_k = next(p for p, r in zip(precs, recs) if r >= k)
    return ap, at_k


def official_style_iap(maps, masks, ioi=0.5, k=0.9):
    """Transcription of the official DeSTSeg IAPS loop (interpolated precision), numpy."""
    ins = []
    for i, r in regions_of(masks):
        h = np.sort(maps[i][r])[::-1]
        ins.append(float(h[int(ioi * len(h))]))
    ins.sort()
    recall, precision = [], []
    for i, s in enumerate(ins):
        recall.append(1 - i / len(ins))
        precision.append(np.count_nonzero((maps >= s) & masks) / np.count_nonzero(maps >= s))
    for i in range(len(precision) - 1):
        precision[i + 1] = max(precision[i + 1], precision[i])
    ap = sum(precision) / len(ins)
    recall, precision = recall[::-1], precision[::-1]
    return ap, precision[bisect.bisect_left(recall, k)]


# ----------------------------------------------------------------------------------------
# exactness against references
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", SEEDS)
def test_pixel_auroc_ap_match_sklearn(seed):
    maps, masks = random_case(seed, quantise=seed % 4 != 3)
    y, s = masks.ravel(), maps.ravel()
    assert abs(pixel_auroc(maps, masks) - roc_auc_score(y, s)) < TOL
    assert abs(pixel_ap(maps, masks) - average_precision_score(y, s)) < TOL


@pytest.mark.parametrize("seed", SEEDS)
def test_aupro_matches_brute_force(seed):
    maps, masks = random_case(seed, quantise=seed % 4 != 3)
    fprs, pros = brute_pro_points(maps, masks)
    for limit in (0.3, 0.05, 0.5, 1.0):
        ref = trapezoid_to_limit(fprs, pros, limit) / limit
        assert abs(aupro(maps, masks, fpr_limit=limit) - ref) < TOL, limit


@pytest.mark.parametrize("seed", SEEDS)
def test_iap_matches_brute_force(seed):
    maps, masks = random_case(seed, quantise=seed % 4 != 3)
    for ioi, k in ((0.5, 0.9), (0.3, 0.5), (0.0, 1.0)):
        ref = brute_iap(maps, masks, ioi, k)
        got = iap(maps, masks, ioi=ioi, recall_at=k)
        assert abs(got[0] - ref[0]) < TOL and abs(got[1] - ref[1]) < TOL, (ioi, k)


@pytest.mark.parametrize("seed", range(0, 20, 3))
def test_iap_interpolated_matches_official_loop(seed):
    maps, masks = random_case(seed)
    ref = official_style_iap(maps, masks)
    got = iap(maps, masks, interpolated=True)
    assert abs(got[0] - ref[0]) < TOL and abs(got[1] - ref[1]) < TOL


@pytest.mark.parametrize("seed", range(0, 20, 4))
def test_pro_curve_is_the_brute_force_polyline(seed):
    maps, masks = random_case(seed)
    fprs, pros = brute_pro_points(maps, masks)
    f, p = pro_curve(maps, masks, fpr_limit=0.3)
    assert f[0] == 0.0 and p[0] == 0.0 and f[-1] == pytest.approx(0.3, abs=1e-15)
    assert np.all(np.diff(f) >= 0) and np.all(np.diff(p) >= -1e-15) and f.max() <= 0.3
    pts = np.stack([fprs, pros], 1)
    for x, y in zip(f[:-1], p[:-1]):  # every vertex but the interpolated end is a true point
        assert np.min(np.abs(pts - [x, y]).sum(1)) < 1e-12
    assert abs(np.trapezoid(p, f) / 0.3 - brute_aupro(maps, masks)) < TOL


@pytest.mark.parametrize("seed", range(0, 20, 2))
def test_evaluate_matches_references(seed):
    maps, masks = random_case(seed)
    res = evaluate(maps, masks)
    labels = masks.reshape(len(masks), -1).any(1)
    assert res["image_auroc"] == pytest.approx(roc_auc_score(labels, maps.reshape(len(maps), -1).max(1)), abs=TOL)
    assert res["pixel_auroc"] == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()), abs=TOL)
    assert res["pixel_ap"] == pytest.approx(average_precision_score(masks.ravel(), maps.ravel()), abs=TOL)
    assert res["aupro"] == pytest.approx(brute_aupro(maps, masks), abs=TOL)
    assert (res["iap"], res["iap90"]) == pytest.approx(brute_iap(maps, masks), abs=TOL)
    assert res["n_images"] == len(maps)
    assert res["n_anomalous_images"] == int(labels.sum())
    assert res["n_regions"] == len(regions_of(masks))


def test_evaluate_many_images_crosses_blocks_and_dtypes():
    rng = np.random.default_rng(7)
    masks = rng.random((150, 8, 8)) < 0.08
    masks[-5:] = False
    maps = (masks * 0.3 + rng.random(masks.shape)).astype(np.float32)
    maps = np.round(maps * 16) / 16
    res = evaluate(maps, masks)
    assert res["pixel_auroc"] == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()), abs=TOL)
    assert res["pixel_ap"] == pytest.approx(average_precision_score(masks.ravel(), maps.ravel()), abs=TOL)
    res64 = evaluate(maps.astype(np.float64), masks.astype(np.uint8))
    for key in ("pixel_auroc", "pixel_ap", "aupro", "iap", "iap90"):
        assert res64[key] == pytest.approx(res[key], abs=1e-12)
    # integer maps and the (N, 1, H, W) layout of a segmentation network
    resi = evaluate((maps * 16).astype(np.int32)[:, None], masks[:, None])
    assert resi["pixel_auroc"] == pytest.approx(res["pixel_auroc"], abs=1e-12)


# ----------------------------------------------------------------------------------------
# hand-made cases with known answers
# ----------------------------------------------------------------------------------------
def _blobs():
    masks = np.zeros((3, 12, 12), dtype=bool)
    masks[0, 1:4, 1:5] = True
    masks[0, 8:11, 7:9] = True
    masks[1, 5:7, 2:10] = True
    return masks


def test_perfect_map_gives_one_everywhere():
    masks = _blobs()
    res = evaluate(masks.astype(np.float32), masks)
    for key in ("image_auroc", "pixel_auroc", "pixel_ap", "aupro", "iap", "iap90"):
        assert res[key] == 1.0, key
    assert res["n_regions"] == 3 and res["n_anomalous_images"] == 2 and res["n_images"] == 3


def test_inverted_map():
    masks = _blobs()
    maps = 1.0 - masks.astype(np.float32)
    frac = masks.mean()  # every pixel is positive at the only threshold that finds anomalies
    res = evaluate(maps, masks, scores=[0.0, 0.0, 1.0])
    assert res["image_auroc"] == 0.0
    assert res["pixel_auroc"] == 0.0
    assert res["pixel_ap"] == pytest.approx(frac, abs=1e-15)
    assert res["aupro"] == 0.0
    assert res["iap"] == pytest.approx(frac, abs=1e-15)
    assert res["iap90"] == pytest.approx(frac, abs=1e-15)


def test_single_region_iap():
    maps = np.zeros((1, 4, 4))
    masks = np.zeros((1, 4, 4), dtype=bool)
    masks[0, 0, :] = True
    maps[0, 0, :] = [0.9, 0.8, 0.7, 0.6]
    maps[0, 3, 3] = 0.85
    maps[0, 2, 0] = 0.65
    # 4 pixels: detected when >= 3 of them (more than 2) score >= t -> t <= 0.7.
    # At t = 0.7: positives 0.9, 0.85, 0.8, 0.7 -> precision 3/4.
    assert iap(maps, masks) == (0.75, 0.75)
    assert brute_iap(maps, masks) == pytest.approx((0.75, 0.75))
    # "more than 50 %": with ioi 0.25 the 2nd largest (0.8) decides -> precision 2/3
    assert iap(maps, masks, ioi=0.25) == pytest.approx((2 / 3, 2 / 3), abs=1e-15)


def test_pro_weights_regions_equally_not_pixels():
    maps = np.full((1, 20, 20), 0.5, dtype=np.float32)
    masks = np.zeros((1, 20, 20), dtype=bool)
    masks[0, 0:9, 0:10] = True  # 90 px, found
    maps[0, 0:9, 0:10] = 1.0
    masks[0, 15:17, 12:17] = True  # 10 px, missed
    maps[0, 15:17, 12:17] = 0.0
    # PRO curve: (0,0) (0,.5) (1,.5) (1,1) -> AUPRO 0.5 (pixel-weighted it would be 0.9)
    assert aupro(maps, masks) == pytest.approx(0.5, abs=1e-15)
    assert pixel_auroc(maps, masks) == pytest.approx(0.9, abs=1e-15)
    assert iap(maps, masks) == pytest.approx((0.5 * (1 + 100 / 400), 100 / 400), abs=1e-15)
    f, p = pro_curve(maps, masks)
    np.testing.assert_allclose(f, [0, 0, 0.3])
    np.testing.assert_allclose(p, [0, 0.5, 0.5])


def test_pro_limit_hits_a_curve_point_exactly():
    maps = np.arange(20, dtype=np.float64).reshape(1, 4, 5) / 20
    masks = np.zeros((1, 4, 5), dtype=bool)
    masks[0, :2] = True  # 10 anomalous (lowest scores), 10 normal -> FPR steps of 0.1
    masks[0, 0, 0] = False
    masks[0, 3, 4] = True
    ref = brute_aupro(maps, masks, 0.3)
    assert aupro(maps, masks, 0.3) == pytest.approx(ref, abs=TOL)
    f, _ = pro_curve(maps, masks, 0.3)
    assert f[-1] == 0.3


def test_regions_are_8_connected():
    masks = np.zeros((1, 5, 5), dtype=bool)
    masks[0, 1, 1] = masks[0, 2, 2] = masks[0, 3, 3] = True  # one diagonal region
    masks[0, 0, 4] = True  # a second one
    with pytest.warns(RuntimeWarning, match="image_auroc set to NaN"):
        res = evaluate(np.random.default_rng(0).random((1, 5, 5)), masks)
    assert res["n_regions"] == 2


def test_accumulator_equals_evaluate():
    maps, masks = random_case(11)
    ref = evaluate(maps, masks)
    acc = MetricAccumulator()
    for lo, hi in ((0, 1), (1, 3), (3, 3), (3, len(maps))):
        acc.update(maps[lo:hi], masks[lo:hi])
    assert acc.compute() == ref
    assert acc.compute() == ref  # compute() is repeatable
    # with image scores given, and further batches after a compute()
    scores = np.random.default_rng(0).random(2 * len(maps))
    acc2 = MetricAccumulator(recall_at=0.8)
    acc2.update(maps, masks, scores[: len(maps)])
    acc2.compute()
    acc2.update(maps[::-1], masks[::-1], scores[len(maps):])
    both = evaluate(np.concatenate([maps, maps[::-1]]), np.concatenate([masks, masks[::-1]]),
                    scores=scores, recall_at=0.8)
    got = acc2.compute()
    assert set(got) == set(both) and "iap@0.8" in got
    for key in got:
        assert got[key] == pytest.approx(both[key], abs=1e-12), key


def test_evaluate_all_normal_warns_and_reports_nan():
    maps = np.random.default_rng(0).random((3, 6, 6)).astype(np.float32)
    masks = np.zeros((3, 6, 6), dtype=bool)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = evaluate(maps, masks)
    text = " | ".join(str(w.message) for w in caught)
    assert "pixel metrics set to NaN: no anomalous pixel" in text
    assert "image_auroc set to NaN" in text
    for key in ("image_auroc", "pixel_auroc", "pixel_ap", "aupro", "iap", "iap90"):
        assert math.isnan(res[key]), key
    assert res["n_regions"] == 0 and res["n_anomalous_images"] == 0


def test_binary_resize_hand_example():
    m = np.zeros((4, 4), dtype=np.uint8)
    m[0:2, 0:2] = 1  # full 2x2 block -> 1.0
    m[2, 2] = m[2, 3] = 1  # half a block -> 0.5 -> kept (>= 0.5)
    m[0, 3] = 1  # a quarter -> 0.25 -> dropped
    expected = np.array([[True, False], [False, True]])
    np.testing.assert_array_equal(binary_resize(m, 2), expected)
    stack = binary_resize(np.stack([m, np.zeros_like(m)]).astype(bool), (2, 2))
    assert stack.dtype == bool and stack.shape == (2, 2, 2)
    np.testing.assert_array_equal(stack[0], expected)
    assert not stack[1].any()
    assert binary_resize(m, (8, 6)).shape == (8, 6)  # (h, w), upsampling also fine
    with pytest.raises(MetricError, match="255"):
        binary_resize(m * 255, 2)


def test_upsample_maps():
    maps = np.random.default_rng(0).random((2, 4, 4)).astype(np.float32)
    up = upsample_maps(maps, 8)
    assert up.shape == (2, 8, 8) and up.dtype == np.float32
    assert upsample_maps(np.full((3, 3), 0.25), (5, 7)) == pytest.approx(np.full((5, 7), 0.25))
    # half-pixel centres: output pixel (0, 0) of a 2x upsampling is the input pixel (0, 0)
    assert up[0, 0, 0] == pytest.approx(maps[0, 0, 0])
    assert up[0, 1, 1] == pytest.approx(0.75 * 0.75 * maps[0, 0, 0] + 0.1875 * (maps[0, 0, 1] + maps[0, 1, 0]) + 0.0625 * maps[0, 1, 1])


# ----------------------------------------------------------------------------------------
# errors
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("fn", [pixel_auroc, pixel_ap, aupro, iap, pro_curve])
def test_no_anomalous_or_no_normal_pixel_raises(fn):
    maps = np.random.default_rng(0).random((2, 4, 4))
    with pytest.raises(MetricError, match="no anomalous|at least one anomalous"):
        fn(maps, np.zeros((2, 4, 4), dtype=bool))
    with pytest.raises(MetricError, match="at least one normal"):
        fn(maps, np.ones((2, 4, 4), dtype=bool))


def test_image_auroc_errors_and_value():
    assert image_auroc([0.1, 0.9, 0.5], [0, 1, 0]) == 1.0
    with pytest.raises(MetricError, match="no anomalous image"):
        image_auroc([0.1, 0.2], [0, 0])
    with pytest.raises(MetricError, match="no normal image"):
        image_auroc([0.1, 0.2], [1, 1])
    with pytest.raises(MetricError, match="nan"):
        image_auroc([0.1, float("nan")], [0, 1])
    with pytest.raises(MetricError, match="2 image scores vs 3 labels"):
        image_auroc([0.1, 0.2], [0, 1, 1])
    with pytest.raises(MetricError, match="binary"):
        image_auroc([0.1, 0.2], [0, 2])


def test_input_errors_have_useful_messages():
    masks = _blobs()
    maps = masks.astype(np.float32)
    bad = maps.copy()
    bad[1, 2, 3] = np.nan
    with pytest.raises(MetricError, match=r"non-finite value \(nan\) at image 1, pixel \(2, 3\)"):
        pixel_auroc(bad, masks)
    bad[1, 2, 3] = np.inf
    with pytest.raises(MetricError, match="inf"):
        evaluate(bad, masks)
    with pytest.raises(MetricError, match=r"shape mismatch.*binary_resize"):
        aupro(maps, masks[:, :6, :6])
    with pytest.raises(MetricError, match=r"binary.*value\(s\) 2"):
        iap(maps, masks.astype(np.uint8) * 2)
    with pytest.raises(MetricError, match="0/255"):
        evaluate(maps, masks.astype(np.uint8) * 255)
    with pytest.raises(MetricError, match=r"0\.5"):
        pixel_ap(maps, masks * 0.5)
    with pytest.raises(MetricError, match="scores"):
        evaluate(maps, masks, scores=[0.1, 0.2])
    with pytest.raises(MetricError, match="nan"):
        evaluate(maps, masks, scores=[0.1, np.nan, 0.3])
    with pytest.raises(MetricError, match="fpr_limit"):
        aupro(maps, masks, fpr_limit=0.0)
    with pytest.raises(MetricError, match="ioi"):
        iap(maps, masks, ioi=1.0)
    with pytest.raises(MetricError, match="recall_at"):
        evaluate(maps, masks, recall_at=1.5)
    with pytest.raises(MetricError, match="no batch"):
        MetricAccumulator().compute()
    assert issubclass(MetricError, ValueError)


@pytest.mark.slow
def test_module_does_not_import_torch():
    path = Path(__file__).resolve().parents[1] / "destseg_lib" / "metrics.py"
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('m', {str(path)!r})\n"
        "mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)\n"
        "assert 'torch' not in sys.modules, 'metrics imported torch'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_label_regions_is_8_connected_by_brute_force():
    from destseg_lib.metrics import label_regions

    rng = np.random.default_rng(3)
    for _ in range(20):
        m = rng.random((7, 9)) < 0.35
        n, lab = label_regions(m)
        # brute force: flood fill over the 8 neighbours
        seen, count = np.zeros_like(m), 0
        for r0, c0 in zip(*np.nonzero(m)):
            if seen[r0, c0]:
                continue
            count += 1
            stack, members = [(r0, c0)], []
            seen[r0, c0] = True
            while stack:
                r, c = stack.pop()
                members.append((r, c))
                for dr in (-1, 0, 1):
                    for dc in (-1, 0, 1):
                        rr, cc = r + dr, c + dc
                        if 0 <= rr < 7 and 0 <= cc < 9 and m[rr, cc] and not seen[rr, cc]:
                            seen[rr, cc] = True
                            stack.append((rr, cc))
            assert len({int(lab[p]) for p in members}) == 1 and lab[members[0]] > 0  # one region, one label
        assert n == count and (lab > 0).sum() == m.sum() and lab.max() == n
