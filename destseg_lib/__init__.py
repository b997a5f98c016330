"""destseg_lib — DeSTSeg (Zhang et al., CVPR 2023) in pure PyTorch.

The modules, by role (a module imports only from its own group and the groups above it;
``tests/test_layering.py`` checks it)::

    foundations   config (every hyper-parameter, presets, variants), errors, files (atomic writes, CSV),
                  precision (float32 / bf16)
    data          data (MVTec AD layout, MTD, your folders; Sec. 4.1), toy (an embedded toy set)
    the method    synthesis (Perlin masks, Eq. 1; Sec. 3.1), textures (its anomaly sources: DTD or
                  built-in), models (teacher, denoising student,
                  segmentation net; Sec. 3.2-3.3), losses (Eq. 3-7), train (train_model, the two-stage
                  loop, resume; Sec. 3.4), infer (maps and top-T scores; Sec. 3.4), checkpoint
    evaluation    metrics (exact AUROC, AP, AUPRO, IAP, IAP@90; Sec. 4.2), baseline (the training-free
                  nearest-neighbour yardstick), thresholds (decisions on a validation split), paper
                  (the published tables)
    applications  experiment (train-or-load -> predict -> evaluate -> figures), cli, scoring (your own
                  images: destseg predict), fast + export (BN-folded graph, ONNX), reproduce/ (batches
                  -> the paper's tables), notebook + widgets (the notebooks' glue and explorers),
                  viz (figures: a leaf, numpy + matplotlib)

The names below are imported lazily, on first use (``ds.get_preset`` imports ``config``, and so
on): ``import destseg_lib.viz`` loads the figures without torch, the models or the training code.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "baseline": ("NearestNeighbourBaseline",),
    "checkpoint": ("load_model",),
    "config": ("PRESETS", "DeSTSegConfig", "get_preset"),
    "data": ("DataError", "DatasetSplit", "Sample", "TestImages", "TrainImages", "folder_split", "mtd_split",
             "mvtec_split", "open_dataset"),
    "experiment": ("evaluate_predictions", "format_table", "load_or_train", "open_split", "per_defect", "run"),
    "infer": ("Predictions", "predict", "predict_dataset", "top_t_score"),
    "models": ("DeSTSeg",),
    "synthesis": ("AnomalySynthesizer", "blend_anomaly", "perlin_mask", "perlin_noise"),
    "textures": ("BuiltinTextures", "FolderTextures", "make_texture_source"),
    "scoring": ("predict_files",),
    "thresholds": ("choose_thresholds", "split_off_validation"),
    "toy": ("make_toy_dataset",),
    "train": ("train_model",),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)
__version__ = "0.1.0"


def __getattr__(name: str):
    if name in _WHERE:
        value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
        globals()[name] = value  # later lookups skip this function
        return value
    try:  # a submodule, e.g. ``ds.viz`` or ``ds.metrics``
        return importlib.import_module(f".{name}", __name__)
    except ModuleNotFoundError as e:
        if e.name != f"{__name__}.{name}":
            raise
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None


def __dir__():
    return sorted(set(globals()) | set(_WHERE))
