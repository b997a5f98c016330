"""Quality against training budget: how many synthetic images each stage needs on real data.

The paper trains the student on 1000 x 32 = 32,000 synthetic images and the segmentation net on
4000 x 32 = 128,000; the ``quick`` preset gave them 1,600 and 800 when this study began (now 1,600
and 3,200, chosen from it).  This study trains the ``quick``
preset (128^2 square, batch 8, EfficientNet-Lite0 teacher, DTD-subset textures) with the student
budget S in ``--student-images`` and, for each, evaluates the segmentation stage at every budget G in
``--seg-images`` (log-spaced).  Both stages use SGD at a constant learning rate (the official recipe),
and the synthetic batch of step s is a function of (seed, s): the run that trains G = 32,000 passes
through exactly the weights a run stopped at G = 800 would have (``stop_after`` + ``resume``), so one
training per (dataset, S, seed) gives the whole G curve.

Each point is scored on both halves of the test split (``val_fraction=0.5``, seeded and stratified by
defect type, the kit's ``split_off_validation``): ``val`` is the half any choice (a preset) is made
on, ``held_out`` the half it is reported on.  Per point: every metric of DeSTSeg and DeST-only at 256²
(the paper's protocol), the precision training used (``amp="auto"``: bf16 on CPUs with native BF16,
else float32; ``--amp off`` for float32) and the CPU minutes spent so far in training (the process's
CPU time, all threads; run it alone on the machine).  The training-free NN-baseline (same teacher) is
scored once per dataset and drawn as a line.

    DESTSEG_DATA=../shared/data python bench/budget.py                            # bottle, seed 0
    DESTSEG_DATA=../shared/data python bench/budget.py --datasets bottle mtd --seeds 0 1 2
    DESTSEG_DATA=../shared/data python bench/budget.py --image-size 256 --student-images 1600 \
        --seg-images 800 1600 3200                                                # at the paper's 256²
    python bench/budget.py --report                                               # table + figure only

Resumable: runs live in ``runs/bench_budget/<dataset>/<amp>/s<S>/seed<N>`` (``<amp>-256px`` at 256²) and
every scored point in
``points/g<G>.json`` beside them; a killed study continues from the last checkpoint (``checkpoint_every``
steps) and never rescores a point.  Writes ``bench/results/budget/budget.{md,json}`` and
``budget.png`` (each metric against CPU minutes, the paper's bottle row +- std as a band, the
baseline as a line).
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from destseg_lib.config import get_preset
from destseg_lib.data import TestImages
from destseg_lib.experiment import evaluate_predictions, open_split
from destseg_lib.baseline import BASELINE_NAME, add_baseline
from destseg_lib.files import atomic_write_text
from destseg_lib.infer import predict_dataset
from destseg_lib.precision import describe_precision, resolve_precision
from destseg_lib.thresholds import split_off_validation
from destseg_lib.train import train_model

KEYS = ("image_auroc", "pixel_auroc", "pixel_ap", "aupro", "iap", "iap90")
LABELS = {"image_auroc": "image AUROC", "pixel_auroc": "pixel AUROC", "pixel_ap": "pixel AP",
          "aupro": "AUPRO", "iap": "IAP", "iap90": "IAP@90"}
DATASETS = {"bottle": ("mvtec", "mvtec", "bottle"), "mtd": ("mtd", "mtd", None)}
HALVES = ("val", "held_out", "whole")  # "whole": scored since the first bottle curve; older points lack it
HALF_TITLES = {"val": "validation half (choices are made here)", "held_out": "held-out half (reported)",
               "whole": "whole test split (the paper's protocol)"}
#: The paper's bottle row (Tables 2 and 3, 5 seeds), percent: mean, std.
PAPER_BOTTLE = {"pixel_auroc": (99.2, 0.2), "pixel_ap": (90.3, 1.8), "iap": (90.5, 1.7), "iap90": (82.5, 4.1)}
HERE = Path(__file__).resolve().parent
BATCH = 8
#: The segmentation stage every curve is configured for (25 % of the paper's 128,000): the points
#: asked for are where it stops and scores.
SEG_MAX_IMAGES = 32000
#: The NN-baseline's input size: 256², its best on bottle (at the model's 128² it loses ~19 pixel AP).
BASELINE_SIZE = 256


def config(student_steps: int, seg_steps: int, seed: int, amp: str, data_root: Path, image_size: int = 128):
    # channels_last=False: the study's curves were trained in NCHW (before the presets took channels-last,
    # which sums in another order and is faster); a curve extended later goes on the same way
    return get_preset("quick", image_size=image_size, student_steps=student_steps, seg_steps=seg_steps,
                      seed=seed, amp=amp,
                      baseline=False, val_fraction=0.5, checkpoint_every=100, channels_last=False,
                      texture_dir=str(data_root / "dtd_subset" / "images"))


def _test_sets(split, cfg):
    """The two halves, and the whole test split (the paper's protocol: nothing held out)."""
    val, held_out = split_off_validation(split.test, cfg.val_fraction, cfg.val_seed)
    return {"val": TestImages.for_config(val, cfg), "held_out": TestImages.for_config(held_out, cfg),
            "whole": TestImages.for_config(split.test, cfg)}


def _score(model, sets, cfg) -> tuple[dict, dict]:
    """Metrics of DeSTSeg and DeST-only on each set, and the predictions (the baseline reuses them)."""
    precision = resolve_precision(cfg.amp, "cpu")
    out, all_preds = {}, {}
    for half, test_set in sets.items():
        preds = predict_dataset(model, test_set, top_t=cfg.top_t, progress=False, precision=precision)
        res = evaluate_predictions(preds)
        out[half], all_preds[half] = {m: {k: res[m][k] for k in KEYS} for m in ("DeSTSeg", "DeST")}, preds
    return out, all_preds


def run_dir(runs: Path, name: str, amp: str, student_images: int, seed: int, image_size: int = 128) -> Path:
    """Where a curve lives: ``<dataset>/<amp>/s<S>/seed<N>`` at 128² (the study's size), ``<amp>-<size>px``
    beside it at another input size."""
    size = amp if image_size == 128 else f"{amp}-{image_size}px"
    return runs / name / size / f"s{student_images}" / f"seed{seed}"


def run_curve(name: str, student_images: int, seg_images: list[int], seed: int, amp: str, data_root: Path,
              runs: Path, image_size: int = 128) -> list[dict]:
    """Train (dataset, S, seed) through every G of ``seg_images``, scoring each; returns the points."""
    kind, sub, category = DATASETS[name]
    s_steps, g_steps = student_images // BATCH, [g // BATCH for g in seg_images]
    # one config per (S, seed) whatever points are asked for: a curve started with fewer points can be
    # extended later (resume refuses a checkpoint of another config)
    cfg = config(s_steps, max(g_steps + [SEG_MAX_IMAGES // BATCH]), seed, amp, data_root, image_size)
    out = run_dir(runs, name, amp, student_images, seed, image_size)
    points_dir = out / "points"
    split = open_split(kind, data_root / sub, category)
    sets = None
    state_file = out / "cpu_minutes.json"  # training CPU minutes so far, kept across resumed invocations
    rows = []
    for g, g_imgs in zip(g_steps, seg_images):
        point = points_dir / f"g{g_imgs}.json"
        if point.exists():
            rows.append(json.loads(point.read_text()))
            continue
        spent = json.loads(state_file.read_text()) if state_file.exists() else {"step": 0, "cpu_minutes": 0.0}
        c0, t0 = time.process_time(), time.perf_counter()
        result = train_model(cfg, split, out, resume=True, progress=False, stop_after=s_steps + g)
        train_cpu = time.process_time() - c0
        step = s_steps + g
        if step > spent["step"]:  # a resumed invocation adds only the steps it trained
            spent = {"step": step, "cpu_minutes": round(spent["cpu_minutes"] + train_cpu / 60, 2)}
            atomic_write_text(state_file, json.dumps(spent))
        sets = sets or _test_sets(split, cfg)
        c1 = time.process_time()
        scores, preds = _score(result.model, sets, cfg)
        row = {"dataset": name, "seed": seed, "amp": amp, "precision": result.precision,
               "student_images": student_images, "seg_images": g_imgs, "student_steps": s_steps,
               "seg_steps": g, "batch": BATCH, "image_size": cfg.image_size,
               "train_cpu_minutes": spent["cpu_minutes"], "eval_cpu_minutes": round((time.process_time() - c1) / 60, 2),
               "wall_minutes_this_segment": round((time.perf_counter() - t0) / 60, 2),
               "n_val": len(sets["val"]), "n_held_out": len(sets["held_out"]), "scores": scores}
        atomic_write_text(point, json.dumps(row, indent=1))
        rows.append(row)
        d = scores["held_out"]["DeSTSeg"]
        print(f"{name} {image_size}² S={student_images} G={g_imgs} seed {seed} ({result.precision}, "
              f"{spent['cpu_minutes']:.1f} CPU min): held-out DeSTSeg "
              + " / ".join(f"{100 * d[k]:.1f}" for k in KEYS), flush=True)
        known = baseline_file(runs, name)
        if not known.exists() or set(json.loads(known.read_text())["scores"]) != set(sets):
            score_baseline(name, result.model, cfg, split, sets, preds, runs)
    return rows


def fill_whole(runs: Path, data_root: Path) -> None:
    """Score the whole test split for the final point of each finished curve that was scored before the
    whole split was (its weights are the run's ``model.pt``; earlier points have no checkpoint left)."""
    from destseg_lib.checkpoint import load_model
    from destseg_lib.config import DeSTSegConfig

    for model_file in sorted(runs.glob("*/*/s*/seed*/model.pt")):
        cfg = DeSTSegConfig.from_dict(json.loads((model_file.parent / "config.json").read_text()))
        point = model_file.parent / "points" / f"g{cfg.seg_steps * cfg.batch_size}.json"
        if not point.exists():
            continue
        row = json.loads(point.read_text())
        if "whole" in row["scores"]:
            continue
        kind, sub, category = DATASETS[row["dataset"]]
        split = open_split(kind, data_root / sub, category)
        model, _ = load_model(model_file)
        whole = TestImages.for_config(split.test, cfg)
        scores, _ = _score(model, {"whole": whole}, cfg)
        row["scores"]["whole"] = scores["whole"]
        atomic_write_text(point, json.dumps(row, indent=1))
        d = scores["whole"]["DeSTSeg"]
        print(f"{point}: whole split DeSTSeg " + " / ".join(f"{100 * d[k]:.1f}" for k in KEYS), flush=True)


def baseline_file(runs: Path, name: str) -> Path:
    return runs / name / "nn_baseline.json"


def score_baseline(name, model, cfg, split, sets, preds_of, runs: Path) -> None:
    """The training-free NN-baseline on each scored set (the two halves and the whole split; the same
    frozen teacher, no training budget), at ``BASELINE_SIZE``; its bank is fitted for each set."""
    c0 = time.process_time()
    base_cfg = cfg.replace(baseline_size=BASELINE_SIZE)
    res = {}
    for half, test_set in sets.items():  # the baseline's maps join the predictions just scored
        preds, info = add_baseline(preds_of[half], model, base_cfg, split.train, test_set)
        r = evaluate_predictions(preds)[BASELINE_NAME]
        res[half] = {k: r[k] for k in KEYS}
    atomic_write_text(baseline_file(runs, name), json.dumps(
        {"scores": res, "info": info, "cpu_minutes": round((time.process_time() - c0) / 60, 2)}, indent=1))


def collect(runs: Path) -> tuple[list[dict], dict]:
    """Every scored point, with ``wall_minutes``: the wall time of training and scoring up to it (the
    segments of its run so far: a single run to that budget scores once, so this is an upper bound)."""
    rows = []
    for run in sorted(runs.glob("*/*/s*/seed*/points")):
        pts = sorted((json.loads(p.read_text()) for p in run.glob("g*.json")), key=lambda r: r["seg_images"])
        wall = 0.0
        for r in pts:
            wall += r["wall_minutes_this_segment"]
            rows.append({**r, "wall_minutes": round(wall, 2)})
    base = {p.parent.name: json.loads(p.read_text()) for p in runs.glob("*/nn_baseline.json")}
    return rows, base


def _agg(rows, half, method, key):
    v = 100 * np.array([r["scores"][half][method][key] for r in rows], float)
    v = v[np.isfinite(v)]
    return (float(v.mean()) if len(v) else float("nan"), float(v.std(ddof=1)) if len(v) > 1 else None)


def _groups(rows):
    out = {}
    for r in rows:
        key = (r["dataset"], r["image_size"], r["precision"], r["student_images"], r["seg_images"])
        out.setdefault(key, []).append(r)
    return dict(sorted(out.items()))


def report(rows: list[dict], base: dict) -> str:
    lines = ["Quality against training budget: `quick` preset (128² square, batch 8, EfficientNet-Lite0, "
             "DTD-subset textures) with the student and segmentation-stage images varied; metrics at 256², "
             "percent, mean ± std over seeds; `val` / `held-out`: the two halves of the test split "
             "(`val_fraction=0.5`). CPU min: the training process's CPU time up to that point (all threads); "
             "wall min: minutes on this machine for training and scoring up to that point (the NN-baseline's: "
             "its CPU minutes / 2, fitting and scoring each set).",
             "", f"Machine: {os.cpu_count()} cores; {describe_precision('auto')}", ""]
    for name in DATASETS:
        groups = {k: v for k, v in _groups(rows).items() if k[0] == name}
        if not groups:
            continue
        lines += [f"### {name}", ""]
        if name == "bottle":
            lines += ["Paper (5 seeds, whole test split): pixel AUROC 99.2 ± 0.2, pixel AP 90.3 ± 1.8, "
                      "IAP 90.5 ± 1.7, IAP@90 82.5 ± 4.1.", ""]
        for half in HALVES:
            groups_h = {k: [r for r in v if half in r["scores"]] for k, v in groups.items()}
            groups_h = {k: v for k, v in groups_h.items() if v}
            if not groups_h:
                continue
            lines += [f"**{HALF_TITLES[half]}** (DeSTSeg; DeST-only pixel AP / IAP in the last column)", "",
                      "| input | student imgs | seg imgs | precision | seeds | CPU min | wall min | "
                      + " | ".join(LABELS[k] for k in KEYS) + " | DeST pixel AP / IAP |",
                      "|---:|---:|---:|---|---:|---:|---:|" + "---:|" * (len(KEYS) + 1)]
            for (_, size, prec, s, g), rs in groups_h.items():
                cells = []
                for k in KEYS:
                    m, sd = _agg(rs, half, "DeSTSeg", k)
                    cells.append(f"{m:.1f}" + ("" if sd is None else f" ± {sd:.1f}"))
                dest = "{:.1f} / {:.1f}".format(_agg(rs, half, "DeST", "pixel_ap")[0], _agg(rs, half, "DeST", "iap")[0])
                cpu, wall = (np.mean([r[k] for r in rs]) for k in ("train_cpu_minutes", "wall_minutes"))
                lines.append(f"| {size}² | {s:,} | {g:,} | {prec} | {len(rs)} | {cpu:.1f} | {wall:.1f} | " + " | ".join(cells)
                             + f" | {dest} |")
            if name in base and half in base[name]["scores"]:
                b = base[name]["scores"][half]
                lines.append("| 256² | NN-baseline | — | float32 | — | 0 | "
                             f"{base[name]['cpu_minutes'] / 2:.1f} | " + " | ".join(f"{100 * b[k]:.1f}" for k in KEYS) + " | |")
            lines.append("")
    return "\n".join(lines)


def _images_label(n: int) -> str:
    return f"{n / 1000:g}k" if n >= 1000 else str(n)


def figure(rows: list[dict], base: dict, path: Path) -> None:
    """Per dataset a 2 x 3 block: each metric of the held-out half against the minutes on this
    machine (training + scoring, log axis); one line per student budget (DeSTSeg solid, DeST-only
    dotted), points labelled with their segmentation-stage images; the paper's bottle row +- std as a
    band; the NN-baseline as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    names = [n for n in DATASETS if any(r["dataset"] == n for r in rows)]
    if not names:
        return
    fig, axes = plt.subplots(2 * len(names), 3, figsize=(12.5, 6.2 * len(names)), squeeze=False)
    all_students = sorted({r["student_images"] for r in rows})  # one colour per student budget, all panels
    colour_of = dict(zip(all_students, plt.cm.viridis(np.linspace(0, 0.8, max(len(all_students), 1)))))
    for i, name in enumerate(names):
        groups = {k: v for k, v in _groups(rows).items() if k[0] == name}
        curves = sorted({(k[1], k[3]) for k in groups})  # (input size, student images)
        for j, key in enumerate(KEYS):
            ax = axes[2 * i + j // 3, j % 3]
            if name == "bottle" and key in PAPER_BOTTLE:
                m, s = PAPER_BOTTLE[key]
                ax.axhspan(m - s, m + s, color="tab:orange", alpha=0.25, label="paper's bottle row ± std")
                ax.axhline(m, color="tab:orange", lw=1)
            if name in base:
                ax.axhline(100 * base[name]["scores"]["held_out"][key], color="k", ls="--", lw=1,
                           label="NN-baseline (no training, 256²)")
            xs = []
            for size, s in curves:
                c = colour_of[s]
                pts = sorted((k[4], v) for k, v in groups.items() if (k[1], k[3]) == (size, s))
                tag = "" if size == 128 else f", {size}² input"
                marker = "o" if size == 128 else "s"
                x = [np.mean([r["wall_minutes"] for r in rs]) for _, rs in pts]
                y = [_agg(rs, "held_out", "DeSTSeg", key)[0] for _, rs in pts]
                yd = [_agg(rs, "held_out", "DeST", key)[0] for _, rs in pts]
                ax.plot(x, y, marker + ("-" if size == 128 else "--"), color=c,
                        label=f"DeSTSeg, student {_images_label(s)} images{tag}")
                ax.plot(x, yd, "x:", color=c, alpha=0.7, label=f"DeST-only, student {_images_label(s)} images{tag}")
                last_x = None
                for (g, _), xx, yy in zip(pts, x, y):
                    if last_x is None or xx / last_x > 1.08 or (g, _) == pts[-1]:  # no labels on top of each other
                        ax.annotate(_images_label(g), (xx, yy), fontsize=7, textcoords="offset points", xytext=(3, -10))
                        last_x = xx
                xs += x
            ax.set_xscale("log")
            if xs:
                steps = ((1, 2, 3, 5, 10, 20, 30, 60, 120, 240) if max(xs) / min(xs) > 4
                         else (1, 1.5, 2, 3, 4, 5, 6, 8, 10, 15, 20, 30, 40, 60, 90, 120, 240))
                ax.xaxis.set_major_locator(FixedLocator([t for t in steps if min(xs) / 1.15 <= t <= max(xs) * 1.15]))
                ax.xaxis.set_minor_locator(NullLocator())
                ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.set_title(f"{name}: {LABELS[key]} (held-out half)", fontsize=10)
            ax.set_xlabel("minutes on 2 CPU cores (training + scoring)", fontsize=9)
            ax.set_ylabel("percent", fontsize=9)
            ax.tick_params(labelsize=8)
            ax.grid(alpha=0.3)
    handles, labels = [], []
    for ax in axes.flat:  # every legend entry once
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    fig.legend(handles, labels, loc="lower center", ncol=2, fontsize=8.5, frameon=False)
    fig.suptitle("DeSTSeg vs training budget, 128² input unless named, bf16 where native (point labels: segmentation-stage "
                 "synthetic images;\neach point the mean over the seeds run there: budget.md gives how many)",
                 fontsize=11)
    fig.tight_layout(rect=(0, 0.032 * ((len(labels) + 1) // 2 + 1) / len(names), 1, 0.955))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(runs: Path, out: Path) -> str:
    rows, base = collect(runs)
    text = report(rows, base)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "budget.md", text + "\n")
    atomic_write_text(out / "budget.json", json.dumps({"points": rows, "nn_baseline": base}, indent=1))
    figure(rows, base, out / "budget.png")
    return text


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--datasets", nargs="+", default=["bottle"], choices=list(DATASETS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--student-images", nargs="+", type=int, default=[6400, 32000, 1600],
                    help="student-stage synthetic images (multiples of 8), one training each, in this order")
    ap.add_argument("--seg-images", nargs="+", type=int, default=[800, 1600, 3200, 6400, 12800, 32000],
                    help="segmentation-stage synthetic images at which each training is scored")
    ap.add_argument("--amp", default="auto", choices=["auto", "off", "bf16"])
    ap.add_argument("--image-size", type=int, default=128,
                    help="input side (the study's 128; 256, the paper's, costs ~3x per image)")
    ap.add_argument("--runs", type=Path, default=Path("runs/bench_budget"))
    ap.add_argument("--out", type=Path, default=HERE / "results" / "budget")
    ap.add_argument("--threads", type=int, default=None, help="intra-op threads (default: torch's)")
    ap.add_argument("--report", action="store_true", help="only rewrite the table and figure from the runs")
    ap.add_argument("--fill-whole", action="store_true",
                    help="score the whole split for finished curves' final points scored before it was")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    for n in args.student_images + args.seg_images:
        if n % BATCH:
            ap.error(f"{n} images: a multiple of the batch size {BATCH}")
    data_root = Path(os.environ.get("DESTSEG_DATA", HERE.parent.parent / "shared" / "data"))
    if args.fill_whole:
        fill_whole(args.runs, data_root)
    elif not args.report:
        print(describe_precision(args.amp), flush=True)
        for name in args.datasets:
            for s in args.student_images:
                for seed in args.seeds:
                    run_curve(name, s, sorted(args.seg_images), seed, args.amp, data_root, args.runs,
                              args.image_size)
                    write_outputs(args.runs, args.out)
    print(write_outputs(args.runs, args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
