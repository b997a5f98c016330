"""The kit's earlier behaviour vs the official recipe on Magnetic Tile Defects (the fidelity switches).

At the `quick` budget (128^2, batch 8, EfficientNet-Lite0, DTD subset textures; 200 + 100 steps in float32 when
bench/results/fidelity_mtd.md was measured, 200 + 400 in bf16 now):
  * "earlier"  — the kit before the fidelity switches (torchvision ASPP, PyTorch init, augmented
                 textures, never-empty masks, cv2 resize, reflected rotation borders), 3 seeds;
  * "official" — the official recipe (the defaults of DeSTSegConfig), 3 seeds;
  * each earlier choice alone on top of the official recipe, seed 0.
Resumable (a finished run's metrics.json is reused).  Prints a Markdown table and writes it, with
the raw numbers, to bench/results/fidelity_mtd.{md,json}.

    DESTSEG_DATA=../shared/data python bench/fidelity_mtd.py [--out runs/fidelity_mtd] [--preset quick]
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from destseg_lib.config import MISSING_FIELD_VALUES, DeSTSegConfig, get_preset
from destseg_lib.experiment import open_split, run

KEYS = ("image_auroc", "pixel_auroc", "pixel_ap", "aupro", "iap", "iap90")
SINGLES = {"aspp": "torchvision", "init": "pytorch", "texture_augment": True, "empty_masks": "redraw",
           "resize": "cv2"}


# The official values of the fidelity fields (the config's defaults), set explicitly: a preset may
# use other ones (quick does, since this measurement).
OFFICIAL = {k: getattr(DeSTSegConfig(), k) for k in MISSING_FIELD_VALUES}


def grid(seeds=(0, 1, 2), singles=tuple(SINGLES)):
    for seed in seeds:
        yield "earlier", dict(MISSING_FIELD_VALUES), seed
        yield "official", dict(OFFICIAL), seed
    for field in singles:
        yield f"official + {field}={SINGLES[field]}", {**OFFICIAL, field: SINGLES[field]}, 0


def _reusable(folders, seed: int, cfg):
    """(results, minutes) of ``<folder>/seed<seed>`` when its metrics.json was made with ``cfg``."""
    from destseg_lib.train import config_differences

    for folder in folders:
        m = Path(folder) / f"seed{seed}" / "metrics.json"
        if not m.exists():
            continue
        d = json.loads(m.read_text())
        if config_differences(DeSTSegConfig.from_dict(d["config"]).to_dict(), cfg, evaluation=True):
            continue
        status = Path(folder) / f"seed{seed}" / "status.json"
        seconds = json.loads(status.read_text()).get("seconds") if status.exists() else None
        return d["results"], (round(seconds / 60, 1) if seconds else None)
    return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/fidelity_mtd")
    ap.add_argument("--preset", default="quick")
    ap.add_argument("--data-root", default=os.environ.get("DESTSEG_DATA"))
    ap.add_argument("--results", default=str(Path(__file__).parent / "results" / "fidelity_mtd"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds of earlier vs official")
    ap.add_argument("--singles", nargs="*", default=list(SINGLES), choices=list(SINGLES),
                    help="the earlier choices to try one at a time on top of the official recipe (seed 0); "
                         "none: --singles with no value")
    ap.add_argument("--reuse", nargs="*", default=[],
                    help="run folders of other benches (e.g. a reproduce batch's runs/mtd/destseg) whose "
                         "seed<N>/metrics.json is reused when its config is this run's")
    args = ap.parse_args(argv)
    root = Path(args.data_root)
    split = open_split("mtd", root)
    texture_dir = str(root / "dtd_subset" / "images")
    rows = []
    for name, over, seed in grid(args.seeds, args.singles):
        cfg = get_preset(args.preset, texture_dir=texture_dir, seed=seed, **over)
        out = Path(args.out) / name.replace(" ", "").replace("+", "_").replace("=", "-") / f"seed{seed}"
        t0 = time.perf_counter()
        timing = out / "bench_minutes.txt"  # wall minutes of the run, kept for a resumed bench
        reused = _reusable(args.reuse, seed, cfg)
        if reused is not None:  # the same config run by another bench (e.g. the reproduce batch)
            res, minutes = reused
        elif (out / "metrics.json").exists():  # finished earlier: its numbers (and minutes, when recorded)
            res = json.loads((out / "metrics.json").read_text())["results"]
            minutes = float(timing.read_text()) if timing.exists() else None
        else:
            res = run(cfg, split, out, progress=False, figures=False).results
            minutes = round((time.perf_counter() - t0) / 60, 1)
            timing.write_text(f"{minutes}\n")
        rows.append({"variant": name, "seed": seed, "minutes": minutes,
                     **{f"{m}/{k}": res[m][k] for m in ("DeSTSeg", "DeST") for k in KEYS}})
        print(f"{name:<40} seed {seed}: " + " ".join(f"{k} {100 * res['DeSTSeg'][k]:.1f}" for k in KEYS), flush=True)
    table = ["| variant | seeds | " + " | ".join(KEYS) + " | DeST-only image AUROC / pixel AP | minutes / run |",
             "|---|---|" + "---|" * len(KEYS) + "---|---|"]
    for name in dict.fromkeys(r["variant"] for r in rows):
        rs = [r for r in rows if r["variant"] == name]

        def cell(key):
            v = 100 * np.array([r[key] for r in rs], float)
            return f"{v.mean():.1f} ± {v.std(ddof=1):.1f}" if len(v) > 1 else f"{v[0]:.1f}"
        table.append(f"| {name} | {len(rs)} | " + " | ".join(cell(f"DeSTSeg/{k}") for k in KEYS)
                     + f" | {cell('DeST/image_auroc')} / {cell('DeST/pixel_ap')} | "
                     + (f"{np.mean([r['minutes'] for r in rs]):.1f}" if all(r["minutes"] for r in rs) else "-") + " |")
    md = "\n".join(table)
    print(md)
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results + ".md").write_text(md + "\n")
    Path(args.results + ".json").write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
