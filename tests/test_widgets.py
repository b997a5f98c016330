"""destseg_lib.widgets: operating-point numbers against brute force, and the explorers headless."""
import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from destseg_lib import metrics, widgets
from destseg_lib.infer import Predictions

EIGHT = np.ones((3, 3), int)  # 8-connectivity, as the metrics


def make_preds(seed: int = 0, n: int = 8, size: int = 20, quantise: bool = False) -> Predictions:
    """Random maps that are higher, on average, inside random blob masks; image 0 is normal."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, size, size), bool)
    for i in range(1, n):
        for _ in range(int(rng.integers(1, 4))):  # 1-3 blobs, sometimes touching
            y, x = rng.integers(0, size, 2)
            r = int(rng.integers(1, 4))
            yy, xx = np.mgrid[:size, :size]
            masks[i] |= (yy - y) ** 2 + (xx - x) ** 2 <= r * r
    maps = rng.random((n, size, size)).astype(np.float32) + 0.6 * masks
    if quantise:  # many ties
        maps = np.round(maps * 5) / 5
    de_st = rng.random((n, size, size)).astype(np.float32) + 0.3 * masks
    top = lambda m: np.sort(m.reshape(n, -1), 1)[:, -10:].mean(1)  # noqa: E731
    labels = masks.reshape(n, -1).any(1).astype(int)
    return Predictions(maps, top(maps), de_st, top(de_st), masks, labels, ["good" if l == 0 else "blob" for l in labels],
                       [f"img{i}.png" for i in range(n)])


def brute_stats(preds, t, image_t=None, maps=None, scores=None):
    maps = preds.maps if maps is None else maps
    scores = preds.scores if scores is None else scores
    pred, gt = maps >= t, preds.masks
    tp, fp, fn = int((pred & gt).sum()), int((pred & ~gt).sum()), int((~pred & gt).sum())
    tn = int((~pred & ~gt).sum())
    det = k = 0
    for i in range(len(maps)):
        lab, n = ndimage.label(gt[i], structure=EIGHT)
        for r in range(1, n + 1):
            region = lab == r
            k += 1
            det += int(pred[i][region].sum() > 0.5 * region.sum())
    nan = float("nan")
    out = {"pixel_tp": tp, "pixel_fp": fp, "pixel_fn": fn, "pixel_tn": tn,
           "pixel_precision": tp / (tp + fp) if tp + fp else nan, "pixel_recall": tp / (tp + fn) if tp + fn else nan,
           "pixel_f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else nan,
           "pixel_iou": tp / (tp + fp + fn) if tp + fp + fn else nan, "pixel_fpr": fp / (fp + tn) if fp + tn else nan,
           "instances_detected": det, "n_instances": k, "instance_recall": det / k if k else nan}
    if image_t is not None:
        flag, lab = scores >= image_t, preds.labels.astype(bool)
        itp, ifp, ifn = int((flag & lab).sum()), int((flag & ~lab).sum()), int((~flag & lab).sum())
        itn = int((~flag & ~lab).sum())
        out.update({"image_tp": itp, "image_fp": ifp, "image_fn": ifn, "image_tn": itn,
                    "image_precision": itp / (itp + ifp) if itp + ifp else nan,
                    "image_recall": itp / (itp + ifn) if itp + ifn else nan,
                    "image_f1": 2 * itp / (2 * itp + ifp + ifn), "image_fpr": ifp / (ifp + itn) if ifp + itn else nan})
    return out


def same(a, b) -> bool:
    return (math.isnan(a) and math.isnan(b)) if isinstance(a, float) and math.isnan(a) else a == pytest.approx(b, abs=1e-12)


@pytest.mark.parametrize("quantise", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_operating_point_stats_match_brute_force(seed, quantise):
    preds = make_preds(seed, quantise=quantise)
    values = np.unique(preds.maps)
    thresholds = [values[0], values[len(values) // 3], values[len(values) // 2], values[-1], values[-1] + 1,
                  values[0] - 1, float(np.mean(values[:2]))]
    image_ts = [preds.scores.min(), float(np.median(preds.scores)), preds.scores.max() + 1]
    for t in thresholds:
        for it in image_ts:
            got = widgets.operating_point_stats(preds, t, it)
            want = brute_stats(preds, t, it)
            for key, value in want.items():
                assert same(got[key], value), (seed, quantise, t, it, key, got[key], value)


def test_de_st_method_uses_the_de_st_map():
    preds = make_preds(3)
    t = float(np.median(preds.de_st_maps))
    got = widgets.operating_point_stats(preds, t, float(np.median(preds.de_st_scores)), method="DeST")
    want = brute_stats(preds, t, float(np.median(preds.de_st_scores)), preds.de_st_maps, preds.de_st_scores)
    assert all(same(got[k], v) for k, v in want.items())
    with pytest.raises(ValueError, match="method"):
        widgets.operating_point_stats(preds, t, method="PatchCore")


@pytest.mark.parametrize("quantise", [False, True])
@pytest.mark.parametrize("target", [0.05, 0.3, 0.5, 0.9, 1.0])
def test_threshold_for_instance_recall_is_the_highest_reaching_the_target(target, quantise):
    preds = make_preds(4, quantise=quantise)
    t = widgets.threshold_for_instance_recall(preds, target)
    k = brute_stats(preds, t)["n_instances"]
    candidates = [v for v in np.unique(preds.maps)[::-1]
                  if brute_stats(preds, v)["instances_detected"] / k >= target - 1e-12]
    assert t == candidates[0]  # the highest distinct map value with recall >= target
    assert brute_stats(preds, t)["instance_recall"] >= target - 1e-12


@pytest.mark.parametrize("seed", [0, 5, 6])
def test_precision_at_the_90_percent_point_is_iap90(seed):
    preds = make_preds(seed, n=10)
    t = widgets.threshold_for_instance_recall(preds, 0.9)
    res = metrics.evaluate(preds.maps, preds.masks, preds.scores, preds.labels)
    assert widgets.operating_point_stats(preds, t)["pixel_precision"] == pytest.approx(res["iap90"], abs=1e-12)


def test_best_f1_image_threshold_brute_force():
    for seed in range(4):
        preds = make_preds(seed)
        preds.scores = np.round(preds.scores, 1)  # ties
        best = max(np.unique(preds.scores), key=lambda t: (brute_stats(preds, 0.5, t)["image_f1"], t))
        assert widgets.best_f1_image_threshold(preds) == best


def test_instance_table_and_false_positive_regions():
    preds = make_preds(7)
    t = float(np.quantile(preds.maps, 0.8))
    rows = widgets.instance_table(preds, t)
    assert len(rows) == brute_stats(preds, t)["n_instances"]
    assert sum(r["detected"] for r in rows) == brute_stats(preds, t)["instances_detected"]
    for r in rows:
        region = r["region_mask"]
        assert preds.masks[r["image"]][region].all() and region.sum() == r["area"]
        assert r["covered"] == pytest.approx((preds.maps[r["image"]][region] >= t).mean())
        assert r["detected"] == (r["detect_threshold"] >= t)
    fps = widgets.false_positive_regions(preds, t)
    n_brute, beside = 0, 0
    for i in range(len(preds.maps)):
        lab, n = ndimage.label((preds.maps[i] >= t) & ~preds.masks[i], structure=EIGHT)
        n_brute += n
        grown = ndimage.binary_dilation(preds.masks[i], structure=EIGHT)
        beside += sum((grown & (lab == r)).any() for r in range(1, n + 1))
    assert len(fps) == n_brute and sum(r["beside_truth"] for r in fps) == beside
    assert 0 < beside < n_brute  # the random maps hold both kinds: the check sees each
    assert all(not (preds.masks[r["image"]] & r["region_mask"]).any() for r in fps)
    assert all(r["region_mask"].sum() == r["area"] for r in fps)
    assert [r["area"] for r in fps] == sorted((r["area"] for r in fps), reverse=True)
    # every false-positive pixel is in exactly one region
    flagged = sum(int(((preds.maps[i] >= t) & ~preds.masks[i]).sum()) for i in range(len(preds.maps)))
    assert sum(r["area"] for r in fps) == flagged


def test_a_halo_beside_a_defect_is_a_false_positive_region():
    """A map that covers a square defect and spills 3 px past it on every side: the halo is one
    false-positive region beside the truth (a region-level test that skipped regions touching the
    ground truth saw nothing), and a lone speck elsewhere is another, not beside it."""
    from destseg_lib.infer import Predictions

    mask = np.zeros((1, 32, 32), bool)
    mask[0, 10:16, 10:16] = True
    maps = np.zeros((1, 32, 32), np.float32)
    maps[0, 7:19, 7:19] = 0.9
    maps[0, 28, 28] = 0.8
    preds = Predictions(maps=maps, scores=np.ones(1, np.float32), de_st_maps=maps, de_st_scores=np.ones(1, np.float32),
                        masks=mask, labels=np.ones(1, int), defect_types=["stain"], paths=["x.png"])
    fps = widgets.false_positive_regions(preds, 0.5)
    assert [(r["area"], r["beside_truth"]) for r in fps] == [(12 * 12 - 36, True), (1, False)]


def test_no_instances_is_an_error():
    preds = make_preds(0)
    preds.masks[:] = False
    with pytest.raises(ValueError, match="no ground-truth instance"):
        widgets.threshold_for_instance_recall(preds, 0.9)
    with pytest.raises(ValueError, match="target"):
        widgets.threshold_for_instance_recall(make_preds(0), 0.0)


# ---------------------------------------------------------------------------------- widgets
ipywidgets = pytest.importorskip("ipywidgets")


@pytest.mark.slow
def test_threshold_explorer_updates_headless():
    preds = make_preds(8)
    images = [{"image": torch.rand(3, 20, 20, generator=torch.Generator().manual_seed(i))} for i in range(len(preds.maps))]
    ex = widgets.threshold_explorer(preds, images, target_recall=0.9)
    assert isinstance(ex, ipywidgets.VBox)
    assert ex.image.value[:8] == b"\x89PNG\r\n\x1a\n"
    assert ex.pixel_slider.value == widgets.threshold_for_instance_recall(preds, 0.9)
    before_stats, before_png = ex.stats.value, ex.image.value
    new_t = float(np.quantile(preds.maps, 0.95))
    ex.pixel_slider.value = new_t  # what dragging the slider does
    assert ex.stats.value != before_stats and ex.image.value != before_png
    assert f"{new_t:.5f}" in ex.stats.value
    assert ex.current() == pytest.approx(widgets.operating_point_stats(preds, new_t, ex.image_slider.value), nan_ok=True)
    ex.image_slider.value = ex.image_slider.max
    assert "flagged" in ex.stats.value
    ex.target_slider.value = 0.5
    ex.suggest_button.click()  # runs the on_click callback
    assert ex.pixel_slider.value == widgets.threshold_for_instance_recall(preds, 0.5)
    assert ex.current()["instance_recall"] >= 0.5
    fig = ex.figure()
    assert len(fig.axes) == 2 * len(ex.indices)


def test_perlin_explorer_updates_headless():
    image = np.random.default_rng(0).random((48, 48, 3)).astype(np.float32)
    ex = widgets.perlin_explorer(image, seed=1)
    assert isinstance(ex, ipywidgets.VBox)
    label, png = ex.label.value, ex.image.value
    ex.sliders["threshold"].value = -0.5
    assert ex.label.value != label and ex.image.value != png
    low = ex.panels()["mask"].mean()
    ex.sliders["threshold"].value = 0.9
    assert ex.panels()["mask"].mean() < low
    ex.sliders["beta"].value = 0.0
    p = ex.panels()
    m = p["mask"].astype(bool)
    assert np.allclose(p["anomalous"][m], p["texture"][m]) and np.allclose(p["anomalous"][~m], image[~m])
    assert len(ex.figure().axes) == 5
