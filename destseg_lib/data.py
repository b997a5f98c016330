"""Datasets for DeSTSeg: MVTec AD, Magnetic Tile Defect (MTD) and users' own folders.

What follows the paper (DeSTSeg, Zhang et al., CVPR 2023, Sec. 4.1):

* every image is resized to 256x256 with PIL's bilinear filter, which antialiases when
  shrinking (the official code's ``PIL.Image.resize(BILINEAR)``); ground-truth masks are
  resized the same way and then binarised with ``>= 0.5`` (``resize="cv2"`` selects the
  ``cv2.INTER_LINEAR``, which aliases when shrinking 700-1024 px images);
* training images get no augmentation except a random rotation on the categories
  whose appearance allows it (:data:`ROTATION_POLICY`, :func:`rotate_augment`);
  the synthetic anomalies themselves are made elsewhere (DTD textures, Perlin masks).

Every problem with the input raises :class:`DataError`, whose message names the
offending path or value and says what to do about it.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

__all__ = [
    "DataError", "ROTATION_POLICY", "Sample", "DatasetSplit", "IMAGE_EXTENSIONS",
    "mvtec_split", "mtd_split", "folder_split", "open_dataset",
    "read_image", "read_mask", "resize_array", "resize_image", "resize_mask", "rotate_augment",
    "is_grayscale_image", "TrainImages", "TestImages",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
_DOWNLOAD_HINT = ("download it with `bash data_download.sh all <dir>` and point the kit at "
                  "<dir> with the DESTSEG_DATA environment variable or --data-root")
_GRAYSCALE_PROBE = 3  # train images looked at to decide DatasetSplit.grayscale


from .config import CHOICES  # noqa: E402  (the allowed values, declared once)
from .errors import DataError  # noqa: E402  (DestSegError + ValueError; defined there, re-exported here)


# Rotation augmentation per MVTec category (Sec. 4.1): "small" = uniform angle in
# [-5, 5] degrees, "quarter" = a random multiple of 90 degrees, then [-5, 5] degrees.
ROTATION_POLICY: dict[str, str] = {
    **dict.fromkeys(["capsule", "metal_nut", "pill", "toothbrush", "transistor"], "none"),
    **dict.fromkeys(["wood", "zipper", "cable"], "small"),
    **dict.fromkeys(["bottle", "grid", "hazelnut", "leather", "tile", "carpet", "screw"],
                    "quarter"),
}
_POLICIES = ("none", "small", "quarter")


@dataclass(frozen=True)
class Sample:
    path: str
    label: int            # 0 normal ("good"), 1 anomalous
    defect_type: str
    mask_path: str | None  # None for normal samples


@dataclass
class DatasetSplit:
    name: str
    train: list[Sample]
    test: list[Sample]
    grayscale: bool
    rotation: str
    # what validate_split last checked (a fingerprint of the files and the checks): not checked twice
    validated: tuple | None = field(default=None, repr=False, compare=False)


# ----------------------------------------------------------------------------- listing
def is_image_file(p: Path) -> bool:
    return (p.is_file() and not p.name.startswith(".")
            and p.suffix.lower() in IMAGE_EXTENSIONS)


def _list_images(folder: Path) -> list[Path]:
    """Image files directly in ``folder`` (hidden files such as macOS ``._x.png`` skipped)."""
    return sorted(p for p in folder.iterdir() if is_image_file(p))


def _list_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.is_dir() and not p.name.startswith((".", "__MACOSX")))


def _require_dir(path: Path, what: str, hint: str = _DOWNLOAD_HINT) -> Path:
    if not path.is_dir():
        raise DataError(f"{what} {str(path)!r} does not exist or is not a folder; {hint}.")
    return path


def _require_images(folder: Path, what: str) -> list[Path]:
    files = _list_images(_require_dir(folder, what))
    if not files:
        raise DataError(
            f"{what} {str(folder)!r} contains no images (looked for "
            f"{'/'.join(e[1:] for e in IMAGE_EXTENSIONS)}); put the normal images there or "
            f"re-extract the dataset (data_download.sh).")
    return files


def _find_mask(candidates: list[Path]) -> Path | None:
    return next((c for c in candidates if c.is_file()), None)


def _check_rotation(rotation: str) -> str:
    if rotation not in _POLICIES:
        raise DataError(f"rotation={rotation!r} is not a rotation policy; use one of {_POLICIES}.")
    return rotation


def _detect_grayscale(train: list[Sample]) -> bool:
    return all(is_grayscale_image(read_image(s.path)) for s in train[:_GRAYSCALE_PROBE])


def _warn_composition(name: str, test: list[Sample]) -> None:
    if not any(s.label == 1 for s in test):
        warnings.warn(f"dataset {name!r}: the test set has no anomalous images; "
                      "metrics that need anomalies will be skipped.", stacklevel=3)
    if not any(s.label == 0 for s in test):
        warnings.warn(f"dataset {name!r}: the test set has no normal images; image-level "
                      "AUROC is undefined and will be skipped.", stacklevel=3)


# ----------------------------------------------------------------------------- splits
def mvtec_split(root, category: str, rotation: str | None = None) -> DatasetSplit:
    """MVTec AD layout: ``<root>/<category>/{train/good, test/<type>, ground_truth/<type>}``.

    Test image ``test/<type>/<stem>.<ext>`` (type != "good") needs the mask
    ``ground_truth/<type>/<stem>_mask.png`` (``<stem>.png`` is accepted too).
    ``rotation`` defaults to :data:`ROTATION_POLICY` (``"none"`` for unknown categories).
    ``root`` may also be the data_download.sh target (the folder holding ``mvtec/``).
    """
    root = _require_dir(Path(root), "MVTec root")
    if not (root / category).is_dir() and (root / "mvtec" / category).is_dir():
        root = root / "mvtec"
    cat_dir = root / category
    if not cat_dir.is_dir():
        found = [d.name for d in _list_dirs(root) if (d / "train").is_dir()]
        raise DataError(f"category {category!r} not found in {str(root)!r}; categories "
                        f"found there: {found or 'none'}. Pass one of them, or download MVTec "
                        f"with `bash data_download.sh mvtec <dir>`.")
    train = [Sample(str(p), 0, "good", None)
             for p in _require_images(cat_dir / "train" / "good", "train folder")]
    test: list[Sample] = []
    for sub in _list_dirs(_require_dir(cat_dir / "test", "test folder")):
        for p in _list_images(sub):
            if sub.name == "good":
                test.append(Sample(str(p), 0, "good", None))
                continue
            gt = cat_dir / "ground_truth" / sub.name
            mask = _find_mask([gt / f"{p.stem}_mask.png", gt / f"{p.stem}.png"])
            if mask is None:
                raise DataError(f"defect image {str(p)!r} has no mask: expected "
                                f"{str(gt / (p.stem + '_mask.png'))!r}. Re-extract the dataset "
                                "or remove the image.")
            test.append(Sample(str(p), 1, sub.name, str(mask)))
    name = f"mvtec/{category}"
    _warn_composition(name, test)
    rot = _check_rotation(ROTATION_POLICY.get(category, "none") if rotation is None else rotation)
    return DatasetSplit(name, train, test, _detect_grayscale(train), rot)


def mtd_split(root, seed: int = 0, train_fraction: float = 0.8) -> DatasetSplit:
    """Magnetic Tile Defect dataset (Huang et al. 2020) as published: ``<root>/MT_*/Imgs``.

    MTD has no official train/test split. Ours: the sorted defect-free ``MT_Free``
    images are permuted with ``np.random.default_rng(seed).permutation``; the first
    ``round(train_fraction * n)`` (clamped to [1, n-1]) go to train, the rest to test
    as "good" (both kept in sorted order). Every defective image (``MT_Blowhole``,
    ``MT_Break``, ``MT_Crack``, ``MT_Fray``, ``MT_Uneven``) goes to test, with
    ``defect_type`` = folder name without ``MT_`` lowercased and mask = the same-name
    ``.png``. The ``.png`` files of ``MT_Free`` are ignored. Note the published masks
    have soft (anti-aliased) edges, which :func:`read_mask` binarises at half range.
    Grayscale, no rotation. ``root`` may also be the folder holding ``mtd/``.
    """
    root = Path(root)
    hint = "point it at the folder holding the MT_* folders (" + _DOWNLOAD_HINT + ")"
    _require_dir(root, "MTD root", hint)
    if not (root / "MT_Free").is_dir() and (root / "mtd" / "MT_Free").is_dir():
        root = root / "mtd"
    if not (root / "MT_Free").is_dir():
        raise DataError(f"MTD root {str(root)!r} has no MT_Free folder; {hint}.")
    if not 0.0 < train_fraction < 1.0:
        raise DataError(f"train_fraction={train_fraction!r} must be strictly between 0 and 1.")
    free = _require_images(root / "MT_Free" / "Imgs", "MTD defect-free folder")
    free = [p for p in free if p.suffix.lower() != ".png"]  # .png next to .jpg are masks
    n_train = min(max(int(round(train_fraction * len(free))), 1), len(free) - 1)
    perm = np.random.default_rng(seed).permutation(len(free))
    train_idx, test_idx = sorted(perm[:n_train].tolist()), sorted(perm[n_train:].tolist())
    train = [Sample(str(free[i]), 0, "good", None) for i in train_idx]
    test: list[Sample] = []
    for d in _list_dirs(root):
        if not d.name.startswith("MT_") or d.name == "MT_Free":
            continue
        for p in _list_images(d / "Imgs") if (d / "Imgs").is_dir() else []:
            if p.suffix.lower() == ".png":
                continue
            mask = p.with_suffix(".png")
            if not mask.is_file():
                raise DataError(f"defect image {str(p)!r} has no mask: expected {str(mask)!r}. "
                                "Re-download MTD (data_download.sh mtd) or remove the image.")
            test.append(Sample(str(p), 1, d.name[3:].lower(), str(mask)))
    test += [Sample(str(free[i]), 0, "good", None) for i in test_idx]
    _warn_composition("mtd", test)
    return DatasetSplit("mtd", train, test, True, "none")


def folder_split(good_dir, test_dir, mask_dir=None, good_test_subdir: str = "good",
                 name: str = "folder", rotation: str = "none") -> DatasetSplit:
    """Users' own data.

    * ``good_dir``: normal training images (flat).
    * ``test_dir``: test images. Images in a subfolder named ``good_test_subdir`` are
      normal; images in any other subfolder are anomalous with ``defect_type`` = the
      subfolder name and MUST have a mask in ``mask_dir/<subfolder>/`` (or directly in
      ``mask_dir``) named ``<stem>.png`` or ``<stem>_mask.png``.
    * Images directly in ``test_dir`` (flat layout) are labelled from their mask: a
      mask in ``mask_dir`` with at least one foreground pixel makes the image
      anomalous (``defect_type`` "anomaly"); no mask or an all-zero mask means normal.
    """
    good_dir, test_dir = Path(good_dir), Path(test_dir)
    mask_dir = Path(mask_dir) if mask_dir is not None else None
    hint = "pass the folder of your own images"
    train = [Sample(str(p), 0, "good", None) for p in _require_images(good_dir, "train folder")]
    _require_dir(test_dir, "test folder", hint)
    if mask_dir is not None:
        _require_dir(mask_dir, "mask folder", hint + " masks, or mask_dir=None")

    def mask_for(img: Path, sub: str | None) -> Path | None:
        if mask_dir is None:
            return None
        dirs = ([mask_dir / sub] if sub else []) + [mask_dir]
        return _find_mask([d / f"{img.stem}{s}.png" for d in dirs for s in ("", "_mask")])

    test: list[Sample] = []
    for p in _list_images(test_dir):
        m = mask_for(p, None)
        if m is not None and read_mask(m).any():
            test.append(Sample(str(p), 1, "anomaly", str(m)))
        else:
            test.append(Sample(str(p), 0, "good", None))
    for sub in _list_dirs(test_dir):
        for p in _list_images(sub):
            if sub.name == good_test_subdir:
                test.append(Sample(str(p), 0, "good", None))
                continue
            m = mask_for(p, sub.name)
            if m is None:
                where = str((mask_dir or Path("<mask_dir>")) / sub.name / f"{p.stem}.png")
                raise DataError(f"defect image {str(p)!r} has no mask: expected {where!r} "
                                f"(or {p.stem}_mask.png). Pass mask_dir=, add the mask, or move "
                                f"the image to {good_test_subdir!r} if it is normal.")
            test.append(Sample(str(p), 1, sub.name, str(m)))
    _warn_composition(name, test)
    return DatasetSplit(name, train, test, _detect_grayscale(train), _check_rotation(rotation))


def open_dataset(kind: str, root, category: str | None = None, **kw) -> DatasetSplit:
    """Dispatch: ``"mvtec"`` -> :func:`mvtec_split` (category required), ``"mtd"`` ->
    :func:`mtd_split` (category ignored), ``"folder"`` -> :func:`folder_split` on
    ``<root>[/<category>]`` with defaults ``good_dir=train`` (or ``train/good``),
    ``test_dir=test``, ``mask_dir=ground_truth`` (if present); ``kw`` overrides them."""
    if kind == "mvtec":
        if not category:
            raise DataError("open_dataset('mvtec', ...) needs category= (e.g. 'bottle').")
        return mvtec_split(root, category, **kw)
    if kind == "mtd":
        return mtd_split(root, **kw)
    if kind == "folder":
        base = Path(root) / category if category else Path(root)
        good = base / "train"
        if (good / "good").is_dir() and not (good.is_dir() and _list_images(good)):
            good = good / "good"
        gt = base / "ground_truth"
        kw.setdefault("good_dir", good)
        kw.setdefault("test_dir", base / "test")
        kw.setdefault("mask_dir", gt if gt.is_dir() else None)
        kw.setdefault("name", category or base.name)
        return folder_split(**kw)
    raise DataError(f"dataset kind {kind!r} is unknown; use 'mvtec', 'mtd' or 'folder'.")


# ----------------------------------------------------------------------------- reading
def _open_loaded(path, what: str) -> Image.Image:
    if not os.path.isfile(path):
        raise DataError(f"{what} {str(path)!r} does not exist; check the dataset root or "
                        "re-extract the dataset.")
    try:
        with Image.open(path) as im:
            im.load()  # PIL decodes lazily: force it so truncated files fail here
            return im.copy() if im.mode != "P" else im.convert("RGBA")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise DataError(f"cannot read {what} {str(path)!r} ({e}); the file is corrupt or "
                        "truncated: re-download the dataset or remove this file.") from e


def read_image(path) -> np.ndarray:
    """Any image file -> uint8 HxWx3 RGB (gray replicated, alpha dropped, 16 bit scaled)."""
    im = _open_loaded(path, "image")
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        a = np.asarray(im).astype(np.float64) * (255.0 / 65535.0)
        im = Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8))
    elif im.mode == "F":
        a = np.asarray(im, dtype=np.float64)
        a = a * 255.0 if a.max(initial=0.0) <= 1.0 else a
        im = Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8))
    return np.ascontiguousarray(np.asarray(im.convert("RGB"), dtype=np.uint8))


def read_mask(path, expected_hw: tuple[int, int] | None = None, *,
              image_path=None, soft_tolerance: float = 0.05) -> np.ndarray:
    """Mask file -> bool HxW.

    Binary masks have at most two levels {0, m} (0/255, 0/1, any colour; RGB masks use
    the channel maximum). Masks with anti-aliased edges, as in the published MTD
    masks, are accepted when the intermediate values cover at most ``soft_tolerance``
    of the pixels and the maximum reaches half range; they are binarised at ``>=``
    half range (128 for 8 bit). Anything else -> :class:`DataError` listing the values.
    ``expected_hw`` (the image's native HxW) is checked; ``image_path`` names the image
    in that error.
    """
    im = _open_loaded(path, "mask")
    if im.mode in ("1", "L", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"):
        a = np.asarray(im)
    else:
        a = np.asarray(im.convert("RGB")).max(axis=2)
    if a.dtype.kind == "f":
        full = 1.0 if a.max(initial=0.0) <= 1.0 else 255.0
    else:
        full = {np.dtype(np.uint8): 255, np.dtype(bool): 1}.get(a.dtype, 65535)
    levels = np.unique(a)
    if len(levels) <= 1 or (len(levels) == 2 and levels[0] == 0):
        m = a > 0
    else:
        soft = np.count_nonzero((a > 0) & (a < full)) / a.size
        if soft > soft_tolerance or levels[-1] < (full + 1) / 2:
            counts = [(v, np.count_nonzero(a == v)) for v in levels[:10]]
            shown = ", ".join(f"{v.item()} ({c} px)" for v, c in counts)
            more = f", ... ({len(levels)} distinct values)" if len(levels) > 10 else ""
            raise DataError(f"mask {str(path)!r} is not binary: values found {shown}{more}. "
                            "Masks must use two levels, 0 for normal and one value (e.g. 255) "
                            "for defect pixels; fix or re-export the mask.")
        m = a >= (full + 1) / 2
    if expected_hw is not None and tuple(m.shape) != tuple(expected_hw):
        img = f" image {str(image_path)!r}" if image_path is not None else " its image"
        raise DataError(f"mask {str(path)!r} is {m.shape[0]}x{m.shape[1]} (HxW) but{img} is "
                        f"{expected_hw[0]}x{expected_hw[1]}; masks must have the image's size: "
                        "re-export the mask or fix the pairing.")
    return m


def image_hw(path) -> tuple[int, int]:
    try:
        with Image.open(path) as im:
            return im.size[1], im.size[0]
    except (OSError, ValueError, SyntaxError) as e:
        raise DataError(f"cannot read image {str(path)!r} ({e}); re-download the dataset or "
                        "remove this file.") from e


# ----------------------------------------------------------------------------- transforms
_RESIZE_MODES = CHOICES["resize"]
GREY_FILL = 114 / 255  # the official rotation augmentation fills uncovered corners with (114, 114, 114)


def resize_array(img: np.ndarray, hw: tuple[int, int], mode: str = "antialias") -> np.ndarray:
    """Bilinear resize of an HxW or HxWxC array (uint8 or float32) to ``hw`` = (H, W).

    ``mode="antialias"`` (official): PIL's bilinear filter, whose support widens with the shrink
    factor, so shrinking averages every source pixel (no aliasing: a 1-pixel checkerboard shrunk 4x
    becomes uniform grey); enlarging is plain bilinear.  ``"cv2"``: ``cv2.INTER_LINEAR``, which
    samples only the 2x2 nearest source pixels.
    """
    if mode not in _RESIZE_MODES:
        raise DataError(f"resize={mode!r} is not a resize mode; use one of {_RESIZE_MODES}.")
    h, w = int(hw[0]), int(hw[1])
    if mode == "cv2":
        return cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR)
    if img.shape[:2] == (h, w):
        return img.copy()
    if img.dtype == np.uint8 and (img.ndim == 2 or img.shape[2] == 3):
        return np.array(Image.fromarray(img).resize((w, h), Image.BILINEAR))
    chans = img[..., None] if img.ndim == 2 else img
    out = np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(chans[..., c], dtype=np.float32), mode="F")
                               .resize((w, h), Image.BILINEAR)) for c in range(chans.shape[2])], axis=-1)
    out = out[..., 0] if img.ndim == 2 else out
    return np.clip(np.rint(out), 0, 255).astype(np.uint8) if img.dtype == np.uint8 else out.astype(img.dtype)


ASPECTS = CHOICES["aspect"]


def model_hw(hw: tuple[int, int], image_size: int, aspect: str = "square",
             max_aspect: float = 4.0) -> tuple[int, int]:
    """The (H, W) an image of native size ``hw`` is resized to before the networks see it.

    ``aspect="square"`` (the paper's): ``image_size`` x ``image_size``, whatever the image's shape.
    ``"keep"``: the short side becomes ``image_size`` and the long side keeps the aspect ratio,
    rounded to a multiple of 16 (the networks' total stride) and capped at ``max_aspect`` times the
    short side; the networks are fully convolutional, so any such shape works.  A 1:2.5 line-scan
    image at ``image_size=128`` becomes 128 x 320 instead of a squashed 128 x 128.
    """
    s = int(image_size)
    if aspect == "square":
        return s, s
    if aspect != "keep":
        raise DataError(f"aspect={aspect!r}: use one of {ASPECTS}.")
    h, w = int(hw[0]), int(hw[1])
    if h <= 0 or w <= 0:
        raise DataError(f"image size {hw!r} is not positive.")
    cap = max(s, int(s * max_aspect) // 16 * 16)
    long_side = min(max(s, int(round(s * max(h, w) / min(h, w) / 16)) * 16), cap)
    return (s, long_side) if h <= w else (long_side, s)


def _hw_of(size) -> tuple[int, int]:
    return (int(size), int(size)) if isinstance(size, (int, np.integer)) else (int(size[0]), int(size[1]))


def _resize_u8(img: np.ndarray, size, mode: str = "antialias") -> np.ndarray:
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    return resize_array(img, _hw_of(size), mode)


def resize_image(img: np.ndarray, size, mode: str = "antialias") -> torch.Tensor:
    """HxWx3 (uint8, or float in [0,1]) -> float32 3xHxW in [0,1] at ``size`` (S for SxS, or (H, W)),
    bilinear (official: PIL, antialiased)."""
    out = torch.from_numpy(np.ascontiguousarray(_resize_u8(img, size, mode))).permute(2, 0, 1)
    return out.float().div_(255.0) if img.dtype == np.uint8 else out.float()


def resize_mask(mask: np.ndarray, size, mode: str = "antialias") -> torch.Tensor:
    """bool/0-1 HxW -> float32 1xHxW in {0,1} at ``size`` (S or (H, W)): bilinear resize
    (antialiased, official), then ``>= 0.5``."""
    m = resize_array(np.asarray(mask, dtype=np.float32), _hw_of(size), mode)
    return torch.from_numpy((m >= 0.5).astype(np.float32))[None]


def rotate_augment(image: torch.Tensor, policy: str, rng: np.random.Generator,
                   fill: str = "grey") -> torch.Tensor:
    """Training rotation (official code). ``none``: identity, draws nothing; ``small``: angle
    ~ U[-5, 5] degrees; ``quarter``: k ~ U{0..3} quarter turns, then U[-5, 5] degrees.
    Bilinear ``cv2.warpAffine`` about the centre; uncovered corners are grey (114/255, official,
    ``fill="grey"``) or mirrored (``fill="reflect"``)."""
    _check_rotation(policy)
    if fill not in CHOICES["rotation_fill"]:
        raise DataError(f"rotation_fill={fill!r}: use one of {CHOICES['rotation_fill']} (the first: official).")
    if policy == "none":
        return image
    if policy == "quarter":
        image = torch.rot90(image, int(rng.integers(4)), dims=(1, 2))
    angle = float(rng.uniform(-5.0, 5.0))
    h, w = image.shape[1:]
    mat = cv2.getRotationMatrix2D(((w - 1) / 2.0, (h - 1) / 2.0), angle, 1.0)
    arr = np.ascontiguousarray(image.permute(1, 2, 0).cpu().numpy().astype(np.float32))
    border = (dict(borderMode=cv2.BORDER_CONSTANT, borderValue=(GREY_FILL,) * 3) if fill == "grey"
              else dict(borderMode=cv2.BORDER_REFLECT))
    out = cv2.warpAffine(arr, mat, (w, h), flags=cv2.INTER_LINEAR, **border)
    return torch.from_numpy(out.reshape(h, w, -1)).permute(2, 0, 1).contiguous().to(image.dtype)


def is_grayscale_image(img: np.ndarray) -> bool:
    """True when the image has one channel or all three channels are equal."""
    if img.ndim == 2 or img.shape[2] == 1:
        return True
    return bool(np.array_equal(img[..., 0], img[..., 1]) and
                np.array_equal(img[..., 0], img[..., 2]))


# ----------------------------------------------------------------------------- datasets
def _check_size(image_size: int) -> int:
    if int(image_size) != image_size or image_size < 1:
        raise DataError(f"image_size={image_size!r} must be a positive integer (paper: 256).")
    return int(image_size)


class _Sized:
    """Shared by the train and test datasets: the size each image is resized to (:func:`model_hw`)."""

    samples: list
    image_size: int
    aspect: str = "square"
    max_aspect: float = 4.0

    def model_size(self, i) -> tuple[int, int]:
        """(H, W) of item ``i`` as the networks see it (read from the file's header if needed)."""
        if self.aspect == "square":
            return self.image_size, self.image_size
        i = int(i)
        if i not in self._model_sizes:
            self._model_sizes[i] = model_hw(self.native_size(i), self.image_size, self.aspect, self.max_aspect)
        return self._model_sizes[i]

    def native_size(self, i) -> tuple[int, int]:
        """(H, W) of the image file, read from its header."""
        i = int(i)
        if i not in self._sizes:
            self._sizes[i] = image_hw(self.samples[i].path)
        return tuple(self._sizes[i])

    def size_groups(self) -> dict[tuple[int, int], list[int]]:
        """Item indices grouped by :meth:`model_size` (one group for square inputs), in index order."""
        groups: dict[tuple[int, int], list[int]] = {}
        for i in range(len(self.samples)):
            groups.setdefault(self.model_size(i), []).append(i)
        return groups

    def _init_sizes(self, aspect: str, max_aspect: float) -> None:
        if aspect not in ASPECTS:
            raise DataError(f"aspect={aspect!r}: use one of {ASPECTS}.")
        if not max_aspect >= 1:
            raise DataError(f"max_aspect={max_aspect!r}: must be >= 1.")
        self.aspect, self.max_aspect = aspect, float(max_aspect)
        self._sizes: dict[int, tuple[int, int]] = {}
        self._model_sizes: dict[int, tuple[int, int]] = {}


class TrainImages(_Sized, torch.utils.data.Dataset):
    """Normal training images, resized (:func:`model_hw`), without augmentation (apply
    :func:`rotate_augment` and anomaly synthesis on top). ``cache=True`` keeps the
    resized uint8 images in memory after the first read (per DataLoader worker)."""

    def __init__(self, samples: list[Sample], image_size: int, cache: bool = True, resize: str = "antialias",
                 aspect: str = "square", max_aspect: float = 4.0):
        if not samples:
            raise DataError("TrainImages got no samples; check the dataset's train folder.")
        self.samples, self.image_size, self.resize = list(samples), _check_size(image_size), resize
        self._init_sizes(aspect, max_aspect)
        self._cache: dict[int, torch.Tensor] | None = {} if cache else None

    @classmethod
    def for_config(cls, samples: list[Sample], cfg, cache: bool | None = None) -> "TrainImages":
        """The training images as a config (:class:`~destseg_lib.config.DeSTSegConfig`) sizes them."""
        return cls(samples, cfg.image_size, cfg.cache_images if cache is None else cache, cfg.resize,
                   cfg.aspect, cfg.max_aspect)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i) -> torch.Tensor:
        u8 = self._cache.get(i) if self._cache is not None else None
        if u8 is None:
            img = read_image(self.samples[i].path)
            self._sizes[int(i)] = img.shape[:2]
            u8 = torch.from_numpy(np.ascontiguousarray(
                _resize_u8(img, self.model_size(i), self.resize))).permute(2, 0, 1)
            if self._cache is not None:
                self._cache[i] = u8
        return u8.float().div_(255.0)


class TestImages(_Sized, torch.utils.data.Dataset):
    """Test images with masks resized like them (:func:`model_hw`; zeros for normal samples) and
    native-size access for full-resolution evaluation. A mask whose size differs from its image's
    raises :class:`DataError` when the item is read.  With ``aspect="keep"`` items differ in size:
    batch them by :meth:`size_groups` (``infer.predict_dataset`` does).

    ``eval_size``: the resolution of the pixel metrics (Sec. 4.2; config ``eval_size``): an int S
    (S x S, the paper's 256), ``"native"`` (each image's file size) or None (the networks' input
    size, :meth:`model_size`).  :meth:`eval_mask` reads each mask at that size from its file, by
    the rule of :func:`resize_mask` (bilinear, then ``>= 0.5``)."""

    __test__ = False  # not a pytest test class despite the name

    def __init__(self, samples: list[Sample], image_size: int, cache: bool = False, resize: str = "antialias",
                 aspect: str = "square", max_aspect: float = 4.0, eval_size: int | str | None = None):
        self.samples, self.image_size, self.resize = list(samples), _check_size(image_size), resize
        self._init_sizes(aspect, max_aspect)
        self._cache: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = {} if cache else None
        self._eval_masks: dict[int, np.ndarray] | None = {} if cache else None
        if not (eval_size is None or eval_size == "native" or (isinstance(eval_size, (int, np.integer))
                                                               and not isinstance(eval_size, bool) and eval_size >= 1)):
            raise DataError(f"eval_size={eval_size!r}: an image size (the paper's: 256), 'native' or None "
                            "(the networks' input size)")
        if isinstance(eval_size, (int, np.integer)) and aspect == "keep":
            raise DataError(f"eval_size={eval_size} with aspect='keep' would squash non-square parts: use "
                            "eval_size='native'")
        self.eval_size = int(eval_size) if isinstance(eval_size, (int, np.integer)) else eval_size

    @classmethod
    def for_config(cls, samples: list[Sample], cfg, cache: bool = False) -> "TestImages":
        """The test images as a config (:class:`~destseg_lib.config.DeSTSegConfig`) sizes them, masks
        for the metrics at ``cfg.resolved_eval_size``."""
        return cls(samples, cfg.image_size, cache, cfg.resize, cfg.aspect, cfg.max_aspect,
                   eval_size=cfg.resolved_eval_size)

    def __len__(self) -> int:
        return len(self.samples)

    def _load(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.samples[i]
        img = read_image(s.path)
        self._sizes[i] = img.shape[:2]
        hw = self.model_size(i)
        u8 = torch.from_numpy(np.ascontiguousarray(_resize_u8(img, hw, self.resize))).permute(2, 0, 1)
        if s.mask_path is None:
            mask = torch.zeros(1, *hw)
        else:
            mask = resize_mask(read_mask(s.mask_path, img.shape[:2], image_path=s.path), hw, self.resize)
        return u8, mask

    def __getitem__(self, i) -> dict:
        i = int(i)
        item = self._cache.get(i) if self._cache is not None else None
        if item is None:
            item = self._load(i)
            if self._cache is not None:
                self._cache[i] = item
        s = self.samples[i]
        return {"image": item[0].float().div_(255.0), "mask": item[1].clone(),
                "label": int(s.label), "defect_type": s.defect_type, "path": s.path, "index": i}

    def eval_hw(self, i) -> tuple[int, int]:
        """(H, W) at which item ``i``'s pixel metrics are computed (see ``eval_size``)."""
        if self.eval_size is None:
            return self.model_size(i)
        if self.eval_size == "native":
            return self.native_size(i)
        return self.eval_size, self.eval_size

    def eval_mask(self, i) -> np.ndarray:
        """bool mask of item ``i`` at :meth:`eval_hw`, from the mask file: as it is at the native size,
        else :func:`resize_mask` (bilinear, antialiased when shrinking, then ``>= 0.5``: the official
        evaluation's rule, Sec. 4.2); zeros for normal samples.  Always the official rule, whatever
        ``resize`` says for the inputs: the numbers must compare with the paper's."""
        i = int(i)
        if self._eval_masks is not None and i in self._eval_masks:
            return self._eval_masks[i].copy()
        s, hw = self.samples[i], self.eval_hw(i)
        if s.mask_path is None:
            m = np.zeros(hw, dtype=bool)
        else:
            m = self.native_mask(i)
            if m.shape != tuple(hw):
                m = resize_mask(m, hw, "antialias")[0].numpy() > 0.5
        if self._eval_masks is not None:
            self._eval_masks[i] = m
        return m.copy()

    def native_mask(self, i) -> np.ndarray:
        """bool HxW mask at the image's native resolution (zeros for normal samples)."""
        s, hw = self.samples[int(i)], self.native_size(i)
        if s.mask_path is None:
            return np.zeros(hw, dtype=bool)
        return read_mask(s.mask_path, hw, image_path=s.path)
