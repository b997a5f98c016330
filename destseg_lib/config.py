"""One dataclass with every hyper-parameter, and the presets as values of it.

The defaults are the official recipe (apple/ml-destseg; the paper's text gives only some of these,
the rest are the official code's defaults, see ``shared/paper/official_recipe.md``): 256x256 inputs
(PIL bilinear, antialiased), ImageNet normalisation, SGD (momentum 0.9, weight decay 1e-4), lr 0.4
for the student, 0.1 for the segmentation residual blocks, 0.01 for the segmentation head, batch 32,
5000 steps of which the first 1000 train the student only, focal gamma 4, top-T with T = 100,
opacity beta ~ U[0, 0.8) in Eq. 1, un-augmented DTD textures, one Perlin draw per sample (empty
masks allowed), the official ASPP and initialisation.

Fields marked "fidelity" select between the official behaviour (the default, named in the comment)
alternatives, kept as named options (measured in docs/fidelity.md); fields marked "Table N" are the paper's
ablation switches.
"""
from __future__ import annotations

import ast
import dataclasses
import difflib
import math
import os
import types
import typing
from dataclasses import dataclass

import numpy as np

from .errors import ConfigError

TEACHERS = ("resnet18", "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
# Allowed values of the string-valued switches; the first one is the official recipe's.
CHOICES = {
    "seg_input": ("product", "cosine", "concat"),  # Table 6
    "student_arch": ("encoder_decoder", "plain", "teacher_decoder"),  # Table 4 "ed"; PFADSeg
    "seg_fusion": ("concat", "adaptive"),  # PFADSeg
    "aspp": ("official", "torchvision"),
    "init": ("official", "pytorch"),
    "empty_masks": ("allow", "redraw"),
    "resize": ("antialias", "cv2"),
    "rotation_fill": ("grey", "reflect"),
    "aspect": ("square", "keep"),
    "threshold_rule": ("best_f1", "instance_recall"),  # not the paper's (see thresholds.py)
    "optimizer": ("sgd", "adamw"),
    "lr_schedule": ("constant", "cosine"),
}

# Learning rates for optimizer="adamw" (not the paper's): 1e-3, the usual AdamW rate for ResNet-sized
# convnets, for the student and the segmentation net's residual blocks, with the paper's 10:1 ratio
# of residual blocks to head kept (0.1 : 0.01 for SGD).  bench/levers.py measures them.
ADAMW_RATES = {"lr_student": 1e-3, "lr_seg_res": 1e-3, "lr_seg_head": 1e-4}

# The format of a config as the kit saves it (checkpoints, config.json, metrics.json): the record
# holds "config_format" beside the fields.  A record without it was written before formats were
# numbered (format 1): fidelity fields it lacks take MISSING_FIELD_VALUES.
CONFIG_FORMAT = 2

# The values of the fidelity fields for a saved format-1 config that lacks them: it was trained with
# these (they were the only behaviour before the fields existed).
MISSING_FIELD_VALUES = {"aspp": "torchvision", "init": "pytorch", "texture_augment": True, "empty_masks": "redraw",
                 "resize": "cv2", "rotation_fill": "reflect"}


@dataclass
class DeSTSegConfig:
    # --- data (Sec. 4.1) ---------------------------------------------------------------------
    image_size: int = 256  # the side of the square input; with aspect="keep" its short side
    # "square" (official) = every image resized to image_size x image_size; "keep" = the short side
    # becomes image_size, the long side keeps the aspect ratio (a multiple of 16, at most max_aspect
    # times the short side): masks, maps, metrics and figures follow (data.model_hw)
    aspect: str = "square"
    max_aspect: float = 4.0
    grayscale_textures: bool | None = None  # None: follow the dataset (grayscale data -> grayscale textures)
    texture_dir: str | None = None  # DTD-layout folder; None -> built-in offline textures
    # fidelity: "antialias" = PIL-style bilinear with antialiasing when shrinking (official, images,
    # textures and test masks); "cv2" = cv2.INTER_LINEAR without antialiasing (aliases when shrinking)
    resize: str = "antialias"
    # fidelity: corners uncovered by the training rotation augmentation: "grey" (114, 114, 114)
    # as the official code; "reflect" mirrors the image
    rotation_fill: str = "grey"
    # fidelity: False = a random texture, RGB, resized, nothing else (official); True = three random
    # photometric/geometric augmentations per texture (DRAEM's recipe, not DeSTSeg's)
    texture_augment: bool = False
    # --- anomaly synthesis (Sec. 3.1, Eq. 1) --------------------------------------------------
    perlin_min_scale_exp: int = 0  # Perlin scale 2^k per axis, k in [min, max)
    perlin_max_scale_exp: int = 6
    perlin_threshold: float = 0.5
    perlin_rotation_deg: float = 90.0  # noise rotated by U(-90, 90) degrees
    beta_max: float = 0.8  # beta ~ U[0, beta_max): opacity of the texture is 1 - beta in (0.2, 1]
    # fidelity: "allow" = one Perlin draw per sample; an empty thresholded mask gives a clean image
    # with an all-zero mask (official, 4-7 % of samples); "redraw" = redraw up to mask_max_retries
    # times, then the top 1 % of the last noise, so masks are never empty (it
    # also biases the scales towards fine ones)
    empty_masks: str = "allow"
    mask_max_retries: int = 50
    # --- networks (Sec. 3.2, 3.3) -------------------------------------------------------------
    teacher: str = "resnet18"  # one of TEACHERS
    teacher_weights: str | None = "imagenet"  # "imagenet", a local .pth path, or None (random: warns)
    seg_input: str = "product"  # Table 6: "product" (-T_hat*S_hat, the paper's), "cosine", "concat"
    seg_width: int = 256  # channels of the segmentation net's residual blocks and ASPP (paper: 256)
    # fidelity: "official" = global-pool branch + three 3x3 atrous branches (6, 12, 18), fused by a
    # 3x3 conv, no dropout (4,196,864 parameters at width 256); "torchvision" = DeepLabV3's ASPP
    # (extra 1x1 branch, 1x1 projection, Dropout(0.5))
    aspp: str = "official"
    # fidelity: "official" = Kaiming-normal (fan_out) convs in the student decoder and the seg net's
    # residual blocks, zero-init of each encoder block's last BN; "pytorch" = PyTorch's defaults there
    init: str = "official"
    # --- ablations (Sec. 4.4) -------------------------------------------------------------------
    denoising: bool = True  # Table 4 "den": the student sees the corrupted image (False: the clean one)
    # Table 4 "ed": "plain" = ResNet18 conv1..conv4_x like the teacher; "teacher_decoder" = PFADSeg's
    # student, a decoder of the teacher's features with multi-scale fusion (models.TeacherDecoderStudent)
    student_arch: str = "encoder_decoder"
    # PFADSeg: "adaptive" = learned, input-dependent level/channel weights on the segmentation input
    # (models.AdaptiveFeatureFusion); "concat" = plain concatenation (DeSTSeg)
    seg_fusion: str = "concat"
    segmentation: bool = True  # Table 4 "seg": False = DeST-only (product of cosine distances), no stage 2
    l1_loss: bool = True  # Table 5: the L1 term of Eq. 7
    # --- training (Sec. 3.4, 4.1) ---------------------------------------------------------------
    batch_size: int = 32
    student_steps: int = 1000  # stage 1: denoising student only
    seg_steps: int = 4000  # stage 2: segmentation network only (student and teacher frozen)
    lr_student: float = 0.4
    lr_seg_res: float = 0.1
    lr_seg_head: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    # levers for a short budget (the official rates were tuned for 1,000 + 4,000 steps of 32), not in
    # the paper: optimizer "sgd" (the paper's: momentum, weight_decay) or "adamw" (decoupled weight
    # decay = weight_decay; the lr_* above must then be AdamW-sized, ~1e-3: ADAMW_RATES); lr_schedule
    # over each stage "constant" (the paper's) or "cosine" (decays to 0 at the stage's end);
    # warmup_steps: linear warm-up at the start of each stage (0, the paper's).  Measured in
    # bench/levers.py (docs/presets.md)
    optimizer: str = "sgd"
    lr_schedule: str = "constant"
    warmup_steps: int = 0
    focal_gamma: float = 4.0
    # --- inference (Sec. 3.4) -----------------------------------------------------------------
    top_t: int = 100
    # --- evaluation (Sec. 4.2) ----------------------------------------------------------------
    # the resolution of every pixel metric (pixel AUROC / AP, AUPRO, IAP, IAP@90): maps upsampled
    # bilinearly to eval_size x eval_size, masks resized to it from the mask files (bilinear,
    # antialiased, >= 0.5, as the official code, whatever `resize` says; TestImages.eval_mask).
    # An integer >= 16 (the paper's: 256, whatever the input size), "native" = each image's own
    # file size, "auto" = 256 for aspect="square" and "native" for aspect="keep" (a square grid
    # would distort non-square parts; an integer with aspect="keep" is refused).  Image scores are
    # not affected (top-T of the map at the networks' input size, infer.py).  Evaluation only.
    eval_size: int | typing.Literal["auto", "native"] = "auto"
    # training-free yardstick (baseline.py): nearest-neighbour distance of the frozen teacher's patch
    # features (levels 2+3, PatchCore-style) to a memory bank of the training images' patches, scored
    # by the same metrics ("NN-baseline" row).  baseline_bank_size patches drawn at random (seeded by
    # seed) from all training patches; baseline_size = its input size (None: image_size; with
    # aspect="keep" the short side)
    baseline: bool = True
    baseline_bank_size: int = 60000
    baseline_size: int | None = None
    # --- decisions (not in the paper, which reports threshold-free metrics; see thresholds.py) ---
    # share of the test split held out as a validation split (stratified by defect type, seeded by
    # val_seed), on which the image / pixel thresholds are chosen and stored beside model.pt; metrics are
    # then reported on the rest.  0 = the paper's protocol: every test image evaluated, no threshold.
    val_fraction: float = 0.0
    val_seed: int = 0
    threshold_rule: str = "best_f1"  # "best_f1" or "instance_recall" (at target_recall)
    target_recall: float = 0.9
    # --- engineering --------------------------------------------------------------------------
    seed: int = 0
    num_workers: int = 0
    checkpoint_every: int = 500
    # numeric precision of training and inference (resolved per device by destseg_lib.precision):
    # "off" = float32 everywhere (the official code trains in float32); "auto" = bf16 autocast on
    # CUDA devices that support bf16 and on CPUs with native BF16 (avx512_bf16 / amx_bf16 flags),
    # float32 elsewhere; "bf16" = bf16 autocast on any device (emulated, slow, on CPUs without
    # native BF16); "cuda" = bf16 autocast on CUDA only (what amp=true meant before: old configs'
    # true/false read as "cuda"/"off").  Master weights, optimisers and losses stay float32.
    amp: typing.Literal["off", "auto", "bf16", "cuda"] = "off"
    # synthetic batches made ahead of the training step in a background thread (0 = in the step,
    # as before); the same batches in the same order either way.  Used with num_workers=0 (with
    # workers the DataLoader prefetches itself).  Default 0: on 2 cores that the step already keeps
    # busy the thread took data_wait to ~0 but did not shorten the run (quick on bottle, bf16 +
    # channels-last, 600 steps: data_wait 15.4 -> 1.5 s, training 152.7 -> 158.8 s, identical
    # losses); it pays where a core is spare
    prefetch: int = 0
    # memory layout of the training step's weights and batches: False = PyTorch's default NCHW (the
    # official code's), True = channels-last (NHWC) for every network and batch.  The same maths
    # summed in another order (oneDNN's NHWC kernels; bench/results/speed.md, Lite0 at 128², 2 cores:
    # stage 2 42.2 instead of 54.0 ms per image in bf16, 148.5 instead of 163.2 in float32).
    # Checkpoints load either way.
    channels_last: bool = False
    cache_images: bool = True
    preset: str = "paper"

    def __post_init__(self) -> None:
        _coerce_fields(self)  # values parsed/checked against the field types (see parse_field)

    @property
    def total_steps(self) -> int:
        """Stage 1 + stage 2 steps; a DeST-only run (``segmentation=False``) has no stage 2."""
        return self.student_steps + (self.seg_steps if self.segmentation else 0)

    def validate(self) -> "DeSTSegConfig":
        _coerce_fields(self)  # fields may have been assigned since construction
        if self.teacher not in TEACHERS:
            raise ConfigError(f"teacher={self.teacher!r}: choose one of {TEACHERS}")
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name}={getattr(self, name)!r}: choose one of {allowed}")
        if self.image_size % 16 or self.image_size < 32:
            raise ConfigError(f"image_size={self.image_size}: use a multiple of 16, at least 32")
        if not self.max_aspect >= 1:
            raise ConfigError(f"max_aspect={self.max_aspect}: the longest long side / short side, >= 1")
        if not 0 <= self.beta_max < 1:
            raise ConfigError(f"beta_max={self.beta_max}: must lie in [0, 1)")
        if self.perlin_min_scale_exp >= self.perlin_max_scale_exp:
            raise ConfigError("perlin_min_scale_exp must be < perlin_max_scale_exp")
        if self.prefetch < 0:
            raise ConfigError(f"prefetch={self.prefetch}: batches made ahead, >= 0 (0 = none)")
        for name in ("batch_size", "top_t", "checkpoint_every", "seg_width"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)}: must be >= 1")
        if isinstance(self.eval_size, int) and self.eval_size < 16:
            raise ConfigError(f"eval_size={self.eval_size}: an integer >= 16 (paper: 256), 'native' or 'auto'")
        if isinstance(self.eval_size, int) and self.aspect == "keep":
            raise ConfigError(f"eval_size={self.eval_size} with aspect='keep': non-square parts are evaluated "
                              "at each image's own size: use eval_size=native (or auto)")
        if self.baseline_size is not None and (self.baseline_size % 16 or self.baseline_size < 32):
            raise ConfigError(f"baseline_size={self.baseline_size}: a multiple of 16, at least 32 (or none "
                              "for image_size)")
        if self.baseline_bank_size < 1:
            raise ConfigError(f"baseline_bank_size={self.baseline_bank_size}: patches in the memory bank, >= 1")
        if not 0 <= self.val_fraction < 1:
            raise ConfigError(f"val_fraction={self.val_fraction}: a fraction in [0, 1) of the test split")
        if not 0 < self.target_recall <= 1:
            raise ConfigError(f"target_recall={self.target_recall}: a recall in (0, 1]")
        if self.student_steps < 0 or self.seg_steps < 0:
            raise ConfigError("student_steps and seg_steps must be >= 0")
        if self.warmup_steps < 0:
            raise ConfigError(f"warmup_steps={self.warmup_steps}: steps of linear warm-up per stage, >= 0")
        rates = {n: getattr(self, n) for n in ("lr_student", "lr_seg_res", "lr_seg_head")}
        if any(not v > 0 for v in rates.values()):
            raise ConfigError(f"learning rates {rates}: each must be > 0")
        if self.optimizer == "adamw" and max(rates.values()) > 0.05:
            raise ConfigError(f"optimizer=adamw with {rates}: these are SGD-sized rates (the paper's are "
                              "0.4 / 0.1 / 0.01) and would make AdamW diverge; set AdamW-sized ones, e.g. "
                              + " ".join(f"--set {k}={v:g}" for k, v in ADAMW_RATES.items()))
        return self

    @property
    def resolved_eval_size(self) -> int | str:
        """``eval_size`` with "auto" resolved: 256 (the paper's, Sec. 4.2) for square inputs, "native"
        for aspect="keep"."""
        if self.eval_size == "auto":
            return "native" if self.aspect == "keep" else 256
        return self.eval_size

    def replace(self, **changes) -> "DeSTSegConfig":
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise unknown_fields_error(unknown, type(self))
        return dataclasses.replace(self, **changes).validate()

    def to_dict(self) -> dict:
        """The fields (what config comparisons and run grids use)."""
        return dataclasses.asdict(self)

    def to_record(self) -> dict:
        """The fields and ``config_format`` (:data:`CONFIG_FORMAT`): what the kit saves."""
        return {"config_format": CONFIG_FORMAT, **self.to_dict()}

    @classmethod
    def from_dict(cls, d: dict) -> "DeSTSegConfig":
        """A config from a saved record (a checkpoint's, ``config.json``) or from :meth:`to_dict`.

        ``config_format`` says how to read it: :data:`CONFIG_FORMAT` as it is; absent (format 1,
        written before formats were numbered) with each fidelity field it lacks taking its value of
        :data:`MISSING_FIELD_VALUES` (the run was trained that way); a newer format is refused.
        Keys that are no field (an older kit's) are ignored."""
        version = d.get("config_format", 1)
        if not isinstance(version, int) or not 1 <= version <= CONFIG_FORMAT:
            raise ConfigError(f"config_format {version!r}: this kit reads formats 1-{CONFIG_FORMAT}; the record "
                              "was written by a newer destseg kit (upgrade it)")
        names = {f.name for f in dataclasses.fields(cls)}
        if version == 1:
            d = {**MISSING_FIELD_VALUES, **d}
        return cls(**{k: v for k, v in d.items() if k in names}).validate()

    @classmethod
    def from_file(cls, path) -> "DeSTSegConfig":
        """A config from a file: a run's own ``config.json`` (``destseg run`` writes it), any JSON
        object of config fields, or YAML (``.yaml`` / ``.yml``; needs PyYAML, read with ``safe_load``:
        nothing in the file is executed).  Fields it leaves out keep the ``paper`` defaults; a key
        that is no config field is a :class:`ConfigError` naming it (a typo is never ignored)."""
        import json
        from pathlib import Path

        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as e:
            raise ConfigError(f"--config {path}: cannot read it ({e.strerror or e}); pass a run's config.json "
                              "or a YAML / JSON file of config fields") from None
        try:
            if path.suffix.lower() in (".yaml", ".yml"):
                try:
                    import yaml
                except ImportError:
                    raise ConfigError(f"--config {path}: YAML needs PyYAML (pip install pyyaml, it comes with "
                                      "papermill), or write the file as JSON") from None
                d = yaml.safe_load(text)
            else:
                d = json.loads(text)
        except ConfigError:
            raise
        except Exception as e:  # json.JSONDecodeError, yaml.YAMLError
            raise ConfigError(f"--config {path}: not valid {'YAML' if path.suffix.lower() in ('.yaml', '.yml') else 'JSON'} "
                              f"({str(e).splitlines()[0]})") from None
        if not isinstance(d, dict):
            raise ConfigError(f"--config {path}: holds a {type(d).__name__}, not a mapping of config fields")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names - {"config_format"})
        if unknown:
            hints = {k: difflib.get_close_matches(k, names, n=1) for k in unknown}
            said = ", ".join(f"{k!r}" + (f" (did you mean {h[0]!r}?)" if h else "") for k, h in hints.items())
            raise ConfigError(f"--config {path}: {said} {'is' if len(unknown) == 1 else 'are'} not config "
                              "field(s); see DeSTSegConfig in destseg_lib/config.py")
        if "config_format" in d:  # a record the kit saved (a run's config.json): read as saved
            return cls.from_dict(d)
        return cls(**d).validate()  # fields of the user's: the others keep their defaults


