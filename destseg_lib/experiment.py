"""Train (or load) -> predict -> evaluate -> write numbers and figures: the one pipeline the CLI,
the demo and the notebooks share.

Outputs in ``out_dir``: ``model.pt`` (+ ``checkpoints/last.pt``), ``train_log.csv``,
``metrics.json``, ``per_defect.csv``, ``per_image.csv``, and ``figures/{losses,curves,examples}.png``.
``metrics.json`` is strict JSON (``null`` for a metric that is undefined on the test set); every
file is written atomically; when :func:`run` starts, the files of an earlier evaluation are renamed
``<name>.previous<ext>`` and removed only once the new ones are written, so a run that fails leaves
nothing that looks like its result, and nothing is lost.
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
from .checkpoint import atomic_torch_save, atomic_write_text, load_model, read_checkpoint
from .config import DeSTSegConfig
from .data import DatasetSplit, TestImages, mvtec_split, open_dataset, validate_split
from .infer import Predictions, predict_dataset
from .thresholds import choose_thresholds, decision_stats, method_outputs, validation_split
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
    """All metrics for DeSTSeg and DeST-only maps: ``{"DeSTSeg": {...}, "DeST": {...}}`` (only
    ``"DeST"`` for a model trained without the segmentation net)."""
    runs = (("DeSTSeg", preds.maps, preds.scores), ("DeST", preds.de_st_maps, preds.de_st_scores))
    return {name: metrics.evaluate(maps, preds.masks, scores, preds.labels, fpr_limit=fpr_limit)
            for name, maps, scores in runs if preds.has_segmentation or name == "DeST"}


def primary_method(cfg: DeSTSegConfig) -> str:
    """The method whose numbers a run reports: "DeSTSeg", or "DeST" for ``segmentation=False``."""
    return "DeSTSeg" if cfg.segmentation else "DeST"


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


def _write_csv(rows: list[dict], path: Path) -> Path | None:
    """Write ``rows`` (atomically); nothing, and None, when there are no rows."""
    if not rows:
        return None
    import io

    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    return atomic_write_text(path, buf.getvalue())


def json_safe(obj):
    """``obj`` as strict JSON values: NaN / infinite numbers (undefined metrics) become None
    (``null``), numpy scalars and arrays become Python numbers and lists."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json(path, obj) -> Path:
    """Strict JSON (``null`` for undefined metrics: any JSON parser reads it), written atomically."""
    return atomic_write_text(path, json.dumps(json_safe(obj), indent=2, allow_nan=False) + "\n")


# What an evaluation writes in out_dir.  Before a new evaluation, earlier ones are renamed
# <name>.previous<ext>: if it fails, nothing in out_dir looks like its result (and nothing is lost).
EVAL_OUTPUTS = ("metrics.json", "per_defect.csv", "per_image.csv", "figures/losses.png",
                "figures/curves.png", "figures/examples.png")


def _previous_name(path: Path) -> Path:
    return path.with_name(f"{path.stem}.previous{path.suffix}")


def _set_aside_outputs(out_dir: Path) -> list[Path]:
    moved = []
    for rel in EVAL_OUTPUTS:
        p = out_dir / rel
        if p.is_file():
            os.replace(p, _previous_name(p))
            moved.append(_previous_name(p))
    return moved


@dataclass
class Report:
    results: dict
    per_defect: list[dict]
    preds: Predictions
    model: torch.nn.Module
    test_set: TestImages
    out_dir: Path
    history: list[dict]
    files: list = None  # the files this run wrote (metrics, tables, figures)


def load_or_train(cfg: DeSTSegConfig, split: DatasetSplit, out_dir, device="cpu", retrain: bool = False,
                  progress: bool = True, stage: int | None = None, callback=None):
    """The model in ``out_dir/model.pt`` if it exists (and ``retrain`` is False), else train it
    (resuming from ``out_dir/checkpoints/last.pt`` when present).  Returns (model, history).

    ``stage=1`` stops at the end of stage 1 (the denoising student, ``cfg.student_steps`` steps):
    it returns the final model or a checkpoint at least that far, else trains that far only and
    leaves ``checkpoints/last.pt`` for a later call to continue from.  ``callback(row)`` is called
    after every step that is trained (e.g. a live loss curve); loading calls it never."""
    out_dir = Path(out_dir)
    final, last = out_dir / "model.pt", out_dir / "checkpoints" / "last.pt"
    candidates = [final] + ([last] if stage == 1 else [])
    for path in candidates if not retrain else []:
        if not path.exists():
            continue
        ckpt = read_checkpoint(path)
        if path == last and ckpt["step"] < cfg.student_steps:
            continue
        diff = config_differences(ckpt["config"], cfg)
        if diff:
            raise ValueError(f"{path} was trained with another config (differs in {diff}): pass "
                             "--retrain / retrain=True, or another output folder")
        return load_model(path, device)[0], ckpt.get("history", [])
    stop_after = cfg.student_steps if stage == 1 else None
    result = train(cfg, split, out_dir, device=device, resume=not retrain, progress=progress,
                   stop_after=stop_after, callback=callback)
    return result.model, result.history


