"""An embedded, seeded toy dataset in MVTec AD layout: no download, real defects.

Each image shows a textured "part" (a knurled disc or rounded square on a dark, slightly noisy
background, with jittered position, rotation and lighting).  Test defects are of kinds the Perlin
synthesis does NOT produce — thin scratches, round holes, low-contrast stains, missing pieces — so a
model that scores them well has learned "unlike the normal parts", not "looks like my synthetic
anomalies".

    <root>/<category>/train/good/*.png
    <root>/<category>/test/{good,scratch,hole,stain,missing}/*.png
    <root>/<category>/ground_truth/<defect>/<name>_mask.png
"""
from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import cv2
import numpy as np

from .errors import DataError

DEFECTS = ("scratch", "hole", "stain", "missing")
CATEGORY = "toy_part"


def _part(rng: np.random.Generator, size: int):
    """A normal image (HxWx3 uint8) and the part's own mask."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    c = size / 2 + rng.uniform(-size * 0.04, size * 0.04, 2)
    r = size * rng.uniform(0.33, 0.37)
    angle = rng.uniform(0, math.pi)
    u = (xx - c[0]) * math.cos(angle) + (yy - c[1]) * math.sin(angle)
    v = -(xx - c[0]) * math.sin(angle) + (yy - c[1]) * math.cos(angle)
    if rng.random() < 0.5:  # disc
        part = (u ** 2 + v ** 2) <= r ** 2
    else:  # rounded square
        k = r * 0.3
        part = (np.maximum(np.abs(u) - (r - k), 0) ** 2 + np.maximum(np.abs(v) - (r - k), 0) ** 2) <= k ** 2
    period = size / 24
    knurl = 0.5 + 0.25 * np.sin(2 * math.pi * (u + v) / period) * np.sin(2 * math.pi * (u - v) / period)
    light = 1 + 0.15 * (u / size) + rng.uniform(-0.06, 0.06)
    base = np.array([0.72, 0.62, 0.45]) * rng.uniform(0.92, 1.08)
    img = np.full((size, size, 3), 0.12, np.float32) + rng.normal(0, 0.015, (size, size, 3))
    tex = (base * (0.75 + 0.5 * knurl[..., None]) * light[..., None]).astype(np.float32)
    tex += rng.normal(0, 0.02, tex.shape)
    img = np.where(part[..., None], tex, img)
    img = cv2.GaussianBlur(img.astype(np.float32), (0, 0), 0.6)
    return img, part, (c, r)


def _inside_point(rng, part):
    ys, xs = np.nonzero(part)
    i = int(rng.integers(len(ys)))
    return int(xs[i]), int(ys[i])


def _defect(rng, img, part, geom, kind: str, size: int):
    """Apply one defect; returns (image, mask)."""
    mask = np.zeros((size, size), np.uint8)
    (cx, cy), r = geom
    if kind == "scratch":
        x, y = _inside_point(rng, part)
        pts = [(x, y)]
        a = math.atan2(cy - y, cx - x) + rng.uniform(-0.7, 0.7)  # head across the part
        for _ in range(int(rng.integers(2, 4))):
            a += rng.uniform(-0.5, 0.5)
            step = rng.uniform(0.15, 0.3) * size
            x, y = x + step * math.cos(a), y + step * math.sin(a)
            pts.append((x, y))
        cv2.polylines(mask, [np.round(np.array(pts)).astype(np.int32)], False, 1, int(rng.integers(2, 4)))
        mask &= part.astype(np.uint8)
        colour = np.array([0.95, 0.95, 0.9]) if rng.random() < 0.5 else np.array([0.2, 0.17, 0.12])
        img = np.where(mask[..., None] > 0, colour, img)
    elif kind == "hole":
        for _ in range(int(rng.integers(1, 3))):
            x, y = _inside_point(rng, part)
            cv2.circle(mask, (x, y), int(rng.integers(max(3, size // 40), max(5, size // 14))), 1, -1)
        mask &= part.astype(np.uint8)
        img = np.where(mask[..., None] > 0, np.array([0.05, 0.04, 0.03]) + rng.normal(0, 0.01, img.shape), img)
    elif kind == "stain":
        x, y = _inside_point(rng, part)
        blob = np.zeros((size, size), np.float32)
        cv2.ellipse(blob, (x, y), (int(rng.integers(size // 16, size // 7)), int(rng.integers(size // 20, size // 9))),
                    float(rng.uniform(0, 180)), 0, 360, 1.0, -1)
        blob = cv2.GaussianBlur(blob, (0, 0), size / 60) * part
        mask = (blob > 0.3).astype(np.uint8)
        tint = np.array(rng.choice([[0.25, 0.35, 0.6], [0.45, 0.2, 0.15], [0.3, 0.45, 0.25]]))
        alpha = (0.55 * blob)[..., None]
        img = (1 - alpha) * img + alpha * tint
    else:  # missing piece: a chunk at the part's border is gone, background shows
        a = rng.uniform(0, 2 * math.pi)
        x, y = int(cx + r * math.cos(a)), int(cy + r * math.sin(a))
        cv2.circle(mask, (x, y), int(r * rng.uniform(0.3, 0.45)), 1, -1)
        mask &= part.astype(np.uint8)
        bg = np.full(img.shape, 0.12, np.float32) + rng.normal(0, 0.015, img.shape)
        img = np.where(mask[..., None] > 0, bg, img)
    return np.clip(img, 0, 1), mask.astype(bool)


def _save(path: Path, img) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if img.ndim == 3:
        img = cv2.cvtColor((np.clip(img, 0, 1) * 255).round().astype(np.uint8), cv2.COLOR_RGB2BGR)
    if not cv2.imwrite(str(path), img):
        raise OSError(f"cannot write {path}: check that the folder is writable and the disk not full")


def make_toy_dataset(root, n_train: int = 60, n_test_good: int = 20, n_per_defect: int = 10,
                     size: int = 160, seed: int = 0, category: str = CATEGORY) -> Path:
    """Write the toy dataset under ``root/category`` (MVTec AD layout) and return ``root``.

    Idempotent: if ``root/category/toy_manifest.json`` records the same arguments, nothing is rewritten;
    a toy dataset made with other arguments is replaced.
    """
    root = Path(root)
    cat = root / category
    args = dict(n_train=n_train, n_test_good=n_test_good, n_per_defect=n_per_defect, size=size, seed=seed)
    manifest = cat / "toy_manifest.json"
    if manifest.exists() and json.loads(manifest.read_text()) == args:
        return root
    if manifest.exists():  # made with other arguments: start afresh, no stale files
        shutil.rmtree(cat)
    elif cat.exists() and any(cat.iterdir()):
        raise DataError(f"{cat} exists and is not a toy dataset made by the kit (no toy_manifest.json): "
                        "it is not written over; pass another root for the toy set")
    # made in a temporary sibling folder and renamed when complete: an interrupted run leaves no
    # half-made dataset that a later run would take for one
    final, cat = cat, root / f".{category}.partial-{os.getpid()}"
    shutil.rmtree(cat, ignore_errors=True)
    rng = np.random.default_rng(seed)
    for i in range(n_train):
        _save(cat / "train" / "good" / f"{i:03d}.png", _part(rng, size)[0])
    for i in range(n_test_good):
        _save(cat / "test" / "good" / f"{i:03d}.png", _part(rng, size)[0])
    for kind in DEFECTS:
        for i in range(n_per_defect):
            for _ in range(20):  # a defect that fell off the part is drawn again
                img, part, geom = _part(rng, size)
                img, mask = _defect(rng, img, part, geom, kind, size)
                if mask.sum() >= 4:
                    break
            _save(cat / "test" / kind / f"{i:03d}.png", img)
            _save(cat / "ground_truth" / kind / f"{i:03d}_mask.png", mask.astype(np.uint8) * 255)
    (cat / "toy_manifest.json").write_text(json.dumps(args))
    if final.exists():  # an empty folder
        final.rmdir()
    os.replace(cat, final)
    return root
