"""Anomaly-source textures A for Eq. 1 (DeSTSeg Sec. 3.1 uses DTD, as DRAEM does).

Two sources share one interface, ``sample(rng, (h, w), grayscale) -> HxWx3 float32 in [0, 1]``:

* :class:`FolderTextures` — a DTD-layout folder (``<root>/<class>/*.jpg``, or any folder of images).
* :class:`BuiltinTextures` — procedural textures made on the fly (fractal Perlin noise, stripes,
  checkers, cells, speckle), so the kit trains with no download at all.

The official DeSTSeg code uses a random DTD image as it is (RGB, resized): ``augment=False``, the
default.  ``augment=True`` adds three random photometric/geometric augmentations per texture —
DRAEM's recipe, not DeSTSeg's — kept as the named option ``texture_augment``.
With ``grayscale=True`` (grayscale datasets such as MTD) the texture is converted to gray, otherwise
the segmentation net learns "colour = anomaly" and misses real, gray defects.
"""
from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np

from .data import IMAGE_EXTENSIONS, is_image_file, resize_array
from .errors import DestSegError
from .synthesis import perlin_noise, rotate


class TextureError(DestSegError, ValueError):
    """A texture folder that cannot be used (missing, empty, unreadable file)."""


# ---------------------------------------------------------------- augmentations (DRAEM's: 3 of 9; off in the official DeSTSeg)
def _gamma(img, rng):
    return np.clip(img, 0, 1) ** rng.uniform(0.5, 2.0)


def _brightness(img, rng):
    return img * rng.uniform(0.8, 1.2) + rng.uniform(-0.12, 0.12)


def _invert(img, rng):
    return 1.0 - img


def _solarize(img, rng):
    t = rng.uniform(0.3, 0.9)
    return np.where(img >= t, 1.0 - img, img)


def _posterize(img, rng):
    levels = 2 ** int(rng.integers(2, 5))
    return np.floor(img * levels) / (levels - 1)


def _autocontrast(img, rng):
    lo, hi = img.min(axis=(0, 1), keepdims=True), img.max(axis=(0, 1), keepdims=True)
    return (img - lo) / np.maximum(hi - lo, 1e-6)


def _equalize(img, rng):
    u8 = (np.clip(img, 0, 1) * 255).astype(np.uint8)
    return np.stack([cv2.equalizeHist(u8[..., c]) for c in range(3)], axis=-1) / 255.0


def _hue_saturation(img, rng):
    hsv = cv2.cvtColor(np.clip(img, 0, 1).astype(np.float32), cv2.COLOR_RGB2HSV)
    hsv[..., 0] = (hsv[..., 0] + rng.uniform(-50, 50)) % 360
    hsv[..., 1] = np.clip(hsv[..., 1] * rng.uniform(0.5, 1.5), 0, 1)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


def _rotate(img, rng):
    return rotate(img.astype(np.float32), float(rng.uniform(-45, 45)), border_value=0.0)


AUGMENTATIONS = (_gamma, _brightness, _invert, _solarize, _posterize, _autocontrast, _equalize,
                 _hue_saturation, _rotate)


def augment_texture(img: np.ndarray, rng: np.random.Generator, n_ops: int = 3) -> np.ndarray:
    """Apply ``n_ops`` distinct random augmentations (as DRAEM's randAugmenter does)."""
    for i in rng.choice(len(AUGMENTATIONS), size=n_ops, replace=False):
        img = AUGMENTATIONS[i](img.astype(np.float32), rng)
    return np.clip(img, 0.0, 1.0).astype(np.float32)


def to_gray3(img: np.ndarray) -> np.ndarray:
    """RGB -> luminance replicated on 3 channels (ITU-R 601 weights, as cv2)."""
    g = img[..., 0] * 0.299 + img[..., 1] * 0.587 + img[..., 2] * 0.114
    return np.repeat(g[..., None], 3, axis=-1).astype(np.float32)


class _TextureSource:
    augment = False

    def sample(self, rng: np.random.Generator, size: tuple[int, int], grayscale: bool = False) -> np.ndarray:
        img = self._draw(rng, size)
        if self.augment:
            img = augment_texture(img, rng)
        return to_gray3(img) if grayscale else img

    def _draw(self, rng, size):  # pragma: no cover - interface
        raise NotImplementedError