def run(cfg: DeSTSegConfig, split: DatasetSplit, out_dir, device="cpu", retrain: bool = False,
        progress: bool = True, figures: bool = True, n_examples: int = 6) -> Report:
    """Train or load, predict the test split, evaluate, and write numbers and figures."""
    out_dir = Path(out_dir)
    # an earlier evaluation's files become *.previous.* until this one is done: if this run fails,
    # nothing in out_dir looks like its result, and nothing is lost
    previous = _set_aside_outputs(out_dir)
    validate_split(split, require_test=True)  # train and test images and masks, before any training
    model, history = load_or_train(cfg, split, out_dir, device, retrain, progress)
    val_samples, test_samples = validation_split(split.test, cfg.val_fraction, cfg.val_seed)
    thresholds = {}
    if val_samples:  # thresholds chosen on the held-out part, metrics reported on the rest
        val_preds = predict_dataset(model, TestImages.for_config(val_samples, cfg),
                                    device=device, top_t=cfg.top_t, progress=progress)
        thresholds = validated_thresholds(val_preds, cfg, split.name)
    test_set = TestImages.for_config(test_samples, cfg)
    preds = predict_dataset(model, test_set, device=device, top_t=cfg.top_t, progress=progress)
    results = evaluate_predictions(preds)
    breakdown = per_defect(preds) if preds.labels.any() and not preds.labels.all() else []
    meta = {"dataset": split.name, "n_train": len(split.train), "n_test": len(test_samples),
            "n_validation": len(val_samples), "config": cfg.to_dict(), "device": str(device)}
    if thresholds:
        meta["thresholds"] = thresholds
        maps, scores = method_outputs(preds, thresholds["method"])
        meta["decisions_on_test"] = decision_stats(maps, preds.masks, scores, preds.labels,
                                                   thresholds["image"], thresholds["pixel"])
    files = [write_json(out_dir / "metrics.json", {"results": results, **meta})]
    files.append(_write_csv(breakdown, out_dir / "per_defect.csv"))
    files.append(_write_csv([{"path": p, "defect_type": t, "label": int(l), "score": float(s),
                              "de_st_score": float(d)}
                             for p, t, l, s, d in zip(preds.paths, preds.defect_types, preds.labels,
                                                      preds.scores, preds.de_st_scores)],
                            out_dir / "per_image.csv"))
    _store_thresholds(out_dir / "model.pt", thresholds)
    if figures:
        files += _figures(history, preds, test_set, out_dir / "figures", n_examples)
    for p in previous:  # superseded by this evaluation
        p.unlink(missing_ok=True)
    return Report(results, breakdown, preds, model, test_set, out_dir, history,
                  [f for f in files if f is not None])


def validated_thresholds(val_preds: Predictions, cfg: DeSTSegConfig, dataset: str = "") -> dict:
    """The image and pixel thresholds of ``cfg.threshold_rule`` on validation predictions, for the
    run's method (DeSTSeg, or DeST for a model without segmentation net), with where they came from."""
    method = primary_method(cfg)
    maps, scores = method_outputs(val_preds, method)
    chosen = choose_thresholds(maps, val_preds.masks, scores, val_preds.labels, cfg.threshold_rule,
                               cfg.target_recall)
    n_anom = int(val_preds.labels.sum())
    return {**chosen, "method": method,
            "chosen_on": f"validation split of {dataset or 'the test data'}: {len(val_preds.labels)} images "
                         f"({n_anom} anomalous), val_fraction={cfg.val_fraction}, val_seed={cfg.val_seed}",
            "n_validation": len(val_preds.labels)}


def _store_thresholds(ckpt_path: Path, thresholds: dict) -> None:
    """Record the validated thresholds in the checkpoint.  Without a validation split nothing new is
    stored (the kit never stores a threshold chosen on the data it reports on): thresholds validated
    by an earlier run stay, a test-set threshold of kit versions before validation splits is removed."""
    if not ckpt_path.exists():
        return
    ckpt = read_checkpoint(ckpt_path)
    old = ckpt.get("thresholds") or {}
    if not thresholds:
        thresholds = old if "chosen_on" in old else {}
    if old == thresholds:
        return
    ckpt["thresholds"] = thresholds
    atomic_torch_save(ckpt, ckpt_path)


def _figures(history, preds, test_set, fig_dir: Path, n_examples: int) -> list[Path]:
    """Write the figures; returns the files written."""
    import matplotlib.pyplot as plt

    from .viz import plot_curves, plot_examples, plot_losses

    fig_dir.mkdir(parents=True, exist_ok=True)
    written = []
    if history:
        plt.close(plot_losses(history, fig_dir / "losses.png"))
        written.append(fig_dir / "losses.png")
    plt.close(plot_curves(preds, fig_dir / "curves.png"))
    written.append(fig_dir / "curves.png")
    order = np.argsort(-preds.scores)
    anomalous = [i for i in order if preds.labels[i] == 1][: n_examples // 2]
    normal = [i for i in order if preds.labels[i] == 0][: n_examples - len(anomalous)]
    if anomalous or normal:
        plt.close(plot_examples(test_set, preds, anomalous + normal, fig_dir / "examples.png"))
        written.append(fig_dir / "examples.png")
    return written
