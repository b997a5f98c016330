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

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import metrics
from .checkpoint import load_model, read_checkpoint, write_thresholds
from .config import DeSTSegConfig
from .data import DatasetSplit, TestImages, mvtec_split, open_dataset
from .data_checks import validate_split
from .errors import ConfigError, DataError
from .files import atomic_write_text, write_csv
from .baseline import BASELINE_NAME, add_baseline
from .infer import Predictions, predict_dataset
from .precision import resolve_precision
from .thresholds import choose_thresholds, decision_stats, method_outputs, split_off_validation
from .toy import CATEGORY as TOY_CATEGORY
from .toy import make_toy_dataset
from .train import check_same_dataset, config_differences, train_model

TABLE_KEYS = ("image_auroc", "pixel_auroc", "pixel_ap", "aupro", "iap", "iap90")


def default_data_root() -> Path | None:
    """``$DESTSEG_DATA`` if set."""
    return Path(os.environ["DESTSEG_DATA"]) if os.environ.get("DESTSEG_DATA") else None


TOY_ROOT = Path("data") / "toy"  # the toy dataset's own folder (relative to the working directory)


def open_split(dataset: str = "toy", data_root=None, category: str | None = None, make_toy: bool = False,
               **kw) -> DatasetSplit:
    """``toy``: the embedded toy dataset, generated on first use in its own folder (``./data/toy``
    when no ``data_root`` is given; into ``data_root`` only with ``make_toy=True``): the kit never
    writes into a data root of the user's.  ``mvtec`` / ``mtd`` / ``folder``: read by
    :func:`destseg_lib.data.open_dataset`."""
    if dataset == "toy":
        if category not in (None, TOY_CATEGORY):
            raise DataError(f"--category {category}: the toy dataset has one category, {TOY_CATEGORY!r}; for "
                            "your own data pass --dataset mvtec (or mtd / folder) and --data-root")
        root = Path(data_root) if data_root is not None else TOY_ROOT
        if not (root / TOY_CATEGORY / "toy_manifest.json").exists():  # an existing toy set is used as it is
            if data_root is not None and not make_toy:
                raise DataError(f"--data-root {root} holds no toy dataset ({root / TOY_CATEGORY / 'toy_manifest.json'} "
                                f"is missing); the kit makes the toy set only in its own folder: omit --data-root "
                                f"(it is made in {TOY_ROOT}), or pass --dataset mvtec / mtd / folder for your data")
            make_toy_dataset(root)
        return mvtec_split(root, TOY_CATEGORY)
    data_root = data_root if data_root is not None else default_data_root()
    if data_root is None:
        raise DataError(f"dataset {dataset!r} needs a data root: pass --data-root or set DESTSEG_DATA "
                        "(see data_download.sh)")
    return open_dataset(dataset, data_root, category, **kw)


def evaluate_predictions(preds: Predictions, fpr_limit: float = 0.3) -> dict:
    """All metrics for DeSTSeg and DeST-only maps: ``{"DeSTSeg": {...}, "DeST": {...}}`` (only
    ``"DeST"`` for a model trained without the segmentation net), and ``"NN-baseline"``
    (:mod:`destseg_lib.baseline`) when ``preds`` carries the baseline's maps.

    The pixel metrics are computed at the evaluation size (Sec. 4.2, config ``eval_size``): on
    ``preds.eval_view()``, every map upsampled bilinearly to the size of the masks read from the
    files at that size; the image scores are those of the predictions (``infer`` docstring)."""
    view = preds.eval_view()
    runs = [("DeSTSeg", view.maps, view.scores), ("DeST", view.de_st_maps, view.de_st_scores)]
    runs = [r for r in runs if view.has_segmentation or r[0] == "DeST"]
    if view.baseline_maps is not None:
        runs.append((BASELINE_NAME, view.baseline_maps, view.baseline_scores))
    return {name: metrics.evaluate(maps, view.masks, scores, view.labels, fpr_limit=fpr_limit)
            for name, maps, scores in runs}


def primary_method(cfg: DeSTSegConfig) -> str:
    """The method whose numbers a run reports: "DeSTSeg", or "DeST" for ``segmentation=False``."""
    return "DeSTSeg" if cfg.segmentation else "DeST"