class FolderTextures(_TextureSource):
    """Textures from a folder of images, searched recursively (DTD: ``dtd/images/<class>/*.jpg``).

    Decoded, resized textures are cached in memory (up to ``max_cache`` of them).  ``resize`` is the
    resize mode of :func:`destseg_lib.data.resize_array` ("antialias": official).
    """

    def __init__(self, root, max_cache: int = 2048, augment: bool = False, resize: str = "antialias"):
        root = Path(root)
        if not root.is_dir():
            raise TextureError(f"texture folder {root} does not exist: pass a DTD-layout folder "
                               "(e.g. dtd/images, see data_download.sh) or texture_dir=None for the "
                               "built-in textures")
        self.paths = sorted(p for p in root.rglob("*") if is_image_file(p))  # hidden files (._x.jpg) skipped
        if not self.paths:
            raise TextureError(f"texture folder {root} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))}): "
                               "point texture_dir at DTD's images/ folder or use texture_dir=None")
        self.root, self.max_cache, self.augment, self.resize = root, max_cache, augment, resize
        self._cache: dict[tuple, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.paths)

    def _draw(self, rng, size):
        i = int(rng.integers(len(self.paths)))
        key = (i, size)
        if key in self._cache:
            return self._cache[key]
        bgr = cv2.imread(str(self.paths[i]), cv2.IMREAD_COLOR)
        if bgr is None:
            raise TextureError(f"cannot read texture {self.paths[i]}: delete or replace the file")
        img = resize_array(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), size, self.resize).astype(np.float32) / 255.0
        if len(self._cache) < self.max_cache:
            self._cache[key] = img
        return img


class BuiltinTextures(_TextureSource):
    """Procedural textures, no files needed: fractal noise, stripes, checkers, cells, speckle."""

    KINDS = ("fractal", "stripes", "checker", "cells", "speckle")

    def __init__(self, augment: bool = False):
        self.augment = augment

    def __len__(self) -> int:
        return len(self.KINDS)

    def _palette(self, rng, field: np.ndarray) -> np.ndarray:
        """Map a [0, 1] field to RGB between two random colours."""
        c0, c1 = rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)
        return (c0 + field[..., None] * (c1 - c0)).astype(np.float32)

    def _draw(self, rng, size):
        h, w = size
        kind = self.KINDS[int(rng.integers(len(self.KINDS)))]
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        if kind == "fractal":
            field = sum(perlin_noise(size, (2 ** o, 2 ** o), rng) / 2 ** o for o in range(1, 6))
        elif kind == "stripes":
            theta, period = rng.uniform(0, math.pi), rng.uniform(3, max(4.0, min(h, w) / 4))
            field = np.sin(2 * math.pi * (xx * math.cos(theta) + yy * math.sin(theta)) / period)
            field = field + 0.3 * perlin_noise(size, (4, 4), rng)
        elif kind == "checker":
            period = rng.uniform(4, max(5.0, min(h, w) / 3))
            xr, yr = rotate(xx, rng.uniform(-45, 45)), rotate(yy, rng.uniform(-45, 45))
            field = ((np.floor(xr / period) + np.floor(yr / period)) % 2) * 2 - 1
        elif kind == "cells":
            n = int(rng.integers(8, 40))
            cy, cx = rng.uniform(0, h, n), rng.uniform(0, w, n)
            d = np.sqrt((yy[..., None] - cy) ** 2 + (xx[..., None] - cx) ** 2)
            d.sort(axis=-1)
            field = d[..., 1] - d[..., 0]
        else:  # speckle
            field = cv2.GaussianBlur(rng.standard_normal(size).astype(np.float32), (0, 0), rng.uniform(0.5, 2))
        field = field.astype(np.float32)
        field = (field - field.min()) / max(float(field.max() - field.min()), 1e-6)
        return self._palette(rng, field)


def make_texture_source(texture_dir=None, augment: bool = False, resize: str = "antialias") -> _TextureSource:
    """A DTD-layout folder when given, else the built-in procedural textures.  ``augment=False`` and
    ``resize="antialias"`` are the official code's."""
    if texture_dir:
        return FolderTextures(texture_dir, augment=augment, resize=resize)
    return BuiltinTextures(augment=augment)
