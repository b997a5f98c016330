"""Is ``torch.compile`` of the training step worth it at a preset's budget, compile time included?

For each stage, precision and memory layout asked for: the eager step of
:func:`destseg_lib.train.training_step` and the same step with the networks it runs compiled
(``torch.compile``, inductor: the student in stage 1; teacher, student and segmentation net in stage 2),
on the preset's model and batch size (random teacher weights, synthetic batch: timing only).  Per row:
the first compiled call (compile time + one step), the steady ms per image (best of ``--reps`` steps),
and the minutes that stage would take at the preset's budget (``--steps1`` / ``--steps2``, default
the preset's) eager and compiled, compile time included.  Never asserts timings; prints a Markdown
table and writes it with JSON to ``--results``.  Run it alone (timings beside another job are wrong).

    python bench/compile_step.py                        # quick preset, bf16 + float32, NHWC
    python bench/compile_step.py --steps1 800 --steps2 800 --precisions bf16
"""
from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed import batch_of  # noqa: E402  (bench/ is not a package)

from destseg_lib.config import get_preset  # noqa: E402
from destseg_lib.precision import native_bf16_cpu  # noqa: E402
from destseg_lib.train import (build_model, channels_last_batch, make_optimizers,  # noqa: E402
                               to_channels_last, training_step)

DEFAULT_RESULTS = Path(__file__).resolve().parent / "results" / "compile_step"


def _compiled_copy(model, stage: int):
    """A deep copy of ``model`` whose networks of ``stage`` run through ``torch.compile``."""
    m = copy.deepcopy(model)
    names = ("student",) if stage == 1 else ("teacher", "student", "segmentation")
    for name in names:
        setattr(m, name, torch.compile(getattr(m, name)))
    return m


def measure(cfg, stage: int, precision: str, channels_last: bool, reps: int, steps: int) -> dict:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random teacher weights: fine for timing
        model = build_model(cfg)
    data = batch_of(cfg, cfg.batch_size)
    if channels_last:
        model, data = to_channels_last(model), channels_last_batch(data)
    comp = _compiled_copy(model, stage)
    rows = {}
    for label, m in (("eager", model), ("compiled", comp)):
        opt = make_optimizers(m, cfg)[stage - 1]
        t0 = time.perf_counter()
        training_step(m, data, cfg, stage, opt, precision)  # the compiled copy compiles here
        first = time.perf_counter() - t0
        best = float("inf")
        for _ in range(reps):
            t0 = time.perf_counter()
            training_step(m, data, cfg, stage, opt, precision)
            best = min(best, time.perf_counter() - t0)
        rows[label] = (first, best)
    (_, eager), (first_c, comp_s) = rows["eager"], rows["compiled"]
    compile_s = max(first_c - comp_s, 0.0)
    return {"stage": stage, "precision": precision, "layout": "NHWC" if channels_last else "NCHW",
            "batch": cfg.batch_size, "size": cfg.image_size, "steps": steps,
            "eager_ms_per_image": 1000 * eager / cfg.batch_size,
            "compiled_ms_per_image": 1000 * comp_s / cfg.batch_size, "compile_s": compile_s,
            "eager_min_at_budget": steps * eager / 60,
            "compiled_min_at_budget": (compile_s + steps * comp_s) / 60}


def table(rows, cfg) -> str:
    head = (f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}; preset "
            f"{cfg.preset!r} ({cfg.teacher}, {cfg.image_size}², batch {cfg.batch_size}, seg_width {cfg.seg_width}); "
            f"native BF16: {native_bf16_cpu()}\n\n")
    lines = ["| stage | precision | layout | eager ms / image | compiled ms / image | speed-up | compile s | "
             "steps | eager min | compiled min (incl. compile) |", "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['stage']} | {r['precision']} | {r['layout']} | {r['eager_ms_per_image']:.1f} | "
                     f"{r['compiled_ms_per_image']:.1f} | {r['eager_ms_per_image'] / r['compiled_ms_per_image']:.2f}x | "
                     f"{r['compile_s']:.0f} | {r['steps']} | {r['eager_min_at_budget']:.2f} | "
                     f"{r['compiled_min_at_budget']:.2f} |")
    return head + "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="quick")
    ap.add_argument("--precisions", nargs="+", default=["bf16", "float32"], choices=["bf16", "float32"])
    ap.add_argument("--layouts", nargs="+", default=["NHWC"], choices=["NHWC", "NCHW"])
    ap.add_argument("--stages", nargs="+", type=int, default=[1, 2], choices=[1, 2])
    ap.add_argument("--steps1", type=int, default=None, help="stage-1 steps of the budget (default: the preset's)")
    ap.add_argument("--steps2", type=int, default=None, help="stage-2 steps of the budget (default: the preset's)")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--results", default=str(DEFAULT_RESULTS), help="output prefix (.md and .json)")
    args = ap.parse_args(argv)
    cfg = get_preset(args.preset, teacher_weights=None)
    steps = {1: args.steps1 or cfg.student_steps, 2: args.steps2 or cfg.seg_steps}
    rows = []
    for stage in args.stages:
        for precision in args.precisions:
            for layout in args.layouts:
                r = measure(cfg, stage, precision, layout == "NHWC", args.reps, steps[stage])
                print(f"stage {stage} {precision:<8} {layout}: eager {r['eager_ms_per_image']:.1f} ms/img, compiled "
                      f"{r['compiled_ms_per_image']:.1f} ms/img after {r['compile_s']:.0f} s of compiling", flush=True)
                rows.append(r)
    text = table(rows, cfg)
    print("\n" + text)
    out = Path(args.results)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(text)
    out.with_suffix(".json").write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
