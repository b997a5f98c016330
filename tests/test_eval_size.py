"""Evaluation at the paper's resolution (Sec. 4.2; config ``eval_size``): maps upsampled bilinearly to
eval_size x eval_size, masks resized to it from the mask files (bilinear, then >= 0.5), every pixel
metric computed there; image scores untouched.

The references are independent of the kit: a numpy half-pixel bilinear upsampling, a numpy triangle
(PIL "bilinear", antialiased) downsampling, hand-derived masks, and scikit-learn's AUROC / AP."""
import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import average_precision_score, roc_auc_score

from destseg_lib import metrics
from destseg_lib.config import get_preset
from destseg_lib.data import Sample, TestImages, mvtec_split, read_mask
from destseg_lib.errors import ConfigError, DataError
from destseg_lib.experiment import evaluate_predictions, per_defect
from destseg_lib.infer import Predictions, predict_dataset


def bilinear_reference(a: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """``F.interpolate(mode="bilinear", align_corners=False)`` for enlarging, written out: the source
    coordinate of output pixel j is (j + 0.5) * in / out - 0.5, clamped at 0, then linear between
    the two neighbours (the last one repeated at the border)."""
    def axis(n_in, n_out):
        x = np.maximum((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0.0)
        x0 = np.floor(x).astype(int)
        x1 = np.minimum(x0 + 1, n_in - 1)
        return x0, x1, x - x0
    y0, y1, wy = axis(a.shape[0], out_h)
    x0, x1, wx = axis(a.shape[1], out_w)
    top = a[y0][:, x0] * (1 - wx) + a[y0][:, x1] * wx
    bottom = a[y1][:, x0] * (1 - wx) + a[y1][:, x1] * wx
    return top * (1 - wy[:, None]) + bottom * wy[:, None]


def triangle_weights(n_in: int, n_out: int) -> np.ndarray:
    """n_out x n_in weights of PIL's bilinear filter when shrinking: a triangle of half-width
    ``scale = n_in / n_out`` source pixels around each output centre, normalised."""
    s = n_in / n_out
    centres = (np.arange(n_out) + 0.5) * s
    w = np.maximum(0.0, 1 - np.abs(np.arange(n_in)[None] + 0.5 - centres[:, None]) / s)
    return w / w.sum(1, keepdims=True)


def shrink_mask_reference(mask: np.ndarray, out: int) -> np.ndarray:
    wy, wx = triangle_weights(mask.shape[0], out), triangle_weights(mask.shape[1], out)
    return (wy @ mask.astype(np.float64) @ wx.T) >= 0.5


def _write(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return str(path)


@pytest.fixture
def hand_set(tmp_path):
    """Three 32 x 32 test images: two defective with known mask files, one normal."""
    m1 = np.zeros((32, 32), np.uint8)
    m1[8:16, 9:21] = 255  # rows 8-15, cols 9-20: odd start / even end, edges on a half-weight
    m2 = np.zeros((32, 32), np.uint8)
    m2[20:28, 2:10] = 255  # aligned to 2 x 2 blocks
    img = np.full((32, 32, 3), 100, np.uint8)
    samples = [Sample(_write(tmp_path / "a.png", img), 1, "cut", _write(tmp_path / "a_mask.png", m1)),
               Sample(_write(tmp_path / "b.png", img), 1, "cut", _write(tmp_path / "b_mask.png", m2)),
               Sample(_write(tmp_path / "c.png", img), 0, "good", None)]
    return samples, [m1 > 0, m2 > 0, np.zeros((32, 32), bool)]


def test_mask_file_downsampled_to_eval_size_by_hand(hand_set):
    samples, _ = hand_set
    ts = TestImages(samples, 32, eval_size=16)
    got = ts.eval_mask(0)
    # worked out by hand: the source rows 8-15 give output-row weights .125, .875, 1, 1, .875, .125
    # for rows 3-8; the source cols 9-20 give .5, 1, 1, 1, 1, 1, .5 for cols 4-10; a pixel is in the
    # mask when the product is >= 0.5
    expected = np.zeros((16, 16), bool)
    expected[4:8, 5:10] = True
    expected[5:7, 4] = expected[5:7, 10] = True  # .5 x 1 = .5: ">= 0.5" keeps them
    assert got.shape == (16, 16) and got.dtype == bool
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(ts.eval_mask(1), np.pad(np.ones((4, 4), bool), ((10, 2), (1, 11))))
    assert not ts.eval_mask(2).any() and ts.eval_mask(2).shape == (16, 16)
    # native: the file as it is
    native = TestImages(samples, 16, eval_size="native")
    np.testing.assert_array_equal(native.eval_mask(0), read_mask(samples[0].mask_path))
    assert native.eval_hw(0) == (32, 32)
    # None: the networks' input size, as the model-size masks of the items
    at_model = TestImages(samples, 8)
    assert at_model.eval_hw(0) == (8, 8)
    np.testing.assert_array_equal(at_model.eval_mask(0), at_model[0]["mask"][0].numpy() > 0.5)


def test_metrics_at_eval_size_match_sklearn_on_hand_built_arrays(hand_set):
    """A known 4 x 4 map per image (the 'model size'), upsampled to 16 x 16; the mask files shrunk
    from 32 x 32 to 16 x 16: every pixel metric equals the references computed on those arrays."""
    samples, native_masks = hand_set
    rng = np.random.default_rng(0)
    maps = rng.random((3, 4, 4)).astype(np.float32)
    maps[0, 1:3, 1:3] += 1.0  # where the first defect is
    de_st = rng.random((3, 4, 4)).astype(np.float32)
    scores, de_st_scores = np.array([0.9, 0.7, 0.2], np.float32), np.array([0.3, 0.8, 0.1], np.float32)
    labels = np.array([1, 1, 0])
    ts = TestImages(samples, 4, eval_size=16)
    model_masks = np.stack([ts[i]["mask"][0].numpy() > 0.5 for i in range(3)])
    preds = Predictions(maps, scores, de_st, de_st_scores, model_masks, labels, ["cut", "cut", "good"],
                        [s.path for s in samples], True, np.stack([ts.eval_mask(i) for i in range(3)]))
    res = evaluate_predictions(preds)
    exp_masks = np.stack([shrink_mask_reference(m, 16) for m in native_masks])
    assert exp_masks[0].sum() == 24  # the hand-derived mask above
    for name, m, s in (("DeSTSeg", maps, scores), ("DeST", de_st, de_st_scores)):
        up = np.stack([bilinear_reference(x.astype(np.float64), 16, 16) for x in m])
        r = res[name]
        assert r["pixel_auroc"] == pytest.approx(roc_auc_score(exp_masks.ravel(), up.ravel()), abs=1e-9)
        assert r["pixel_ap"] == pytest.approx(average_precision_score(exp_masks.ravel(), up.ravel()), abs=1e-9)
        ref = metrics.evaluate(up, exp_masks, s, labels)
        for k in ("aupro", "iap", "iap90", "iap_interp", "iap90_interp"):
            assert r[k] == pytest.approx(ref[k], abs=1e-6), k
        assert r["image_auroc"] == pytest.approx(roc_auc_score(labels, s))  # scores as given
        assert r["n_regions"] == 2 and r["n_images"] == 3
    # at the model size (no eval masks) the numbers are those of the 4 x 4 arrays: another result
    at_model = evaluate_predictions(Predictions(maps, scores, de_st, de_st_scores, model_masks, labels))
    assert at_model["DeSTSeg"]["pixel_ap"] == pytest.approx(average_precision_score(model_masks.ravel(),
                                                                                    maps.ravel()))
    assert at_model["DeSTSeg"]["pixel_ap"] != pytest.approx(res["DeSTSeg"]["pixel_ap"], abs=1e-3)
    # per defect type: the same view (one defect type here: the whole set)
    rows = per_defect(preds)
    assert {r["method"] for r in rows} == {"DeSTSeg", "DeST"}
    assert rows[0]["pixel_ap"] == pytest.approx(res["DeSTSeg"]["pixel_ap"])


def test_native_eval_upsamples_each_map_to_its_file_size(hand_set, tmp_path):
    samples, native_masks = hand_set
    wide = np.zeros((24, 40), np.uint8)
    wide[5:12, 10:30] = 255
    samples = samples[:2] + [Sample(_write(tmp_path / "w.png", np.full((24, 40, 3), 9, np.uint8)), 1, "cut",
                                    _write(tmp_path / "w_mask.png", wide))]
    ts = TestImages(samples, 8, eval_size="native")
    maps = [np.random.default_rng(i).random((8, 8)).astype(np.float32) for i in range(3)]
    preds = Predictions(np.stack(maps), np.zeros(3), np.stack(maps), np.zeros(3), np.zeros((3, 8, 8), bool),
                        np.ones(3, int), eval_masks=[ts.eval_mask(i) for i in range(3)])
    view = preds.eval_view()
    assert [m.shape for m in view.maps] == [(32, 32), (32, 32), (24, 40)]
    for m, v in zip(maps, view.maps):
        np.testing.assert_allclose(v, bilinear_reference(m.astype(np.float64), *v.shape), atol=1e-6)
    np.testing.assert_array_equal(view.masks[2], wide > 0)
    flat_m = np.concatenate([bilinear_reference(m.astype(np.float64), *v.shape).ravel()
                             for m, v in zip(maps, view.maps)])
    flat_k = np.concatenate([native_masks[0].ravel(), native_masks[1].ravel(), (wide > 0).ravel()])
    res = evaluate_predictions(preds)["DeSTSeg"]
    assert res["pixel_auroc"] == pytest.approx(roc_auc_score(flat_k, flat_m), abs=1e-9)


def test_predict_dataset_carries_eval_masks_and_keeps_scores(toy_split):
    """The real chain on the toy files (80 px): the ci model at 64 px, masks read at 96 x 96."""
    from destseg_lib.models import DeSTSeg

    torch.manual_seed(0)
    cfg = get_preset("ci")
    model = DeSTSeg.from_config(cfg)
    samples = toy_split.test
    at96 = predict_dataset(model, TestImages(samples, 64, eval_size=96), progress=False)
    plain = predict_dataset(model, TestImages(samples, 64), progress=False)
    assert plain.eval_masks is None and at96.eval_masks.shape == (len(samples), 96, 96)
    np.testing.assert_array_equal(at96.scores, plain.scores)  # image scores do not depend on eval_size
    np.testing.assert_array_equal(at96.maps, plain.maps)
    exp_masks = np.stack([bilinear_reference(read_mask(s.mask_path).astype(np.float64), 96, 96) >= 0.5
                          if s.mask_path else np.zeros((96, 96), bool) for s in samples])
    np.testing.assert_array_equal(at96.eval_masks, exp_masks)  # enlarging: plain bilinear, >= 0.5
    up = np.stack([bilinear_reference(m.astype(np.float64), 96, 96) for m in plain.de_st_maps])
    res = evaluate_predictions(at96)["DeST"]
    assert res["pixel_auroc"] == pytest.approx(roc_auc_score(exp_masks.ravel(), up.ravel()), abs=1e-6)
    assert res["pixel_ap"] == pytest.approx(average_precision_score(exp_masks.ravel(), up.ravel()), abs=1e-6)
    assert res["image_auroc"] == pytest.approx(roc_auc_score(plain.labels, plain.de_st_scores))


def test_eval_size_config_field():
    assert get_preset("paper").resolved_eval_size == 256  # the paper's (Sec. 4.2), whatever image_size
    assert get_preset("quick").resolved_eval_size == 256
    assert get_preset("cpu").resolved_eval_size == "native"  # aspect="keep": each image's own size
    assert get_preset("ci", eval_size="128").eval_size == 128
    assert get_preset("ci", eval_size="native").resolved_eval_size == "native"
    assert get_preset("cpu", eval_size="native").eval_size == "native"
    for bad in ("8", "15", "big", "true", "2.5"):
        with pytest.raises(ConfigError, match="eval_size"):
            get_preset("ci", eval_size=bad)
    with pytest.raises(ConfigError, match="aspect='keep'"):
        get_preset("cpu", eval_size=256)
    with pytest.raises(DataError, match="eval_size"):
        TestImages([], 64, aspect="keep", eval_size=256)
    ts = TestImages.for_config([], get_preset("quick"))
    assert ts.eval_size == 256 and ts.image_size == 128


def test_mvtec_bottle_masks_at_256(shared_data):
    """Real data: bottle's 512^2 masks shrunk to 256^2 by the antialiased rule (triangle reference)."""
    root = shared_data / "mvtec"
    if not (root / "bottle").is_dir():
        pytest.skip("no $DESTSEG_DATA/mvtec/bottle")
    split = mvtec_split(root, "bottle")
    defective = [s for s in split.test if s.mask_path][:4]
    ts = TestImages(defective, 128, eval_size=256)
    for i, s in enumerate(defective):
        native = read_mask(s.mask_path)
        got = ts.eval_mask(i)
        ref = shrink_mask_reference(native, 256)
        assert got.shape == (256, 256)
        assert (got != ref).mean() < 1e-3  # PIL's float resampling vs the float64 reference at exact ties
