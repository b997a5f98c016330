"""The paper's own numbers for DeSTSeg on MVTec AD (Zhang et al., CVPR 2023, Tables 1-3), as plain dicts.

Every value is ``(mean, std)`` in percent over the paper's 5 runs with different seeds (Sec. 4.3),
transcribed from the "Ours" column:

* Table 1 — image-level AUROC.  The paper's text only gives the average (98.6 ± 0.4); the
  per-category values are in its supplementary material, not transcribed here.
* Table 2 — pixel-level AUROC / AP per category.
* Table 3 — instance-level IAP / IAP@90 per category (Sec. 4.2 defines IAP).

All at the paper's setting (256x256, ResNet18 teacher, 1000 + 4000 steps, ground truth downsampled
bilinearly and rounded at 0.5).  :func:`paper_table` gathers one category's row;
:func:`compare_table` prints a run's numbers next to it.
"""
from __future__ import annotations

import math

CATEGORIES = ("bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut", "pill",
              "screw", "tile", "toothbrush", "transistor", "wood", "zipper")
KEYS = ("image_auroc", "pixel_auroc", "pixel_ap", "iap", "iap90")
LABELS = {"image_auroc": "image AUROC (T1)", "pixel_auroc": "pixel AUROC (T2)", "pixel_ap": "pixel AP (T2)",
          "iap": "IAP (T3)", "iap90": "IAP@90 (T3)"}

# Table 1: image-level AUROC, average over the 15 categories only (per category: supplementary).
TABLE1_IMAGE_AUROC = {"average": (98.6, 0.4)}

# Table 2: pixel-level (AUROC, AP), each (mean, std).
TABLE2_PIXEL = {
    "bottle": {"pixel_auroc": (99.2, 0.2), "pixel_ap": (90.3, 1.8)},
    "cable": {"pixel_auroc": (97.3, 0.4), "pixel_ap": (60.4, 2.3)},
    "capsule": {"pixel_auroc": (99.1, 0.0), "pixel_ap": (56.3, 1.1)},
    "carpet": {"pixel_auroc": (96.1, 2.2), "pixel_ap": (72.8, 5.8)},
    "grid": {"pixel_auroc": (99.1, 0.1), "pixel_ap": (61.5, 1.6)},
    "hazelnut": {"pixel_auroc": (99.6, 0.2), "pixel_ap": (88.4, 2.2)},
    "leather": {"pixel_auroc": (99.7, 0.0), "pixel_ap": (75.6, 1.2)},
    "metal_nut": {"pixel_auroc": (98.6, 0.4), "pixel_ap": (93.5, 1.1)},
    "pill": {"pixel_auroc": (98.7, 0.4), "pixel_ap": (83.1, 4.2)},
    "screw": {"pixel_auroc": (98.5, 0.3), "pixel_ap": (58.7, 3.7)},
    "tile": {"pixel_auroc": (98.0, 0.7), "pixel_ap": (90.0, 2.5)},
    "toothbrush": {"pixel_auroc": (99.3, 0.1), "pixel_ap": (75.2, 1.8)},
    "transistor": {"pixel_auroc": (89.1, 3.4), "pixel_ap": (64.8, 4.0)},
    "wood": {"pixel_auroc": (97.7, 0.3), "pixel_ap": (81.9, 1.2)},
    "zipper": {"pixel_auroc": (99.1, 0.5), "pixel_ap": (85.2, 3.3)},
    "average": {"pixel_auroc": (97.9, 0.3), "pixel_ap": (75.8, 0.8)},
}