def per_defect(preds: Predictions, fpr_limit: float = 0.3) -> list[dict]:
    """One row per defect type: the normal test images plus that type's images (every method of
    :func:`evaluate_predictions`, at the evaluation size)."""
    view = preds.eval_view()  # resized once, not per defect type
    good = [i for i, t in enumerate(preds.defect_types) if preds.labels[i] == 0]
    rows = []
    for kind in sorted({t for i, t in enumerate(preds.defect_types) if preds.labels[i] == 1}):
        idx = good + [i for i, t in enumerate(preds.defect_types) if t == kind and preds.labels[i] == 1]
        sub = view.subset(idx)
        for name, res in evaluate_predictions(sub, fpr_limit).items():
            rows.append({"defect_type": kind, "method": name, **res, "n_defect_images": len(idx) - len(good)})
    return rows


def format_table(results: dict, keys=TABLE_KEYS) -> str:
    """A small fixed-width table: one row per method, percentages with one decimal."""
    first = max([9] + [len(str(name)) + 1 for name in results])
    head = f"{'method':<{first}}" + "".join(f"{k:>13}" for k in keys)
    lines = [head, "-" * len(head)]
    for name, res in results.items():
        cells = "".join(f"{'n/a' if not math.isfinite(res.get(k, math.nan)) else f'{100 * res[k]:.1f}':>13}"
                        for k in keys)
        lines.append(f"{name:<{first}}{cells}")
    return "\n".join(lines)


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


# What an evaluation writes in out_dir.  A new evaluation writes them into a staging folder beside
# them (``.incoming-<random>/``) and swaps them in only when all are written: a run that fails or is
# interrupted leaves the previous evaluation as it was, and a run refused before evaluating touches
# nothing.
EVAL_OUTPUTS = ("metrics.json", "per_defect.csv", "per_image.csv", "figures/losses.png",
                "figures/curves.png", "figures/examples.png")
_STAGING_PREFIX = ".incoming-"


def remove_stale_staging(out_dir: Path) -> None:
    """Remove what interrupted evaluations left in ``out_dir``: staging folders, and the
    ``<name>.previous<ext>`` files that kit versions before staging made."""
    import shutil

    if not out_dir.is_dir():
        return
    for p in out_dir.iterdir():
        if p.name.startswith(_STAGING_PREFIX) and p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
    for rel in EVAL_OUTPUTS:
        old = out_dir / rel
        old = old.with_name(f"{old.stem}.previous{old.suffix}")
        if old.is_file() and not old.is_symlink():
            old.unlink(missing_ok=True)


def _swap_in(staging: Path, out_dir: Path) -> list[Path]:
    """Move every file of ``staging`` to the same place in ``out_dir`` (each rename atomic), remove
    the outputs of an earlier evaluation that this one did not write, remove ``staging``; returns
    the files now in ``out_dir``."""
    import shutil

    moved = []
    for rel in EVAL_OUTPUTS:
        new, old = staging / rel, out_dir / rel
        if new.is_file():
            old.parent.mkdir(parents=True, exist_ok=True)
            os.replace(new, old)
            moved.append(old)
        elif old.is_file():  # e.g. per_defect.csv of an earlier test set with anomalies
            old.unlink()
    shutil.rmtree(staging, ignore_errors=True)
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
            raise ConfigError(f"{path} was trained with another config (differs in {diff}): pass "
                              "--retrain / retrain=True, or another output folder")
        check_same_dataset(ckpt, split.name, path)
        return load_model(path, device, allow_unfinished=path == last)[0], ckpt.get("history", [])
    stop_after = cfg.student_steps if stage == 1 else None
    result = train_model(cfg, split, out_dir, device=device, resume=not retrain, progress=progress,
                   stop_after=stop_after, callback=callback)
    return result.model, result.history


