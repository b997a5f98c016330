"""aspect="keep": inputs keep their aspect ratio (short side image_size, long side a multiple of 16);
masks, maps, metrics, thresholds, figures, predict and ONNX follow."""
import json
import warnings

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

from destseg_lib import metrics
from destseg_lib.config import get_preset
from destseg_lib.data import TestImages, TrainImages, model_hw, mvtec_split
from destseg_lib.errors import ConfigError, DataError
from destseg_lib.metrics import flat_pixels
from destseg_lib.thresholds import choose_thresholds, decision_stats


def test_model_hw():
    assert model_hw((100, 250), 128, "keep") == (128, 320)  # 1:2.5 line-scan image
    assert model_hw((250, 100), 128, "keep") == (320, 128)  # portrait
    assert model_hw((300, 310), 128, "keep") == (128, 128)  # nearly square -> square
    assert model_hw((100, 1000), 128, "keep") == (128, 512)  # capped at max_aspect 4
    assert model_hw((100, 1000), 128, "keep", max_aspect=2.5) == (128, 320)
    assert model_hw((100, 250), 128, "square") == (128, 128)
    for hw in [(37, 91), (91, 37), (222, 618), (388, 103)]:
        h, w = model_hw(hw, 96, "keep")
        assert h % 16 == 0 and w % 16 == 0 and min(h, w) == 96
        assert abs(max(h, w) / min(h, w) - max(hw) / min(hw)) <= 8 / 96 + 1e-9  # rounding to 16 only
    with pytest.raises(DataError, match="aspect"):
        model_hw((10, 10), 64, "stretch")
    with pytest.raises(ConfigError, match="aspect"):
        get_preset("ci", aspect="wide")
    with pytest.raises(ConfigError, match="max_aspect"):
        get_preset("ci", aspect="keep", max_aspect=0.5)


def test_datasets_keep_the_aspect(wide_root):
    split = mvtec_split(wide_root, "toy_part")
    test = TestImages(split.test, 64, aspect="keep")
    for i in range(len(test)):
        item = test[i]
        h, w = test.native_size(i)
        assert item["image"].shape[1:] == item["mask"].shape[1:] == test.model_size(i) == model_hw((h, w), 64, "keep")
        if item["label"]:  # the mask is resized like its image: the same share of the picture
            native = test.native_mask(i).mean()
            assert abs(float(item["mask"].mean()) - native) < 0.05
    groups = test.size_groups()
    assert len(groups) >= 3 and sorted(i for g in groups.values() for i in g) == list(range(len(test)))
    train = TrainImages(split.train, 64, aspect="keep")
    assert {tuple(train[i].shape[1:]) for i in range(len(train))} == set(train.size_groups())
    square = TestImages(split.test, 64)
    assert {tuple(square[i]["image"].shape[1:]) for i in range(len(square))} == {(64, 64)}


def test_batches_stack_one_size_and_are_seeded(wide_root, ci_cfg):
    from destseg_lib.synthesis import AnomalySynthesizer
    from destseg_lib.textures import make_texture_source
    from destseg_lib.train import SyntheticBatches

    split = mvtec_split(wide_root, "toy_part")
    images = TrainImages(split.train, 64, aspect="keep")
    synth = AnomalySynthesizer.from_config(ci_cfg, make_texture_source(None), grayscale=False)
    batches = SyntheticBatches(images, synth, 4, seed=3)
    sizes, counts = set(), np.zeros(len(images))
    for step in range(40):
        idx = batches.indices(step)
        assert len({images.model_size(i) for i in idx}) == 1  # one size per batch: it stacks
        counts[idx] += 1
    clean, aug, mask = batches[5]
    assert clean.shape[0] == 4 and clean.shape == aug.shape and mask.shape[2:] == clean.shape[2:]
    sizes.add(tuple(clean.shape[2:]))
    again = SyntheticBatches(images, synth, 4, seed=3)[5]
    assert all(torch.equal(a, b) for a, b in zip(batches[5], again))
    assert counts.min() > 0  # every image is drawn
    with pytest.raises(ValueError, match="quarter"):
        SyntheticBatches(images, synth, 4, seed=3, rotation="quarter")


def _ragged(rng):
    """Maps and masks of three sizes whose regions keep off the image borders."""
    shapes = [(8, 8), (8, 12), (8, 6)]
    maps = [rng.random(s).astype(np.float32) for s in shapes]
    masks = [np.zeros(s, bool) for s in shapes]
    masks[1][2:5, 3:7] = True
    masks[1][6, 9:11] = True
    masks[2][3:6, 2:4] = True
    for m, k in zip(maps, masks):
        m[k] += 0.4
    return maps, masks


