"""The training-free nearest-neighbour baseline (destseg_lib.baseline; PatchCore's idea, the yardstick
of the paper's Table 2): patch features, exhaustive nearest-neighbour distances, the seeded bank,
and its row beside DeSTSeg and DeST in a run.

References: numpy loops (brute-force nearest neighbours in float64, the 3 x 3 average written out,
bilinear upsampling written out), independent of torch's kernels."""
import csv
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from destseg_lib.baseline import (
    BASELINE_NAME,
    NearestNeighbourBaseline,
    nearest_distances,
    patch_features,
    sample_bank_indices,
)


def brute_nearest(queries: np.ndarray, bank: np.ndarray) -> np.ndarray:
    out = np.empty(len(queries))
    for i, q in enumerate(queries.astype(np.float64)):
        best = np.inf
        for b in bank.astype(np.float64):
            best = min(best, float(np.sqrt(((q - b) ** 2).sum())))
        out[i] = best
    return out


def upsample_reference(a: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """bilinear, align_corners=False, written out (source coordinate (j + .5) * in / out - .5, clamped)."""
    def axis(n_in, n_out):
        x = np.maximum((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0.0)
        x0 = np.floor(x).astype(int)
        return x0, np.minimum(x0 + 1, n_in - 1), x - x0
    y0, y1, wy = axis(a.shape[-2], out_h)
    x0, x1, wx = axis(a.shape[-1], out_w)
    top = a[..., y0, :][..., x0] * (1 - wx) + a[..., y0, :][..., x1] * wx
    bot = a[..., y1, :][..., x0] * (1 - wx) + a[..., y1, :][..., x1] * wx
    return top * (1 - wy[:, None]) + bot * wy[:, None]


def patches_reference(feats, levels=(1, 2)) -> np.ndarray:
    """B x h x w x C: level 2 and level 3 upsampled to its grid, concatenated, 3 x 3 mean over the
    neighbours inside the grid (loops)."""
    f = [feats[k].double().numpy() for k in levels]
    h, w = f[0].shape[-2:]
    x = np.concatenate([f[0]] + [upsample_reference(g, h, w) for g in f[1:]], axis=1)
    out = np.zeros((x.shape[0], h, w, x.shape[1]))
    for i in range(h):
        for j in range(w):
            nb = [x[:, :, a, b] for a in range(i - 1, i + 2) for b in range(j - 1, j + 2) if 0 <= a < h and 0 <= b < w]
            out[:, i, j] = np.mean(nb, axis=0)
    return out


def test_nearest_distances_against_brute_force():
    rng = np.random.default_rng(0)
    bank = rng.normal(size=(17, 5)).astype(np.float32) * 10 + 100  # large norms: cancellation in |q|^2 - 2qb + |b|^2
    queries = np.concatenate([rng.normal(size=(25, 5)).astype(np.float32) * 10 + 100,
                              bank[[3, 7]] + 1e-3,  # almost on a bank point
                              bank[[0]]])  # exactly on one: distance 0
    ref = brute_nearest(queries, bank)
    for chunk in (1 << 24, 40, 1):  # one chunk; 2 queries per chunk; 1 per chunk
        got = nearest_distances(torch.from_numpy(queries), torch.from_numpy(bank), chunk_elems=chunk).numpy()
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-4)
    assert nearest_distances(torch.from_numpy(queries[-1:]), torch.from_numpy(bank)).item() == 0.0
    # a 1-row bank and recheck larger than the bank
    np.testing.assert_allclose(nearest_distances(torch.from_numpy(queries), torch.from_numpy(bank[:1]),
                                                 recheck=8).numpy(), brute_nearest(queries, bank[:1]), rtol=1e-5)
    with pytest.raises(ValueError):
        nearest_distances(torch.zeros(3, 4), torch.zeros(5, 3))


def test_patch_features_against_loops():
    g = torch.Generator().manual_seed(1)
    feats = [torch.randn(2, 3, 16, 16, generator=g), torch.randn(2, 4, 8, 8, generator=g),
             torch.randn(2, 5, 4, 4, generator=g)]
    got = patch_features(feats).permute(0, 2, 3, 1).numpy()
    assert got.shape == (2, 8, 8, 9)
    np.testing.assert_allclose(got, patches_reference(feats), atol=1e-5)


class ToyTeacher(nn.Module):
    """Three 'levels' at strides 4 / 8 / 16 that are plain functions of the image."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1), requires_grad=False)

    def forward(self, x):
        return [F.avg_pool2d(x, 4), torch.cat([F.avg_pool2d(x, 8), F.avg_pool2d(x * x, 8)], 1) * self.scale,
                F.max_pool2d(x, 16)]


def _images(n, seed, size=32):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(3, size, size, generator=g) for _ in range(n)]


def _baseline(bank_size, seed=0):
    return NearestNeighbourBaseline(ToyTeacher(), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), bank_size=bank_size, seed=seed)


def _reference_patches(images) -> np.ndarray:
    """Every training patch, image by image, row-major: (N * h * w) x C."""
    x = (torch.stack(images) - 0.5) / 0.25
    p = patches_reference(ToyTeacher()(x))
    return p.reshape(-1, p.shape[-1])


def test_bank_is_a_seeded_subset_of_the_training_patches_and_maps_are_brute_force():
    train, test = _images(5, 0), _images(3, 1)
    all_patches = _reference_patches(train)  # 5 images x 4 x 4 patches = 80
    assert all_patches.shape == (80, 9)
    base = _baseline(bank_size=30, seed=3).fit(train)
    bank = base.bank.double().numpy()
    assert bank.shape == (30, 9) and base.info["n_train_patches"] == 80 and base.info["bank_size"] == 30
    # each bank row is the training patch the seeded draw names, and they are 30 distinct patches
    idx = sample_bank_indices(80, 30, 3)
    assert len(set(idx.tolist())) == 30 and np.all(np.diff(idx) > 0)
    np.testing.assert_allclose(bank, all_patches[idx], atol=1e-5)
    # the anomaly map: brute-force nearest bank patch per test patch, upsampled; score: its max
    out = base.score(torch.stack(test))
    q = _reference_patches(test).reshape(3, 4, 4, 9)
    ref_grid = np.stack([brute_nearest(q[i].reshape(-1, 9), bank).reshape(4, 4) for i in range(3)])
    np.testing.assert_allclose(out["grid"].numpy(), ref_grid, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out["map"].numpy(), upsample_reference(ref_grid, 32, 32), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out["score"].numpy(), ref_grid.reshape(3, -1).max(1), rtol=1e-5)
    assert out["map"].shape == (3, 32, 32)


def test_bank_is_deterministic_per_seed_and_whole_when_small():
    train = _images(5, 0)
    a, b = _baseline(30, seed=3).fit(train), _baseline(30, seed=3).fit(train)
    assert torch.equal(a.bank, b.bank)
    c = _baseline(30, seed=4).fit(train)
    assert not torch.equal(a.bank, c.bank)
    # batching does not change the bank (offsets are per image, not per batch)
    assert torch.equal(_baseline(30, seed=3).fit(train, batch_size=2).bank, a.bank)
    # a bank as large as the training patches holds all of them, in order; a training image then
    # scores 0 everywhere (each of its patches is in the bank)
    full = _baseline(10_000).fit(train)
    np.testing.assert_allclose(full.bank.double().numpy(), _reference_patches(train), atol=1e-5)
    assert float(full.score(train[2][None])["map"].abs().max()) < 1e-3
    with pytest.raises(ValueError):
        _baseline(0)
    with pytest.raises(RuntimeError, match="fit"):
        _baseline(5).score(torch.stack(train))


@pytest.mark.slow
def test_a_run_reports_the_baseline_row(toy_split, tmp_path):
    """The ci preset end to end: the row in the results, the table, metrics.json (with eval_size),
    per_defect.csv and per_image.csv; and its numbers are the metrics of its own maps."""
    from destseg_lib import metrics
    from destseg_lib.config import get_preset
    from destseg_lib.experiment import format_table, run

    cfg = get_preset("ci")
    assert cfg.baseline and cfg.baseline_bank_size == 60000
    rep = run(cfg, toy_split, tmp_path / "run", progress=False, figures=False)
    assert list(rep.results) == ["DeSTSeg", "DeST", BASELINE_NAME]
    table = format_table(rep.results)
    row = next(line for line in table.splitlines() if line.startswith(BASELINE_NAME))
    assert f"{100 * rep.results[BASELINE_NAME]['pixel_ap']:.1f}" in row
    assert len({len(line) for line in table.splitlines()}) == 1  # the columns line up
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["eval_size"] == 256 and m["config"]["eval_size"] == "auto"
    assert set(m["results"]) == {"DeSTSeg", "DeST", BASELINE_NAME}
    assert m["baseline"]["n_train_patches"] == 8 * 8 * 8  # 8 train images, 64 px: an 8 x 8 grid each
    defects = list(csv.DictReader((tmp_path / "run" / "per_defect.csv").read_text().splitlines()))
    assert {r["method"] for r in defects} == {"DeSTSeg", "DeST", BASELINE_NAME}
    per_image = list(csv.DictReader((tmp_path / "run" / "per_image.csv").read_text().splitlines()))
    np.testing.assert_allclose([float(r["baseline_score"]) for r in per_image], rep.preds.baseline_scores, rtol=1e-6)
    # the row is the metrics of the baseline's maps at 256 x 256 (no other input)
    view = rep.preds.eval_view()
    assert view.baseline_maps.shape == (len(per_image), 256, 256)
    ref = metrics.evaluate(view.baseline_maps, view.masks, rep.preds.baseline_scores, rep.preds.labels)
    assert rep.results[BASELINE_NAME]["pixel_ap"] == ref["pixel_ap"]
    # the scores are the max of the patch grid: at least the max of the (interpolated) map
    maps = rep.preds.baseline_maps
    assert np.all(rep.preds.baseline_scores >= maps.reshape(len(maps), -1).max(1) - 1e-5)
    # predictions without the baseline's maps (baseline=False): no row
    from dataclasses import replace

    from destseg_lib.experiment import evaluate_predictions
    assert list(evaluate_predictions(replace(rep.preds, baseline_maps=None, baseline_scores=None))) == ["DeSTSeg", "DeST"]
