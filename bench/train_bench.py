"""Training and inference speed per preset on this machine: seconds per step for stage 1 (student)
and stage 2 (segmentation), images/s at inference, and peak memory.  Prints a markdown table.

    python bench/train_bench.py                       # quick + ci presets, both teachers
    python bench/train_bench.py --presets paper --steps 3 --device cuda

Each configuration runs in a fresh subprocess so that its peak RSS (ru_maxrss) is its own.
Numbers taken while another CPU-heavy job runs are wrong: run it alone.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def measure(preset: str, teacher: str, steps: int, device: str, seg_width: int | None) -> dict:
    import torch

    from destseg_lib import get_preset, make_texture_source
    from destseg_lib.data import TrainImages
    from destseg_lib.infer import predict
    from destseg_lib.losses import cosine_loss, segmentation_loss
    from destseg_lib.models import cosine_distance_maps, segmentation_input
    from destseg_lib.synthesis import AnomalySynthesizer
    from destseg_lib.toy import make_toy_dataset
    from destseg_lib.data import mvtec_split
    from destseg_lib.train import SyntheticBatches, build_model, make_optimizers

    over = {"teacher": teacher, "teacher_weights": "imagenet" if teacher == "efficientnet_lite0" else None}
    if seg_width:
        over["seg_width"] = seg_width
    cfg = get_preset(preset, **over)
    split = mvtec_split(make_toy_dataset("data/toy"), "toy_part")
    synth = AnomalySynthesizer.from_config(cfg, make_texture_source(None), False)
    batches = SyntheticBatches(TrainImages(split.train, cfg.image_size), synth, cfg.batch_size, 0)
    dev = torch.device(device)
    model = build_model(cfg).to(dev)
    opt_s, opt_g = make_optimizers(model, cfg)
    t0 = time.perf_counter()
    data = [batches[s] for s in range(steps + 1)]
    t_data = (time.perf_counter() - t0) / (steps + 1)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def stage1(b):
        clean, aug, _ = (t.to(dev) for t in b)
        with torch.no_grad():
            t = model.teacher(model.normalize(clean))
        loss = cosine_loss(cosine_distance_maps(t, model.student(model.normalize(aug))))
        opt_s.zero_grad()
        loss.backward()
        opt_s.step()

    def stage2(b):
        _, aug, mask = (t.to(dev) for t in b)
        with torch.no_grad():
            t, s = model.features(aug)
        loss = segmentation_loss(model.segmentation(segmentation_input(t, s, cfg.seg_input)), mask)["loss"]
        opt_g.zero_grad()
        loss.backward()
        opt_g.step()

    out = {"preset": preset, "teacher": teacher, "image": cfg.image_size, "batch": cfg.batch_size,
           "seg_width": cfg.seg_width, "data s/batch": t_data}
    model.student.train(); model.segmentation.eval()
    for name, fn in (("stage1 s/step", stage1), ("stage2 s/step", stage2)):
        if name.startswith("stage2"):
            model.student.eval(); model.segmentation.train()
        fn(data[0]); sync()  # warm-up
        t0 = time.perf_counter()
        for b in data[1:]:
            fn(b)
        sync()
        out[name] = (time.perf_counter() - t0) / steps
    x = data[0][1].to(dev)
    predict(model, x, cfg.top_t); sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        predict(model, x, cfg.top_t)
    sync()
    out["infer img/s"] = steps * x.shape[0] / (time.perf_counter() - t0)
    out["est. train min"] = (cfg.student_steps * (out["stage1 s/step"] + t_data)
                             + cfg.seg_steps * (out["stage2 s/step"] + t_data)) / 60
    out["peak RSS MiB"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if dev.type == "cuda":
        out["peak CUDA MiB"] = torch.cuda.max_memory_allocated() / 2 ** 20
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=["quick", "ci"])
    ap.add_argument("--teachers", nargs="+", default=["efficientnet_lite0", "resnet18"])
    ap.add_argument("--seg-width", type=int, default=None, help="override the preset's seg_width")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        preset, teacher = args.child.split(",")
        print(json.dumps(measure(preset, teacher, args.steps, args.device, args.seg_width)))
        return
    rows = []
    for preset in args.presets:
        for teacher in args.teachers:
            cmd = [sys.executable, __file__, "--child", f"{preset},{teacher}", "--steps", str(args.steps),
                   "--device", args.device] + (["--seg-width", str(args.seg_width)] if args.seg_width else [])
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode:
                print(res.stderr, file=sys.stderr)
                continue
            rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
    if not rows:
        sys.exit("no configuration ran")
    keys = list(rows[0])
    print(f"# training speed ({args.device}, {args.steps} timed steps each; ResNet18 teacher with random "
          "weights, same cost as ImageNet's)\n")
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for r in rows:
        print("| " + " | ".join(f"{r.get(k, ''):.3g}" if isinstance(r.get(k), float) else str(r.get(k, ""))
                                for k in keys) + " |")


if __name__ == "__main__":
    main()
