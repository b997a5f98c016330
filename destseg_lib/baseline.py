"""A training-free yardstick: nearest-neighbour distances of the frozen teacher's patch features to
a memory bank of the training images' patches (PatchCore's idea; Roth et al., CVPR 2022).

DeSTSeg's Table 2 compares with PatchCore (bottle: 98.9 pixel AUROC, 80.1 pixel AP; Table 3: 81.8 /
70.1 IAP / IAP@90) and claims ~10 pixel AP over it; this module gives the same kind of number for
the kit's own teacher and data, through the same metrics (``"NN-baseline"`` in
``experiment.evaluate_predictions``), so a run shows what the trained networks add.

* Patch features (:func:`patch_features`): the teacher's stride-8 and stride-16 levels (levels 2
  and 3 of its three: ``conv3_x`` / ``conv4_x`` of ResNet18, PatchCore's "layer2 + layer3"), the
  stride-16 one upsampled bilinearly to the stride-8 grid, concatenated along the channels, then a
  3 x 3 average (stride 1, PatchCore's local neighbourhood aggregation; border patches average the
  neighbours they have).  No random projection, no reweighting, no Gaussian smoothing of the map.
* Memory bank (:meth:`NearestNeighbourBaseline.fit`): ``bank_size`` patches drawn uniformly without
  replacement (``numpy.random.default_rng([seed, 19])``) from all patches of all training images,
  streamed (only the bank is kept in memory); all of them when there are fewer.  A random subset,
  not PatchCore's greedy coreset: greedy selection of 60k of bottle's 214k patches is 60k
  sequential passes over all patches, minutes to tens of minutes on a 2-core CPU.
* Anomaly map: the Euclidean distance of each test patch to its nearest bank patch, exhaustive
  (:func:`nearest_distances`), upsampled bilinearly (``align_corners=False``) to the input size,
  then to the evaluation size like the other maps (``infer.Predictions.eval_view``).
* Image score: the largest patch distance, PatchCore's image score (its Eq. 6 without the
  reweighting): the yardstick as its users know it.  (The top-T mean of DeSTSeg's scorer would
  make the row a hybrid; the maps, and so every pixel metric, do not depend on this choice.)
"""
from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .data import TestImages, TrainImages
from .infer import shape_batches, stack_if_same

__all__ = ["BASELINE_NAME", "LEVELS", "NearestNeighbourBaseline", "add_baseline", "nearest_distances",
           "patch_features", "sample_bank_indices"]

BASELINE_NAME = "NN-baseline"  # its row in the tables, metrics.json and per_defect.csv
LEVELS = (1, 2)  # indices into the teacher's three levels (strides 4, 8, 16): strides 8 and 16
_BANK_STREAM = 19  # the rng stream of the bank's subset: default_rng([seed, 19])