def test_metrics_on_maps_of_several_sizes():
    maps, masks = _ragged(np.random.default_rng(0))
    scores, labels = np.array([0.2, 0.9, 0.6]), np.array([0, 1, 1])
    r = metrics.evaluate(maps, masks, scores, labels)
    flat_m, flat_k = flat_pixels(maps), flat_pixels(masks, bool)
    assert r["pixel_auroc"] == pytest.approx(roc_auc_score(flat_k, flat_m), abs=1e-12)
    assert r["pixel_ap"] == pytest.approx(average_precision_score(flat_k, flat_m), abs=1e-12)
    assert r["image_auroc"] == 1.0 and r["n_regions"] == 3
    # the same pixels and regions side by side in one 8 x 26 image: region metrics must agree
    with warnings.catch_warnings():  # one image: its image AUROC is undefined (NaN, warned)
        warnings.simplefilter("ignore", RuntimeWarning)
        wide = metrics.evaluate(np.concatenate(maps, axis=1)[None], np.concatenate(masks, axis=1)[None])
    for key in ("pixel_auroc", "pixel_ap", "aupro", "iap", "iap90"):
        assert r[key] == pytest.approx(wide[key], abs=1e-12), key
    assert metrics.aupro(maps, masks) == pytest.approx(wide["aupro"], abs=1e-12)
    with pytest.raises(metrics.MetricError, match="as many"):
        metrics.evaluate(maps, masks[:2])
    with pytest.raises(metrics.MetricError, match="same size"):
        metrics.evaluate(maps, [masks[0], masks[2], masks[1]])
    # thresholds and decisions on the same data agree with their single-image forms
    t = choose_thresholds(maps, masks, scores, labels, "best_f1")
    t1 = choose_thresholds(np.concatenate(maps, axis=1)[None], np.concatenate(masks, axis=1)[None],
                           scores, labels, "best_f1")
    assert t["pixel"] == t1["pixel"]
    ti = choose_thresholds(maps, masks, scores, labels, "instance_recall", 0.6)
    assert ti["pixel"] == choose_thresholds(np.concatenate(maps, axis=1)[None], np.concatenate(masks, axis=1)[None],
                                            scores, labels, "instance_recall", 0.6)["pixel"]
    d = decision_stats(maps, masks, scores, labels, 0.5, t["pixel"])
    assert d["pixel_tp"] + d["pixel_fn"] == int(flat_k.sum())


@pytest.mark.slow
def test_end_to_end_keep_aspect(wide_root, tmp_path):
    """Train (ci budget), evaluate, figures, thresholds, predict, ONNX on the non-square set."""
    from destseg_lib.experiment import run
    from destseg_lib.scoring import predict_files, torch_scorer

    split = mvtec_split(wide_root, "toy_part")
    cfg = get_preset("ci", aspect="keep", val_fraction=0.5)
    rep = run(cfg, split, tmp_path / "run", progress=False, n_examples=4)
    assert rep.preds.ragged
    for i in range(len(rep.preds.labels)):
        assert rep.preds.maps[i].shape == rep.preds.masks[i].shape == rep.test_set.model_size(i)
    assert len({m.shape for m in rep.preds.maps}) >= 2
    res = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert res["results"]["DeSTSeg"]["n_images"] == len(rep.preds.labels)
    assert all(v is not None for v in res["thresholds"].values())
    for name in ("curves", "examples"):
        assert (tmp_path / "run" / "figures" / f"{name}.png").stat().st_size > 1000
    # scoring files: maps come back at each image's native size
    files = [s.path for s in split.test[:6]]
    report = predict_files(files, torch_scorer(rep.model, cfg.top_t), cfg.image_size, tmp_path / "pred",
                           aspect="keep", progress=False)
    assert not report.failed
    for row in report.rows:
        amap = np.load(tmp_path / "pred" / row["map_npy"])
        assert amap.shape == (int(row["height"]), int(row["width"]))


@pytest.mark.slow
def test_onnx_any_size(wide_root, tmp_path):
    pytest.importorskip("onnxruntime")
    from destseg_lib.export import OnnxScorer, export_onnx
    from destseg_lib.fast import InferenceGraph, fold_batchnorm
    from destseg_lib.train import build_model

    model = build_model(get_preset("ci", aspect="keep")).eval()
    path = export_onnx(model, tmp_path / "m.onnx", 64, 20, any_size=True)
    scorer = OnnxScorer(path, threads=1)
    graph = InferenceGraph(fold_batchnorm(model), 20).eval()
    for hw in [(64, 160), (128, 64), (64, 64)]:
        x = torch.rand(2, 3, *hw, generator=torch.Generator().manual_seed(0))
        maps, scores = scorer(x)
        with torch.no_grad():
            ref = graph(x)
        assert maps.shape == (2, *hw)
        np.testing.assert_allclose(maps, ref[0].numpy(), atol=1e-4)
        np.testing.assert_allclose(scores, ref[1].numpy(), atol=1e-4)


def test_make_mtd_long_builds_an_mvtec_category(tmp_path):
    """bench/make_mtd_long.py on a tiny MTD-shaped folder: only the long images, masks renamed."""
    import importlib.util
    from pathlib import Path

    import cv2

    mtd = tmp_path / "mtd"
    shapes = {"MT_Free": [(40, 100), (100, 40), (50, 60), (40, 90), (30, 80)], "MT_Crack": [(40, 100), (60, 60)]}
    for folder, hws in shapes.items():
        (mtd / folder / "Imgs").mkdir(parents=True)
        for k, (h, w) in enumerate(hws):
            cv2.imwrite(str(mtd / folder / "Imgs" / f"img{k}.jpg"), np.full((h, w), 120, np.uint8))
            mask = np.zeros((h, w), np.uint8)
            mask[5:10, 5:20] = 255
            cv2.imwrite(str(mtd / folder / "Imgs" / f"img{k}.png"), mask)
    path = Path(__file__).resolve().parents[1] / "bench" / "make_mtd_long.py"
    spec = importlib.util.spec_from_file_location("make_mtd_long", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    counts = mod.build(mtd, tmp_path / "out", min_aspect=2.0)
    assert counts == {"train/good": 3, "test/good": 1, "test/crack": 1}
    split = mvtec_split(tmp_path / "out", "mtd_long")
    assert [s.defect_type for s in split.test].count("crack") == 1
    crack = next(s for s in split.test if s.defect_type == "crack")
    assert crack.mask_path.endswith("img0_mask.png")
    assert all(max(TestImages([s], 64, aspect="keep").native_size(0)) >= 2 * 40 for s in split.test)
