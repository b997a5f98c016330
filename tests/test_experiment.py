"""destseg_lib.experiment: metrics of predictions against sklearn, the tables and JSON it writes."""
import json
import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from destseg_lib.experiment import evaluate_predictions, format_table, json_safe, per_defect, write_json
from destseg_lib.infer import Predictions


def _preds(seed=0, n=10, size=8, seg=True):
    rng = np.random.default_rng(seed)
    labels = np.array([0] * (n // 2) + [1] * (n - n // 2))
    masks = np.zeros((n, size, size), bool)
    for i in np.flatnonzero(labels):
        r, c = rng.integers(0, size - 3, 2)
        masks[i, r:r + 3, c:c + 3] = True
    maps = (rng.random((n, size, size)) * 0.5 + masks * rng.random()).astype(np.float32)
    de_st = (rng.random((n, size, size)) * 0.5 + masks * 0.2).astype(np.float32)
    types = ["good" if l == 0 else ("hole" if i % 2 else "scratch") for i, l in enumerate(labels)]
    return Predictions(maps, maps.reshape(n, -1).max(1), de_st, de_st.reshape(n, -1).max(1), masks, labels,
                       types, [f"img{i}.png" for i in range(n)], seg)


def test_metrics_of_both_methods_match_sklearn():
    p = _preds()
    res = evaluate_predictions(p)
    assert set(res) == {"DeSTSeg", "DeST"}
    for name, maps, scores in (("DeSTSeg", p.maps, p.scores), ("DeST", p.de_st_maps, p.de_st_scores)):
        assert res[name]["image_auroc"] == pytest.approx(roc_auc_score(p.labels, scores), abs=1e-9)
        assert res[name]["pixel_auroc"] == pytest.approx(roc_auc_score(p.masks.ravel(), maps.ravel()), abs=1e-9)
        assert res[name]["pixel_ap"] == pytest.approx(average_precision_score(p.masks.ravel(), maps.ravel()), abs=1e-9)
    assert set(evaluate_predictions(_preds(seg=False))) == {"DeST"}  # a DeST-only model


def test_per_defect_rows_hold_the_normal_images_and_one_type():
    p = _preds()
    rows = per_defect(p)
    assert {(r["defect_type"], r["method"]) for r in rows} == {(t, m) for t in ("hole", "scratch")
                                                               for m in ("DeSTSeg", "DeST")}
    hole = next(r for r in rows if r["defect_type"] == "hole" and r["method"] == "DeSTSeg")
    idx = [i for i, t in enumerate(p.defect_types) if t in ("good", "hole")]
    assert hole["n_defect_images"] == sum(t == "hole" for t in p.defect_types)
    assert hole["image_auroc"] == pytest.approx(roc_auc_score(p.labels[idx], p.scores[idx]), abs=1e-9)


def test_table_and_json_say_undefined_plainly(tmp_path):
    text = format_table({"DeSTSeg": {"image_auroc": 0.9876, "pixel_ap": math.nan}}, keys=("image_auroc", "pixel_ap"))
    line = text.splitlines()[-1]
    assert line.split() == ["DeSTSeg", "98.8", "n/a"]
    write_json(tmp_path / "m.json", {"a": math.nan, "b": np.float32(0.5), "c": np.arange(2), "d": [math.inf]})
    assert json.loads((tmp_path / "m.json").read_text()) == {"a": None, "b": 0.5, "c": [0, 1], "d": [None]}
    assert json_safe({1: (np.int64(3),)}) == {"1": [3]}
