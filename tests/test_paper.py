"""destseg_lib.paper: the transcribed Tables 1-3 against the paper's text, and their averages."""
import os
import re
from pathlib import Path

import pytest

from destseg_lib import paper

# "99.20.2" in the extracted text reads 99.2 ± 0.2: the mean has one decimal.
PM = re.compile(r"^(\d+\.\d)(\d+\.\d)$")


def _paper_text() -> str:
    candidates = [os.environ.get("DESTSEG_PAPER_TEXT", ""),
                  Path(__file__).resolve().parents[2] / "shared" / "paper" / "destseg_cvpr2023.txt"]
    for c in candidates:
        if c and Path(c).is_file():
            return Path(c).read_text(encoding="utf-8")
    pytest.skip("paper text (shared/paper/destseg_cvpr2023.txt) not found beside the repository")


def _pm(cell: str) -> tuple:
    m = PM.match(cell.strip())
    assert m, f"cannot read {cell!r} as mean+std"
    return float(m.group(1)), float(m.group(2))


@pytest.fixture(scope="module")
def tables():
    """Parse the "Ours" column of Tables 2 (8 columns) and 3 (5 columns) from the text."""
    t2, t3, t1 = {}, {}, None
    for line in _paper_text().splitlines():
        cells = [c.strip() for c in line.split("|")]
        if cells and cells[-1] == "":
            cells = cells[:-1]
        name = cells[0] if cells else ""
        if name in paper.CATEGORIES or name == "average":
            auc_or_iap, ap = (part.strip() for part in cells[-1].split("/"))
            target = t2 if len(cells) == 8 else t3 if len(cells) == 5 else None
            assert target is not None, line
            target[name] = (_pm(auc_or_iap), _pm(ap))
        elif len(cells) == 7 and all(re.match(r"^[\d.]+$", c) for c in cells):
            t1 = _pm(cells[-1])  # Table 1's single row of averages
    return t1, t2, t3


def test_every_transcribed_value_matches_the_text(tables):
    t1, t2, t3 = tables
    assert t1 == paper.TABLE1_IMAGE_AUROC["average"] == (98.6, 0.4)
    assert set(t2) == set(t3) == set(paper.CATEGORIES) | {"average"}
    for cat in t2:
        row = paper.paper_table(cat)
        assert (row["pixel_auroc"], row["pixel_ap"]) == t2[cat], cat
        assert (row["iap"], row["iap90"]) == t3[cat], cat


def test_a_few_values_by_hand():
    assert paper.paper_table("bottle")["iap"] == (90.5, 1.7)  # "90.51.7" in the text
    assert paper.paper_table("carpet")["iap90"] == (58.6, 17.1)  # two-digit std
    assert paper.paper_table("capsule")["pixel_auroc"] == (99.1, 0.0)
    assert paper.paper_table("transistor")["pixel_auroc"] == (89.1, 3.4)
    assert paper.paper_table("average") == {"image_auroc": (98.6, 0.4), "pixel_auroc": (97.9, 0.3),
                                            "pixel_ap": (75.8, 0.8), "iap": (76.4, 1.0), "iap90": (57.8, 1.8)}
    assert paper.paper_table("bottle")["image_auroc"] is None  # per category only in the supplement


@pytest.mark.parametrize("key", ["pixel_auroc", "pixel_ap", "iap", "iap90"])
def test_category_means_average_to_the_printed_average(key):
    values = [paper.paper_table(c)[key][0] for c in paper.CATEGORIES]
    mean = sum(values) / len(values)
    # each printed value is rounded to 0.05, so is the average: they agree within 0.1
    assert abs(mean - paper.paper_table("average")[key][0]) <= 0.1 + 1e-9, (key, mean)


def test_unknown_category_and_compare_table():
    with pytest.raises(KeyError, match="not an MVTec AD category"):
        paper.paper_table("toy_part")
    res = {"DeSTSeg": {"image_auroc": 0.9, "pixel_auroc": 0.95, "pixel_ap": 0.5, "iap": 0.4,
                       "iap90": float("nan")}}
    text = paper.compare_table(res, "bottle")
    lines = text.splitlines()
    assert "90.0" in lines[2] and "n/a" in lines[2]
    assert "98.6 ± 0.4 (avg)" in lines[3] and "90.5 ± 1.7" in lines[3] and "99.2 ± 0.2" in lines[3]
    assert len({len(line) for line in lines[:-1]}) == 1  # fixed width (the last line is the note)
    assert "interpolated" in lines[-1]
