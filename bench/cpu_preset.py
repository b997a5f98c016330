"""Choosing a CPU preset on real data, by measurement, without tuning on the reported data.

Magnetic Tile Defects' test split (the defective images and the held-out good ones) is cut in two
halves, seeded and stratified by defect type (``thresholds.split_off_validation``, ``val_fraction=0.5``,
``val_seed=0``).  Every lever is judged on the **validation half**; only the chosen preset's final
runs (``--final``) are reported on the **test half**.  The training data (MTD's good images) is the
same for every run.

Each lever is one change to a base configuration (``--base``, default the ``quick`` preset), one
seed; a row records validation-half metrics of DeSTSeg and DeST-only, and the minutes the run took
on this machine (training + evaluating both halves).  The image-score lever (top-T with other T, or
the maximum) needs no training: it is measured on the base run's validation maps.

    DESTSEG_DATA=../shared/data python bench/cpu_preset.py                 # the lever table (resumable)
    DESTSEG_DATA=../shared/data python bench/cpu_preset.py --only aspect   # some levers only
    DESTSEG_DATA=../shared/data python bench/cpu_preset.py --final cpu --seeds 0 1 2

Writes ``bench/results/cpu_preset/{levers,final}.{md,json}`` and ``quality_vs_minutes.png``.
Run it alone on the machine: minutes taken beside another job are wrong.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from destseg_lib.config import get_preset
from destseg_lib.data import TestImages
from destseg_lib.experiment import evaluate_predictions, load_or_train, open_split
from destseg_lib.infer import predict_dataset, top_t_score
from destseg_lib.metrics import image_auroc
from destseg_lib.thresholds import split_off_validation
from destseg_lib.train import config_differences

KEYS = ("image_auroc", "pixel_auroc", "pixel_ap", "aupro", "iap")
HALF = {"val_fraction": 0.5, "val_seed": 0}

# lever -> [(row name, overrides of the base config)]; the base row is every lever's reference.
LEVERS: dict[str, list[tuple[str, dict]]] = {
    "base": [("base", {})],
    "aspect": [("aspect=keep", {"aspect": "keep"})],
    "resolution x steps": [("256, same steps", {"image_size": 256}),
                           ("192, same steps", {"image_size": 192}),
                           ("128, 2x steps", {"student_steps": 400, "seg_steps": 200}),
                           ("128, 4x steps", {"student_steps": 800, "seg_steps": 400})],
    "learning rate": [("lr_student 1.6 (batch-summed 0.4 at batch 32)", {"lr_student": 1.6}),
                      ("lr_student 0.1", {"lr_student": 0.1}),
                      ("seg lr x3 (0.3 / 0.03)", {"lr_seg_res": 0.3, "lr_seg_head": 0.03})],
    "teacher": [("EfficientNet-Lite1", {"teacher": "efficientnet_lite1"}),
                ("EfficientNet-Lite2", {"teacher": "efficientnet_lite2"})],
    "segmentation width": [("seg_width 64", {"seg_width": 64}), ("seg_width 256", {"seg_width": 256})],
    "textures": [("built-in textures", {"texture_dir": None}),
                 ("DTD in colour", {"grayscale_textures": False})],
}
SCORE_VARIANTS = {"top-1 (max)": 1, "top-10": 10, "top-100 (paper)": 100, "top-1000": 1000}


def base_config(args, root: Path, **over):
    cfg = get_preset(args.base, texture_dir=str(root / "dtd_subset" / "images"), **HALF)
    for k, v in args.base_set.items():
        cfg = cfg.replace(**{k: v})
    return cfg.replace(**over)


def measure(cfg, split, out: Path, progress: bool = False) -> dict:
    """Train (or reuse) the run in ``out``; metrics of both halves; minutes; the score variants."""
    record = out / "halves.json"
    if record.exists():
        d = json.loads(record.read_text())
        if not config_differences(d["config"], cfg, evaluation=True):
            return d
    t0 = time.perf_counter()
    model, _ = load_or_train(cfg, split, out, progress=progress)
    t_train = time.perf_counter() - t0
    val, test = split_off_validation(split.test, cfg.val_fraction, cfg.val_seed)
    d = {"config": cfg.to_dict(), "train_seconds": round(t_train, 1), "n_val": len(val), "n_test": len(test)}
    t1 = time.perf_counter()
    for name, samples in (("validation", val), ("test", test)):
        preds = predict_dataset(model, TestImages.for_config(samples, cfg), top_t=cfg.top_t, progress=progress)
        d[name] = evaluate_predictions(preds)
        if name == "validation":
            d["score_variants"] = {
                label: image_auroc(_scores(preds.maps, t), preds.labels) for label, t in SCORE_VARIANTS.items()}
    d["eval_seconds"] = round(time.perf_counter() - t1, 1)
    d["minutes"] = round((t_train + d["eval_seconds"]) / 60, 1)
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(d, indent=1))
    return d


def _scores(maps, t: int) -> np.ndarray:
    import torch

    if isinstance(maps, np.ndarray):
        return top_t_score(torch.from_numpy(maps), t).numpy()
    return np.array([float(top_t_score(torch.from_numpy(m)[None], t)[0]) for m in maps])


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def _row_cells(d: dict, half: str) -> list[str]:
    r = d[half]
    return [_pct(r["DeSTSeg"][k]) for k in KEYS] + [_pct(r["DeST"]["image_auroc"]), _pct(r["DeST"]["pixel_ap"])]


HEADER = ("| image AUROC | pixel AUROC | pixel AP | AUPRO | IAP | DeST-only image AUROC | DeST-only pixel AP "
          "| minutes |")


def lever_table(rows: list[tuple[str, str, dict]]) -> str:
    lines = ["Validation half of MTD's test split (the half used for choosing), DeSTSeg unless named, percent.",
             "", "| lever | setting " + HEADER, "|---|---|" + "---:|" * 8]
    for lever, name, d in rows:
        lines.append(f"| {lever} | {name} | " + " | ".join(_row_cells(d, "validation")) + f" | {d['minutes']} |")
    base = next((d for lever, _, d in rows if lever == "base"), None)
    if base and "score_variants" in base:
        lines += ["", "Image score on the base run's validation maps (no retraining), image AUROC:", "",
                  "| image score | image AUROC |", "|---|---:|"]
        lines += [f"| {k} | {_pct(v)} |" for k, v in base["score_variants"].items()]
        runs = [d["score_variants"] for _, _, d in rows if "score_variants" in d]
        for label in SCORE_VARIANTS:
            if label == "top-100 (paper)":
                continue
            diff = 100 * np.array([sv[label] - sv["top-100 (paper)"] for sv in runs])
            lines.append(f"\n{label} minus top-100 on the same maps, all {len(runs)} runs: mean {diff.mean():+.1f}, "
                         f"min {diff.min():+.1f}, max {diff.max():+.1f}.")
    return "\n".join(lines)


def final_table(name: str, runs: list[dict], extra: dict) -> str:
    def cell(method, key, half="test"):
        v = [r[half][method][key] for r in runs if r[half][method][key] is not None]
        v = 100 * np.array(v, float)
        return f"{v.mean():.1f} ± {v.std(ddof=1):.1f}" if len(v) > 1 else f"{v[0]:.1f}"

    lines = [f"Preset {name!r} on the **test half** of MTD's test split ({runs[0]['n_test']} images; never "
             f"used for choosing), {len(runs)} seeds, mean ± std, percent.", "",
             "| method | " + " | ".join(KEYS) + " |", "|---|" + "---:|" * len(KEYS)]
    for method in ("DeSTSeg", "DeST"):
        lines.append(f"| {method} | " + " | ".join(cell(method, k) for k in KEYS) + " |")
    lines += ["", f"The same runs on the validation half ({runs[0]['n_val']} images, the half the levers were "
                  "chosen on):", "", "| method | " + " | ".join(KEYS) + " |", "|---|" + "---:|" * len(KEYS)]
    for method in ("DeSTSeg", "DeST"):
        lines.append(f"| {method} | " + " | ".join(cell(method, k, "validation") for k in KEYS) + " |")
    minutes = [r["minutes"] for r in runs]
    lines += ["", f"Minutes per run (train + evaluate {runs[0]['n_val']} + {runs[0]['n_test']} images) on this "
                  f"machine: {np.mean(minutes):.1f} (min {min(minutes)}, max {max(minutes)}).",
              f"Differences from the quick preset: {json.dumps(extra)}"]
    return "\n".join(lines)


def seed_spread(path: Path = Path(__file__).parent / "results" / "fidelity_mtd.json") -> dict:
    """The std over seeds of the base recipe at the base budget (the "earlier" = quick-recipe rows of
    bench/fidelity_mtd.py, 3 seeds, whole MTD test split): how far one seed alone may move a row."""
    if not path.exists():
        return {}
    rows = [r for r in json.loads(path.read_text()) if r["variant"] == "earlier"]
    if len(rows) < 2:
        return {}
    return {k: float(np.std([100 * r[f"DeSTSeg/{k}"] for r in rows], ddof=1)) for k in ("image_auroc", "pixel_ap")}


def plot(rows, path: Path, finals=None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    for ax, key, label in ((axes[0], "image_auroc", "image AUROC (validation half)"),
                           (axes[1], "pixel_ap", "pixel AP (validation half)")):
        base = next((d for lever, _, d in rows if lever == "base"), None)
        spread = seed_spread().get(key)
        if base is not None and spread:
            y0 = 100 * base["validation"]["DeSTSeg"][key]
            ax.axhspan(y0 - spread, y0 + spread, color="tab:red", alpha=0.08,
                       label=f"base ± 1 std over 3 seeds ({spread:.1f})")
        for lever, name, d in rows:
            y = d["validation"]["DeSTSeg"][key]
            if y is None:
                continue
            ax.scatter(d["minutes"], 100 * y, s=30, color="tab:red" if lever == "base" else "tab:blue")
            ax.annotate(name, (d["minutes"], 100 * y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        for fname, runs in (finals or {}).items():
            xs = [r["minutes"] for r in runs]
            ys = [100 * r["validation"]["DeSTSeg"][key] for r in runs]
            colour = {"cpu": "tab:green", "quick": "tab:orange"}.get(fname, "tab:purple")
            ax.errorbar(np.mean(xs), np.mean(ys), yerr=np.std(ys, ddof=1) if len(ys) > 1 else None,
                        fmt="*", ms=12, color=colour, label=f"preset {fname}, {len(runs)} seeds (mean ± std)")
        ax.legend(loc="lower right", fontsize=8)
        ax.set_xlabel("minutes per category on 2 CPU cores (train + evaluate)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    fig.suptitle("MTD: one lever at a time against the base (red), DeSTSeg")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _parse_set(items) -> dict:
    out = {}
    for it in items or []:
        k, _, v = it.partition("=")
        out[k] = v
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/cpu_preset")
    ap.add_argument("--base", default="quick", help="the preset every lever changes one thing of")
    ap.add_argument("--base-set", nargs="*", default=[], metavar="FIELD=VALUE",
                    help="changes to the base preset before the levers (e.g. a later round's base)")
    ap.add_argument("--tag", default="", help="name of this round (its folder and result files)")
    ap.add_argument("--only", nargs="*", default=None, help="levers to run (default all)")
    ap.add_argument("--final", default=None, help="a preset to run --seeds times and report on the test half")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--data-root", default=os.environ.get("DESTSEG_DATA"))
    ap.add_argument("--results", default=str(Path(__file__).parent / "results" / "cpu_preset"))
    args = ap.parse_args(argv)
    args.base_set = _parse_set(args.base_set)
    if not args.data_root:
        ap.error("set DESTSEG_DATA or pass --data-root (the folder holding mtd/ and dtd_subset/)")
    root = Path(args.data_root)
    split = open_split("mtd", root)
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    out_root = Path(args.out) / (args.tag or "round1")
    if args.final:
        cfg0 = get_preset(args.final, texture_dir=str(root / "dtd_subset" / "images"), **HALF)
        runs = []
        for seed in args.seeds:
            d = measure(cfg0.replace(seed=seed), split, Path(args.out) / f"final_{args.final}" / f"seed{seed}")
            runs.append(d)
            print(f"{args.final} seed {seed}: test " + " ".join(_row_cells(d, "test")) + f", {d['minutes']} min",
                  flush=True)
        changed = {k: v for k, v in cfg0.to_dict().items() if v != getattr(get_preset("quick"), k)}
        changed["texture_dir"] = "$DESTSEG_DATA/dtd_subset/images"
        md = final_table(args.final, runs, changed)
        print(md)
        (results / f"final_{args.final}.md").write_text(md + "\n")
        (results / f"final_{args.final}.json").write_text(json.dumps(runs, indent=1))
        levers = results / "levers.json"
        if levers.exists():  # the lever figure again, with this preset's seeds as a star
            rows = [(r["lever"], r["setting"], r) for r in json.loads(levers.read_text())]
            finals = {f.stem[len("final_"):]: json.loads(f.read_text()) for f in sorted(results.glob("final_*.json"))}
            plot(rows, results / "quality_vs_minutes.png", finals=finals)
        return 0
    rows = []
    for lever, settings in LEVERS.items():
        if args.only is not None and lever not in args.only and lever != "base":
            continue
        for name, over in settings:
            cfg = base_config(args, root, **over)
            d = measure(cfg, split, out_root / name.split(" (")[0].replace(" ", "_").replace(",", ""))
            rows.append((lever, name, d))
            print(f"{lever:<20} {name:<45} " + " ".join(_row_cells(d, "validation")) + f"  {d['minutes']} min",
                  flush=True)
    md = lever_table(rows)
    if args.base_set:
        md = f"Base: preset {args.base!r} with {json.dumps(args.base_set)}.\n\n" + md
    print(md)
    stem = "levers" + (f"_{args.tag}" if args.tag else "")
    (results / f"{stem}.md").write_text(md + "\n")
    (results / f"{stem}.json").write_text(json.dumps([{"lever": l, "setting": n, **d} for l, n, d in rows], indent=1))
    plot(rows, results / f"quality_vs_minutes{'_' + args.tag if args.tag else ''}.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
