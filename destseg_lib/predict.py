"""Scoring your own images with a trained model: ``destseg predict``.

    destseg predict --checkpoint runs/part/model.pt --out predictions/ images/ 'more/**/*.png' one.jpg

Inputs are files, folders (searched recursively for image files) and glob patterns (quoted, so
that the kit expands them: ``**`` matches sub-folders).  Images are scored in batches
(``batch_size``) with the BN-folded, channels-last inference graph
(:class:`~destseg_lib.fast.FastPredictor`, the same maps as :func:`destseg_lib.infer.predict` within 1e-4), or with onnxruntime on an exported
``.onnx`` file (:mod:`destseg_lib.export`).  Per image, at the image's own resolution:

* ``<name>_map.png``  — the anomaly map as a 16-bit grey PNG: ``round(65535 * clip(map, 0, 1))``
  (DeSTSeg's map is a probability in [0, 1]; the raw values are in the ``.npy``);
* ``<name>_map.npy``  — the anomaly map, float32, H x W;
* ``<name>_overlay.png`` — the image with the map as a heat map (the kit's colormap, fixed 0-1
  scale) and, with a pixel threshold, the outline of the predicted mask;
* ``<name>_mask.png`` — the binary mask (0 / 255) ``map >= pixel threshold`` (only with a threshold);

and one ``predictions.csv``: input, status (ok / error), error, score, the image threshold and the
decision (``anomalous`` / ``normal``), the pixel threshold and the fraction of pixels above it,
the image size, and the files written.

**Names.**  Outputs mirror the inputs' folders below their common folder, so
``test/hole/000.png`` and ``test/good/000.png`` give ``hole/000_map.png`` and ``good/000_map.png``;
two inputs with the same stem in one folder (``a.png``, ``a.jpg``) keep their extension in the name
(``a_png_map.png``).  Nothing is ever overwritten by another input.

**Thresholds.**  Decisions use the thresholds stored in the checkpoint, which the kit chooses on a
validation split at training time (``val_fraction`` > 0; rule ``threshold_rule``, see
:mod:`destseg_lib.thresholds`) — never on the test data.  ``image_threshold`` /
``pixel_threshold`` override them.  A checkpoint without thresholds gives scores and maps but no
decisions or masks (and says so).

**Failures.**  An unreadable image, a path that does not exist, a folder without images or a glob
that matches nothing is reported (stderr and the CSV) and skipped; the rest are still scored.
:attr:`PredictionReport.failed` lists them; the command exits with status 1 when any input failed.
An existing, non-empty output folder is refused unless ``overwrite=True``.
"""
from __future__ import annotations

import csv
import glob
import io
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from .data import IMAGE_EXTENSIONS, _is_image, model_hw, read_image, resize_image
from .errors import DataError, OutputError

CSV_COLUMNS = ("input", "status", "error", "score", "image_threshold", "decision", "pixel_threshold",
               "anomalous_pixel_fraction", "height", "width", "map_png", "map_npy", "overlay_png", "mask_png")
_GLOB_CHARS = set("*?[")


# ----------------------------------------------------------------------------- inputs
def collect_inputs(items) -> tuple[list[Path], list[tuple[str, str]]]:
    """Expand files, folders (recursive: image files as the dataset loaders list them, hidden files
    such as macOS ``._x.png`` skipped) and glob patterns into a sorted,
    de-duplicated list of files, and the problems: ``[(item, reason)]`` for paths that do not exist,
    folders without images or that cannot be listed, and globs that match nothing."""
    files: list[Path] = []
    problems: list[tuple[str, str]] = []
    for item in items:
        item = str(item)
        p = Path(item)
        if p.is_file():
            files.append(p)
        elif p.is_dir():
            try:
                found = sorted(q for q in p.rglob("*") if _is_image(q))
            except OSError as e:
                problems.append((item, f"cannot list the folder ({e.strerror or e})"))
                continue
            if not found:
                problems.append((item, f"the folder holds no image files ({', '.join(IMAGE_EXTENSIONS)})"))
            files += found
        elif _GLOB_CHARS & set(item):
            found = sorted(Path(q) for q in glob.glob(item, recursive=True) if Path(q).is_file())
            if not found:
                problems.append((item, "no file matches this pattern"))
            files += found
        else:
            problems.append((item, "no such file or folder"))
    unique, seen = [], set()
    for f in files:
        key = os.path.realpath(f)
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return unique, problems


