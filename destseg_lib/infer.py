"""Inference (DeSTSeg Sec. 3.4): anomaly maps and image scores.

The segmentation output (1/4 resolution) is bilinearly upsampled to the input size and is the
anomaly map; the image score is the mean of its top-T values (T = 100).  The DeST-only map — the
product over levels of the per-level cosine distances at 1/4 resolution, then upsampled — is
returned too, since the paper compares both (Tables 1-4).  A model trained without the
segmentation net (Table 4 without "seg") has only the DeST map: it is then also the anomaly map.

``precision="bf16"`` runs the networks under bf16 autocast (:mod:`destseg_lib.precision`; pass
``resolve_precision(cfg.amp, device)`` to follow the config, i.e. the precision the model was
trained in on the same kind of device); the cosine maps, the segmentation input and the maps
are computed in float32 from the features cast back.  The default is float32, the paper's.

Evaluation resolution (Sec. 4.2; config ``eval_size``): :class:`Predictions` holds the maps at the
networks' input size (what the figures and thresholds use) and, from the dataset, the masks at the
evaluation size read from the mask files (``eval_masks``); :meth:`Predictions.eval_view` upsamples
every map bilinearly (``F.interpolate``, ``align_corners=False``, as the official evaluation) to
its mask's size, and the metrics are computed on that view.  The image scores are not recomputed:
they stay the top-T mean of the map at the input size -- the official code's at its 256^2 input
(its maps are upsampled to 256^2, its input size, before top-T) and the score that ``destseg
predict`` / ONNX give for the same image.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .models import DeSTSeg, cosine_distance_maps, de_st_map, segmentation_input
from .precision import autocast, check_precision


def top_t_score(maps: torch.Tensor, t: int = 100) -> torch.Tensor:
    """Mean of the ``t`` largest values of each map (B x ... -> B); t is capped at the map size."""
    flat = maps.flatten(1)
    return flat.topk(min(t, flat.shape[1]), dim=1).values.mean(1)


def forward_in(model: DeSTSeg, images: torch.Tensor, precision: str = "float32") -> dict:
    """``model(images)`` in ``precision``: float32 is the model's own forward; bf16 runs the teacher,
    the student and the segmentation net under bf16 autocast and forms the cosine maps, the DeST map
    and the segmentation input from the features cast to float32 (the forward's steps otherwise)."""
    if check_precision(precision) == "float32":
        return model(images)
    kind = images.device.type
    with autocast(precision, kind):
        t_feats, s_feats = model.features(images)
    t_feats, s_feats = [f.float() for f in t_feats], [f.float() for f in s_feats]
    cos = cosine_distance_maps(t_feats, s_feats)
    out = {"de_st": de_st_map(cos, images.shape[-2:]), "cosine_maps": cos}
    if model.segmentation is not None:
        seg_in = segmentation_input(t_feats, s_feats, model.seg_input)
        with autocast(precision, kind):
            out["seg"] = model.segmentation(seg_in)
        out["seg"] = out["seg"].float()
    return out


@torch.no_grad()
def predict(model: DeSTSeg, images: torch.Tensor, top_t: int = 100, precision: str = "float32") -> dict:
    """images: B x 3 x H x W in [0, 1], on the model's device.  Returns tensors on the same device:
    ``anomaly_map`` / ``de_st_map`` (B x H x W) and ``score`` / ``de_st_score`` (B).
    ``precision``: "float32" (the default, the paper's) or "bf16" (:func:`forward_in`)."""
    model.eval()
    seg, score, de_st, de_st_score = maps_and_scores(forward_in(model, images, precision), images.shape[-2:], top_t)
    return {"anomaly_map": seg, "score": score, "de_st_map": de_st, "de_st_score": de_st_score}


def maps_and_scores(out: dict, size, top_t: int = 100):
    """The four outputs of inference from :func:`forward_in`'s dict, for an input of ``size``: the
    segmentation output upsampled bilinearly to ``size`` (the DeST map for a model without
    segmentation net), its top-T mean, the DeST map and its top-T mean.  The one definition that
    :func:`predict`, :class:`destseg_lib.fast.InferenceGraph` and the ONNX export share."""
    de_st = out["de_st"][:, 0]
    seg = (F.interpolate(out["seg"], size=size, mode="bilinear", align_corners=False)[:, 0]
           if "seg" in out else de_st)
    return seg, top_t_score(seg, top_t), de_st, top_t_score(de_st, top_t)


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
    # bool ground truth at the evaluation size (config eval_size), from the mask files; None: the
    # pixel metrics are computed at the map size (``masks``)
    eval_masks: np.ndarray | list | None = None
    # the nearest-neighbour baseline's maps (at its input size) and image scores (baseline.py), if run
    baseline_maps: np.ndarray | list | None = None
    baseline_scores: np.ndarray | None = None

    @property
    def ragged(self) -> bool:
        return not isinstance(self.maps, np.ndarray)

    def subset(self, idx) -> "Predictions":
        idx = np.asarray(idx, dtype=int).reshape(-1)

        def pick(a):
            if a is None:
                return None
            return a[idx] if isinstance(a, np.ndarray) else stack_if_same([a[i] for i in idx])
        return Predictions(pick(self.maps), self.scores[idx], pick(self.de_st_maps), self.de_st_scores[idx],
                           pick(self.masks), self.labels[idx], [self.defect_types[i] for i in idx],
                           [self.paths[i] for i in idx], self.has_segmentation, pick(self.eval_masks),
                           pick(self.baseline_maps), pick(self.baseline_scores))

    def with_baseline(self, maps, scores) -> "Predictions":
        """A copy with the baseline's maps (N, at any size: resized by :meth:`eval_view`) and scores."""
        if len(maps) != len(self.labels) or len(scores) != len(self.labels):
            raise ValueError(f"{len(maps)} baseline maps / {len(scores)} scores for {len(self.labels)} images")
        return replace(self, baseline_maps=maps, baseline_scores=np.asarray(scores, dtype=np.float32))

    def eval_view(self) -> "Predictions":
        """The predictions at the evaluation size (Sec. 4.2): every map (DeSTSeg, DeST, baseline)
        resized bilinearly (:func:`resize_maps`) to the size of its image's ``eval_masks`` entry,
        which become the masks; scores unchanged.  ``self`` when there are no ``eval_masks``."""
        if self.eval_masks is None:
            return self
        shapes = [np.shape(m) for m in self.eval_masks]

        def up(maps):
            return None if maps is None else resize_maps(maps, shapes)
        return Predictions(up(self.maps), self.scores, up(self.de_st_maps), self.de_st_scores, self.eval_masks,
                           self.labels, list(self.defect_types), list(self.paths), self.has_segmentation, None,
                           up(self.baseline_maps), self.baseline_scores)


def resize_maps(maps, shapes, chunk: int = 32):
    """Each map ``maps[i]`` (an N x h x w array or a list of 2-D arrays) resized to ``shapes[i]`` =
    (H, W): bilinear with ``align_corners=False`` (the official evaluation's ``F.interpolate``),
    antialiased when shrinking; a map already at its size is kept.  float32; one N x H x W array
    when every shape is the same, else a list."""
    out = [None] * len(shapes)
    todo: dict[tuple, list[int]] = {}  # (source shape, target shape) -> indices, resized in batches
    for i, hw in enumerate(shapes):
        src = tuple(np.shape(maps[i]))
        if src == tuple(hw):
            out[i] = np.asarray(maps[i], dtype=np.float32)
        else:
            todo.setdefault((src, tuple(hw)), []).append(i)
    for (src, hw), idx in todo.items():
        shrink = hw[0] < src[0] or hw[1] < src[1]
        for k in range(0, len(idx), chunk):
            part = idx[k:k + chunk]
            t = torch.from_numpy(np.stack([np.asarray(maps[i], dtype=np.float32) for i in part]))[:, None]
            r = F.interpolate(t, size=hw, mode="bilinear", align_corners=False, antialias=shrink)[:, 0].numpy()
            for j, i in enumerate(part):
                out[i] = r[j]
    return stack_if_same(out)


def stack_if_same(arrays: list):
    """One N x H x W array when every array has the same shape, else the list itself."""
    if arrays and all(a.shape == arrays[0].shape for a in arrays):
        return np.stack(arrays)
    return list(arrays)


def shape_batches(dataset, batch_size: int) -> list[list[int]]:
    """Index batches of at most ``batch_size`` items of one input size each (one group for square
    inputs), in index order within each size."""
    groups = dataset.size_groups() if hasattr(dataset, "size_groups") else {None: list(range(len(dataset)))}
    return [idx[k:k + batch_size] for idx in groups.values() for k in range(0, len(idx), batch_size)]


@torch.no_grad()
def predict_dataset(model: DeSTSeg, dataset, device="cpu", batch_size: int = 16, top_t: int = 100,
                    progress: bool = True, num_workers: int = 0, precision: str = "float32") -> Predictions:
    """Run the model over a :class:`~destseg_lib.data.TestImages` and collect maps, scores and masks
    (in the dataset's order; images of different sizes are batched by size).  ``precision``: see
    :func:`predict` (maps and scores are float32 arrays either way)."""
    batches = shape_batches(dataset, batch_size)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=batches, num_workers=num_workers)
    model.eval()
    keys = ("anomaly_map", "score", "de_st_map", "de_st_score")
    n = len(dataset)
    acc = {k: [None] * n for k in keys}
    masks, labels, types, paths = [None] * n, [0] * n, [""] * n, [""] * n
    # masks for the metrics at the evaluation size, from the files (None: at the map size)
    eval_masks = [None] * n if getattr(dataset, "eval_size", None) is not None else None
    for batch in tqdm(loader, desc="predict", disable=not progress, unit="batch"):
        out = predict(model, batch["image"].to(device), top_t, precision)
        out = {k: out[k].float().cpu().numpy() for k in keys}
        for j, i in enumerate(batch["index"].tolist()):
            for k in keys:
                acc[k][i] = out[k][j]
            masks[i] = batch["mask"][j, 0].numpy() > 0.5
            labels[i], types[i], paths[i] = int(batch["label"][j]), batch["defect_type"][j], batch["path"][j]
            if eval_masks is not None:
                eval_masks[i] = dataset.eval_mask(i)
    maps = {k: stack_if_same(acc[k]) for k in ("anomaly_map", "de_st_map")}
    return Predictions(maps["anomaly_map"], np.asarray(acc["score"], dtype=np.float32), maps["de_st_map"],
                       np.asarray(acc["de_st_score"], dtype=np.float32), stack_if_same(masks),
                       np.asarray(labels, dtype=int), types, paths, model.segmentation is not None,
                       None if eval_masks is None else stack_if_same(eval_masks))
