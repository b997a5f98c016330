"""Train (or load) -> predict -> evaluate -> write numbers and figures: the one pipeline the CLI,
the demo and the notebooks share.

Outputs in ``out_dir``: ``model.pt`` (+ ``checkpoints/last.pt``), ``train_log.csv``,
``metrics.json``, ``per_defect.csv``, ``per_image.csv``, and ``figures/{losses,curves,examples}.png``.
"""
from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import metrics
from .checkpoint import atomic_torch_save, load_model, read_checkpoint
from .config import DeSTSegConfig
from .data import DatasetSplit, TestImages, mvtec_split, open_dataset
from .infer import Predictions, predict_dataset
from .toy import CATEGORY as TOY_CATEGORY
from .toy import make_toy_dataset
from .train import config_differences, train

METHODS = ("DeSTSeg", "DeST")
TABLE_KEYS = ("image_auroc", "pixel_auroc", "pixel_ap", "aupro", "iap", "iap90")


def default_data_root() -> Path | None:
    """``$DESTSEG_DATA`` if set."""
    return Path(os.environ["DESTSEG_DATA"]) if os.environ.get("DESTSEG_DATA") else None


def open_split(dataset: str = "toy", data_root=None, category: str | None = None, **kw) -> DatasetSplit:
    """``toy`` (generated on first use under ``data_root``, default ``./data/toy``), or ``mvtec`` /
    ``mtd`` / ``folder`` read by :func:`destseg_lib.data.open_dataset`."""
    if dataset == "toy":  # an existing toy dataset is used as it is (whatever its size); else made
        root = Path(data_root) if data_root else Path("data") / "toy"
        if not (root / (category or TOY_CATEGORY) / "toy_manifest.json").exists():
            make_toy_dataset(root)
        return mvtec_split(root, category or TOY_CATEGORY)
    data_root = data_root if data_root is not None else default_data_root()
    if data_root is None:
        raise ValueError(f"dataset {dataset!r} needs a data root: pass --data-root or set DESTSEG_DATA "
                         "(see data_download.sh)")
    return open_dataset(dataset, data_root, category, **kw)


def evaluate_predictions(preds: Predictions, fpr_limit: float = 0.3) -> dict:
    """All metrics for DeSTSeg and DeST-only maps: ``{"DeSTSeg": {...}, "DeST": {...}}``."""
    return {name: metrics.evaluate(maps, preds.masks, scores, preds.labels, fpr_limit=fpr_limit)
            for name, maps, scores in (("DeSTSeg", preds.maps, preds.scores),
                                       ("DeST", preds.de_st_maps, preds.de_st_scores))}


def per_defect(preds: Predictions, fpr_limit: float = 0.3) -> list[dict]:
    """One row per defect type: the normal test images plus that type's images."""
    good = [i for i, t in enumerate(preds.defect_types) if preds.labels[i] == 0]
    rows = []
    for kind in sorted({t for i, t in enumerate(preds.defect_types) if preds.labels[i] == 1}):
        idx = good + [i for i, t in enumerate(preds.defect_types) if t == kind and preds.labels[i] == 1]
        sub = preds.subset(idx)
        for name, res in evaluate_predictions(sub, fpr_limit).items():
            rows.append({"defect_type": kind, "method": name, **res, "n_defect_images": len(idx) - len(good)})
    return rows


def format_table(results: dict, keys=TABLE_KEYS) -> str:
    """A small fixed-width table: one row per method, percentages with one decimal."""
    head = f"{'method':<9}" + "".join(f"{k:>13}" for k in keys)
    lines = [head, "-" * len(head)]
    for name, res in results.items():
        cells = "".join(f"{'n/a' if not math.isfinite(res.get(k, math.nan)) else f'{100 * res[k]:.1f}':>13}"
                        for k in keys)
        lines.append(f"{name:<9}{cells}")
    return "\n".join(lines)


def _write_csv(rows: list[dict], path: Path) -> None:
    if rows:
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)


@dataclass
class Report:
    results: dict
    per_defect: list[dict]
    preds: Predictions
    model: torch.nn.Module
    test_set: TestImages
    out_dir: Path
    history: list[dict]


