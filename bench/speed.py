"""Speed of DeSTSeg on this machine: the official graph's schedule vs ours, on the same maths.

Per configuration (image size x batch x teacher, paper widths: seg_width 256), ms per image of

* **stage 1** (student) and **stage 2** (segmentation) training steps, forward + backward + SGD:
  - ``naive`` — the official graph's schedule: every step runs the whole model (teacher on the clean
    and on the corrupted image, student on the corrupted one, segmentation net on -(T_hat*S_hat)),
    computes the losses of both stages and back-propagates their sum through everything that
    requires grad (the student in stage 2 too); the optimiser of the stage steps;
  - ``ours`` — :func:`destseg_lib.train.training_step`: stage 1 runs teacher + student only, stage 2
    computes the frozen features without autograd and trains the segmentation net; ``ours + NHWC``
    the same with channels-last weights and batches;
* **inference** (maps + top-T score):
  - ``naive`` — the official test forward: model(img) with img_origin = img, so teacher and student
    run twice, BN unfolded, ``no_grad``;
  - ``ours`` — :func:`destseg_lib.infer.predict` (plain) and :class:`destseg_lib.fast.FastPredictor`
    (BN folded, ``inference_mode``; with ``channels_last``; with ``torch.compile`` when ``--compile``);
    onnxruntime on the exported graph (when installed);
* **bf16** (on by default, ``--no-bf16`` to skip): the same steps with ``precision="bf16"`` (autocast
  around the networks, float32 losses, maps and master weights: not the same maths), labelled
  "emulated" on a CPU without native BF16 (no ``avx512_bf16`` / ``amx_bf16`` flag), where it is
  slower than float32 and says nothing about a CPU that has it.

Each row gives ms per image, **synthetic images per minute** of this CPU (60 000 / ms per image,
all ``threads`` threads busy) and per core-minute (divided by the threads), the kit's main performance figure:
the bottle row of 800 + 800 steps of batch 8 is 6 400 images per stage.  A summary table lists, per
stage, size and precision, the fastest of "ours" and its share of the peak.

FLOPs per image are counted with ``torch.utils.flop_counter`` on the same step (a multiply-add =
2 FLOPs; backward included for training), giving achieved GFLOP/s, and the share of this machine's
dense-conv peak (:func:`conv_peak`: the best undilated 3x3 conv of the head's shapes, timed the
same way).  Shares above 100 % happen: the counter counts every tap of the dilated ASPP
convolutions, also those on the zero padding (at 1/4 resolution most of the rate-12/18 taps),
which oneDNN's kernels need not compute.  bf16 rows are shared against a bf16 conv peak measured
the same way (bf16 tensors).  Data: the time to synthesise one training batch (Perlin + DTD-like
textures) in the main process, i.e. what the model waits per step with ``prefetch=0`` and
``num_workers=0`` (with ``prefetch >= 1``, the default, a thread makes it during the step).

``--profile`` prints torch.profiler's per-op table (self CPU time) of one stage-2 step per
configuration (float32, channels-last; and bf16).  ``--quick``: a smoke run (batch 2, the
EfficientNet-Lite0 teacher, seg_width 32, one timed call, no naive schedule, no onnxruntime, a
small conv peak) that writes no results unless ``--results`` is given.

Never asserts timings; prints a Markdown table and writes it (and JSON) to --results.  Run it
alone: timings taken beside another CPU job are wrong.

    python bench/speed.py                                   # the full grid (long on 2 cores)
    python bench/speed.py --sizes 256 --batches 8 --teachers resnet18
    python bench/speed.py --quick --sizes 128 --profile   # smoke test: seconds to a minute
"""
from __future__ import annotations

import argparse
import copy
import json
import platform
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from destseg_lib.config import VARIANTS, get_preset
from destseg_lib.fast import FastPredictor, available_cpus
from destseg_lib.infer import predict, top_t_score
from destseg_lib.losses import cosine_loss, segmentation_loss
from destseg_lib.models import cosine_distance_maps, de_st_map, segmentation_input
from destseg_lib.precision import native_bf16_cpu
from destseg_lib.train import build_model, channels_last_batch, make_optimizers, to_channels_last, training_step

