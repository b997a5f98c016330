"""destseg_lib.infer: the anomaly maps and image scores of Sec. 3.4, against the model's own pieces
and brute force."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from destseg_lib.data import TestImages
from destseg_lib.infer import predict, predict_dataset, shape_batches, top_t_score
from destseg_lib.models import cosine_distance_maps, segmentation_input
from destseg_lib.train import build_model


def test_top_t_is_the_mean_of_the_t_largest_values_by_brute_force():
    rng = np.random.default_rng(0)
    maps = rng.random((3, 9, 7)).astype(np.float32)
    for t in (1, 5, 63, 500):  # 500 > 63 pixels: capped at the map size
        want = [np.sort(m.ravel())[::-1][:min(t, m.size)].mean() for m in maps]
        assert np.allclose(top_t_score(torch.from_numpy(maps), t).numpy(), want, atol=1e-6), t


def test_maps_are_built_from_the_networks_as_the_paper_says(ci_cfg):
    """anomaly map = the segmentation output (1/4 resolution) upsampled bilinearly to the input;
    DeST map = the product over levels of the cosine-distance maps (Eq. 3) at 1/4 resolution, then
    upsampled; scores = top-T means of the maps."""
    model = build_model(ci_cfg).eval()
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    out = predict(model, x, top_t=ci_cfg.top_t)
    with torch.no_grad():
        t, s = model.features(x)
        seg = model.segmentation(segmentation_input(t, s, model.seg_input))
        cos = cosine_distance_maps(t, s)
    assert seg.shape[-2:] == (16, 16)
    up = F.interpolate(seg, size=(64, 64), mode="bilinear", align_corners=False)[:, 0]
    assert torch.allclose(out["anomaly_map"], up, atol=1e-6)
    quarter = torch.ones_like(cos[0])
    for c in cos:
        quarter = quarter * F.interpolate(c, size=cos[0].shape[-2:], mode="bilinear", align_corners=False)
    de_st = F.interpolate(quarter, size=(64, 64), mode="bilinear", align_corners=False)[:, 0]
    assert torch.allclose(out["de_st_map"], de_st, atol=1e-6)
    assert torch.allclose(out["score"], top_t_score(up, ci_cfg.top_t), atol=1e-6)
    assert torch.allclose(out["de_st_score"], top_t_score(de_st, ci_cfg.top_t), atol=1e-6)


def test_predict_dataset_keeps_the_dataset_order_whatever_the_batch(ci_cfg, toy_split):
    model = build_model(ci_cfg).eval()
    test = TestImages.for_config(toy_split.test, ci_cfg)
    a = predict_dataset(model, test, batch_size=16, top_t=ci_cfg.top_t, progress=False)
    b = predict_dataset(model, test, batch_size=3, top_t=ci_cfg.top_t, progress=False)
    assert a.paths == [s.path for s in toy_split.test] == b.paths
    assert np.allclose(a.scores, b.scores, atol=1e-5) and np.allclose(a.maps, b.maps, atol=1e-5)
    one = predict(model, test[4]["image"][None], top_t=ci_cfg.top_t)
    assert a.scores[4] == pytest.approx(float(one["score"][0]), abs=1e-5)
    assert list(a.labels) == [int(s.mask_path is not None) for s in toy_split.test]


def test_shape_batches_group_by_size_and_cover_every_index_once():
    class Sized:
        def __len__(self):
            return 7

        def size_groups(self):
            return {(64, 64): [0, 2, 3, 6], (64, 128): [1, 4, 5]}

    batches = shape_batches(Sized(), 3)
    assert batches == [[0, 2, 3], [6], [1, 4, 5]]
    assert sorted(i for b in batches for i in b) == list(range(7))
