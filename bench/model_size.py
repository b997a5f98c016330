"""Parameters and FLOPs per image of each network, DeSTSeg vs PFADSeg, both teachers.

FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` on one inference forward
(teacher + student + segmentation net) at the given size; a multiply-add counts as 2 FLOPs.
Prints a Markdown table (no timing: see bench/speed.py for that).

    python bench/model_size.py [--size 256] [--seg-width 256]
"""
from __future__ import annotations

import argparse
import warnings

import torch
from torch.utils.flop_counter import FlopCounterMode

from destseg_lib.config import ARCHITECTURES, VARIANTS, get_preset
from destseg_lib.models import DeSTSeg


def count(model: DeSTSeg, size: int) -> dict:
    """Parameters of each part and GFLOPs of one forward, per part, for a size x size image."""
    model.eval()
    x = torch.rand(1, 3, size, size)
    out = {f"{part} params": sum(p.numel() for p in getattr(model, part).parameters())
           for part in ("teacher", "student", "segmentation")}
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(x)
    per_module = fc.get_flop_counts()
    out["GFLOPs total"] = fc.get_total_flops() / 1e9
    for part in ("teacher", "student", "segmentation"):
        key = next((k for k in per_module if k.endswith(f".{part}") or k == part), None)
        out[f"{part} GFLOPs"] = sum(per_module[key].values()) / 1e9 if key else float("nan")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--seg-width", type=int, default=256)
    args = ap.parse_args(argv)
    rows = []
    for teacher in ("resnet18", "efficientnet_lite0"):
        for variant, over in ((v, VARIANTS[v]) for v in ARCHITECTURES):
            cfg = get_preset("paper", teacher=teacher, seg_width=args.seg_width,
                             teacher_weights=None if teacher == "resnet18" else "imagenet", **over)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # a random ResNet18 has the same size as ImageNet's
                rows.append({"teacher": teacher, "model": variant, **count(DeSTSeg.from_config(cfg), args.size)})
    keys = [k for k in rows[0] if k not in ("teacher", "model")]
    print(f"{args.size}x{args.size}, seg_width {args.seg_width}\n")
    print("| teacher | model | " + " | ".join(keys) + " |")
    print("|---|---|" + "---:|" * len(keys))
    for r in rows:
        print(f"| {r['teacher']} | {r['model']} | " + " | ".join(
            f"{r[k]:,}" if isinstance(r[k], int) else f"{r[k]:.2f}" for k in keys) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
