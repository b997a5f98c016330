"""Anomaly synthesis (DeSTSeg Sec. 3.1, Eq. 1), following DRAEM's Perlin-noise recipe.

A 2-D Perlin noise with random power-of-two scales (2^k per axis) is rotated by a random angle,
thresholded into a mask M, and the anomaly image is

    I_a = (1 - M) * I + M * ((1 - beta) * A + beta * I)            (Eq. 1)

with A an anomaly-source texture resized to I and beta ~ U[0, 0.8): the texture's opacity
1 - beta lies in (0.2, 1], as in the official code.

Every random draw comes from an explicit ``numpy.random.Generator``: no global RNG is touched.
"""
from __future__ import annotations

import math

import cv2
import numpy as np

from .config import CHOICES


def _fade(t: np.ndarray) -> np.ndarray:
    """Perlin's quintic fade curve 6t^5 - 15t^4 + 10t^3 (zero 1st and 2nd derivative at 0 and 1)."""
    return t * t * t * (t * (t * 6 - 15) + 10)


def perlin_noise(shape: tuple[int, int], scale: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Gradient (Perlin) noise of ``shape`` with ``scale`` lattice cells per axis, values in ~[-1, 1].

    A random unit gradient sits on each of the (sy+1) x (sx+1) lattice corners; each pixel takes the
    dot products of the four surrounding gradients with its offsets to those corners and blends them
    with the fade curve.  Any shape works (no divisibility requirement).
    """
    h, w = shape
    sy, sx = scale
    angles = rng.uniform(0.0, 2 * math.pi, size=(sy + 1, sx + 1))
    gy, gx = np.sin(angles), np.cos(angles)
    y = (np.arange(h) + 0.5) * sy / h  # continuous lattice coordinates of pixel centres
    x = (np.arange(w) + 0.5) * sx / w
    iy, ix = np.floor(y).astype(int), np.floor(x).astype(int)
    fy, fx = (y - iy)[:, None], (x - ix)[None, :]
    iy, ix = iy[:, None], ix[None, :]

    def corner(dy: int, dx: int) -> np.ndarray:
        return gy[iy + dy, ix + dx] * (fy - dy) + gx[iy + dy, ix + dx] * (fx - dx)

    ty, tx = _fade(fy), _fade(fx)
    top = corner(0, 0) + tx * (corner(0, 1) - corner(0, 0))
    bottom = corner(1, 0) + tx * (corner(1, 1) - corner(1, 0))
    return (math.sqrt(2) * (top + ty * (bottom - top))).astype(np.float32)


def rotate(image: np.ndarray, angle_deg: float, border_value: float = 0.0) -> np.ndarray:
    """Rotate about the centre with cv2 (bilinear); uncovered corners get ``border_value``."""
    h, w = image.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2 - 0.5, h / 2 - 0.5), angle_deg, 1.0)
    return cv2.warpAffine(image, m, (w, h), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=border_value)


def perlin_mask(shape: tuple[int, int], rng: np.random.Generator, min_scale_exp: int = 0,
                max_scale_exp: int = 6, threshold: float = 0.5, rotation_deg: float = 90.0,
                empty_masks: str = "allow", max_retries: int = 50) -> np.ndarray:
    """Binary anomaly mask M (float32 0/1) from rotated, thresholded Perlin noise.

    Scales are 2^k per axis with k ~ U{min_scale_exp, ..., max_scale_exp - 1} (2^0..2^5 by default).
    ``empty_masks="allow"`` (official): one draw; at coarse scales the noise often stays below the
    threshold and the mask is empty (4-7 % of samples at 256^2): the training sample is then a
    clean image with an all-zero mask.  ``"redraw"``: an empty draw is
    redrawn, at most ``max_retries`` times; if every retry is empty, the pixels of the last noise
    above its 99th percentile form the mask, so the mask is never empty (this also shifts the
    scales towards fine ones, which are rarely empty).
    """
    if empty_masks not in CHOICES["empty_masks"]:
        raise ValueError(f"empty_masks={empty_masks!r}: choose one of {CHOICES['empty_masks']}")
    tries = 1 if empty_masks == "allow" else max(1, max_retries)
    noise = mask = None
    for _ in range(tries):
        sy, sx = (2 ** int(rng.integers(min_scale_exp, max_scale_exp)) for _ in range(2))
        noise = perlin_noise(shape, (sy, sx), rng)
        noise = rotate(noise, float(rng.uniform(-rotation_deg, rotation_deg)), border_value=-1.0)
        mask = (noise > threshold).astype(np.float32)
        if mask.any() or empty_masks == "allow":
            return mask
    return (noise >= np.quantile(noise, 0.99)).astype(np.float32)


def blend_anomaly(image: np.ndarray, texture: np.ndarray, mask: np.ndarray, beta: float) -> np.ndarray:
    """Eq. 1: I_a = (1 - M) I + M ((1 - beta) A + beta I).  HxWxC float arrays, mask HxW."""
    m = mask[..., None] if mask.ndim == image.ndim - 1 else mask
    return ((1 - m) * image + m * ((1 - beta) * texture + beta * image)).astype(np.float32)


class AnomalySynthesizer:
    """Turn a clean image into (anomalous image, mask) with a texture source and explicit RNG.

    ``textures`` is any object with ``sample(rng, size, grayscale) -> HxWx3 float32 in [0, 1]``
    (see :mod:`destseg_lib.textures`).
    """

    def __init__(self, textures, min_scale_exp: int = 0, max_scale_exp: int = 6, threshold: float = 0.5,
                 rotation_deg: float = 90.0, beta_max: float = 0.8, empty_masks: str = "allow",
                 max_retries: int = 50, grayscale: bool = False):
        self.textures = textures
        self.min_scale_exp, self.max_scale_exp = min_scale_exp, max_scale_exp
        self.threshold, self.rotation_deg = threshold, rotation_deg
        self.beta_max, self.empty_masks, self.max_retries = beta_max, empty_masks, max_retries
        self.grayscale = grayscale

    @classmethod
    def from_config(cls, cfg, textures, grayscale: bool) -> "AnomalySynthesizer":
        return cls(textures, cfg.perlin_min_scale_exp, cfg.perlin_max_scale_exp, cfg.perlin_threshold,
                   cfg.perlin_rotation_deg, cfg.beta_max, cfg.empty_masks, cfg.mask_max_retries, grayscale)

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """image: HxWx3 float32 in [0, 1] -> (anomalous image HxWx3, mask HxW float32 0/1)."""
        h, w = image.shape[:2]
        mask = perlin_mask((h, w), rng, self.min_scale_exp, self.max_scale_exp, self.threshold,
                           self.rotation_deg, self.empty_masks, self.max_retries)
        texture = self.textures.sample(rng, (h, w), self.grayscale)
        beta = float(rng.uniform(0.0, self.beta_max))
        return blend_anomaly(image, texture, mask, beta), mask
