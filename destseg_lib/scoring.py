"""Scoring your own images with a trained model: ``destseg predict``.

    destseg predict --checkpoint runs/part/model.pt --out predictions/ images/ 'more/**/*.png' one.jpg

Inputs are files, folders (searched recursively for image files) and glob patterns (quoted, so
that the kit expands them: ``**`` matches sub-folders).  Folders and ``**`` follow links to other
folders but visit each real folder once (remembered by device and inode), so a folder holding links
to itself is walked once, not forever.  Images are scored in batches
(``batch_size``) with the BN-folded, channels-last inference graph
(:class:`~destseg_lib.fast.FastPredictor`, the same maps as :func:`destseg_lib.infer.predict` within 1e-4), or with onnxruntime on an exported
``.onnx`` file (:mod:`destseg_lib.export`; ``destseg predict --onnx`` refuses a file whose weights
fingerprint is not the checkpoint's).  Per image, at the image's own resolution:

* ``<name>_map.png``  — the anomaly map as a 16-bit grey PNG: ``round(65535 * clip(map, 0, 1))``
  (DeSTSeg's map is a probability in [0, 1]; the raw values are in the ``.npy``);
* ``<name>_map.npy``  — the anomaly map, float32, H x W;
* ``<name>_overlay.png`` — the image with the map as a heat map (the kit's colormap, fixed 0-1
  scale) and, with a pixel threshold, the outline of the predicted mask;
* ``<name>_mask.png`` — the binary mask (0 / 255) ``map >= pixel threshold`` (only with a threshold);

and one ``predictions.csv``: input, status (ok / error), error, score, the image threshold and the
decision (``anomalous`` / ``normal``), the pixel threshold and the fraction of pixels above it,
the image size, the files written, the weights fingerprint of the model (``model``) and a ``note``
(e.g. that the checkpoint is an unfinished training checkpoint, ``--allow-unfinished``).

**Streamed, resumable.**  Every file is written to a temporary name and renamed when complete, so
an interruption or a full disk never leaves a truncated ``.npy`` / ``.png``.  The CSV row of each
image is appended (and flushed) as soon as its files are written, so an interrupted run keeps
every row it finished; at the end the CSV is rewritten (atomically) in order, failures first.
``resume=True`` (``--resume``) continues a run in the same ``--out``: inputs whose ``ok`` row
(same output name, thresholds and model) is in ``predictions.csv`` and whose files exist are kept,
the others are scored.  An operating-system error while writing (no space left, read-only file
system, permission denied, a name too long) ends the run with one line naming the file
(:class:`~destseg_lib.errors.OutputError`, exit status 2); the rows done so far stay in the CSV.

**Names.**  Outputs mirror the inputs' folders below their common folder, so
``test/hole/000.png`` and ``test/good/000.png`` give ``hole/000_map.png`` and ``good/000_map.png``;
two inputs with the same stem in one folder (``a.png``, ``a.jpg``) keep their extension in the name
(``a_png_map.png``).  Nothing is ever overwritten by another input.

**Thresholds.**  Decisions use the thresholds stored with the checkpoint (``model.thresholds.json``), which the kit chooses on a
validation split at training time (``val_fraction`` > 0; rule ``threshold_rule``, see
:mod:`destseg_lib.thresholds`) — never on the test data.  ``image_threshold`` /
``pixel_threshold`` override them.  A threshold that is not a finite number (``nan``, ``inf``) is
a :class:`~destseg_lib.errors.ConfigError`.  A checkpoint without thresholds gives scores and maps
but no decisions or masks (and says so).

**Failures.**  An unreadable image, a path that does not exist, a folder without images or a glob
that matches nothing is reported (stderr and the CSV) and skipped; so is an image that cannot be
resized or scored (a batch that fails is scored again image by image, so only the failing image is
lost), and an image whose score or map is not finite (NaN / inf: damaged or diverged weights; never
a "normal" decision).  The rest are still scored.  :attr:`PredictionReport.failed` lists them; the
command exits with status 1 when any input failed.

**Outputs never touch inputs.**  An ``out_dir`` that is an input folder, lies inside one (where a
rerun would score the previous maps and overlays), or contains an input, is refused before anything
is written — with or without ``overwrite``.  An existing, non-empty output folder is refused
unless ``overwrite=True`` or ``resume=True``.
"""
from __future__ import annotations

