"""One dataclass with every hyper-parameter, and the presets as values of it.

Paper defaults (DeSTSeg, CVPR 2023, Sec. 4.1, filled in from the official code where the extracted
text lost them): 256x256 inputs, ImageNet normalisation, SGD (momentum 0.9, weight decay 1e-4),
lr 0.4 for the student, 0.1 for the segmentation residual blocks, 0.01 for the segmentation head,
batch 32, 5000 steps of which the first 1000 train the student only, focal gamma 4, top-T with
T = 100, opacity beta ~ U[0, 0.8) in Eq. 1.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

TEACHERS = ("resnet18", "efficientnet_lite0")


@dataclass
class DeSTSegConfig:
    # --- data (Sec. 4.1) ---------------------------------------------------------------------
    image_size: int = 256
    grayscale_textures: bool | None = None  # None: follow the dataset (grayscale data -> grayscale textures)
    texture_dir: str | None = None  # DTD-layout folder; None -> built-in offline textures
    # --- anomaly synthesis (Sec. 3.1, Eq. 1) --------------------------------------------------
    perlin_min_scale_exp: int = 0  # Perlin scale 2^k per axis, k in [min, max)
    perlin_max_scale_exp: int = 6
    perlin_threshold: float = 0.5
    perlin_rotation_deg: float = 90.0  # noise rotated by U(-90, 90) degrees
    beta_max: float = 0.8  # beta ~ U[0, beta_max): opacity of the texture is 1 - beta in (0.2, 1]
    mask_max_retries: int = 50
    # --- networks (Sec. 3.2, 3.3) -------------------------------------------------------------
    teacher: str = "resnet18"  # one of TEACHERS
    teacher_weights: str | None = "imagenet"  # "imagenet", a local .pth path, or None (random: warns)
    seg_input: str = "product"  # Table 6: "product" (-T_hat*S_hat, the paper's), "cosine", "concat"
    seg_width: int = 256  # channels of the segmentation net's residual blocks and ASPP (paper: 256)
    # --- training (Sec. 3.4, 4.1) ---------------------------------------------------------------
    batch_size: int = 32
    student_steps: int = 1000  # stage 1: denoising student only
    seg_steps: int = 4000  # stage 2: segmentation network only (student and teacher frozen)
    lr_student: float = 0.4
    lr_seg_res: float = 0.1
    lr_seg_head: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    focal_gamma: float = 4.0
    # --- inference (Sec. 3.4) -----------------------------------------------------------------
    top_t: int = 100
    # --- engineering --------------------------------------------------------------------------
    seed: int = 0
    num_workers: int = 0
    checkpoint_every: int = 500
    amp: bool = False  # mixed precision on CUDA only; ignored on CPU
    cache_images: bool = True
    preset: str = "paper"

    @property
    def total_steps(self) -> int:
        return self.student_steps + self.seg_steps

    def validate(self) -> "DeSTSegConfig":
        if self.teacher not in TEACHERS:
            raise ValueError(f"teacher={self.teacher!r}: choose one of {TEACHERS}")
        if self.seg_input not in ("product", "cosine", "concat"):
            raise ValueError(f"seg_input={self.seg_input!r}: choose 'product', 'cosine' or 'concat'")
        if self.image_size % 16 or self.image_size < 32:
            raise ValueError(f"image_size={self.image_size}: use a multiple of 16, at least 32")
        if not 0 <= self.beta_max < 1:
            raise ValueError(f"beta_max={self.beta_max}: must lie in [0, 1)")
        if self.perlin_min_scale_exp >= self.perlin_max_scale_exp:
            raise ValueError("perlin_min_scale_exp must be < perlin_max_scale_exp")
        for name in ("batch_size", "top_t", "checkpoint_every", "seg_width"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: must be >= 1")
        if self.student_steps < 0 or self.seg_steps < 0:
            raise ValueError("student_steps and seg_steps must be >= 0")
        return self

    def replace(self, **changes) -> "DeSTSegConfig":
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ValueError(f"unknown config field(s) {sorted(unknown)}")
        return dataclasses.replace(self, **changes).validate()

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "DeSTSegConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names}).validate()


# Presets are values of the config, not code paths.
PRESETS: dict[str, DeSTSegConfig] = {
    # Paper: 256^2, batch 32, 1000 + 4000 steps, ResNet18 ImageNet teacher.
    "paper": DeSTSegConfig(preset="paper"),
    # Quick: the README demo; sized (measured, see bench/train_bench.py) to train + evaluate in a few
    # minutes on 2 CPU cores with the offline EfficientNet-Lite0 teacher.  At 256 channels the
    # segmentation net costs ~10 GFLOP per 128^2 image (3x the student step), hence seg_width=128.
    "quick": DeSTSegConfig(
        preset="quick", image_size=128, batch_size=8, student_steps=200, seg_steps=100, seg_width=128,
        teacher="efficientnet_lite0", teacher_weights="imagenet", checkpoint_every=50,
    ),
    # CI: seconds; used by the tests and the notebooks' default parameters.
    "ci": DeSTSegConfig(
        preset="ci", image_size=64, batch_size=4, student_steps=6, seg_steps=6, seg_width=32,
        teacher="efficientnet_lite0", teacher_weights="imagenet", checkpoint_every=6, top_t=20,
    ),
}


def get_preset(name: str, **overrides) -> DeSTSegConfig:
    """Return a copy of preset ``name`` ("paper", "quick", "ci") with ``overrides`` applied."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}: choose one of {sorted(PRESETS)}")
    return PRESETS[name].replace(**overrides)
