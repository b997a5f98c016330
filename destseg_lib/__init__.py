"""destseg_lib — DeSTSeg (Zhang et al., CVPR 2023) in pure PyTorch.

One module per section of the paper::

    config      every hyper-parameter, presets "paper" / "quick" / "ci"
    data        MVTec AD layout, Magnetic Tile Defects, your own folders (Sec. 4.1)
    toy         an embedded toy dataset with real (non-synthetic) defects
    synthesis   Perlin anomaly masks and Eq. 1 blending (Sec. 3.1)
    textures    anomaly-source textures: DTD folder or built-in procedural ones
    models      teacher, denoising student, segmentation net (Sec. 3.2, 3.3)
    losses      cosine (Eq. 3-4), focal + L1 (Eq. 5-7)
    train       two-stage training (train_model), checkpoints, resume (Sec. 3.4)
    infer       anomaly maps and top-T image scores (Sec. 3.4)
    baseline    a training-free nearest-neighbour yardstick on the teacher's patches (PatchCore's idea)
    metrics     exact image/pixel AUROC, AP, AUPRO, IAP, IAP@90 (Sec. 4.2)
    experiment  train-or-load -> predict -> evaluate -> figures
    thresholds  decision thresholds chosen on a validation split (best F1 / instance recall)
    scoring     scoring your own images: maps, overlays, masks, one CSV (destseg predict)
    fast        the same inference, faster: BN folded, inference_mode, channels-last, compile
    export      ONNX export of the whole inference graph, onnxruntime scoring
    reproduce   batches of runs -> the paper's tables (destseg reproduce)
    viz         figures (a leaf: numpy + matplotlib)
    widgets     the notebooks' interactive explorers and the numbers behind them
    notebook    the notebooks' glue: set-up, live loss curve, source display

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