import csv
import fnmatch
import glob
import io
import math
import os
import sys
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
import torch

from .data import IMAGE_EXTENSIONS, is_image_file, model_hw, read_image, resize_image
from .errors import ConfigError, DataError, OutputError
from .files import atomic_write, atomic_write_bytes, atomic_write_text, output_error

CSV_COLUMNS = ("input", "status", "error", "score", "image_threshold", "decision", "pixel_threshold",
               "anomalous_pixel_fraction", "height", "width", "map_png", "map_npy", "overlay_png", "mask_png",
               "model", "note")
OUTPUT_FILES = ("map_png", "map_npy", "overlay_png", "mask_png")
_GLOB_CHARS = set("*?[")


# ----------------------------------------------------------------------------- inputs
def _dir_key(path) -> tuple | None:
    """(device, inode) of the folder ``path`` points to (links followed), None if it cannot be read."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def walk_files(root, errors: list | None = None):
    """Every file below the folder ``root`` (``root``-relative paths joined to ``root``, as given),
    following links to folders but entering each real folder once (by device and inode): a tree with
    links to itself or to its parents is walked in finite time.  OS errors of sub-folders that cannot
    be listed are appended to ``errors`` (when given)."""
    seen: set = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True,
                                                onerror=errors.append if errors is not None else None):
        key = _dir_key(dirpath)
        if key is None or key in seen:  # reached again through another link: not again
            dirnames[:] = []
            continue
        seen.add(key)
        dirnames[:] = sorted(d for d in dirnames if _dir_key(os.path.join(dirpath, d)) not in seen)
        for name in sorted(filenames):
            yield Path(dirpath) / name


def _split_glob(pattern: str) -> tuple[Path, tuple[str, ...]]:
    """``'a/b/*/c/**/*.png'`` -> (``Path('a/b')``, ``('*', 'c', '**', '*.png')``): the folder before
    the first component with a wildcard, and the components from there."""
    parts = Path(pattern).parts
    i = next((k for k, p in enumerate(parts) if _GLOB_CHARS & set(p)), len(parts))
    return (Path(*parts[:i]) if i else Path(".")), tuple(parts[i:])


def _name_matches(name: str, pattern: str) -> bool:
    if name.startswith(".") and not pattern.startswith("."):  # glob's rule: wildcards skip hidden names
        return False
    return fnmatch.fnmatchcase(name, pattern) if os.name == "posix" else fnmatch.fnmatch(name, pattern)


def _components_match(pattern: tuple[str, ...], names: tuple[str, ...]) -> bool:
    """Do the path components ``names`` match the glob components ``pattern`` (``**``: zero or
    more components that are not hidden)?"""
    @lru_cache(maxsize=None)
    def match(i: int, j: int) -> bool:
        if i == len(pattern):
            return j == len(names)
        if pattern[i] == "**":
            if match(i + 1, j):
                return True
            return j < len(names) and not names[j].startswith(".") and match(i, j + 1)
        return j < len(names) and _name_matches(names[j], pattern[i]) and match(i + 1, j + 1)
    return match(0, 0)


def expand_glob(pattern: str) -> list[Path]:
    """The files matching ``pattern``, sorted.  Patterns with a ``**`` component are expanded with
    :func:`walk_files` (each real folder once: a folder linking to itself terminates) and matched
    component by component; the others with :func:`glob.glob` (bounded by the pattern's depth)."""
    base, parts = _split_glob(pattern)
    if "**" not in parts:
        return sorted(Path(q) for q in glob.glob(pattern) if Path(q).is_file())
    if not base.is_dir():
        return []
    found = []
    for f in walk_files(base):
        rel = tuple(Path(os.path.relpath(f, base)).parts)
        if _components_match(parts, rel) and f.is_file():
            found.append(f)
    return sorted(found)


def collect_inputs(items) -> tuple[list[Path], list[tuple[str, str]]]:
    """Expand files, folders (recursive, see :func:`walk_files`: image files as the dataset loaders
    list them, hidden files such as macOS ``._x.png`` skipped) and glob patterns
    (:func:`expand_glob`) into a sorted, de-duplicated list of files, and the problems:
    ``[(item, reason)]`` for paths that do not exist, folders without images or that cannot be
    listed, and globs that match nothing."""
    files: list[Path] = []
    problems: list[tuple[str, str]] = []
    for item in items:
        item = str(item)
        p = Path(item)
        if p.is_file():
            files.append(p)
        elif p.is_dir():
            errors: list[OSError] = []
            found = sorted(q for q in walk_files(p, errors) if is_image_file(q))
            for e in errors:
                problems.append((str(getattr(e, "filename", None) or item),
                                 f"cannot list the folder ({e.strerror or e})"))
            if not found and not errors:
                problems.append((item, f"the folder holds no image files ({', '.join(IMAGE_EXTENSIONS)})"))
            files += found
        elif _GLOB_CHARS & set(item):
            found = expand_glob(item)
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


def _inside(path: str, folder: str) -> bool:
    """``path`` is ``folder`` or lies below it (both resolved)."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _pattern_may_enter(parts: tuple[str, ...], names: tuple[str, ...]) -> bool:
    """Could the glob components ``parts`` match a file inside the folder ``names`` (its
    components below the glob's base)?"""
    if not names:
        return bool(parts)
    if not parts:
        return False
    if parts[0] == "**":
        return True
    return _name_matches(names[0], parts[0]) and _pattern_may_enter(parts[1:], names[1:])


def check_out_vs_inputs(items, files: list[Path], out_dir) -> None:
    """:class:`OutputError` when ``out_dir`` is an input folder, lies inside one that is searched
    there (a folder, the base of a glob that reaches it), or contains an input file or folder."""
    out = os.path.realpath(out_dir)
    for item in items:
        item = str(item)
        p = Path(item)
        if p.is_dir():
            folder, parts = os.path.realpath(p), None
        elif not p.exists() and _GLOB_CHARS & set(item):
            base, parts = _split_glob(item)
            if not base.is_dir():
                continue
            folder = os.path.realpath(base)
        else:
            continue
        if _inside(out, folder):
            rel = () if out == folder else tuple(Path(os.path.relpath(out, folder)).parts)
            if parts is None or _pattern_may_enter(parts, rel):
                what = "is the input folder" if out == folder else "is inside the input folder"
                raise OutputError(f"--out {out_dir} {what} {item}: the maps and overlays written there would be "
                                  "read as inputs (now or by the next run); pass an --out outside the inputs")
        if parts is None and _inside(folder, out):
            raise OutputError(f"the input folder {item} is inside --out {out_dir}: outputs could overwrite "
                              "inputs; pass an --out outside the inputs")
    for f in files:
        if _inside(os.path.realpath(f), out):
            raise OutputError(f"the input {f} is inside --out {out_dir} (or is it): outputs could overwrite "
                              "inputs; pass an --out outside the inputs")


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


class _ImageFailure(Exception):
    """One image's outputs cannot be made (not an OS error): a CSV row with status error."""


def _imwrite(path: Path, array: np.ndarray) -> None:
    """Encode ``array`` as the image type of ``path`` and write it atomically (OS errors:
    :class:`OutputError` naming ``path``)."""
    try:
        ok, buf = cv2.imencode(path.suffix, array)
        why = "cv2.imencode returned False"
    except cv2.error as e:
        ok, why = False, str(e).strip().splitlines()[-1]
    if not ok:
        raise _ImageFailure(f"cannot encode {path.name} ({why})")
    atomic_write_bytes(path, buf.tobytes())


def _npwrite(path: Path, array: np.ndarray) -> None:
    atomic_write(path, lambda f: np.save(f, array))


def _output_paths(out_dir: Path, name: str, with_mask: bool) -> dict[str, Path]:
    base = out_dir / name
    files = {"map_png": base.parent / f"{base.name}_map.png", "map_npy": base.parent / f"{base.name}_map.npy",
             "overlay_png": base.parent / f"{base.name}_overlay.png"}
    if with_mask:
        files["mask_png"] = base.parent / f"{base.name}_mask.png"
    return files


class _CsvStream:
    """``predictions.csv`` written as the run goes: the header and ``rows`` atomically, then one
    appended, flushed row per image.  OS errors: :class:`OutputError` naming the file."""

    def __init__(self, path: Path, rows: list[dict]):
        self.path = path
        atomic_write_text(path, _csv_text(rows))
        try:
            self.file = open(path, "a", newline="", encoding="utf-8")
        except OSError as e:
            raise output_error(path, e) from None
        self.writer = csv.DictWriter(self.file, fieldnames=list(CSV_COLUMNS), restval="", extrasaction="ignore")

    def write(self, row: dict) -> None:
        try:
            self.writer.writerow(row)
            self.file.flush()
        except OSError as e:
            raise output_error(self.path, e) from None

    def close(self) -> None:
        try:
            self.file.close()
        except OSError:
            pass


def _csv_text(rows: list[dict]) -> str:
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=list(CSV_COLUMNS), restval="", extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def _threshold_text(t) -> str:
    return "" if t is None else repr(float(t))


def _previous_rows(csv_path: Path, out_dir: Path, names: dict[str, str], image_threshold, pixel_threshold,
                   model_id: str, note: str) -> dict[str, dict]:
    """The ``ok`` rows of an earlier run in ``csv_path`` that stand as they are (``--resume``): the
    same input, output name, thresholds, model and note, a complete row, every file it lists present."""
    if not csv_path.is_file():
        return {}
    try:
        with open(csv_path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if tuple(reader.fieldnames or ()) != CSV_COLUMNS:
                return {}
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error):
        return {}
    kept = {}
    for row in rows:
        name = names.get(row.get("input"))
        if name is None or row.get("status") != "ok" or any(row.get(c) is None for c in CSV_COLUMNS):
            continue  # another input, a failure, or a line cut short by the interruption
        expected = {k: str(v.relative_to(out_dir))
                    for k, v in _output_paths(out_dir, name, pixel_threshold is not None).items()}
        if ({k: row[k] for k in OUTPUT_FILES if row[k]} != expected
                or row["image_threshold"] != _threshold_text(image_threshold)
                or row["pixel_threshold"] != _threshold_text(pixel_threshold)
                or row["model"] != model_id or row["note"] != note):
            continue
        try:
            if not math.isfinite(float(row["score"])):
                continue
        except ValueError:
            continue
        if all((out_dir / v).is_file() for v in expected.values()):
            kept[row["input"]] = row
    return kept


# ----------------------------------------------------------------------------- scoring
@dataclass
class PredictionReport:
    rows: list[dict]
    csv_path: Path
    image_threshold: float | None
    pixel_threshold: float | None
    threshold_source: str
    failed: list[tuple[str, str]] = field(default_factory=list)
    resumed: int = 0  # ok rows kept from an earlier run (resume=True)

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


def check_threshold(value, name: str) -> float | None:
    """``value`` as a float (None stays None); :class:`ConfigError` naming ``name`` when it is not a
    finite number (``nan`` would make every image "normal", ``inf`` too)."""
    if value is None:
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} {value!r} is not a number; pass a finite number such as 0.5") from None
    if not math.isfinite(v):
        raise ConfigError(f"{name} {value!r}: a threshold must be a finite number (nan or inf would decide every "
                          "image the same way); pass a number such as 0.5")
    return v


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


def _short(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0] if text else ''}".rstrip(": ")


