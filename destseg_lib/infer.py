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
    """Everything the metrics and the figures need, as numpy arrays on the CPU."""
    maps: np.ndarray  # N x H x W float32, DeSTSeg anomaly maps
    scores: np.ndarray  # N
    de_st_maps: np.ndarray
    de_st_scores: np.ndarray
    masks: np.ndarray  # N x H x W bool, ground truth at the map size
    labels: np.ndarray  # N int
    defect_types: list[str] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    has_segmentation: bool = True  # False: DeST-only model, ``maps`` are the DeST maps

    def subset(self, idx) -> "Predictions":
        idx = np.asarray(idx)
        return Predictions(self.maps[idx], self.scores[idx], self.de_st_maps[idx], self.de_st_scores[idx],
                           self.masks[idx], self.labels[idx], [self.defect_types[i] for i in idx],
                           [self.paths[i] for i in idx], self.has_segmentation)


@torch.no_grad()
def predict_dataset(model: DeSTSeg, dataset, device="cpu", batch_size: int = 16, top_t: int = 100,
                    progress: bool = True, num_workers: int = 0) -> Predictions:
    """Run the model over a :class:`~destseg_lib.data.TestImages` and collect maps, scores and masks."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    model.eval()
    keys = ("anomaly_map", "score", "de_st_map", "de_st_score")
    acc = {k: [] for k in keys}
    masks, labels, types, paths = [], [], [], []
    for batch in tqdm(loader, desc="predict", disable=not progress, unit="batch"):
        out = predict(model, batch["image"].to(device), top_t)
        for k in keys:
            acc[k].append(out[k].float().cpu().numpy())
        masks.append(batch["mask"][:, 0].numpy() > 0.5)
        labels.append(np.asarray(batch["label"]))
        types += list(batch["defect_type"])
        paths += list(batch["path"])
    cat = {k: np.concatenate(v) for k, v in acc.items()}
    return Predictions(cat["anomaly_map"], cat["score"], cat["de_st_map"], cat["de_st_score"],
                       np.concatenate(masks), np.concatenate(labels).astype(int), types, paths,
                       model.segmentation is not None)
