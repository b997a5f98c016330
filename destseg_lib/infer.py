"""Inference (DeSTSeg Sec. 3.4): anomaly maps and image scores.

The segmentation output (1/4 resolution) is bilinearly upsampled to the input size and is the
anomaly map; the image score is the mean of its top-T values (T = 100).  The DeST-only map — the
product over levels of the per-level cosine distances at 1/4 resolution, then upsampled — is
returned too, since the paper compares both (Tables 1-4).  A model trained without the
segmentation net (Table 4 without "seg") has only the DeST map: it is then also the anomaly map.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .models import DeSTSeg


def top_t_score(maps: torch.Tensor, t: int = 100) -> torch.Tensor:
    """Mean of the ``t`` largest values of each map (B x ... -> B); t is capped at the map size."""
    flat = maps.flatten(1)
    return flat.topk(min(t, flat.shape[1]), dim=1).values.mean(1)


@torch.no_grad()
def predict(model: DeSTSeg, images: torch.Tensor, top_t: int = 100) -> dict:
    """images: B x 3 x H x W in [0, 1], on the model's device.  Returns tensors on the same device:
    ``anomaly_map`` / ``de_st_map`` (B x H x W) and ``score`` / ``de_st_score`` (B)."""
    model.eval()
    out = model(images)
    de_st = out["de_st"][:, 0]
    seg = (F.interpolate(out["seg"], size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
           if "seg" in out else de_st)
    return {"anomaly_map": seg, "score": top_t_score(seg, top_t),
            "de_st_map": de_st, "de_st_score": top_t_score(de_st, top_t)}


@dataclass
class Predictions:
    """Everything the metrics and the figures need, as numpy arrays on the CPU.

    Maps and masks are N x H x W arrays when every input had the same size (square inputs), and
    lists of H_i x W_i arrays when they differ (``aspect="keep"``); :mod:`destseg_lib.metrics`
    takes either.  ``ragged`` says which."""
    maps: np.ndarray | list  # DeSTSeg anomaly maps, float32
    scores: np.ndarray  # N
    de_st_maps: np.ndarray | list
    de_st_scores: np.ndarray
    masks: np.ndarray | list  # bool ground truth at the map size
    labels: np.ndarray  # N int
    defect_types: list[str] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    has_segmentation: bool = True  # False: DeST-only model, ``maps`` are the DeST maps

    @property
    def ragged(self) -> bool:
        return not isinstance(self.maps, np.ndarray)

    def subset(self, idx) -> "Predictions":
        idx = np.asarray(idx, dtype=int).reshape(-1)

        def pick(a):
            return a[idx] if isinstance(a, np.ndarray) else stack_if_same([a[i] for i in idx])
        return Predictions(pick(self.maps), self.scores[idx], pick(self.de_st_maps), self.de_st_scores[idx],
                           pick(self.masks), self.labels[idx], [self.defect_types[i] for i in idx],
                           [self.paths[i] for i in idx], self.has_segmentation)


def stack_if_same(arrays: list):
    """One N x H x W array when every array has the same shape, else the list itself."""
    if arrays and all(a.shape == arrays[0].shape for a in arrays):
        return np.stack(arrays)
    return list(arrays)


def _shape_batches(dataset, batch_size: int) -> list[list[int]]:
    """Index batches of at most ``batch_size`` items of one input size each (one group for square
    inputs), in index order within each size."""
    groups = dataset.size_groups() if hasattr(dataset, "size_groups") else {None: list(range(len(dataset)))}
    return [idx[k:k + batch_size] for idx in groups.values() for k in range(0, len(idx), batch_size)]


@torch.no_grad()
def predict_dataset(model: DeSTSeg, dataset, device="cpu", batch_size: int = 16, top_t: int = 100,
                    progress: bool = True, num_workers: int = 0) -> Predictions:
    """Run the model over a :class:`~destseg_lib.data.TestImages` and collect maps, scores and masks
    (in the dataset's order; images of different sizes are batched by size)."""
    batches = _shape_batches(dataset, batch_size)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=batches, num_workers=num_workers)
    model.eval()
    keys = ("anomaly_map", "score", "de_st_map", "de_st_score")
    n = len(dataset)
    acc = {k: [None] * n for k in keys}
    masks, labels, types, paths = [None] * n, [0] * n, [""] * n, [""] * n
    for batch in tqdm(loader, desc="predict", disable=not progress, unit="batch"):
        out = predict(model, batch["image"].to(device), top_t)
        out = {k: out[k].float().cpu().numpy() for k in keys}
        for j, i in enumerate(batch["index"].tolist()):
            for k in keys:
                acc[k][i] = out[k][j]
            masks[i] = batch["mask"][j, 0].numpy() > 0.5
            labels[i], types[i], paths[i] = int(batch["label"][j]), batch["defect_type"][j], batch["path"][j]
    maps = {k: stack_if_same(acc[k]) for k in ("anomaly_map", "de_st_map")}
    return Predictions(maps["anomaly_map"], np.asarray(acc["score"], dtype=np.float32), maps["de_st_map"],
                       np.asarray(acc["de_st_score"], dtype=np.float32), stack_if_same(masks),
                       np.asarray(labels, dtype=int), types, paths, model.segmentation is not None)