def load_or_train(cfg: DeSTSegConfig, split: DatasetSplit, out_dir, device="cpu", retrain: bool = False,
                  progress: bool = True):
    """The model in ``out_dir/model.pt`` if it exists (and ``retrain`` is False), else train it
    (resuming from ``out_dir/checkpoints/last.pt`` when present).  Returns (model, history)."""
    final = Path(out_dir) / "model.pt"
    if final.exists() and not retrain:
        model, ckpt = load_model(final, device)
        diff = config_differences(ckpt["config"], cfg)
        if diff:
            raise ValueError(f"{final} was trained with another config (differs in {diff}): pass "
                             "--retrain / retrain=True, or another output folder")
        return model, ckpt.get("history", [])
    result = train(cfg, split, out_dir, device=device, resume=not retrain, progress=progress)
    return result.model, result.history


def run(cfg: DeSTSegConfig, split: DatasetSplit, out_dir, device="cpu", retrain: bool = False,
        progress: bool = True, figures: bool = True, n_examples: int = 6) -> Report:
    """Train or load, predict the test split, evaluate, and write numbers and figures."""
    out_dir = Path(out_dir)
    model, history = load_or_train(cfg, split, out_dir, device, retrain, progress)
    test_set = TestImages(split.test, cfg.image_size)
    preds = predict_dataset(model, test_set, device=device, top_t=cfg.top_t, progress=progress)
    results = evaluate_predictions(preds)
    breakdown = per_defect(preds) if preds.labels.any() and not preds.labels.all() else []
    meta = {"dataset": split.name, "n_train": len(split.train), "n_test": len(split.test),
            "config": cfg.to_dict(), "device": str(device)}
    (out_dir / "metrics.json").write_text(json.dumps({"results": results, **meta}, indent=2))
    _write_csv(breakdown, out_dir / "per_defect.csv")
    _write_csv([{"path": p, "defect_type": t, "label": int(l), "score": float(s), "de_st_score": float(d)}
                for p, t, l, s, d in zip(preds.paths, preds.defect_types, preds.labels, preds.scores,
                                         preds.de_st_scores)], out_dir / "per_image.csv")
    _store_threshold(out_dir / "model.pt", preds)
    if figures:
        _figures(history, preds, test_set, out_dir / "figures", n_examples)
    return Report(results, breakdown, preds, model, test_set, out_dir, history)


def _store_threshold(ckpt_path: Path, preds: Predictions) -> None:
    """Record in the checkpoint the image-score threshold with the best F1 on this evaluation set
    (labelled as such: it was chosen on the test data, so it is a reference, not a validated value)."""
    if not ckpt_path.exists() or not preds.labels.any() or preds.labels.all():
        return
    from sklearn.metrics import precision_recall_curve

    p, r, t = precision_recall_curve(preds.labels, preds.scores)
    f1 = 2 * p[:-1] * r[:-1] / np.maximum(p[:-1] + r[:-1], 1e-12)
    ckpt = read_checkpoint(ckpt_path)
    ckpt["thresholds"] = {"image_score_best_f1_on_eval": float(t[int(np.argmax(f1))]),
                          "note": "chosen on the evaluation set; pick your own on held-out data"}
    atomic_torch_save(ckpt, ckpt_path)


def _figures(history, preds, test_set, fig_dir: Path, n_examples: int) -> None:
    import matplotlib.pyplot as plt

    from .viz import plot_curves, plot_examples, plot_losses

    fig_dir.mkdir(parents=True, exist_ok=True)
    if history:
        plt.close(plot_losses(history, fig_dir / "losses.png"))
    plt.close(plot_curves(preds, fig_dir / "curves.png"))
    order = np.argsort(-preds.scores)
    anomalous = [i for i in order if preds.labels[i] == 1][: n_examples // 2]
    normal = [i for i in order if preds.labels[i] == 0][: n_examples - len(anomalous)]
    if anomalous or normal:
        plt.close(plot_examples(test_set, preds, anomalous + normal, fig_dir / "examples.png"))