def run(cfg: DeSTSegConfig, split: DatasetSplit, out_dir, device="cpu", retrain: bool = False,
        progress: bool = True, figures: bool = True, n_examples: int = 6) -> Report:
    """Train or load, predict the test split, evaluate, and write numbers and figures."""
    import secrets

    out_dir = Path(out_dir)
    validate_split(split, require_test=True)  # train and test images and masks, before any training
    # a run refused here (another config or dataset in out_dir) has touched nothing
    model, history = load_or_train(cfg, split, out_dir, device, retrain, progress)
    remove_stale_staging(out_dir)
    final = out_dir / "model.pt"
    # the finished model's checkpoint, read once: its training precision and its stored thresholds
    trained = read_checkpoint(final) if final.exists() else None
    # this evaluation's files are written here and swapped in at the end (see EVAL_OUTPUTS)
    staging = out_dir / f"{_STAGING_PREFIX}{secrets.token_hex(4)}"
    val_samples, test_samples = split_off_validation(split.test, cfg.val_fraction, cfg.val_seed)
    # inference in the precision that cfg.amp gives on this device (the paper's: float32)
    precision = resolve_precision(cfg.amp, device)
    thresholds = {}
    if val_samples:  # thresholds chosen on the held-out part, metrics reported on the rest
        val_preds = predict_dataset(model, TestImages.for_config(val_samples, cfg), device=device,
                                    top_t=cfg.top_t, progress=progress, precision=precision)
        thresholds = validated_thresholds(val_preds, cfg, split.name)
    test_set = TestImages.for_config(test_samples, cfg)
    preds = predict_dataset(model, test_set, device=device, top_t=cfg.top_t, progress=progress,
                            precision=precision)
    baseline_info = None
    if cfg.baseline:  # the training-free yardstick beside DeSTSeg and DeST (baseline.py)
        preds, baseline_info = add_baseline(preds, model, cfg, split.train, test_set, progress)
    results = evaluate_predictions(preds)  # pixel metrics at cfg.resolved_eval_size
    breakdown = per_defect(preds) if preds.labels.any() and not preds.labels.all() else []
    meta = {"dataset": split.name, "n_train": len(split.train), "n_test": len(test_samples),
            "n_validation": len(val_samples), "config": cfg.to_record(), "device": str(device),
            "eval_size": cfg.resolved_eval_size, **({"baseline": baseline_info} if baseline_info else {}),
            # inference's precision here; training's as its checkpoint recorded it (another device
            # may have trained it)
            "precision": precision, "train_precision": trained.get("precision") if trained else None}
    if thresholds:
        meta["thresholds"] = thresholds
        maps, scores = method_outputs(preds, thresholds["method"])
        meta["decisions_on_test"] = decision_stats(maps, preds.masks, scores, preds.labels,
                                                   thresholds["image"], thresholds["pixel"])
    try:
        write_json(staging / "metrics.json", {"results": results, **meta})
        if breakdown:  # none when the test split lacks normal or defective images
            write_csv(breakdown, staging / "per_defect.csv")
        write_csv([{"path": p, "defect_type": t, "label": int(l), "score": float(s),
                     "de_st_score": float(d),
                     **({} if preds.baseline_scores is None else {"baseline_score": float(preds.baseline_scores[k])})}
                    for k, (p, t, l, s, d) in enumerate(zip(preds.paths, preds.defect_types, preds.labels,
                                                            preds.scores, preds.de_st_scores))],
                   staging / "per_image.csv")
        if figures:
            _figures(history, preds, test_set, staging / "figures", n_examples)
        if trained:
            _store_thresholds(out_dir / "model.pt", trained, thresholds)
    except BaseException:  # nothing of this evaluation is swapped in
        import shutil

        shutil.rmtree(staging, ignore_errors=True)
        raise
    files = _swap_in(staging, out_dir)
    return Report(results, breakdown, preds, model, test_set, out_dir, history, files)


def validated_thresholds(val_preds: Predictions, cfg: DeSTSegConfig, dataset: str = "") -> dict:
    """The image and pixel thresholds of ``cfg.threshold_rule`` on validation predictions, for the
    run's method (DeSTSeg, or DeST for a model without segmentation net), with where they came from."""
    method = primary_method(cfg)
    maps, scores = method_outputs(val_preds, method)
    chosen = choose_thresholds(maps, val_preds.masks, scores, val_preds.labels, cfg.threshold_rule,
                               cfg.target_recall)
    n_anom = int(val_preds.labels.sum())
    return {**chosen, "method": method, "val_fraction": cfg.val_fraction, "val_seed": cfg.val_seed,
            "chosen_on": f"validation split of {dataset or 'the test data'}: {len(val_preds.labels)} images "
                         f"({n_anom} anomalous), val_fraction={cfg.val_fraction}, val_seed={cfg.val_seed}",
            "n_validation": len(val_preds.labels)}


def _store_thresholds(ckpt_path: Path, ckpt: dict, thresholds: dict) -> None:
    """Record the validated thresholds beside the model (``model.thresholds.json``; the trained
    ``model.pt`` is never rewritten).  Without a validation split nothing new is stored (the kit never
    stores a threshold chosen on the data it reports on): thresholds validated by an earlier run
    stay, a test-set threshold stored inside a checkpoint of kit versions before validation splits
    is superseded by an empty record."""
    old = ckpt.get("thresholds") or {}
    if not thresholds:
        thresholds = old if "chosen_on" in old else {}
    if old == thresholds:
        return
    write_thresholds(ckpt_path, ckpt, thresholds)


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
