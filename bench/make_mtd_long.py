"""A non-square dataset in MVTec AD layout, built from Magnetic Tile Defects' long images.

MTD's images are crops of whole tiles, many of them long and thin.  This keeps every MTD image
whose long side is at least ``--min-aspect`` (default 2) times its short side — landscape and
portrait, unrotated, pixels as published — and lays them out as an MVTec category:

    <out>/mtd_long/train/good/*.jpg            80 % of the long MT_Free images (seeded)
    <out>/mtd_long/test/good/*.jpg             the other 20 %
    <out>/mtd_long/test/<defect>/*.jpg         every long defective image
    <out>/mtd_long/ground_truth/<defect>/<stem>_mask.png

so that ``destseg run --dataset mvtec --data-root <out> --category mtd_long`` runs on it end to end
(``--preset cpu`` keeps the aspect ratio).  Files are hard links when possible, else copies.

    python bench/make_mtd_long.py --mtd ../shared/data/mtd --out data/mtd_long
"""
from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image


def _place(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        return
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _long(path: Path, min_aspect: float) -> bool:
    with Image.open(path) as im:
        w, h = im.size
    return max(w, h) >= min_aspect * min(w, h)


def build(mtd: Path, out: Path, min_aspect: float = 2.0, seed: int = 0, train_fraction: float = 0.8) -> dict:
    mtd = Path(mtd)
    if not (mtd / "MT_Free").is_dir() and (mtd / "mtd" / "MT_Free").is_dir():
        mtd = mtd / "mtd"
    if not (mtd / "MT_Free" / "Imgs").is_dir():
        raise SystemExit(f"{mtd} has no MT_Free/Imgs: point --mtd at the Magnetic Tile Defects folder")
    cat = Path(out) / "mtd_long"
    counts: dict[str, int] = {}
    free = sorted(p for p in (mtd / "MT_Free" / "Imgs").glob("*.jpg") if _long(p, min_aspect))
    perm = np.random.default_rng(seed).permutation(len(free))
    n_train = min(max(int(round(train_fraction * len(free))), 1), len(free) - 1)
    for k, i in enumerate(perm):
        part = "train" if k < n_train else "test"
        _place(free[i], cat / part / "good" / free[i].name)
        counts[f"{part}/good"] = counts.get(f"{part}/good", 0) + 1
    for d in sorted(mtd.glob("MT_*")):
        if d.name == "MT_Free" or not (d / "Imgs").is_dir():
            continue
        defect = d.name[3:].lower()
        for p in sorted((d / "Imgs").glob("*.jpg")):
            if not _long(p, min_aspect):
                continue
            _place(p, cat / "test" / defect / p.name)
            _place(p.with_suffix(".png"), cat / "ground_truth" / defect / f"{p.stem}_mask.png")
            counts[f"test/{defect}"] = counts.get(f"test/{defect}", 0) + 1
    return counts


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mtd", default=os.path.join(os.environ.get("DESTSEG_DATA", "../shared/data"), "mtd"))
    ap.add_argument("--out", default="data/mtd_long")
    ap.add_argument("--min-aspect", type=float, default=2.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    counts = build(Path(args.mtd), Path(args.out), args.min_aspect, args.seed)
    for k, v in counts.items():
        print(f"{k:<16} {v}")
    print(f"-> {Path(args.out) / 'mtd_long'} (MVTec layout; --dataset mvtec --category mtd_long)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
