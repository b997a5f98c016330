"""Speed and memory of destseg_lib.metrics on a synthetic set the size of the MVTec AD test set.

    python bench/metrics_bench.py                 # full size: 1725 maps 256x256
    python bench/metrics_bench.py --n-images 200  # quick look

Synthetic data: ``--n-images`` float32 maps (default 1725, 256x256); ~73 % of the images
(1258 of 1725, as in MVTec AD) carry 1-3 blob / scratch regions of very different sizes; the
maps are a blurred copy of the mask times a random strength plus Gaussian noise.

Each metric runs alone in a fresh subprocess that loads the data from .npy files, so the
reported peak RSS is honest: "extra peak RSS" = VmHWM (reset after loading) minus the RSS
with the data loaded; "numpy peak" = tracemalloc peak of a second, traced run (numpy reports
its buffers to tracemalloc).  Times are the best of ``--repeat`` untraced runs
(time.perf_counter).  On a subset (``--naive-n`` maps) naive loops in the style of the
official DeSTSeg / anomalib code (one ROC per region; per-instance full-image sums) are timed
against ours.  Timings are printed, never asserted.  The markdown tables are printed and
written to bench/results/metrics_bench.txt.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc
from bisect import bisect_left
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from destseg_lib import metrics as M  # noqa: E402

MIB = 1024 * 1024
TASKS = ["image_auroc", "pixel_auroc", "pixel_ap", "aupro", "pro_curve", "iap", "evaluate",
         "accumulator"]


# ----------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------
def make_data(n_images: int, size: int, n_anomalous: int, seed: int):
    rng = np.random.default_rng(seed)
    maps = rng.standard_normal((n_images, size, size), dtype=np.float32)
    maps *= 0.12
    masks = np.zeros((n_images, size, size), dtype=bool)
    anomalous = rng.permutation(n_images)[:n_anomalous]
    canvas = np.zeros((size, size), np.uint8)
    for i in anomalous:
        canvas[:] = 0
        for _ in range(int(rng.choice([1, 2, 3], p=[0.58, 0.29, 0.13]))):
            cx, cy = (int(v) for v in rng.integers(size // 8, size - size // 8, 2))
            if rng.random() < 0.2:  # a thin scratch
                ang = rng.uniform(0, np.pi)
                ln = rng.uniform(0.05, 0.3) * size
                p0 = (int(cx - ln * np.cos(ang)), int(cy - ln * np.sin(ang)))
                p1 = (int(cx + ln * np.cos(ang)), int(cy + ln * np.sin(ang)))
                cv2.line(canvas, p0, p1, 1, int(rng.integers(1, 4)))
            else:  # a blob, radius log-uniform from 1.5 % to 25 % of the image
                r = np.exp(rng.uniform(np.log(0.015), np.log(0.25))) * size
                axes = (max(1, int(r)), max(1, int(r * rng.uniform(0.3, 1.0))))
                cv2.ellipse(canvas, (cx, cy), axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
        masks[i] = canvas > 0
        sig = cv2.GaussianBlur(canvas.astype(np.float32), (0, 0), 2.0)
        maps[i] += sig * np.float32(rng.uniform(0.2, 1.0))
    maps += np.float32(0.2)
    return maps, masks


# ----------------------------------------------------------------------------------------
# memory helpers
# ----------------------------------------------------------------------------------------
def _status_kib(field: str):
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # resets VmHWM (Linux >= 4.0)
        return True
    except OSError:
        return False


def _peak_kib() -> int:
    v = _status_kib("VmHWM")
    return v if v is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


# ----------------------------------------------------------------------------------------
# one task in a child process
# ----------------------------------------------------------------------------------------
def _run_task(task: str, maps, masks, batch: int):
    if task == "image_auroc":
        scores = maps.reshape(len(maps), -1).max(1)
        labels = masks.reshape(len(masks), -1).any(1)
        return lambda: M.image_auroc(scores, labels)
    if task == "pixel_auroc":
        return lambda: M.pixel_auroc(maps, masks)
    if task == "pixel_ap":
        return lambda: M.pixel_ap(maps, masks)
    if task == "aupro":
        return lambda: M.aupro(maps, masks)
    if task == "pro_curve":
        return lambda: len(M.pro_curve(maps, masks)[0])
    if task == "iap":
        return lambda: M.iap(maps, masks)
    if task == "evaluate":
        return lambda: M.evaluate(maps, masks)
    if task == "accumulator":
        def run():
            acc = M.MetricAccumulator()
            for lo in range(0, len(maps), batch):
                acc.update(maps[lo:lo + batch], masks[lo:lo + batch])
            return acc.compute()
        return run
    raise SystemExit(f"unknown task {task}")


def child(args) -> None:
    maps = np.load(os.path.join(args.data, "maps.npy"))
    masks = np.load(os.path.join(args.data, "masks.npy"))
    fn = _run_task(args.child, maps, masks, args.batch)
    best = float("inf")
    extra_rss = None
    for rep in range(args.repeat):
        rss0 = _status_kib("VmRSS")
        can_reset = _reset_peak()
        t0 = time.perf_counter()
        value = fn()
        dt = time.perf_counter() - t0
        best = min(best, dt)
        if rep == 0 and rss0 is not None and can_reset:
            extra_rss = (_peak_kib() - rss0) * 1024
    tracemalloc.start()
    fn()
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(json.dumps({"time": best, "extra_rss": extra_rss, "traced_peak": traced_peak,
                      "value": value}))


def run_child(task: str, data: str, args) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", task, "--data", data,
           "--repeat", str(args.repeat), "--batch", str(args.batch)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------------
# naive, official-style loops (for the subset comparison)
# ----------------------------------------------------------------------------------------
def _components(masks):
    cca = np.zeros(masks.shape, np.int64)
    nxt = 0
    for i, m in enumerate(masks):
        n, lab = cv2.connectedComponents(m.astype(np.uint8), connectivity=8)
        lab = lab.astype(np.int64)
        lab[lab > 0] += nxt
        cca[i] = lab
        nxt += n - 1
    return cca


def naive_aupro(maps, masks, fpr_limit=0.3):
    """numpy/sklearn port of the official DeSTSeg AUPRO (anomalib <= 2.2): one ROC per region."""
    from sklearn.metrics import auc, roc_curve

    preds, target = maps.ravel(), masks.ravel()
    cca = _components(masks).ravel()
    fpr = roc_curve(target, preds, drop_intermediate=False)[0]
    output_size = int(np.count_nonzero(fpr <= fpr_limit))
    tpr_acc = np.zeros(output_size)
    fpr_acc = np.zeros(output_size)
    new_idx = np.arange(output_size, dtype=np.float64)
    labels = np.unique(cca)[1:]
    background = cca == 0

    def interp1d(old_x, old_y, new_x):
        eps = np.finfo(np.float64).eps
        slope = (old_y[1:] - old_y[:-1]) / (eps + (old_x[1:] - old_x[:-1]))
        idx = np.clip(np.searchsorted(old_x, new_x) - 1, 0, old_x.size - 2)
        return old_y[idx] + slope[idx] * (new_x - old_x[idx])

    for label in labels:
        interp = False
        new_idx[-1] = output_size - 1
        mask = cca == label
        sel = background | mask
        _fpr, _tpr, _ = roc_curve(mask[sel], preds[sel], drop_intermediate=False)
        if _fpr[_fpr <= fpr_limit].max() == 0:
            _lim = _fpr[_fpr > fpr_limit].min()
        else:
            _lim = fpr_limit
        _idx = np.where(_fpr <= _lim)[0]
        if not np.allclose(_fpr[_idx].max(), fpr_limit):
            t = int(np.searchsorted(_fpr, fpr_limit))
            _idx = np.append(_idx, t)
            slope = 1 - ((_fpr[t] - fpr_limit) / (_fpr[t] - _fpr[t - 1]))
            interp = True
        f, tp = _fpr[_idx], _tpr[_idx]
        fi = _idx.astype(np.float64)
        fi /= fi.max()
        fi *= new_idx.max()
        if interp:
            new_idx[-1] = fi[-2] + (fi[-1] - fi[-2]) * slope
        tpr_acc += interp1d(fi, tp, new_idx)
        fpr_acc += interp1d(fi, f, new_idx)
    tpr_acc /= labels.size
    fpr_acc /= labels.size
    order = np.argsort(fpr_acc, kind="stable")
    return float(auc(fpr_acc[order], tpr_acc[order]) / fpr_acc[-1])


def naive_iap(maps, masks, ioi=0.5, recall_thresh=0.9):
    """numpy port of the official DeSTSeg IAPS loop: per-instance full-image sums (with the
    true-positive count fixed to (pred >= t) & target, see metrics.iap)."""
    preds, target = maps.ravel(), masks.ravel()
    cca = _components(masks).ravel()
    ins_scores = []
    for label in np.unique(cca)[1:]:
        heat = np.sort(preds[cca == label])[::-1]
        ins_scores.append(float(heat[int(ioi * len(heat))]))
    ins_scores.sort()
    recall, precision = [], []
    for i, score in enumerate(ins_scores):
        recall.append(1 - i / len(ins_scores))
        pos = preds >= score
        precision.append(float(np.sum(pos & target) / np.sum(pos)))
    for i in range(len(precision) - 1):
        precision[i + 1] = max(precision[i + 1], precision[i])
    ap = sum(precision) / len(ins_scores)
    recall, precision = recall[::-1], precision[::-1]
    return ap, precision[bisect_left(recall, recall_thresh)]


def _timed(fn, repeat=1):
    best, val = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        val = fn()
        best = min(best, time.perf_counter() - t0)
    return best, val


def naive_table(maps, masks, repeat: int):
    from sklearn.metrics import average_precision_score, roc_auc_score

    y, s = masks.ravel(), maps.ravel()
    rows = []
    t_n, v_n = _timed(lambda: roc_auc_score(y, s), repeat)
    t_o, v_o = _timed(lambda: M.pixel_auroc(maps, masks), repeat)
    rows.append(("pixel AUROC", "sklearn roc_auc_score on all pixels", t_n, t_o, f"{v_n:.6f}", f"{v_o:.6f}"))
    t_n, v_n = _timed(lambda: average_precision_score(y, s), repeat)
    t_o, v_o = _timed(lambda: M.pixel_ap(maps, masks), repeat)
    rows.append(("pixel AP", "sklearn average_precision_score", t_n, t_o, f"{v_n:.6f}", f"{v_o:.6f}"))
    t_n, v_n = _timed(lambda: naive_aupro(maps, masks), 1)
    t_o, v_o = _timed(lambda: M.aupro(maps, masks), repeat)
    rows.append(("AUPRO", "official/anomalib: one ROC per region (biased)", t_n, t_o, f"{v_n:.6f}", f"{v_o:.6f}"))
    t_n, v_n = _timed(lambda: naive_iap(maps, masks), 1)
    t_o, v_o = _timed(lambda: M.iap(maps, masks, interpolated=True), repeat)
    rows.append(("IAP / IAP@90 (interpolated)", "official: per-instance full-image sums", t_n, t_o,
                 f"{v_n[0]:.6f} / {v_n[1]:.6f}", f"{v_o[0]:.6f} / {v_o[1]:.6f}"))
    t_all, _ = _timed(lambda: M.evaluate(maps, masks), repeat)
    rows.append(("all of the above", "sum of the naive rows", sum(r[2] for r in rows), t_all, "", ""))
    return rows


# ----------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------
def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n-images", type=int, default=1725)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--anomalous-fraction", type=float, default=1258 / 1725)
    p.add_argument("--naive-n", type=int, default=20, help="maps for the naive-loop comparison")
    p.add_argument("--repeat", type=int, default=2, help="untraced timing runs (best is kept)")
    p.add_argument("--batch", type=int, default=32, help="batch size for MetricAccumulator")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tasks", nargs="*", default=TASKS, choices=TASKS)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "metrics_bench.txt"))
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return child(args)

    n_anom = int(round(args.n_images * args.anomalous_fraction))
    t0 = time.perf_counter()
    maps, masks = make_data(args.n_images, args.size, n_anom, args.seed)
    t_gen = time.perf_counter() - t0
    n_regions = None  # filled from evaluate below
    a_px = int(masks.sum())
    tmp = tempfile.mkdtemp(prefix="metrics_bench_")
    lines = []
    try:
        np.save(os.path.join(tmp, "maps.npy"), maps)
        np.save(os.path.join(tmp, "masks.npy"), masks)
        sub_maps = np.ascontiguousarray(maps[: args.naive_n])
        sub_masks = np.ascontiguousarray(masks[: args.naive_n])
        del maps, masks
        results = {}
        for task in args.tasks:
            print(f"  running {task} ...", file=sys.stderr, flush=True)
            results[task] = run_child(task, tmp, args)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    ev = results.get("evaluate", {}).get("value") or results.get("accumulator", {}).get("value")
    if ev:
        n_regions = ev["n_regions"]
    lines.append("# destseg_lib.metrics benchmark")
    lines.append("")
    lines.append(
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores (shared), Python "
        f"{platform.python_version()}, numpy {np.__version__}, OpenCV {cv2.__version__}. "
        f"Data generated in {t_gen:.1f} s."
    )
    lines.append(
        f"Synthetic set: {args.n_images} maps {args.size}x{args.size} float32 "
        f"({args.n_images * args.size * args.size / 1e6:.1f} M pixels, maps "
        f"{args.n_images * args.size * args.size * 4 / MIB:.0f} MiB + masks "
        f"{args.n_images * args.size * args.size / MIB:.0f} MiB), {n_anom} anomalous images, "
        f"{n_regions if n_regions is not None else '?'} regions, {a_px} anomalous pixels "
        f"({100 * a_px / (args.n_images * args.size ** 2):.2f} %)."
    )
    lines.append("")
    lines.append(
        "Each metric alone, fresh subprocess with the data loaded; time = best of "
        f"{args.repeat} (perf_counter); extra peak RSS = VmHWM during the call minus RSS "
        "before it; numpy peak = tracemalloc peak of a separate traced call."
    )
    lines.append("")
    lines.append("| metric | time (s) | extra peak RSS (MiB) | numpy peak, tracemalloc (MiB) | value |")
    lines.append("|---|---:|---:|---:|---|")
    names = {"evaluate": "**evaluate (all metrics, one shared pass)**",
             "accumulator": f"MetricAccumulator (batches of {args.batch}) + compute",
             "pro_curve": "pro_curve (vertices returned)"}
    for task, r in results.items():
        v = r["value"]
        if isinstance(v, dict):
            vs = "see below"
        elif isinstance(v, list):
            vs = " / ".join(f"{x:.4f}" for x in v)
        elif task == "pro_curve":
            vs = f"{v} vertices"
        else:
            vs = f"{v:.4f}"
        rss = "n/a" if r["extra_rss"] is None else f"{r['extra_rss'] / MIB:.0f}"
        t = f"**{r['time']:.2f}**" if task == "evaluate" else f"{r['time']:.2f}"
        lines.append(f"| {names.get(task, task)} | {t} | {rss} | {r['traced_peak'] / MIB:.0f} | {vs} |")
    lines.append("")
    lines.append(
        "tracemalloc counts every numpy allocation at its full size, RSS only touched pages: "
        "MetricAccumulator allocates the final buffer before it copies (and frees) the batches "
        "into it, so its traced peak is higher than its RSS peak."
    )
    if ev:
        lines.append("")
        lines.append("evaluate() -> " + ", ".join(
            f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in ev.items()))
    lines.append("")
    print("\n".join(lines), flush=True)

    if args.naive_n <= 0:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("\n".join(lines))
        return None
    print(f"  naive comparison on {args.naive_n} maps ...", file=sys.stderr, flush=True)
    rows = naive_table(sub_maps, sub_masks, args.repeat)
    k_sub = M.evaluate(sub_maps, sub_masks)["n_regions"]
    tail = []
    tail.append(
        f"Naive loops in the style of the official code vs ours, first {args.naive_n} maps "
        f"({int(sub_masks.reshape(len(sub_masks), -1).any(1).sum())} anomalous, {k_sub} regions). "
        "AUPRO values differ on purpose (official normalisation, see metrics.aupro); IAP is "
        "compared in the official interpolated form, where the values must agree."
    )
    tail.append("")
    tail.append("| metric | naive implementation | naive (s) | ours (s) | speed-up | naive value | our value |")
    tail.append("|---|---|---:|---:|---:|---|---|")
    for name, how, tn, to, vn, vo in rows:
        tail.append(f"| {name} | {how} | {tn:.3f} | {to:.3f} | {tn / to:.0f}x | {vn} | {vo} |")
    tail.append("")
    print("\n".join(tail), flush=True)
    lines.extend(tail)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    print(f"saved to {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