def patch_features(feats, levels=LEVELS, pool: int = 3) -> torch.Tensor:
    """B x C x h x w patch features from the teacher's feature maps ``feats`` (a list, strides 4/8/16):
    ``feats[levels[0]]`` and the others upsampled bilinearly to its grid, concatenated, then a
    ``pool`` x ``pool`` average (stride 1; padding not counted)."""
    first = feats[levels[0]]
    grid = first.shape[-2:]
    parts = [first.float()] + [F.interpolate(feats[k].float(), size=grid, mode="bilinear", align_corners=False)
                               for k in levels[1:]]
    x = torch.cat(parts, 1)
    if pool > 1:
        x = F.avg_pool2d(x, pool, stride=1, padding=pool // 2, count_include_pad=False)
    return x


@torch.no_grad()
def nearest_distances(queries: torch.Tensor, bank: torch.Tensor, chunk_elems: int = 1 << 24,
                      recheck: int = 1, bank_sq: torch.Tensor | None = None) -> torch.Tensor:
    """The Euclidean distance of each row of ``queries`` (n x C) to its nearest row of ``bank``
    (M x C), by exhaustive search: the squared distances to every bank row by the matrix-product
    form (as ``torch.cdist``'s fast path), in chunks of at most ``chunk_elems`` entries; the
    ``recheck`` nearest candidates of each query by that form are then measured again by the
    difference form, and the smallest is returned.  The product form alone loses digits to
    cancellation when a distance is small against the norms (a test patch almost equal to a bank
    patch would get a noisy distance, even a negative square); it still ranks the candidates
    correctly except among near-ties, whose distances differ by less than its rounding, so the
    result is the exact nearest distance up to float32 rounding.  The matrix product is the cost
    (~2 n M C flops); recheck=1 adds nothing measurable, topk(8) ~15 %."""
    if bank.ndim != 2 or queries.ndim != 2 or queries.shape[1] != bank.shape[1]:
        raise ValueError(f"queries {tuple(queries.shape)} and bank {tuple(bank.shape)}: two n x C arrays")
    n, m = queries.shape[0], bank.shape[0]
    if m == 0:
        raise ValueError("the memory bank is empty")
    q_all = queries.float()
    bank = bank.float()
    bank_sq = (bank * bank).sum(1) if bank_sq is None else bank_sq
    rows = max(1, int(chunk_elems) // m)
    k = min(int(recheck), m)
    out = torch.empty(n, dtype=torch.float32, device=queries.device)
    for s in range(0, n, rows):
        q = q_all[s:s + rows]
        d2 = torch.addmm(bank_sq[None], q, bank.T, beta=1.0, alpha=-2.0)  # |b|^2 - 2 q.b (+ |q|^2: same per row)
        cand = d2.argmin(1, keepdim=True) if k == 1 else d2.topk(k, dim=1, largest=False).indices
        exact = (q[:, None, :] - bank[cand]).pow(2).sum(-1)
        out[s:s + rows] = exact.min(1).values.sqrt()
    return out


def sample_bank_indices(n_patches: int, bank_size: int, seed: int) -> np.ndarray:
    """Sorted indices of the ``bank_size`` patches (of ``n_patches``, numbered image by image in the
    dataset's order, row-major within an image) drawn uniformly without replacement; all of them
    when there are no more than ``bank_size``."""
    if n_patches <= bank_size:
        return np.arange(n_patches, dtype=np.int64)
    rng = np.random.default_rng([int(seed), _BANK_STREAM])
    return np.sort(rng.choice(n_patches, size=int(bank_size), replace=False)).astype(np.int64)


class NearestNeighbourBaseline:
    """Nearest-neighbour patch distances to a memory bank of training patches (module docstring).

    ``teacher``: a module mapping normalised B x 3 x H x W images to the three feature maps (the
    DeSTSeg model's frozen ``teacher``); ``mean`` / ``std``: its input normalisation (the model's
    ``mean`` / ``std`` buffers).  Call :meth:`fit` on the training images, then :meth:`score` or
    :meth:`predict`."""

    def __init__(self, teacher: torch.nn.Module, mean, std, bank_size: int = 60000, seed: int = 0,
                 levels=LEVELS, pool: int = 3):
        if int(bank_size) < 1:
            raise ValueError(f"bank_size={bank_size}: at least one patch")
        self.teacher, self.levels, self.pool = teacher.eval(), tuple(levels), int(pool)
        self.device = next(teacher.parameters()).device
        self.mean = torch.as_tensor(mean, dtype=torch.float32).reshape(1, 3, 1, 1).to(self.device)
        self.std = torch.as_tensor(std, dtype=torch.float32).reshape(1, 3, 1, 1).to(self.device)
        self.bank_size, self.seed = int(bank_size), int(seed)
        self.bank: torch.Tensor | None = None
        self.info: dict = {}

    @classmethod
    def from_model(cls, model, cfg) -> "NearestNeighbourBaseline":
        """The baseline of a DeSTSeg model's teacher, sized by ``cfg`` (``baseline_bank_size``, ``seed``)."""
        return cls(model.teacher, model.mean, model.std, cfg.baseline_bank_size, cfg.seed)

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """B x C x h x w patch features of images in [0, 1] (B x 3 x H x W)."""
        x = (images.to(self.device, torch.float32) - self.mean) / self.std
        return patch_features(self.teacher(x), self.levels, self.pool)

    def _grid(self, hw) -> tuple[int, int]:
        """The patch grid of an input of size ``hw`` (one forward pass of a blank image)."""
        key = tuple(int(v) for v in hw)
        if key not in self._grids:
            self._grids[key] = tuple(self.features(torch.zeros(1, 3, *key)).shape[-2:])
        return self._grids[key]

    @torch.no_grad()
    def fit(self, images, batch_size: int = 16, progress: bool = False) -> "NearestNeighbourBaseline":
        """Build the bank from ``images`` (a :class:`~destseg_lib.data.TrainImages`, or any dataset of
        3 x H x W tensors in [0, 1]; images of several sizes are batched by size)."""
        t0 = time.perf_counter()
        self._grids: dict = {}
        n = len(images)
        sizes = [images.model_size(i) if hasattr(images, "model_size") else tuple(images[i].shape[-2:])
                 for i in range(n)]
        counts = np.array([int(np.prod(self._grid(hw))) for hw in sizes], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(counts)])
        chosen = sample_bank_indices(int(offsets[-1]), self.bank_size, self.seed)
        bank = None
        batches = shape_batches(images, batch_size)
        for idx in tqdm(batches, desc="baseline bank", disable=not progress, unit="batch"):
            feats = self.features(torch.stack([images[i] for i in idx]))
            c = feats.shape[1]
            if bank is None:
                bank = torch.empty(len(chosen), c, dtype=torch.float32, device=self.device)
            rows = feats.permute(0, 2, 3, 1).reshape(len(idx), -1, c)
            for j, i in enumerate(idx):
                lo, hi = np.searchsorted(chosen, [offsets[i], offsets[i + 1]])
                if hi > lo:
                    local = torch.from_numpy(chosen[lo:hi] - offsets[i]).to(self.device)
                    bank[lo:hi] = rows[j, local]
        self.bank = bank
        self._bank_sq = (bank * bank).sum(1)
        self.info = {"bank_size": int(len(chosen)), "n_train_patches": int(offsets[-1]), "n_train_images": n,
                     "feature_dim": int(bank.shape[1]), "sampling": "random", "seed": self.seed,
                     "image_score": "max", "fit_seconds": round(time.perf_counter() - t0, 2)}
        return self

    @torch.no_grad()
    def score(self, images: torch.Tensor) -> dict:
        """``{"map": B x H x W (the input size), "grid": B x h x w patch distances, "score": B}`` for
        images in [0, 1] (B x 3 x H x W, one size)."""
        if self.bank is None:
            raise RuntimeError("NearestNeighbourBaseline.score before fit(): build the memory bank first")
        feats = self.features(images)
        b, c, h, w = feats.shape
        d = nearest_distances(feats.permute(0, 2, 3, 1).reshape(-1, c), self.bank, bank_sq=self._bank_sq)
        grid = d.view(b, h, w)
        amap = F.interpolate(grid[:, None], size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        return {"map": amap, "grid": grid, "score": grid.flatten(1).max(1).values}

    @torch.no_grad()
    def predict(self, dataset, batch_size: int = 16, progress: bool = False):
        """(maps, scores) over a :class:`~destseg_lib.data.TestImages` in its order: maps at the input
        size (one N x H x W array, or a list for several sizes), scores an N float32 array."""
        t0 = time.perf_counter()
        n = len(dataset)
        maps, scores = [None] * n, np.zeros(n, dtype=np.float32)
        for idx in tqdm(shape_batches(dataset, batch_size), desc="baseline", disable=not progress, unit="batch"):
            out = self.score(torch.stack([dataset[i]["image"] for i in idx]))
            m, s = out["map"].cpu().numpy(), out["score"].cpu().numpy()
            for j, i in enumerate(idx):
                maps[i], scores[i] = m[j], s[j]
        self.info["predict_seconds"] = round(time.perf_counter() - t0, 2)
        return stack_if_same(maps), scores


def add_baseline(preds, model, cfg, train_samples, test_set, progress: bool = False):
    """``preds`` with the nearest-neighbour baseline of ``model``'s teacher (``cfg``: bank size, seed,
    ``baseline_size``; the aspect and resize rules of the run), fitted on ``train_samples`` and run on
    the images of ``test_set`` (the same order as ``preds``).  Returns (preds, info)."""
    size = cfg.baseline_size or cfg.image_size
    base = NearestNeighbourBaseline.from_model(model, cfg)
    base.fit(TrainImages(train_samples, size, cache=False, resize=cfg.resize, aspect=cfg.aspect,
                         max_aspect=cfg.max_aspect), progress=progress)
    images = test_set if size == test_set.image_size else TestImages(
        test_set.samples, size, resize=cfg.resize, aspect=cfg.aspect, max_aspect=cfg.max_aspect)
    maps, scores = base.predict(images, progress=progress)
    return preds.with_baseline(maps, scores), {**base.info, "input_size": size}
