"""Does bf16 autocast hold quality?  The gate for ``amp="auto"`` on CPUs with native BF16.

Each dataset is trained and evaluated in float32 (``amp="off"``) and in bf16 (``amp="bf16"``: autocast
in training and in inference, master weights, optimisers and losses in float32), same seeds, same
config: the ``quick`` preset with 800 + 800 steps (batch 8, 128^2 square; 6,400 synthetic images per
stage), DTD-subset textures, whole test split, no NN baseline (it runs in float32 either way).  The
gate: for every metric of DeSTSeg, the bf16 mean lies within one float32 seed's std (sample std over
the seeds) of the float32 mean.

    DESTSEG_DATA=../shared/data python bench/bf16_quality.py                  # bottle and MTD, seeds 0 1 2
    DESTSEG_DATA=../shared/data python bench/bf16_quality.py --datasets bottle --seeds 0

Resumable: each run lives in ``runs/bench_bf16/<dataset>/<amp>/seed<N>`` and is loaded when it is
there (``experiment.run``).  Runs go in pairs (bf16 then float32 of one seed), so a stopped study
leaves comparable pairs.  Writes ``bench/results/bf16_quality.{md,json}``.  "minutes" are wall time of
training + evaluation of runs trained by this invocation, "CPU min" the process's CPU time (all its
threads: about cores x wall when it runs alone); run it alone on the machine for either to mean
anything (quality numbers do not depend on what else runs).  A run paused with SIGSTOP keeps its CPU
minutes right and its wall minutes not.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from destseg_lib.config import get_preset
from destseg_lib.experiment import open_split, run
from destseg_lib.precision import describe_precision

KEYS = ("image_auroc", "pixel_auroc", "pixel_ap", "aupro", "iap", "iap90")
DATASETS = {"bottle": ("mvtec", "mvtec", "bottle"), "mtd": ("mtd", "mtd", None)}
AMPS = ("bf16", "off")
HERE = Path(__file__).resolve().parent


def config(amp: str, seed: int, data_root: Path, steps: tuple[int, int]):
    return get_preset("quick", student_steps=steps[0], seg_steps=steps[1], amp=amp, seed=seed,
                      baseline=False, texture_dir=str(data_root / "dtd_subset" / "images"))


def measure(name: str, amp: str, seed: int, data_root: Path, runs: Path, steps) -> dict:
    kind, sub, category = DATASETS[name]
    out = runs / name / amp / f"seed{seed}"
    timing = out / "bench_minutes.json"
    split = open_split(kind, data_root / sub, category)
    t0, c0 = time.perf_counter(), time.process_time()
    trained_here = not (out / "model.pt").exists()
    report = run(config(amp, seed, data_root, steps), split, out, progress=False, figures=False)
    if trained_here:
        timing.write_text(json.dumps({"minutes": round((time.perf_counter() - t0) / 60, 2),
                                      "cpu_minutes": round((time.process_time() - c0) / 60, 2)}))
    meta = json.loads((out / "metrics.json").read_text())
    spent = json.loads(timing.read_text()) if timing.exists() else {}
    return {"dataset": name, "amp": amp, "seed": seed, "precision": meta.get("precision"),
            "train_precision": meta.get("train_precision"), "minutes": spent.get("minutes"),
            "cpu_minutes": spent.get("cpu_minutes"),
            **{f"{m}/{k}": report.results[m][k] for m in ("DeSTSeg", "DeST") for k in KEYS}}


def _stats(rows, key):
    v = 100 * np.array([r[key] for r in rows if r[key] is not None], float)
    if len(v) == 0:
        return None, None
    return float(v.mean()), (float(v.std(ddof=1)) if len(v) > 1 else None)


def table(rows: list[dict], steps) -> tuple[str, dict]:
    lines = [f"bf16 vs float32, `quick` preset with {steps[0]} + {steps[1]} steps (batch 8, 128² square, "
             f"{8 * steps[0]:,} + {8 * steps[1]:,} synthetic images), metrics at 256², whole test split, "
             "percent, mean ± std over seeds.", "",
             f"Machine: {os.cpu_count()} cores; {describe_precision('auto')}", ""]
    verdict = {}
    for name in DATASETS:
        by_amp = {a: [r for r in rows if r["dataset"] == name and r["amp"] == a] for a in AMPS}
        paired = sorted({r["seed"] for r in by_amp["bf16"]} & {r["seed"] for r in by_amp["off"]})
        if not paired:
            continue
        by_amp = {a: [r for r in rs if r["seed"] in paired] for a, rs in by_amp.items()}
        lines += [f"### {name} (seeds {', '.join(map(str, paired))})", "",
                  "| method | precision | " + " | ".join(KEYS) + " | minutes | CPU min |",
                  "|---|---|" + "---:|" * (len(KEYS) + 2)]
        ok = []
        for method in ("DeSTSeg", "DeST"):
            for amp in ("off", "bf16"):
                cells = []
                for k in KEYS:
                    m, s = _stats(by_amp[amp], f"{method}/{k}")
                    cells.append("-" if m is None else f"{m:.1f}" + ("" if s is None else f" ± {s:.1f}"))
                spent = []
                for key in ("minutes", "cpu_minutes"):
                    v = [r[key] for r in by_amp[amp] if r.get(key) is not None]
                    spent.append(f"{np.mean(v):.1f}" if v else "-")
                label = "float32" if amp == "off" else "bf16"
                lines.append(f"| {method} | {label} | " + " | ".join(cells + spent) + " |")
            diffs = []
            for k in KEYS:
                m32, s32 = _stats(by_amp["off"], f"{method}/{k}")
                m16, _ = _stats(by_amp["bf16"], f"{method}/{k}")
                if m32 is None or m16 is None:
                    diffs.append("-")
                    continue
                within = s32 is not None and abs(m16 - m32) <= s32
                if method == "DeSTSeg":
                    ok.append(within)
                diffs.append(f"{m16 - m32:+.1f}" + ("" if s32 is None else (" ✓" if within else " ✗")))
            lines.append(f"| {method} | bf16 − float32 | " + " | ".join(diffs) + " | | |")
        passed = bool(ok) and all(ok) and len(paired) > 1
        verdict[name] = {"seeds": paired, "passed": passed}
        lines += ["", f"Gate ({name}, DeSTSeg, every metric: |bf16 mean − float32 mean| ≤ float32 std): "
                      + ("**passed**" if passed else "**not passed**" if len(paired) > 1 else "needs ≥ 2 seeds"), ""]
    lines += ["### Each run", "", "| dataset | seed | precision | DeSTSeg " + " / ".join(KEYS)
              + " | DeST " + " / ".join(KEYS) + " | minutes | CPU min |", "|---|---:|---|---|---|---:|---:|"]
    for r in rows:
        label = "float32" if r["amp"] == "off" else "bf16"
        cells = [" / ".join(f"{100 * r[f'{m}/{k}']:.1f}" for k in KEYS) for m in ("DeSTSeg", "DeST")]
        spent = ["-" if r.get(key) is None else f"{r[key]:.1f}" for key in ("minutes", "cpu_minutes")]
        lines.append(f"| {r['dataset']} | {r['seed']} | {label} | " + " | ".join(cells + spent) + " |")
    return "\n".join(lines + [""]), verdict


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--steps", nargs=2, type=int, default=[800, 800], metavar=("STUDENT", "SEG"))
    ap.add_argument("--runs", type=Path, default=Path("runs/bench_bf16"))
    ap.add_argument("--out", type=Path, default=HERE / "results" / "bf16_quality")
    args = ap.parse_args(argv)
    data_root = Path(os.environ.get("DESTSEG_DATA", HERE.parent.parent / "shared" / "data"))
    rows = []
    for name in args.datasets:
        for seed in args.seeds:
            for amp in AMPS:
                t0 = time.perf_counter()
                rows.append(measure(name, amp, seed, data_root, args.runs, tuple(args.steps)))
                r = rows[-1]
                print(f"{name} seed {seed} {amp:4s} ({r['precision']}): DeSTSeg "
                      + " / ".join(f"{100 * r[f'DeSTSeg/{k}']:.1f}" for k in KEYS)
                      + f"  [{time.perf_counter() - t0:.0f} s here]", flush=True)
                text, verdict = table(rows, tuple(args.steps))
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.with_suffix(".md").write_text(text + "\n")
                args.out.with_suffix(".json").write_text(json.dumps({"rows": rows, "verdict": verdict}, indent=1))
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