# ----------------------------------------------------------------------------- parsing / checking
# One path for every way a value gets into a config (the CLI's --set, get_preset(**overrides),
# replace(), from_dict() of a checkpoint or config.json, direct construction): each value is parsed
# and checked against its field's annotation, so "false" is False, "2.5" is no step count, and a
# wrong value is a ConfigError naming the field and the value.
_TRUE = {"true", "yes", "y", "on", "1"}
_FALSE = {"false", "no", "n", "off", "0"}
_NONE = {"none", "null", ""}


def field_types(cls=None) -> dict:
    """``{field name: evaluated annotation}`` of the config dataclass (cached)."""
    cls = cls or DeSTSegConfig
    hints = _HINTS.get(cls)
    if hints is None:
        # the module uses ``from __future__ import annotations``: the annotations are strings
        all_hints = typing.get_type_hints(cls)
        hints = _HINTS[cls] = {f.name: all_hints.get(f.name, typing.Any) for f in dataclasses.fields(cls)}
    return hints


_HINTS: dict = {}


def _type_name(tp) -> str:
    if tp is type(None):
        return "none"
    if tp is bool:
        return "true/false (also yes/no, 1/0)"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a finite number"
    if tp is str:
        return "a string"
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    return getattr(tp, "__name__", str(tp))