DEFAULT_RESULTS = str(Path(__file__).parent / "results" / "speed")


def timed(fn, reps: int, warmup: int = 1) -> float:
    """Best wall seconds of ``reps`` calls after ``warmup`` calls (best-of: the least disturbed)."""
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def flops_of(fn) -> float:
    with FlopCounterMode(display=False) as fc:
        fn()
    return float(fc.get_total_flops())


def conv_peak(reps: int, dtype=torch.float32, batch: int = 8, scale: int = 1) -> float:
    """This machine's dense-conv peak, GFLOP/s: the best of undilated 3x3 convolutions of the segmentation
    head's shapes (256 -> 256 at 64x64, 1024 -> 256 at 32x32; batch 8, forward), in NCHW and in
    NHWC memory order, each the best of ``reps`` timed calls.  (Dilated convolutions are left out:
    the FLOP counter counts the taps that fall on the zero padding, which the kernels may skip.)
    ``dtype=torch.bfloat16``: the same convolutions on bf16 weights and inputs; ``batch`` and
    ``scale`` (sides divided by it) shrink them for a smoke run (emulated bf16 convolutions run at
    ~1-10 GFLOP/s)."""
    best = 0.0
    for cin, hw in ((256, 64 // scale), (1024, 32 // scale)):
        conv = torch.nn.Conv2d(cin, 256, 3, padding=1, bias=False).eval().to(dtype)
        x = torch.randn(batch, cin, hw, hw).to(dtype)
        flops = 2 * cin * 256 * 9 * hw * hw * batch
        for nhwc in (False, True):
            c = copy.deepcopy(conv).to(memory_format=torch.channels_last) if nhwc else conv
            xi = x.contiguous(memory_format=torch.channels_last) if nhwc else x

            def run():
                with torch.inference_mode():
                    c(xi)
            best = max(best, flops / timed(run, reps) / 1e9)
    return best


def batch_of(cfg, batch: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    s = cfg.image_size
    clean = torch.rand(batch, 3, s, s, generator=g)
    mask = (torch.rand(batch, 1, s, s, generator=g) > 0.9).float()
    aug = clean * (1 - mask) + mask * torch.rand(batch, 3, s, s, generator=g)
    return clean, aug, mask


def naive_step(model, batch, cfg, stage, optimizer):
    """The official graph's schedule (module docstring)."""
    clean, aug, mask = batch
    model.student.train(stage == 1)
    model.segmentation.train(stage == 2)
    with torch.no_grad():
        t_clean = model.teacher(model.normalize(clean))
        t_aug = model.teacher(model.normalize(aug))
    s_aug = model.student_features(model.normalize(aug))
    probs = model.segmentation(segmentation_input(t_aug, s_aug, cfg.seg_input))
    loss = cosine_loss(cosine_distance_maps(t_clean, s_aug)) + segmentation_loss(probs, mask, cfg.focal_gamma)["loss"]
    model.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


@torch.no_grad()
def naive_inference(model, images, top_t):
    """The official test forward: the model run with img_origin = img (teacher and student twice)."""
    model.eval()
    x = model.normalize(images)
    t_aug, s_aug = model.teacher(x), model.student_features(x)
    seg = model.segmentation(segmentation_input(t_aug, s_aug, "product"))
    t_orig, s_orig = model.teacher(x.clone()), model.student_features(x.clone())
    de_st = de_st_map(cosine_distance_maps(t_orig, s_orig), images.shape[-2:])[:, 0]
    amap = F.interpolate(seg, size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    return amap, top_t_score(amap, top_t), de_st, top_t_score(de_st, top_t)


def data_seconds(cfg, batch: int, reps: int) -> float:
    """Seconds to synthesise one training batch in this process (what the model waits, 0 workers)."""
    from destseg_lib.data import TrainImages, mvtec_split
    from destseg_lib.synthesis import AnomalySynthesizer
    from destseg_lib.textures import make_texture_source
    from destseg_lib.toy import make_toy_dataset
    from destseg_lib.train import SyntheticBatches

    split = mvtec_split(make_toy_dataset("data/toy"), "toy_part")
    synth = AnomalySynthesizer.from_config(cfg, make_texture_source(None), False)
    images = TrainImages(split.train, cfg.image_size)
    batches = SyntheticBatches(images, synth, batch, 0)
    for i in range(len(images)):  # decode once (the training set is cached)
        images[i]
    step = iter(range(10 ** 6))
    return timed(lambda: batches[next(step)], reps)


def profile_stage2(model, data, cfg, opt, precision: str, rows: int = 25) -> str:
    """torch.profiler's per-op table (sorted by self CPU time) of one stage-2 training step after a
    warm-up step."""
    from torch.profiler import ProfilerActivity, profile

    training_step(model, data, cfg, 2, opt, precision)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=False) as prof:
        training_step(model, data, cfg, 2, opt, precision)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def measure(teacher: str, size: int, batch: int, variant: str, reps: int, args, peak: float,
            peak_bf16: float | None = None) -> list[dict]:
    over = dict(VARIANTS[variant])
    cfg = get_preset("paper", teacher=teacher, image_size=size, batch_size=batch, seg_width=args.seg_width,
                     teacher_weights=None, **over)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random teacher weights: fine for timing
        model = build_model(cfg)
    opt_s, opt_g = make_optimizers(model, cfg)
    data = batch_of(cfg, batch)
    rows = []
    base = {"teacher": teacher, "size": size, "batch": batch, "variant": variant}

    bf16_label = "bf16" if native_bf16_cpu() else "bf16 (emulated)"
    threads = torch.get_num_threads()

    def add(phase, mode, fn, flops_fn=None, precision="float32"):
        seconds = timed(fn, reps, args.warmup)
        flops = flops_of(flops_fn or fn) / batch
        ms = 1000 * seconds / batch
        ref = peak_bf16 if precision == "bf16" and peak_bf16 else peak
        rows.append({**base, "phase": phase, "mode": mode, "precision": bf16_label if precision == "bf16" else
                     "float32", "ms_per_image": ms, "images_per_min": 60000 / ms,
                     "images_per_core_min": 60000 / ms / threads, "gflop_per_image": flops / 1e9,
                     "gflops": flops / 1e9 / (ms / 1000), "peak_share": flops / 1e9 / (ms / 1000) / ref})
        print(f"  {teacher:<18} {size:>3} b{batch:<3} {variant:<8} {phase:<10} {mode:<30} {ms:9.1f} ms/img "
              f"{60000 / ms:8.0f} img/min", flush=True)

    model_cl = to_channels_last(copy.deepcopy(model))
    opt_cl = make_optimizers(model_cl, cfg)
    data_cl = channels_last_batch(data)
    for stage, opt in ((1, opt_s), (2, opt_g)):
        phase = f"stage {stage}"
        if phase.replace(" ", "") not in args.phases:
            continue
        if not args.quick:
            add(phase, "naive", lambda: naive_step(model, data, cfg, stage, opt))
        add(phase, "ours", lambda: training_step(model, data, cfg, stage, opt))
        add(phase, "ours + NHWC", lambda: training_step(model_cl, data_cl, cfg, stage, opt_cl[stage - 1]))
        if args.bf16:  # not the same maths: bf16 convolutions (float32 losses)
            add(phase, "ours, bf16", lambda: training_step(model, data, cfg, stage, opt, "bf16"),
                lambda: training_step(model, data, cfg, stage, opt), precision="bf16")
            add(phase, "ours + NHWC, bf16",
                lambda: training_step(model_cl, data_cl, cfg, stage, opt_cl[stage - 1], "bf16"),
                lambda: training_step(model, data, cfg, stage, opt), precision="bf16")
        if args.profile and stage == 2:
            for prec in ("float32",) + (("bf16",) if args.bf16 else ()):
                print(f"\n### profile: stage 2 step, {teacher} {size} b{batch} {variant}, NHWC, {prec}\n")
                print(profile_stage2(model_cl, data_cl, cfg, opt_cl[1], prec), flush=True)
    if "inference" not in args.phases:
        return rows
    x = data[1]
    if not args.quick:
        add("inference", "naive", lambda: naive_inference(model, x, cfg.top_t))
    add("inference", "ours: predict", lambda: predict(model, x, cfg.top_t))
    fast = FastPredictor(model, cfg.top_t)
    add("inference", "ours: BN folded", lambda: fast(x))
    fast_cl = FastPredictor(model, cfg.top_t, channels_last=True)
    add("inference", "ours: folded + NHWC", lambda: fast_cl(x))
    if args.bf16:
        fast16 = FastPredictor(model, cfg.top_t, precision="bf16")
        add("inference", "ours: folded, bf16", lambda: fast16(x), lambda: fast(x), precision="bf16")
        fast16_cl = FastPredictor(model, cfg.top_t, channels_last=True, precision="bf16")
        add("inference", "ours: folded + NHWC, bf16", lambda: fast16_cl(x), lambda: fast(x), precision="bf16")
    if args.compile:
        comp = FastPredictor(model, cfg.top_t, compile=True)
        comp(x)  # compiles (minutes); falls back to eager with a warning
        add("inference", "ours: folded, compiled" if comp.compiled else "compile failed: eager",
            lambda: comp(x), lambda: fast(x))
    try:
        if args.quick:
            raise ImportError("not in a smoke run")
        import onnxruntime  # noqa: F401

        from destseg_lib.export import OnnxScorer, export_onnx
        path = Path(args.results or DEFAULT_RESULTS).parent / f"_speed_{teacher}_{size}.onnx"
        export_onnx(model, path, size, cfg.top_t)
        scorer = OnnxScorer(path)
        add("inference", "onnxruntime", lambda: scorer.run(x), lambda: fast(x))
        path.unlink(missing_ok=True)
    except ImportError:
        pass
    if variant == "destseg" and "stage1" in args.phases:
        ms = 1000 * data_seconds(cfg, batch, reps) / batch
        rows.append({**base, "phase": "data", "mode": "synthesis, in the step (prefetch=0)", "precision": "float32",
                     "ms_per_image": ms, "images_per_min": 60000 / ms, "images_per_core_min": 60000 / ms})
    return rows


def table(rows: list[dict]) -> str:
    out = ["| teacher | size | batch | variant | phase | mode | precision | ms / image | images / min | "
           "images / core-min | naive / this | GFLOP / image | GFLOP/s | share of conv peak |",
           "|---|---:|---:|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    naive = {(r["teacher"], r["size"], r["batch"], r["variant"], r["phase"]): r["ms_per_image"]
             for r in rows if r["mode"] == "naive"}
    for r in rows:
        key = (r["teacher"], r["size"], r["batch"], r["variant"], r["phase"])
        ratio = f"{naive[key] / r['ms_per_image']:.2f}x" if key in naive and r["mode"] != "naive" else ""
        fl = (f"{r['gflop_per_image']:.2f} | {r['gflops']:.0f} | {100 * r['peak_share']:.0f} %"
              if "gflops" in r else " | | ")
        out.append(f"| {r['teacher']} | {r['size']} | {r['batch']} | {r['variant']} | {r['phase']} | {r['mode']} | "
                   f"{r.get('precision', 'float32')} | {r['ms_per_image']:.1f} | {r.get('images_per_min', 0):.0f} | "
                   f"{r.get('images_per_core_min', 0):.0f} | {ratio} | {fl} |")
    return "\n".join(out)


def summary(rows: list[dict]) -> str:
    """Per teacher, size, batch, stage and precision: the fastest of the kit's own modes."""
    best = {}
    for r in rows:
        if r["mode"] == "naive" or r["phase"] == "data" or "compile" in r["mode"]:
            continue
        key = (r["teacher"], r["size"], r["batch"], r["variant"], r["phase"], r.get("precision", "float32"))
        if key not in best or r["ms_per_image"] < best[key]["ms_per_image"]:
            best[key] = r
    out = ["| teacher | size | batch | variant | phase | precision | fastest mode | ms / image | images / min | "
           "images / core-min | share of peak |", "|---|---:|---:|---|---|---|---|---:|---:|---:|---:|"]
    for key, r in best.items():
        out.append(f"| {' | '.join(str(k) for k in key)} | {r['mode']} | {r['ms_per_image']:.1f} | "
                   f"{r['images_per_min']:.0f} | {r['images_per_core_min']:.0f} | {100 * r['peak_share']:.0f} % |")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 128])
    ap.add_argument("--batches", type=int, nargs="+", default=None, help="default 8 32 (--quick: 2)")
    ap.add_argument("--teachers", nargs="+", default=None,
                    help="default resnet18 efficientnet_lite0 (--quick: efficientnet_lite0)")
    ap.add_argument("--variants", nargs="+", default=["destseg"], choices=sorted(VARIANTS))
    ap.add_argument("--reps", type=int, default=None, help="timed repeats (best of; default 2, --quick 1)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: batch 2, Lite0, 1 timed call, no naive rows, no files unless --results")
    ap.add_argument("--seg-width", type=int, default=None, help="segmentation width (default 256, the paper's; "
                    "--quick: 32)")
    ap.add_argument("--profile", action="store_true", help="print torch.profiler's per-op table of a stage-2 step")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: the CPUs available)")
    ap.add_argument("--phases", nargs="+", default=["stage1", "stage2", "inference"],
                    choices=["stage1", "stage2", "inference"])
    ap.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True,
                    help="also bf16 (training steps and inference; default on, --no-bf16 to skip)")
    ap.add_argument("--compile", action="store_true", help="also torch.compile'd inference (slow to compile)")
    ap.add_argument("--results", default=None, help=f"output prefix (default {DEFAULT_RESULTS}; --quick: none)")
    args = ap.parse_args(argv)
    args.batches = args.batches or ([2] if args.quick else [8, 32])
    args.teachers = args.teachers or (["efficientnet_lite0"] if args.quick else ["resnet18", "efficientnet_lite0"])
    args.reps = args.reps or (1 if args.quick else 2)
    args.seg_width = args.seg_width or (32 if args.quick else 256)
    if args.results is None and not args.quick:
        args.results = DEFAULT_RESULTS
    threads = torch.get_num_threads() if args.threads is None and torch.get_num_threads() <= available_cpus() \
        else (args.threads or available_cpus())
    torch.set_num_threads(threads)
    shrink = dict(batch=1, scale=2) if args.quick else {}
    peak = conv_peak(1 if args.quick else max(3, args.reps), **shrink)
    peak_bf16 = conv_peak(1 if args.quick else max(3, args.reps), torch.bfloat16, **shrink) if args.bf16 else None
    native = native_bf16_cpu()
    head = (f"{platform.processor() or platform.machine()}, {available_cpus()} CPUs, torch {torch.__version__}, "
            f"{threads} threads{'; SMOKE RUN (--quick): not comparable' if args.quick else ''}; dense 3x3 conv peak {peak:.0f} GFLOP/s (float32)"
            + (f", {peak_bf16:.0f} GFLOP/s (bf16{'' if native else ', emulated: no native BF16 on this CPU'})"
               if peak_bf16 else ""))
    print(head, flush=True)
    rows = []
    for teacher in args.teachers:
        for size in args.sizes:
            for batch in args.batches:
                for variant in args.variants:
                    rows += measure(teacher, size, batch, variant, args.reps, args, peak, peak_bf16)
    md = f"{head}\n\n{summary(rows)}\n\n{table(rows)}\n"
    print(md)
    if args.results is None:
        return 0
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results + ".md").write_text(md)
    Path(args.results + ".json").write_text(json.dumps({"machine": head, "peak_gflops": peak,
                                                        "peak_gflops_bf16": peak_bf16, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