def _score_group(scorer, batch: torch.Tensor) -> list:
    """``[(map, score) or exception]`` per image of ``batch``: the batch at once, and image by image
    when the batch fails (so that only the failing image is lost)."""
    try:
        maps, scores = scorer(batch)
        if len(maps) != len(batch) or len(scores) != len(batch):
            raise ValueError(f"the scorer returned {len(maps)} maps / {len(scores)} scores for {len(batch)} images")
        return list(zip(maps, scores))
    except Exception as e:
        if len(batch) == 1:
            return [e]
    out = []
    for k in range(len(batch)):
        try:
            maps, scores = scorer(batch[k:k + 1])
            out.append((maps[0], scores[0]))
        except Exception as e:
            out.append(e)
    return out


def predict_files(inputs, scorer, image_size: int, out_dir, *, resize: str = "antialias",
                  aspect: str = "square", max_aspect: float = 4.0,
                  image_threshold: float | None = None, pixel_threshold: float | None = None,
                  threshold_source: str = "", batch_size: int = 8, overwrite: bool = False,
                  resume: bool = False, model_id: str = "", note: str = "",
                  map_vmax: float = 1.0, progress: bool = True, warn=None) -> PredictionReport:
    """Score ``inputs`` (files, folders, globs) with ``scorer`` (see :func:`torch_scorer`) and
    write the files of the module docstring into ``out_dir``.  ``warn(text)`` receives one line per
    skipped input (default: stderr).  ``resume``: keep the finished rows of an earlier run into
    ``out_dir`` and score the rest; ``model_id`` (the weights fingerprint) and ``note`` go in every
    row."""
    from tqdm.auto import tqdm

    warn = warn or (lambda text: print(f"destseg: warning: {text}", file=sys.stderr))
    out_dir = Path(out_dir)
    image_threshold = check_threshold(image_threshold, "image_threshold")
    pixel_threshold = check_threshold(pixel_threshold, "pixel_threshold")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: must be >= 1")
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(f"--out {out_dir} exists and is not a folder; pass another --out")
    inputs = [str(i) for i in inputs]
    files, problems = collect_inputs(inputs)
    check_out_vs_inputs(inputs, files, out_dir)  # before anything is written
    csv_path = out_dir / "predictions.csv"
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        if not resume:
            raise OutputError(f"output folder {out_dir} exists and is not empty; pass --overwrite to write "
                              "into it (files of the same names are replaced), --resume to continue an "
                              "interrupted run, or another --out")
        if not csv_path.is_file():
            raise OutputError(f"--resume: {out_dir} holds no predictions.csv, so it is not the output of an "
                              "interrupted destseg predict; pass --overwrite to write into it, or another --out")
    names = output_names(files)
    common = {"model": model_id, "note": note}
    kept = (_previous_rows(csv_path, out_dir, {str(f): n for f, n in zip(files, names)}, image_threshold,
                           pixel_threshold, model_id, note) if resume else {})
    rows: list[dict] = list(kept.values())
    failed: list[tuple[str, str]] = []

    def fail(item, reason):
        warn(f"skipped {item}: {reason}")
        failed.append((str(item), reason))
        row = {"input": str(item), "status": "error", "error": reason, **common}
        rows.append(row)
        stream.write(row)

    stream = _CsvStream(csv_path, rows)
    todo = [(f, n) for f, n in zip(files, names) if str(f) not in kept]
    bar = tqdm(total=len(todo), desc="predict", unit="image", disable=not progress)
    try:
        for item, reason in problems:
            fail(item, reason)
        for start in range(0, len(todo), batch_size):
            chunk = todo[start:start + batch_size]
            by_size: dict[tuple[int, int], list] = {}  # one batch per input size (aspect="keep")
            for path, name in chunk:
                try:
                    img = read_image(path)
                    hw = model_hw(img.shape[:2], image_size, aspect, max_aspect)
                    tensor = resize_image(img, hw, resize)
                except (DataError, OSError, ValueError) as e:
                    fail(path, str(e))
                    continue
                except Exception as e:  # one image that cannot be prepared is its own failure
                    fail(path, f"cannot read / resize this image ({_short(e)})")
                    continue
                by_size.setdefault(tuple(tensor.shape[-2:]), []).append((path, name, img, tensor))
            for group in by_size.values():
                results = _score_group(scorer, torch.stack([t for *_, t in group]))
                for (path, name, img, _), result in zip(group, results):
                    if isinstance(result, BaseException):
                        fail(path, f"cannot score this image ({_short(result)})")
                        continue
                    amap_small, score = np.asarray(result[0], np.float32), float(result[1])
                    if not (math.isfinite(score) and np.isfinite(amap_small).all()):
                        what = "score" if not math.isfinite(score) else "anomaly map"
                        fail(path, f"the model gave a non-finite {what} (NaN or infinite) for this image: its "
                                   "weights are damaged or its training diverged; retrain (and re-export)")
                        continue
                    try:
                        row = _write_outputs(out_dir, path, name, img, amap_small, score,
                                             image_threshold, pixel_threshold, map_vmax)
                    except _ImageFailure as e:
                        fail(path, str(e))
                        continue
                    row.update(common)
                    rows.append(row)
                    stream.write(row)
            bar.update(len(chunk))
    except OutputError as e:
        done = sum(r["status"] == "ok" for r in rows)
        raise OutputError(f"{e} ({done} image(s) done are in {csv_path}: rerun with --resume to "
                          "continue)") from None
    finally:
        bar.close()
        stream.close()
    order = {str(f): i for i, f in enumerate(files)}
    rows.sort(key=lambda r: (r["status"] == "ok", order.get(r["input"], -1)))  # failures first
    atomic_write_text(csv_path, _csv_text(rows))
    return PredictionReport(rows, csv_path, image_threshold, pixel_threshold, threshold_source, failed,
                            resumed=len(kept))


