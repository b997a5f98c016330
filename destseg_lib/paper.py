"""The paper's own numbers (Zhang et al., DeSTSeg, CVPR 2023, Tables 1-6), read from package data.

The numbers live in ``destseg_lib/paper_numbers.json`` (its ``"source"`` entry names the paper, the
text they were transcribed from and the conventions); ``tests/test_paper.py`` checks every value
against the paper's text.  All are percent, on MVTec AD, at the paper's setting (256x256, ResNet18
teacher, 1000 + 4000 steps, ground truth downsampled bilinearly and rounded at 0.5):

* Table 1 — image-level AUROC.  The paper's text only gives the average (98.6 ± 0.4); the
  per-category values are in its supplementary material, not transcribed here.
* Table 2 — pixel-level AUROC / AP per category, ``(mean, std)`` over 5 seeds (Sec. 4.3).
* Table 3 — instance-level IAP / IAP@90 per category, ``(mean, std)`` over 5 seeds.  **These are
  the official code's interpolated IAP** (each precision replaced by the maximum precision at any
  higher recall): compare them with ``iap_interp`` / ``iap90_interp`` of
  :func:`destseg_lib.metrics.evaluate`, not with the kit's step-wise ``iap`` / ``iap90``.
* Tables 4-6 — the ablations (architecture den/ed/seg, the L1 loss, the segmentation input),
  averages over MVTec AD of image AUROC, pixel AP and (interpolated) IAP; no std.

:func:`paper_table` gathers one category's Table 1-3 row, :func:`compare_table` prints a run's
numbers beside it (like with like: interpolated IAP beside the paper's), :func:`ablation_rows`
finds the Table 4-6 rows a configuration reproduces.
"""
from __future__ import annotations

import json
import math
from importlib import resources

#: The transcribed numbers and their source (``destseg_lib/paper_numbers.json``).
NUMBERS: dict = json.loads(resources.files(__package__).joinpath("paper_numbers.json").read_text("utf-8"))
SOURCE: dict = NUMBERS["source"]

CATEGORIES = tuple(NUMBERS["categories"])
#: Keys of :func:`paper_table` (the paper's Tables 1-3 columns).
KEYS = ("image_auroc", "pixel_auroc", "pixel_ap", "iap", "iap90")
LABELS = {"image_auroc": "image AUROC (T1)", "pixel_auroc": "pixel AUROC (T2)", "pixel_ap": "pixel AP (T2)",
          "iap": "IAP interp. (T3)", "iap90": "IAP@90 interp. (T3)"}
#: Which key of a run's results (:func:`destseg_lib.metrics.evaluate`) stands beside which paper
#: column: the paper's IAP is the interpolated one.
OURS_FOR_PAPER = {"image_auroc": "image_auroc", "pixel_auroc": "pixel_auroc", "pixel_ap": "pixel_ap",
                  "iap": "iap_interp", "iap90": "iap90_interp"}
#: The tolerance added to the paper's std when asking "within the paper's ± std": the printed
#: values are rounded to 0.1, so a mean is only known to ± 0.05.
ROUNDING = 0.05

# Table 1: image-level AUROC, average over the 15 categories only (per category: supplementary).
TABLE1_IMAGE_AUROC = {"average": tuple(NUMBERS["table1_image_auroc"]["average"])}
# Table 2: pixel-level (AUROC, AP), each (mean, std).
TABLE2_PIXEL = {c: {k: tuple(v) for k, v in row.items()} for c, row in NUMBERS["table2_pixel"].items()}
# Table 3: instance-level (IAP, IAP@90), interpolated, each (mean, std).
TABLE3_INSTANCE = {c: {k: tuple(v) for k, v in row.items()} for c, row in NUMBERS["table3_instance"].items()}
# Tables 4-6 (ablations, averages over MVTec AD, no std): rows as dicts with the switches and
# image_auroc, pixel_ap, iap.
TABLE4_ARCHITECTURE = tuple(NUMBERS["table4_architecture"])
TABLE5_L1_ROWS = tuple(NUMBERS["table5_l1"])
TABLE6_SEG_INPUT_ROWS = tuple(NUMBERS["table6_seg_input"])
# The earlier compact forms: {row name: (image AUROC, pixel AP, IAP)}.
TABLE5_L1 = {r["row"]: (r["image_auroc"], r["pixel_ap"], r["iap"]) for r in TABLE5_L1_ROWS}
TABLE6_SEG_INPUT = {("DeSTSeg (product)" if r["seg_input"] == "product" else r["row"]):
                    (r["image_auroc"], r["pixel_ap"], r["iap"]) for r in TABLE6_SEG_INPUT_ROWS}
#: The columns of Tables 4-6.
ABLATION_KEYS = ("image_auroc", "pixel_ap", "iap")
#: Config fields the ablation tables switch (Sec. 4.4), and the official recipe's value of each.
ABLATION_FIELDS = {"denoising": True, "student_arch": "encoder_decoder", "segmentation": True, "l1_loss": True,
                   "seg_input": "product"}


