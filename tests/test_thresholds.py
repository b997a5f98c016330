"""destseg_lib.thresholds: the validation split and the threshold rules, against brute force."""
import numpy as np
import pytest

from destseg_lib import metrics
from destseg_lib.data import Sample
from destseg_lib.thresholds import (best_f1_threshold, choose_thresholds, decision_stats, recall_threshold,
                                    region_detection_thresholds, split_off_validation)


def _samples():
    out = [Sample(f"/d/good/{i:03d}.png", 0, "good", None) for i in range(10)]
    out += [Sample(f"/d/{k}/{i:03d}.png", 1, k, f"/d/gt/{k}/{i:03d}.png") for k in ("crack", "hole") for i in range(5)]
    out += [Sample("/d/rare/000.png", 1, "rare", "/d/gt/rare/000.png")]
    return out


def test_validation_split_is_stratified_disjoint_and_seeded():
    s = _samples()
    val, test = split_off_validation(s, 0.4, seed=3)
    assert {x.path for x in val}.isdisjoint({x.path for x in test})
    assert len(val) + len(test) == len(s)
    count = lambda part, k: sum(x.defect_type == k for x in part)  # noqa: E731
    assert (count(val, "good"), count(val, "crack"), count(val, "hole")) == (4, 2, 2)
    assert count(val, "rare") == 0 and count(test, "rare") == 1  # a single image stays in test
    assert split_off_validation(s, 0.4, seed=3) == (val, test)  # deterministic
    assert split_off_validation(list(reversed(s)), 0.4, seed=3)[0] == list(reversed(val))  # order-free choice
    assert split_off_validation(s, 0.4, seed=4)[0] != val
    assert split_off_validation(s, 0.0) == ([], s)
    # each type keeps at least one image for test and gives at least one to validation
    val, test = split_off_validation(s, 0.99)
    assert count(test, "crack") == 1 and count(split_off_validation(s, 0.01)[0], "crack") == 1
    with pytest.raises(ValueError, match="val_fraction"):
        split_off_validation(s, 1.0)


def _brute_best_f1(scores, labels):
    best = (-1, None)
    for t in sorted(set(scores), reverse=True):
        f = scores >= t
        tp = (f & labels).sum()
        f1 = 2 * tp / (f.sum() + labels.sum())
        if f1 > best[0]:
            best = (f1, t)
    return best[1], best[0]


def test_best_f1_threshold_brute_force_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(50):
        n = rng.integers(2, 30)
        scores = rng.integers(0, 6, n).astype(float) / 5  # many ties
        labels = rng.random(n) < 0.4
        if not labels.any():
            labels[0] = True
        t, f1 = best_f1_threshold(scores, labels)
        bt, bf1 = _brute_best_f1(scores, labels)
        assert t == bt and f1 == pytest.approx(bf1)
    with pytest.raises(ValueError, match="no positive"):
        best_f1_threshold([0.1, 0.2], [False, False])


def test_recall_threshold_brute_force():
    rng = np.random.default_rng(1)
    for _ in range(30):
        d = rng.random(rng.integers(1, 12))
        for target in (0.1, 0.5, 0.9, 1.0):
            t = recall_threshold(d, target)
            assert (d >= t).mean() >= target
            higher = [x for x in d if x > t]
            assert all((d >= x).mean() < target for x in higher)  # t is the highest such value


def test_instance_rule_matches_metrics_iap90_operating_point():
    rng = np.random.default_rng(2)
    masks = np.zeros((4, 16, 16), bool)
    masks[0, 2:6, 2:6] = masks[0, 10:14, 9:15] = masks[1, 5:9, 5:12] = masks[3, 0:3, 0:16] = True
    maps = rng.random(masks.shape) * 0.5 + masks * rng.random(masks.shape) * 0.6
    chosen = choose_thresholds(maps, masks, maps.reshape(4, -1).max(1), np.array([1, 1, 0, 1]),
                               "instance_recall", 0.9)
    regions = region_detection_thresholds(maps, masks)["thresholds"]
    assert regions.size == 4
    # brute force: an instance is detected when > 50 % of its pixels reach t
    import cv2
    def detected(t):
        k = 0
        for i in range(4):
            n, lab = cv2.connectedComponents(masks[i].astype(np.uint8), connectivity=8)
            k += sum((maps[i][lab == r] >= t).mean() > 0.5 for r in range(1, n))
        return k
    t = chosen["pixel"]
    assert detected(t) / 4 >= 0.9 and detected(np.nextafter(t, 2)) / 4 < 0.9
    # the pixel precision there is the paper's IAP@90 (metrics.iap's step value)
    prec = masks[maps >= t].mean()
    assert prec == pytest.approx(metrics.iap(maps, masks, recall_at=0.9)[1], abs=1e-12)


def test_decision_stats_counts():
    st = decision_stats(np.array([[[0.1, 0.9]]]), np.array([[[False, True]]]), np.array([0.2, 0.8, 0.5]),
                        np.array([0, 1, 1]), 0.5, 0.5)
    assert (st["image_tp"], st["image_fp"], st["image_fn"], st["image_tn"]) == (2, 0, 0, 1)
    assert st["pixel_f1"] == 1.0 and st["image_precision"] == 1.0
    assert "pixel_tp" not in decision_stats(np.zeros((1, 1, 1)), np.zeros((1, 1, 1), bool), [0.1], [1], 0.1, None)
