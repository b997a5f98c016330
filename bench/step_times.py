"""Seconds per training step of each variant of a reproduce batch, from its runs' train_log.csv.

    python bench/step_times.py runs/mtd_batch [--seeds 1 2]

Per variant: stage 1 and stage 2 seconds per step (median over the run's steps, so that checkpoint
writes and the first, warming-up steps do not count; then mean ± std over seeds) and the total
training minutes.  The steps of a run resumed after a kill are left out of its total.  Timings
taken while another CPU job ran are wrong: pass the seeds that ran alone.
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np


def run_times(log: Path) -> dict | None:
    rows = list(csv.DictReader(open(log)))
    if not rows:
        return None
    t = np.array([float(r["seconds"]) for r in rows])
    stage = np.array([int(r["stage"]) for r in rows])
    dt = np.diff(np.r_[0.0, t])
    ok = dt > 0  # a resumed run restarts its clock: the first step after the restart is dropped
    out = {"minutes": float(dt[ok].sum() / 60)}
    for s in (1, 2):
        sel = (stage == s) & ok
        if sel.sum() > 2:
            out[f"stage{s}"] = float(np.median(dt[sel][1:]))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("batch")
    ap.add_argument("--seeds", type=int, nargs="*", default=None)
    args = ap.parse_args(argv)
    runs = sorted(Path(args.batch).glob("runs/*/*/seed*/train_log.csv"))
    by_variant: dict[str, list[dict]] = {}
    for log in runs:
        seed = int(log.parent.name[4:])
        if args.seeds is not None and seed not in args.seeds:
            continue
        t = run_times(log)
        if t:
            by_variant.setdefault(f"{log.parts[-4]}/{log.parts[-3]}", []).append(t)
    print("| dataset/variant | runs | stage 1 s/step | stage 2 s/step | training minutes |")
    print("|---|---:|---:|---:|---:|")
    for name, ts in by_variant.items():
        def cell(key, fmt="{:.3f}"):
            v = np.array([t[key] for t in ts if key in t])
            if not v.size:
                return "-"
            return fmt.format(v.mean()) + (f" ± {fmt.format(v.std(ddof=1))}" if v.size > 1 else "")
        print(f"| {name} | {len(ts)} | {cell('stage1')} | {cell('stage2')} | {cell('minutes', '{:.1f}')} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