def paper_table(category: str = "average") -> dict:
    """The paper's DeSTSeg numbers for one MVTec AD category (or ``"average"``).

    Returns ``{key: (mean, std) or None}`` for the keys ``image_auroc, pixel_auroc, pixel_ap, iap,
    iap90`` (percent; ``iap`` / ``iap90`` are the interpolated IAP).  ``image_auroc`` is None for a
    single category: the paper's text reports only its average (Table 1).
    """
    cat = (category or "average").lower()
    if cat not in TABLE2_PIXEL:
        raise KeyError(f"{category!r} is not an MVTec AD category; choose one of {CATEGORIES} or 'average'")
    return {"image_auroc": TABLE1_IMAGE_AUROC.get(cat), **TABLE2_PIXEL[cat], **TABLE3_INSTANCE[cat]}


def ablation_rows(config: dict, variant_overrides: dict | None = None) -> list[dict]:
    """The rows of Tables 4-6 that a run with ``config`` (a config dict) reproduces.

    ``variant_overrides``: when given, the fields this run changes on top of the batch's common
    settings; a run that changes anything but the ablation switches (:data:`ABLATION_FIELDS`)
    reproduces no row.  Returns dicts ``{"table": 4|5|6, "row": label, image_auroc, pixel_ap, iap}``.
    A run with ``segmentation=False`` trains no stage 2, so its L1 and seg_input settings do not
    matter.  A config of another model than DeSTSeg (PFADSeg: ``student_arch="teacher_decoder"``,
    ``seg_fusion="adaptive"``) reproduces no row.
    """
    if variant_overrides and set(variant_overrides) - set(ABLATION_FIELDS):
        return []
    if config.get("seg_fusion", "concat") != "concat" or config.get("student_arch") not in (None, "encoder_decoder",
                                                                                           "plain"):
        return []  # another model than DeSTSeg (e.g. PFADSeg's teacher-decoder student, adaptive fusion)
    c = {k: config.get(k, v) for k, v in ABLATION_FIELDS.items()}
    den, ed, seg = bool(c["denoising"]), c["student_arch"] == "encoder_decoder", bool(c["segmentation"])
    default_head = (c["l1_loss"] and c["seg_input"] == "product") or not seg
    out = []
    if default_head:
        for r in TABLE4_ARCHITECTURE:
            if (r["den"], r["ed"], r["seg"]) == (den, ed, seg):
                names = [n for n, on in (("den", den), ("ed", ed), ("seg", seg)) if on]
                out.append({"table": 4, "row": f"{r['exp']} ({'+'.join(names) or 'none'})",
                            **{k: r[k] for k in ABLATION_KEYS}})
    if den and ed and seg:
        if c["seg_input"] == "product":
            for r in TABLE5_L1_ROWS:
                if r["l1_loss"] == bool(c["l1_loss"]):
                    out.append({"table": 5, "row": r["row"], **{k: r[k] for k in ABLATION_KEYS}})
        if c["l1_loss"]:
            for r in TABLE6_SEG_INPUT_ROWS:
                if r["seg_input"] == c["seg_input"]:
                    out.append({"table": 6, "row": r["row"], **{k: r[k] for k in ABLATION_KEYS}})
    return out


def within_std(ours: float, paper_mean: float, paper_std: float, rounding: float = ROUNDING) -> bool:
    """Whether ``ours`` (percent) lies within the paper's ``mean ± std``, widened by the rounding of
    the printed values (``rounding`` = 0.05: they are given to 0.1)."""
    return abs(ours - paper_mean) <= paper_std + rounding + 1e-9


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, tuple):
        return f"{value[0]:.1f} ± {value[1]:.1f}"
    return "n/a" if not math.isfinite(value) else f"{100 * value:.1f}"


def compare_table(results: dict, category: str | None = None) -> str:
    """A fixed-width table: each method of ``results`` (``experiment.evaluate_predictions`` output,
    fractions) next to the paper's DeSTSeg row for ``category`` (percent, mean ± std over 5 seeds).

    Like with like: the paper's IAP / IAP@90 (Table 3) are the interpolated ones, so the run's
    ``iap_interp`` / ``iap90_interp`` stand in those columns; the kit's step-wise IAP follows in two
    columns of its own, which the paper does not report.  Where the paper has no per-category image
    AUROC, its average is shown and marked ``(avg)``."""
    paper = paper_table(category or "average")
    step = {"iap": "IAP step", "iap90": "IAP@90 step"}
    labels = [LABELS[k] for k in KEYS] + list(step.values())
    rows = [(f"{name} (this run)",
             [_cell(res.get(OURS_FOR_PAPER[k])) for k in KEYS] + [_cell(res.get(k)) for k in step])
            for name, res in results.items()]
    cells = [_cell(paper[k]) for k in KEYS] + ["-", "-"]
    if paper["image_auroc"] is None:
        cells[0] = _cell(TABLE1_IMAGE_AUROC["average"]) + " (avg)"
    rows.append((f"paper DeSTSeg [{category or 'average'}]", cells))
    first = max(len(r[0]) for r in rows) + 2
    widths = [max(len(lab), *(len(r[1][i]) for r in rows)) + 2 for i, lab in enumerate(labels)]
    head = "".ljust(first) + "".join(lab.rjust(w) for lab, w in zip(labels, widths))
    lines = [head, "-" * len(head)]
    lines += [name.ljust(first) + "".join(c.rjust(w) for c, w in zip(cs, widths)) for name, cs in rows]
    note = ("IAP interp.: precision interpolated (running max), as the official code and the paper's "
            "Table 3; IAP step: the kit's step-wise IAP, not in the paper")
    return "\n".join(lines + [note])