# Table 3: instance-level (IAP, IAP@90), each (mean, std).
TABLE3_INSTANCE = {
    "bottle": {"iap": (90.5, 1.7), "iap90": (82.5, 4.1)},
    "cable": {"iap": (51.1, 2.5), "iap90": (26.7, 3.7)},
    "capsule": {"iap": (49.4, 1.5), "iap90": (27.3, 3.3)},
    "carpet": {"iap": (84.5, 4.9), "iap90": (58.6, 17.1)},
    "grid": {"iap": (61.6, 1.8), "iap90": (47.4, 2.9)},
    "hazelnut": {"iap": (87.7, 1.8), "iap90": (77.6, 3.4)},
    "leather": {"iap": (77.5, 1.8), "iap90": (65.3, 3.9)},
    "metal_nut": {"iap": (93.6, 1.3), "iap90": (86.5, 2.7)},
    "pill": {"iap": (84.8, 3.8), "iap90": (61.1, 12.4)},
    "screw": {"iap": (53.6, 3.6), "iap90": (8.6, 2.3)},
    "tile": {"iap": (94.7, 1.8), "iap90": (86.5, 3.6)},
    "toothbrush": {"iap": (59.8, 2.9), "iap90": (32.1, 5.1)},
    "transistor": {"iap": (78.3, 2.5), "iap90": (49.6, 8.4)},
    "wood": {"iap": (87.8, 2.8), "iap90": (76.4, 3.4)},
    "zipper": {"iap": (90.6, 2.3), "iap90": (80.3, 4.9)},
    "average": {"iap": (76.4, 1.0), "iap90": (57.8, 1.8)},
}

# Tables 4-6 (ablations, averages over MVTec AD, no std): DeSTSeg's row and the variants named in the text.
TABLE5_L1 = {"w/o L1 loss": (97.9, 72.2, 74.4), "w/ L1 loss": (98.6, 75.8, 76.4)}  # img AUC, pix AP, IAP
TABLE6_SEG_INPUT = {"concatenated-ST input": (98.0, 72.2, 72.6), "cosine-distance input": (98.5, 72.0, 74.5),
                    "DeSTSeg (product)": (98.6, 75.8, 76.4)}


def paper_table(category: str = "average") -> dict:
    """The paper's DeSTSeg numbers for one MVTec AD category (or ``"average"``).

    Returns ``{key: (mean, std) or None}`` for the keys ``image_auroc, pixel_auroc, pixel_ap, iap,
    iap90`` (percent).  ``image_auroc`` is None for a single category: the paper's text reports only
    its average (Table 1).
    """
    cat = (category or "average").lower()
    if cat not in TABLE2_PIXEL:
        raise KeyError(f"{category!r} is not an MVTec AD category; choose one of {CATEGORIES} or 'average'")
    return {"image_auroc": TABLE1_IMAGE_AUROC.get(cat), **TABLE2_PIXEL[cat], **TABLE3_INSTANCE[cat]}


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, tuple):
        return f"{value[0]:.1f} ± {value[1]:.1f}"
    return "n/a" if not math.isfinite(value) else f"{100 * value:.1f}"


def compare_table(results: dict, category: str | None = None) -> str:
    """A fixed-width table: each method of ``results`` (``experiment.evaluate_predictions`` output,
    fractions) next to the paper's DeSTSeg row for ``category`` (percent, mean ± std over 5 seeds).
    Where the paper has no per-category image AUROC, its average is shown and marked ``(avg)``."""
    paper = paper_table(category or "average")
    rows = [(f"{name} (this run)", [_cell(res.get(k, math.nan)) for k in KEYS]) for name, res in results.items()]
    cells = [_cell(paper[k]) for k in KEYS]
    if paper["image_auroc"] is None:
        cells[0] = _cell(TABLE1_IMAGE_AUROC["average"]) + " (avg)"
    rows.append((f"paper DeSTSeg [{category or 'average'}]", cells))
    first = max(len(r[0]) for r in rows) + 2
    widths = [max(len(LABELS[k]), *(len(r[1][i]) for r in rows)) + 2 for i, k in enumerate(KEYS)]
    head = "".ljust(first) + "".join(LABELS[k].rjust(w) for k, w in zip(KEYS, widths))
    lines = [head, "-" * len(head)]
    lines += [name.ljust(first) + "".join(c.rjust(w) for c, w in zip(cs, widths)) for name, cs in rows]
    return "\n".join(lines)