def _write_outputs(out_dir: Path, path: Path, name: str, img: np.ndarray, amap_small: np.ndarray,
                   score: float, image_threshold, pixel_threshold, map_vmax: float) -> dict:
    """Write one image's files (each atomically); on any failure the ones already written for it
    are removed, so an image has all of its files or none."""
    h, w = img.shape[:2]
    amap = cv2.resize(np.ascontiguousarray(amap_small, np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    files = _output_paths(out_dir, name, pixel_threshold is not None)
    written: list[Path] = []
    mask = None
    try:
        try:
            if pixel_threshold is not None:
                mask = amap >= pixel_threshold
            overlay = cv2.cvtColor(overlay_image(img, amap, mask, map_vmax), cv2.COLOR_RGB2BGR)
        except Exception as e:  # an image shape the overlay cannot take
            raise _ImageFailure(f"cannot draw the overlay ({_short(e)})") from e
        for key, write in (("map_png", lambda p: _imwrite(p, map_to_png16(amap))),
                           ("map_npy", lambda p: _npwrite(p, amap.astype(np.float32))),
                           ("mask_png", lambda p: _imwrite(p, mask.astype(np.uint8) * 255)),
                           ("overlay_png", lambda p: _imwrite(p, overlay))):
            if key in files:
                write(files[key])
                written.append(files[key])
    except BaseException:
        for p in written:
            try:
                p.unlink()
            except OSError:
                pass
        raise
    row = {"input": str(path), "status": "ok", "error": "", "score": repr(score), "height": h, "width": w,
           **{k: str(v.relative_to(out_dir)) for k, v in files.items()}}
    if image_threshold is not None:
        row.update(image_threshold=repr(float(image_threshold)),
                   decision="anomalous" if score >= image_threshold else "normal")
    if pixel_threshold is not None:
        row.update(pixel_threshold=repr(float(pixel_threshold)), anomalous_pixel_fraction=f"{mask.mean():.6f}")
    return row
