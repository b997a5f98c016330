"""Checks of a split's files before anything trains or is scored (:func:`validate_split`): every
image opens and is whole, every mask is binary and of its image's size, and the split's composition
is one the metrics can score.  All problems are listed in one :class:`~destseg_lib.errors.DataError`
(each naming its file and what to do), not the first one alone, so that a user fixes a dataset in one
go.  Readers and the split types live in :mod:`destseg_lib.data`."""
from __future__ import annotations

import os

import numpy as np
from PIL import Image

from .data import DatasetSplit, Sample, read_mask
from .errors import DataError

_MAX_LISTED = 25  # problems spelled out in a DataError; the rest are counted


def _image_problem(path: str, integrity: bool = True) -> tuple[tuple[int, int] | None, str | None]:
    """((H, W) from the header, None) if the image file is usable, else (hw or None, problem).

    Cheap integrity checks that still catch truncated or corrupted files: PNG chunk CRCs and the
    end marker (``Image.verify``); JPEG entropy data decoded at 1/8 scale (``draft``); other
    formats fully decoded."""
    if not os.path.isfile(path):
        return None, "does not exist"
    try:
        with Image.open(path) as im:
            w, h = im.size
            if w < 1 or h < 1:
                return None, f"has an empty size {w}x{h}"
            if integrity:
                if im.format == "PNG":
                    im.verify()
                elif im.format == "JPEG":
                    im.draft(im.mode if im.mode in ("L", "RGB") else "RGB", (max(1, w // 8), max(1, h // 8)))
                    im.load()
                else:
                    im.load()
            return (h, w), None
    except Image.DecompressionBombError as e:
        return None, f"is too large to decode safely ({e})"
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        return None, f"cannot be read ({e or type(e).__name__}): the file is corrupt, truncated or not an image"


def _mask_problem(mask_path: str, image_hw: tuple[int, int] | None, image_path: str) -> str | None:
    """None if the mask reads as binary and has its image's size, else the problem (worded as
    :func:`read_mask` words it)."""
    try:
        with Image.open(mask_path) as im:
            w, h = im.size
            if image_hw is not None and (h, w) != tuple(image_hw):
                return (f"is {h}x{w} (HxW) but its image {image_path!r} is {image_hw[0]}x{image_hw[1]}; "
                        "masks must have the image's size: re-export the mask or fix the pairing")
            if im.mode in ("1", "L"):  # the common case, checked quickly: at most {0, v} or one level
                levels = np.flatnonzero(im.histogram())  # decodes; the histogram is computed in C
                if len(levels) <= 1 or (len(levels) == 2 and levels[0] == 0):
                    return None
    except Image.DecompressionBombError as e:
        return f"is too large to decode safely ({e})"
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        return f"cannot be read ({e or type(e).__name__}): the file is corrupt, truncated or not an image"
    try:  # anything else: the reader's own rules (soft edges tolerated, levels listed if not)
        read_mask(mask_path, image_hw, image_path=image_path)
    except DataError as e:
        return str(e).replace(f"mask {str(mask_path)!r} ", "", 1)
    return None


def _split_fingerprint(split: DatasetSplit) -> tuple:
    def stamp(p):
        try:
            st = os.stat(p)
            return (p, st.st_size, st.st_mtime_ns)
        except OSError:
            return (p, None, None)
    files = [s.path for s in split.train] + [x for s in split.test for x in (s.path, s.mask_path) if x]
    return (len(split.train), len(split.test), tuple(stamp(p) for p in files))


def validate_split(split: DatasetSplit, require_test: bool = True, check_train: bool = True,
                   workers: int | None = None) -> DatasetSplit:
    """Check the whole dataset before any training: every train (``check_train``) and test image
    opens and is intact, every mask is binary and has its image's size, and (``require_test``)
    the test set is not empty.  Raises one :class:`DataError` listing every problem found (not
    just the first); returns ``split`` when all is well.

    Fast enough to run every time (headers, PNG CRCs, JPEGs at 1/8 scale, masks decoded; a thread
    pool): ~MVTec AD's 5,354 images and 1,258 masks at 1024^2 take seconds.  A split that passed is
    not checked again while its files are unchanged."""
    fp = _split_fingerprint(split)
    done = split.validated
    if (done is not None and done[0] == fp and (done[1] or not require_test)
            and (done[2] or not check_train)):
        return split
    problems: list[str] = []
    if check_train and not split.train:
        problems.append("the train set is empty: put the normal training images in the train folder")
    if require_test and not split.test:
        problems.append("the test set is empty: put normal test images in test/good and defective ones in "
                        "test/<defect> (with masks in ground_truth/<defect>), or only train (destseg train)")

    def test_item(s: Sample) -> list[str]:
        hw, prob = _image_problem(s.path)
        out = [f"{s.path}: {prob}"] if prob else []
        if s.mask_path is not None:
            mprob = _mask_problem(s.mask_path, hw, s.path)
            if mprob:
                out.append(f"{s.mask_path}: {mprob}")
        return out

    def train_item(s: Sample) -> list[str]:
        _, prob = _image_problem(s.path)
        return [f"{s.path}: {prob}"] if prob else []

    from concurrent.futures import ThreadPoolExecutor

    n = workers or min(8, 2 * (os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=n) as pool:  # PIL and zlib release the GIL while decoding
        results = list(pool.map(train_item, split.train if check_train else []))
        results += list(pool.map(test_item, split.test))
    problems += [p for r in results for p in r]
    if problems:
        shown = problems[:_MAX_LISTED]
        more = len(problems) - len(shown)
        raise DataError(
            f"dataset {split.name!r}: {len(problems)} problem(s) found before using it; fix or remove "
            f"these files (or re-extract the dataset with data_download.sh), then run again:\n  - "
            + "\n  - ".join(shown) + (f"\n  ... and {more} more" if more else ""))
    split.validated = (fp, require_test, check_train)
    return split