def output_names(files: list[Path]) -> list[str]:
    """A distinct relative output name (no extension) per input: its path below the inputs' common
    folder, without the extension; the extension is kept (``a_png``) where stems would collide."""
    if not files:
        return []
    absolute = [Path(os.path.abspath(f)) for f in files]
    common = Path(os.path.commonpath([str(a.parent) for a in absolute]))
    rel = [a.relative_to(common) for a in absolute]
    stems = [str(r.with_suffix("")) for r in rel]
    counts: dict[str, int] = {}
    for s in stems:
        counts[s] = counts.get(s, 0) + 1
    names = [s if counts[s] == 1 else f"{s}_{r.suffix.lstrip('.').lower()}" for s, r in zip(stems, rel)]
    # a stem like "a_png" may itself exist: number whatever still collides
    final, used = [], set()
    for n in names:
        candidate, k = n, 2
        while candidate in used:
            candidate, k = f"{n}_{k}", k + 1
        used.add(candidate)
        final.append(candidate)
    return final


# ----------------------------------------------------------------------------- outputs
def map_to_png16(amap: np.ndarray) -> np.ndarray:
    """float map -> uint16 ``round(65535 * clip(map, 0, 1))``."""
    return np.rint(np.clip(amap, 0.0, 1.0) * 65535.0).astype(np.uint16)


def png16_to_map(png: np.ndarray) -> np.ndarray:
    """Inverse of :func:`map_to_png16` (to 1 / 65535)."""
    return png.astype(np.float32) / 65535.0


def overlay_image(image: np.ndarray, amap: np.ndarray, mask: np.ndarray | None = None,
                  vmax: float = 1.0) -> np.ndarray:
    """uint8 RGB overlay: the image blended with the heat map (fixed scale 0-``vmax``), and the
    predicted mask's outline in cyan when ``mask`` is given."""
    from .viz import overlay

    out = np.clip(np.rint(overlay(image.astype(np.float32) / 255.0, amap, alpha=0.5, vmax=vmax) * 255), 0, 255)
    out = np.ascontiguousarray(out.astype(np.uint8))
    if mask is not None and mask.any():
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(out, contours, -1, (0, 255, 255), max(1, round(min(out.shape[:2]) / 256)))
    return out


