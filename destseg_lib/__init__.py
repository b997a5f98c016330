"""destseg_lib — DeSTSeg (Zhang et al., CVPR 2023) in pure PyTorch.

One module per section of the paper::

    config      every hyper-parameter, presets "paper" / "quick" / "ci"
    data        MVTec AD layout, Magnetic Tile Defects, your own folders (Sec. 4.1)
    toy         an embedded toy dataset with real (non-synthetic) defects
    synthesis   Perlin anomaly masks and Eq. 1 blending (Sec. 3.1)
    textures    anomaly-source textures: DTD folder or built-in procedural ones
    models      teacher, denoising student, segmentation net (Sec. 3.2, 3.3)
    losses      cosine (Eq. 3-4), focal + L1 (Eq. 5-7)
    train       two-stage training, checkpoints, resume (Sec. 3.4)
    infer       anomaly maps and top-T image scores (Sec. 3.4)
    metrics     exact image/pixel AUROC, AP, AUPRO, IAP, IAP@90 (Sec. 4.2)
    experiment  train-or-load -> predict -> evaluate -> figures
    viz         figures
"""
from .checkpoint import load_model
from .config import PRESETS, DeSTSegConfig, get_preset
from .data import (DataError, DatasetSplit, Sample, TestImages, TrainImages, folder_split, mtd_split,
                   mvtec_split, open_dataset)
from .experiment import evaluate_predictions, format_table, load_or_train, open_split, per_defect, run
from .infer import Predictions, predict, predict_dataset, top_t_score
from .models import DeSTSeg
from .synthesis import AnomalySynthesizer, blend_anomaly, perlin_mask, perlin_noise
from .textures import BuiltinTextures, FolderTextures, make_texture_source
from .toy import make_toy_dataset
from .train import train

__version__ = "0.1.0"
