"""Optimiser, learning-rate schedule and batch size at a short budget: do they make it count?

The official learning rates (SGD, momentum 0.9: 0.4 student, 0.1 / 0.01 segmentation net, constant)
were tuned for 1,000 + 4,000 steps of 32.  At the ``quick`` preset's budget (1,600 student + 3,200
segmentation synthetic images: 200 + 400 steps of 8) this tries the kit's named options, one at a
time, against that recipe (``config.optimizer``, ``lr_schedule``, ``warmup_steps``, ``batch_size``):

* ``sgd_cosine``: the same SGD rates, 20 steps of linear warm-up, then a cosine decay to 0 over each stage;
* ``adamw``: AdamW at ``config.ADAMW_RATES`` (1e-3 student and residual blocks, 1e-4 head), constant;
* ``adamw_cosine``: both;
* ``batch4``: batch 4 at twice the steps (the same images, twice the updates), the paper's rates.

The reference row ``sgd`` (the paper's recipe at this budget) is ``bench/budget.py``'s S = 1,600 /
G = 3,200 point of the same seed: the same config (NCHW, bf16 where native) trained by the same code,
which with constant rates holds exactly the weights a 400-step segmentation run has
(tests/test_train.py).  Each run is scored on both halves of the test split (``val_fraction=0.5``:
choices on the validation half, numbers reported on the held-out half) and on the whole split, metrics
at 256².

    DESTSEG_DATA=../shared/data python bench/levers.py --datasets bottle mtd --seeds 0
    python bench/levers.py --report

Resumable: runs live in ``runs/bench_levers/<dataset>/<lever>/seed<N>`` with ``scores.json`` beside
them.  Writes ``bench/results/levers/levers.{md,json}``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import budget  # noqa: E402  (the budget study's config, test sets and scoring)

from destseg_lib.config import ADAMW_RATES  # noqa: E402
from destseg_lib.experiment import open_split  # noqa: E402
from destseg_lib.files import atomic_write_text  # noqa: E402
from destseg_lib.precision import describe_precision  # noqa: E402
from destseg_lib.train import train_model  # noqa: E402

HERE = Path(__file__).resolve().parent
STUDENT_IMAGES, SEG_IMAGES = 1600, 3200  # the quick preset's budget
WARMUP = 20
LEVERS = {
    "sgd": {},  # the paper's recipe: budget.py's point
    "sgd_cosine": {"lr_schedule": "cosine", "warmup_steps": WARMUP},
    "adamw": {"optimizer": "adamw", **ADAMW_RATES},
    "adamw_cosine": {"optimizer": "adamw", **ADAMW_RATES, "lr_schedule": "cosine", "warmup_steps": WARMUP},
    "batch4": {"batch_size": 4},
}
DESCRIPTIONS = {
    "sgd": "SGD, constant rates (the paper's recipe)",
    "sgd_cosine": f"SGD, {WARMUP} warm-up steps + cosine per stage",
    "adamw": "AdamW (1e-3 / 1e-3 / 1e-4), constant",
    "adamw_cosine": f"AdamW, {WARMUP} warm-up steps + cosine per stage",
    "batch4": "SGD, batch 4 at twice the steps",
}
SHOW = ("image_auroc", "pixel_auroc", "pixel_ap", "iap", "iap90")


def lever_config(lever: str, seed: int, amp: str, data_root: Path):
    changes = dict(LEVERS[lever])
    batch = changes.pop("batch_size", budget.BATCH)
    cfg = budget.config(STUDENT_IMAGES // batch, SEG_IMAGES // batch, seed, amp, data_root)
    return cfg.replace(batch_size=batch, **changes)


def run_lever(name: str, lever: str, seed: int, amp: str, data_root: Path, runs: Path) -> dict:
    out = runs / name / lever / f"seed{seed}"
    scores_file = out / "scores.json"
    if scores_file.exists():
        return json.loads(scores_file.read_text())
    if lever == "sgd":  # the budget study's point of the same config and seed
        point = budget.run_dir(budget_runs(runs), name, amp, STUDENT_IMAGES, seed) / "points" / f"g{SEG_IMAGES}.json"
        if not point.exists():
            raise SystemExit(f"{point} is missing: run bench/budget.py --datasets {name} --seeds {seed} "
                             f"--student-images {STUDENT_IMAGES} first (the reference row)")
        p = json.loads(point.read_text())
        # its wall minutes: training and scoring each point of the curve up to this one (an upper bound)
        earlier = [json.loads(f.read_text()) for f in point.parent.glob("g*.json")]
        wall = sum(e["wall_minutes_this_segment"] for e in earlier if e["seg_images"] <= SEG_IMAGES)
        return {"dataset": name, "lever": lever, "seed": seed, "precision": p["precision"],
                "wall_minutes": round(wall, 2), "scores": p["scores"], "from": str(point)}
    kind, sub, category = budget.DATASETS[name]
    cfg = lever_config(lever, seed, amp, data_root)
    split = open_split(kind, data_root / sub, category)
    t0 = time.perf_counter()
    result = train_model(cfg, split, out, resume=True, progress=False)
    scores, _ = budget._score(result.model, budget._test_sets(split, cfg), cfg)
    row = {"dataset": name, "lever": lever, "seed": seed, "precision": result.precision,
           "wall_minutes": round((time.perf_counter() - t0) / 60, 2), "scores": scores,
           "config": {k: getattr(cfg, k) for k in ("optimizer", "lr_schedule", "warmup_steps", "batch_size",
                                                  "student_steps", "seg_steps", "lr_student", "lr_seg_res",
                                                  "lr_seg_head")}}
    atomic_write_text(scores_file, json.dumps(row, indent=1))
    d = scores["val"]["DeSTSeg"]
    print(f"{name} {lever} seed {seed}: val DeSTSeg " + " / ".join(f"{100 * d[k]:.1f}" for k in SHOW)
          + f" ({row['wall_minutes']:.1f} min)", flush=True)
    return row


def budget_runs(runs: Path) -> Path:
    return runs.parent / "bench_budget"


def _fmt(vals) -> str:
    v = 100 * np.asarray(vals, float)
    return f"{v.mean():.1f}" + (f" ± {v.std(ddof=1):.1f}" if len(v) > 1 else "")


def report(rows: list[dict]) -> str:
    lines = [f"Levers at the `quick` budget ({STUDENT_IMAGES:,} student + {SEG_IMAGES:,} segmentation synthetic "
             "images; 128², EfficientNet-Lite0, DTD-subset textures, NCHW), one at a time against the paper's "
             "recipe. DeSTSeg metrics at 256², percent, mean ± std over seeds; DeST-only pixel AP in the "
             "last column. Choices on the validation half; the held-out half is reported.",
             "", f"Machine: {os.cpu_count()} cores; {describe_precision('auto')}", ""]
    for name in budget.DATASETS:
        mine = [r for r in rows if r["dataset"] == name]
        if not mine:
            continue
        lines += [f"### {name}", ""]
        for half in ("val", "held_out", "whole"):
            lines += [f"**{budget.HALF_TITLES[half]}**", "",
                      "| lever | seeds | min | " + " | ".join(budget.LABELS[k] for k in SHOW) + " | DeST-only pixel AP |",
                      "|---|---:|---:|" + "---:|" * (len(SHOW) + 1)]
            for lever in LEVERS:
                rs = [r for r in mine if r["lever"] == lever and half in r["scores"]]
                if not rs:
                    continue
                cells = [_fmt([r["scores"][half]["DeSTSeg"][k] for r in rs]) for k in SHOW]
                dest = _fmt([r["scores"][half]["DeST"]["pixel_ap"] for r in rs])
                minutes = np.mean([r["wall_minutes"] for r in rs])
                lines.append(f"| {DESCRIPTIONS[lever]} | {len(rs)} | {minutes:.1f} | " + " | ".join(cells)
                             + f" | {dest} |")
            lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--datasets", nargs="+", default=["bottle"], choices=list(budget.DATASETS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--levers", nargs="+", default=list(LEVERS), choices=list(LEVERS))
    ap.add_argument("--amp", default="auto", choices=["auto", "off", "bf16"])
    ap.add_argument("--runs", type=Path, default=Path("runs/bench_levers"))
    ap.add_argument("--out", type=Path, default=HERE / "results" / "levers")
    ap.add_argument("--report", action="store_true", help="only rewrite the table from the runs")
    args = ap.parse_args(argv)
    rows = []
    if not args.report:
        root = os.environ.get("DESTSEG_DATA")
        if not root:
            raise SystemExit("set DESTSEG_DATA to the folder holding mvtec/, mtd/ and dtd_subset/")
        for seed in args.seeds:
            for name in args.datasets:
                for lever in args.levers:
                    run_lever(name, lever, seed, args.amp, Path(root), args.runs)
    for f in sorted(args.runs.glob("*/*/seed*/scores.json")):
        rows.append(json.loads(f.read_text()))
    for name in {r["dataset"] for r in rows}:  # the reference rows of every seed run here
        for seed in {r["seed"] for r in rows if r["dataset"] == name}:
            if not any(r["dataset"] == name and r["seed"] == seed and r["lever"] == "sgd" for r in rows):
                rows.append(run_lever(name, "sgd", seed, args.amp, Path("."), args.runs))
    text = report(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "levers.md", text + "\n")
    atomic_write_text(args.out / "levers.json", json.dumps(rows, indent=1))
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