def _imwrite(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        ok, why = cv2.imwrite(str(path), array), "cv2.imwrite returned False"
    except cv2.error as e:
        ok, why = False, str(e).strip().splitlines()[-1]
    if not ok:
        raise OutputError(f"cannot write {path} ({why}); check that the output folder is writable and "
                          "has free space, or pass another --out")


# ----------------------------------------------------------------------------- scoring
@dataclass
class PredictionReport:
    rows: list[dict]
    csv_path: Path
    image_threshold: float | None
    pixel_threshold: float | None
    threshold_source: str
    failed: list[tuple[str, str]] = field(default_factory=list)

    @property
    def n_scored(self) -> int:
        return sum(r["status"] == "ok" for r in self.rows)


def stored_thresholds(ckpt: dict) -> dict:
    """``{"image": ..., "pixel": ..., "source": ...}`` from a checkpoint's ``thresholds``."""
    t = ckpt.get("thresholds") or {}
    if t.get("image") is None and t.get("pixel") is None:
        return {"image": None, "pixel": None, "source": "none stored"}
    return {"image": t.get("image"), "pixel": t.get("pixel"),
            "source": f"checkpoint: rule {t.get('rule')} on the {t.get('chosen_on', 'validation split')}"}


def torch_scorer(model, top_t: int, channels_last: bool = True):
    """``scorer(images B x 3 x S x S in [0, 1]) -> (maps B x S x S, scores B)`` as numpy, with the
    BN-folded inference graph under ``inference_mode``, channels-last by default (the same maths;
    1.5-1.7x faster than NCHW on the 2-core AVX-512 CPU of bench/results/speed.md)."""
    from .fast import FastPredictor

    fast = FastPredictor(model, top_t, channels_last=channels_last)

    def score(images: torch.Tensor):
        out = fast(images)
        return out["anomaly_map"].float().cpu().numpy(), out["score"].float().cpu().numpy()
    return score


def predict_files(inputs, scorer, image_size: int, out_dir, *, resize: str = "antialias",
                  aspect: str = "square", max_aspect: float = 4.0,
                  image_threshold: float | None = None, pixel_threshold: float | None = None,
                  threshold_source: str = "", batch_size: int = 8, overwrite: bool = False,
                  map_vmax: float = 1.0, progress: bool = True, warn=None) -> PredictionReport:
    """Score ``inputs`` (files, folders, globs) with ``scorer`` (see :func:`torch_scorer`) and
    write the files of the module docstring into ``out_dir``.  ``warn(text)`` receives one line per
    skipped input (default: stderr)."""
    from tqdm.auto import tqdm

    warn = warn or (lambda text: print(f"destseg: warning: {text}", file=sys.stderr))
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(f"--out {out_dir} exists and is not a folder; pass another --out")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise OutputError(f"output folder {out_dir} exists and is not empty; pass --overwrite to write "
                          "into it (files of the same names are replaced), or another --out")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: must be >= 1")
    files, problems = collect_inputs(inputs)
    rows: list[dict] = []
    failed: list[tuple[str, str]] = []
    for item, reason in problems:
        warn(f"skipped {item}: {reason}")
        failed.append((item, reason))
        rows.append({"input": item, "status": "error", "error": reason})
    out_dir.mkdir(parents=True, exist_ok=True)
    names = output_names(files)
    bar = tqdm(total=len(files), desc="predict", unit="image", disable=not progress)
    for start in range(0, len(files), batch_size):
        chunk = list(zip(files[start:start + batch_size], names[start:start + batch_size]))
        loaded = []
        for path, name in chunk:
            try:
                img = read_image(path)
            except (DataError, OSError, ValueError) as e:
                reason = str(e)
                warn(f"skipped {path}: {reason}")
                failed.append((str(path), reason))
                rows.append({"input": str(path), "status": "error", "error": reason})
                continue
            loaded.append((path, name, img))
        by_size: dict[tuple[int, int], list] = {}  # one batch per input size (aspect="keep")
        for item in loaded:
            by_size.setdefault(model_hw(item[2].shape[:2], image_size, aspect, max_aspect), []).append(item)
        for hw, group in by_size.items():
            batch = torch.stack([resize_image(img, hw, resize) for _, _, img in group])
            maps, scores = scorer(batch)
            for (path, name, img), amap_small, score in zip(group, maps, scores):
                rows.append(_write_outputs(out_dir, path, name, img, amap_small, float(score),
                                           image_threshold, pixel_threshold, map_vmax))
        bar.update(len(chunk))
    bar.close()
    order = {str(f): i for i, f in enumerate(files)}
    rows.sort(key=lambda r: (r["status"] == "ok", order.get(r["input"], -1)))  # failures first
    csv_path = out_dir / "predictions.csv"
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=list(CSV_COLUMNS), restval="")
    w.writeheader()
    w.writerows(rows)
    from .checkpoint import atomic_write_text

    atomic_write_text(csv_path, buf.getvalue())
    return PredictionReport(rows, csv_path, image_threshold, pixel_threshold, threshold_source, failed)


def _write_outputs(out_dir: Path, path: Path, name: str, img: np.ndarray, amap_small: np.ndarray,
                   score: float, image_threshold, pixel_threshold, map_vmax: float) -> dict:
    h, w = img.shape[:2]
    amap = cv2.resize(np.ascontiguousarray(amap_small, np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    base = out_dir / name
    files = {"map_png": base.parent / f"{base.name}_map.png", "map_npy": base.parent / f"{base.name}_map.npy",
             "overlay_png": base.parent / f"{base.name}_overlay.png"}
    _imwrite(files["map_png"], map_to_png16(amap))
    np.save(files["map_npy"], amap.astype(np.float32))
    mask = None
    if pixel_threshold is not None:
        mask = amap >= pixel_threshold
        files["mask_png"] = base.parent / f"{base.name}_mask.png"
        _imwrite(files["mask_png"], mask.astype(np.uint8) * 255)
    _imwrite(files["overlay_png"], cv2.cvtColor(overlay_image(img, amap, mask, map_vmax), cv2.COLOR_RGB2BGR))
    row = {"input": str(path), "status": "ok", "error": "", "score": repr(score), "height": h, "width": w,
           **{k: str(v.relative_to(out_dir)) for k, v in files.items()}}
    if image_threshold is not None:
        row.update(image_threshold=repr(float(image_threshold)),
                   decision="anomalous" if score >= image_threshold else "normal")
    if pixel_threshold is not None:
        row.update(pixel_threshold=repr(float(pixel_threshold)), anomalous_pixel_fraction=f"{mask.mean():.6f}")
    return row