class _Mismatch(Exception):
    pass


def _parse(tp, value):
    """``value`` as type ``tp`` (strings are parsed: "false" -> False, "3" -> 3, "none" -> None for
    optional fields); raises _Mismatch when it does not fit."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is typing.Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        if isinstance(value, str) and type(None) in args and value.strip().lower() in _NONE:
            return None
        members = [a for a in args if a is not type(None)]
        # a string is tried against the non-string members first ("3" for int | str is 3)
        for a in sorted(members, key=lambda a: a is str):
            try:
                return _parse(a, value)
            except _Mismatch:
                pass
        raise _Mismatch
    if origin is typing.Literal:
        for a in args:
            if value == a and type(value) is type(a):
                return a
            if isinstance(value, str) and not isinstance(a, str) and value.strip().lower() == str(a).lower():
                return a
        raise _Mismatch
    if tp is type(None):
        if value is None or (isinstance(value, str) and value.strip().lower() in _NONE):
            return None
        raise _Mismatch
    if tp is bool:
        if isinstance(value, (bool, np.bool_)):
            return bool(value)
        if isinstance(value, (int, np.integer)) and value in (0, 1):
            return bool(value)
        if isinstance(value, str):
            s = value.strip().lower()
            if s in _TRUE:
                return True
            if s in _FALSE:
                return False
        raise _Mismatch
    if tp is int:
        if isinstance(value, (bool, np.bool_)):
            raise _Mismatch
        if isinstance(value, (int, np.integer)):
            return int(value)
        if isinstance(value, str):
            s = value.strip()
            try:
                return int(s, 10)
            except ValueError:
                try:
                    value = float(s)  # "1e3" is 1000; "2.5" is no integer
                except ValueError:
                    raise _Mismatch from None
        if isinstance(value, (float, np.floating)) and math.isfinite(value) and float(value).is_integer():
            return int(value)
        raise _Mismatch
    if tp is float:
        if isinstance(value, (bool, np.bool_)):
            raise _Mismatch
        if isinstance(value, str):
            try:
                value = float(value.strip())
            except ValueError:
                raise _Mismatch from None
        if isinstance(value, (int, float, np.integer, np.floating)) and math.isfinite(value):
            return float(value)
        raise _Mismatch
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        raise _Mismatch
    if origin in (list, tuple, set, frozenset, dict) or tp in (list, tuple, set, frozenset, dict):
        container = origin or tp
        if isinstance(value, str):
            try:
                value = ast.literal_eval(value.strip())  # literals only: never runs code
            except (ValueError, SyntaxError):
                raise _Mismatch from None
        if container is dict:
            if not isinstance(value, dict):
                raise _Mismatch
            if len(args) == 2:
                return {_parse(args[0], k): _parse(args[1], v) for k, v in value.items()}
            return dict(value)
        if not isinstance(value, (list, tuple, set, frozenset)):
            raise _Mismatch
        items = list(value)
        if container is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            if len(items) != len(args):
                raise _Mismatch
            return tuple(_parse(a, v) for a, v in zip(args, items))
        item_tp = args[0] if args else typing.Any
        return container(_parse(item_tp, v) for v in items)
    if isinstance(tp, type):  # any other class: accept its instances as they are
        if isinstance(value, tp):
            return value
        raise _Mismatch
    return value  # an annotation this parser does not know: leave the value alone


def parse_field(name: str, value, cls=None):
    """``value`` parsed for config field ``name`` (see :func:`_parse`); :class:`ConfigError`
    naming the field and the value when it does not fit (or the field does not exist)."""
    hints = field_types(cls)
    if name not in hints:
        raise unknown_fields_error([name], cls)
    if name in _BOOLEAN_SPELLINGS:
        value = _BOOLEAN_SPELLINGS[name](value)
    try:
        return _parse(hints[name], value)
    except _Mismatch:
        raise ConfigError(f"config field {name}={value!r}: expected {_type_name(hints[name])}; "
                          f"fix the value (e.g. --set {name}=...)") from None


def _amp_from_boolean(value):
    """``amp`` was a bool (bf16 autocast on CUDA only): true / false, and their spellings (yes/no,
    1/0, on/off), read as "cuda" / "off"; the names are case-insensitive."""
    if isinstance(value, (bool, np.bool_, int, np.integer)) and value in (0, 1):
        return "cuda" if value else "off"
    if isinstance(value, str):
        s = value.strip().lower()
        if s in ("off", "auto", "bf16", "cuda"):
            return s
        if s in _TRUE or s in _FALSE:
            return "cuda" if s in _TRUE else "off"
    return value


# Fields that also accept a boolean (amp was one: configs and checkpoints that store true /
# false still load, and --set amp=true still works).
_BOOLEAN_SPELLINGS = {"amp": _amp_from_boolean}


def unknown_fields_error(names, cls=None) -> ConfigError:
    known = list(field_types(cls))
    hints = []
    for n in sorted(names):
        close = difflib.get_close_matches(str(n), known, n=1)
        hints.append(f"{n!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    return ConfigError(f"unknown config field(s) {', '.join(hints)}; the fields are listed in "
                       "destseg_lib/config.py (DeSTSegConfig)")


def _coerce_fields(cfg) -> None:
    """Parse every field of ``cfg`` in place (idempotent)."""
    for name in field_types(type(cfg)):
        old = getattr(cfg, name)
        new = parse_field(name, old, type(cfg))
        if new is not old:
            object.__setattr__(cfg, name, new)


# Named variants: config overrides on top of any preset -- the paper's ablations (Tables 4-6) and
# PFADSeg.  The one registry: ``destseg reproduce --variants``, the benches and the tests read it.
VARIANTS: dict[str, dict] = {
    "destseg": {},  # the paper's DeSTSeg (Table 4 row 8 = Table 5 "w/ L1" = Table 6 "DeSTSeg")
    "dest_only": {"segmentation": False},  # Table 4 row 5 (den+ed): DeST, no segmentation net
    "no_den": {"denoising": False},  # Table 4 row 7 (ed+seg)
    "no_ed": {"student_arch": "plain"},  # Table 4 row 6 (den+seg)
    "no_l1": {"l1_loss": False},  # Table 5 "w/o L1 loss"
    "t4_none": {"denoising": False, "student_arch": "plain", "segmentation": False},  # Table 4 row 1
    "t4_den": {"student_arch": "plain", "segmentation": False},  # Table 4 row 2
    "t4_ed": {"denoising": False, "segmentation": False},  # Table 4 row 3
    "t4_seg": {"denoising": False, "student_arch": "plain"},  # Table 4 row 4
    "concat_input": {"seg_input": "concat"},  # Table 6 "concatenated-ST input"
    "cosine_input": {"seg_input": "cosine"},  # Table 6 "cosine-distance input"
    # PFADSeg (Song et al., 2025), as far as its abstract specifies it: teacher-encoder / student-decoder
    # denoising with multi-scale fusion, adaptive feature fusion before the segmentation net
    "pfadseg": {"student_arch": "teacher_decoder", "seg_fusion": "adaptive"},
}
VARIANT_HELP = {
    "destseg": "the paper's DeSTSeg (T4 #8, T5 w/ L1, T6 product)",
    "dest_only": "DeST only: segmentation net off (T4 #5 den+ed)",
    "no_den": "student sees the clean image (T4 #7 ed+seg)",
    "no_ed": "plain ResNet18 student (T4 #6 den+seg)",
    "no_l1": "segmentation loss without L1 (T5 w/o L1)",
    "t4_none": "vanilla S-T (T4 #1)",
    "t4_den": "denoising only (T4 #2)",
    "t4_ed": "encoder-decoder only (T4 #3)",
    "t4_seg": "segmentation net on a vanilla S-T (T4 #4)",
    "concat_input": "segmentation input: concatenated features (T6)",
    "cosine_input": "segmentation input: cosine distances (T6)",
    "pfadseg": "PFADSeg (Song et al. 2025): teacher-decoder student, adaptive fusion",
}
# Named groups of variants.
VARIANT_GROUPS: dict[str, list[str]] = {
    "table4": ["t4_none", "t4_den", "t4_ed", "t4_seg", "dest_only", "no_ed", "no_den", "destseg"],
    "table5": ["no_l1", "destseg"],
    "table6": ["concat_input", "cosine_input", "destseg"],
    "ablations": ["destseg", "dest_only", "no_den", "no_ed", "no_l1"],
    "paper": ["destseg"],
}
# Variants with their own networks (the others change training or the input of the same networks).
ARCHITECTURES = ("destseg", "pfadseg")

# The quick preset's recipe where it is not the official one (the best combination measured at its budget
# on MTD, docs/fidelity.md): DeepLabV3's ASPP, PyTorch's default init, augmented textures (DRAEM's),
# masks redrawn until non-empty, cv2 resizing.  rotation_fill stays official (MTD has no rotation).
QUICK_FIDELITY = {"aspp": "torchvision", "init": "pytorch", "texture_augment": True, "empty_masks": "redraw",
                  "resize": "cv2"}

# How the CPU presets train fastest without changing what they learn (bench/results/speed.md): bf16
# autocast where the CPU has native BF16, float32 elsewhere (bench/results/bf16_quality.md: bf16 within
# one seed's std of float32 on every metric, bottle and MTD, 3 seeds, at 800 + 800 steps of 128²), and
# channels-last memory.  The paper preset keeps float32 NCHW (the official code's), ci too (tests).
CPU_SPEED = {"amp": "auto", "channels_last": True}

# Presets are values of the config, not code paths.
PRESETS: dict[str, DeSTSegConfig] = {
    # Paper: 256^2, batch 32, 1000 + 4000 steps, ResNet18 ImageNet teacher.
    "paper": DeSTSegConfig(preset="paper"),
    # Quick: the README demo; sized (measured, see bench/train_bench.py) to train + evaluate in a few
    # minutes on 2 CPU cores with the offline EfficientNet-Lite0 teacher.  At 256 channels the
    # segmentation net costs ~10 GFLOP per 128^2 image (3x the student step), hence seg_width=128.
    # Not the official recipe: QUICK_FIDELITY's five options, the best combination measured on
    # MTD at this budget (bench/fidelity_mtd.py, 3 seeds; README "Fidelity"): +4.5 image AUROC,
    # +4.3 AUPRO, +7.1 IAP, the same pixel AP, -6.4 pixel AUROC against the official values.
    # Budget (bench/budget.py on MVTec AD bottle, chosen on the validation half of its test split, bf16):
    # 1,600 student + 3,200 segmentation images, the best validation quality that trains and scores a
    # category in <= 5 min on 2 cores (3.1 min).  At 800 segmentation images (100 steps, before)
    # DeST-only beat DeSTSeg on the validation half's pixel AP (76.0 vs 75.4, one seed); at 3,200,
    # 3 seeds, DeSTSeg 80.4 pixel AP / 85.8 IAP against DeST-only's 76.9 / 78.5 (held-out half:
    # 88.0 / 92.9 against 80.2 / 83.3).
    "quick": DeSTSegConfig(
        preset="quick", image_size=128, batch_size=8, student_steps=200, seg_steps=400, seg_width=128,
        teacher="efficientnet_lite0", teacher_weights="imagenet", checkpoint_every=100, **QUICK_FIDELITY,
        **CPU_SPEED,
    ),
    # CPU: real parts on a laptop (chosen on the validation half of MTD's test split,
    # bench/cpu_preset.py, README "Which preset"): quick's budget and recipe at 192 px on the short
    # side, each image keeping its aspect ratio, and the image score as the mean of the top 10 map
    # values (the paper's T = 100 is 0.15 % of a 256^2 map; on the same maps the top 10 scored higher
    # image AUROC on all 15 lever runs, +0.6 to +5.0).  No other lever moved the validation numbers
    # by more than one seed's spread.  About 8 minutes per MTD category on 2 cores.
    "cpu": DeSTSegConfig(
        preset="cpu", image_size=192, aspect="keep", batch_size=8, student_steps=200, seg_steps=100,
        seg_width=128, top_t=10, teacher="efficientnet_lite0", teacher_weights="imagenet",
        checkpoint_every=50, **QUICK_FIDELITY, **CPU_SPEED,
    ),
    # cpu10: the best quality measured to train and score a category in <= 10 min on 2 cores (bench/budget.py,
    # chosen on the validation halves of MVTec AD bottle and MTD): quick with 6,400 student + 6,400
    # segmentation images (4x and 2x quick's).  Bottle, held-out half, 3 seeds: 99.1 pixel AUROC, 91.5
    # pixel AP, 94.7 IAP, 90.1 IAP@90 (the paper's row: 99.2 / 90.3 / 90.5 / 82.5) in 7.5 min.  Square
    # inputs (measured so); non-square parts: --set aspect=keep (not measured at this budget).
    "cpu10": DeSTSegConfig(
        preset="cpu10", image_size=128, batch_size=8, student_steps=800, seg_steps=800, seg_width=128,
        teacher="efficientnet_lite0", teacher_weights="imagenet", checkpoint_every=100, **QUICK_FIDELITY,
        **CPU_SPEED,
    ),
    # cpu30: the best quality measured to train and score a category in <= 30 min on 2 cores
    # (bench/budget.py, chosen on the validation halves of bottle and MTD, 3 seeds): cpu10's student
    # (6,400 images) and 32,000 segmentation images (25 % of the paper's 128,000; 5x cpu10's).  The
    # only preset that passes the training-free NN-baseline on MTD (image AUROC and pixel AP, held-out
    # half); docs/presets.md has its numbers.  Square inputs (measured so); non-square parts:
    # --set aspect=keep (not measured at this budget).
    "cpu30": DeSTSegConfig(
        preset="cpu30", image_size=128, batch_size=8, student_steps=800, seg_steps=4000, seg_width=128,
        teacher="efficientnet_lite0", teacher_weights="imagenet", checkpoint_every=200, **QUICK_FIDELITY,
        **CPU_SPEED,
    ),
    # CI: seconds; used by the tests, and by the notebooks when the tests execute them.
    "ci": DeSTSegConfig(
        preset="ci", image_size=64, batch_size=4, student_steps=6, seg_steps=6, seg_width=32,
        teacher="efficientnet_lite0", teacher_weights="imagenet", checkpoint_every=6, top_t=20,
    ),
}


def get_preset(name: str, **overrides) -> DeSTSegConfig:
    """Return a copy of preset ``name`` ("paper", "quick", "cpu10", "cpu30", "cpu", "ci") with ``overrides``
    applied."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}: choose one of {sorted(PRESETS)}")
    return PRESETS[name].replace(**overrides)
