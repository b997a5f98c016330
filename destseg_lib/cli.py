"""Command line: ``destseg demo | train | evaluate | predict``.

    destseg demo                                  # quick preset on the embedded toy data, no download
    destseg demo --dataset mvtec --data-root /data/mvtec_anomaly_detection --category bottle
    destseg train --preset paper --dataset mvtec --data-root ... --category bottle --out runs/bottle
    destseg evaluate --checkpoint runs/bottle/model.pt --dataset mvtec --data-root ... --category bottle
    destseg predict --checkpoint runs/bottle/model.pt --out maps/ img1.png img2.png
"""
from __future__ import annotations

import argparse
import ast
import json
import sys
import time
from pathlib import Path


def _device(name: str) -> str:
    from .viz import resolve_device  # one definition of "auto", shared with the notebooks

    return resolve_device(name)


def _overrides(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise SystemExit(f"--set {pair!r}: use KEY=VALUE, e.g. --set seg_steps=200")
        k, v = pair.split("=", 1)
        try:
            out[k] = ast.literal_eval(v)
        except (ValueError, SyntaxError):
            out[k] = v
    return out


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default="toy", choices=["toy", "mvtec", "mtd", "folder"])
    p.add_argument("--data-root", default=None, help="dataset folder (default: $DESTSEG_DATA, or ./data/toy for toy)")
    p.add_argument("--category", default=None, help="MVTec-layout category (toy: toy_part)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")


def _config(args):
    from .config import get_preset

    over = _overrides(args.set)
    if args.teacher:
        over["teacher"] = args.teacher
    if args.texture_dir:
        over["texture_dir"] = args.texture_dir
    if args.seed is not None:
        over["seed"] = args.seed
    return get_preset(args.preset, **over)


def cmd_run(args, evaluate: bool = True) -> int:
    from .experiment import format_table, open_split, run
    from .train import train

    cfg = _config(args)
    split = open_split(args.dataset, args.data_root, args.category)
    out = Path(args.out or f"runs/{split.name.replace('/', '_')}_{cfg.preset}")
    device = _device(args.device)
    print(f"dataset {split.name}: {len(split.train)} train, {len(split.test)} test images "
          f"({'grayscale' if split.grayscale else 'colour'}); preset {cfg.preset}, teacher {cfg.teacher}, "
          f"{cfg.image_size}px, {cfg.student_steps}+{cfg.seg_steps} steps, device {device}")
    t0 = time.perf_counter()
    if not evaluate:
        res = train(cfg, split, out, device=device, resume=not args.retrain)
        print(f"trained in {res.seconds:.0f} s -> {res.checkpoint}")
        return 0
    report = run(cfg, split, out, device=device, retrain=args.retrain)
    print()
    print(format_table(report.results))
    print(f"\n(percent; {int(report.preds.labels.sum())} anomalous / {len(report.preds.labels)} test images; "
          f"total {time.perf_counter() - t0:.0f} s)")
    print(f"checkpoint: {out / 'model.pt'}\nnumbers:    {out / 'metrics.json'}, {out / 'per_defect.csv'}, "
          f"{out / 'per_image.csv'}\nfigures:    {out / 'figures'}/")
    return 0


def cmd_evaluate(args) -> int:
    from .checkpoint import load_model
    from .config import DeSTSegConfig
    from .data import TestImages
    from .experiment import evaluate_predictions, format_table, open_split
    from .infer import predict_dataset

    device = _device(args.device)
    model, ckpt = load_model(args.checkpoint, device)
    cfg = DeSTSegConfig.from_dict(ckpt["config"])
    split = open_split(args.dataset, args.data_root, args.category)
    preds = predict_dataset(model, TestImages(split.test, cfg.image_size), device=device, top_t=cfg.top_t)
    results = evaluate_predictions(preds)
    print(format_table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


def cmd_predict(args) -> int:
    import csv

    import cv2
    import numpy as np

    from .checkpoint import load_model
    from .config import DeSTSegConfig
    from .data import read_image, resize_image
    from .infer import predict

    device = _device(args.device)
    model, ckpt = load_model(args.checkpoint, device)
    cfg = DeSTSegConfig.from_dict(ckpt["config"])
    thr = ckpt.get("thresholds", {}).get("image_score_best_f1_on_eval")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for path in args.images:
        img = read_image(path)
        x = resize_image(img, cfg.image_size)[None].to(device)
        res = predict(model, x, cfg.top_t)
        amap = res["anomaly_map"][0].cpu().numpy()
        amap = cv2.resize(amap, (img.shape[1], img.shape[0]), interpolation=cv2.INTER_LINEAR)
        name = Path(path).stem
        cv2.imwrite(str(out / f"{name}_map.png"), (np.clip(amap, 0, 1) * 255).astype(np.uint8))
        np.save(out / f"{name}_map.npy", amap.astype(np.float32))
        score = float(res["score"][0])
        rows.append({"path": str(path), "score": score,
                     "anomalous": "" if thr is None else bool(score >= thr)})
        print(f"{path}: score {score:.4f}" + ("" if thr is None else f" ({'ANOMALOUS' if score >= thr else 'normal'} at {thr:.4f})"))
    with open(out / "scores.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["path", "score", "anomalous"])
        w.writeheader()
        w.writerows(rows)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="destseg", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, preset, help_ in (("demo", "quick", "train + evaluate (quick preset, toy data by default)"),
                                ("train", "paper", "train only"),
                                ("run", "paper", "train (or load) + evaluate + figures")):
        p = sub.add_parser(name, help=help_)
        _add_data_args(p)
        p.add_argument("--preset", default=preset, choices=["paper", "quick", "ci"])
        p.add_argument("--teacher", default=None, choices=["resnet18", "efficientnet_lite0"])
        p.add_argument("--texture-dir", default=None, help="DTD-layout folder (default: built-in textures)")
        p.add_argument("--seed", type=int, default=None)
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
        p.add_argument("--out", default=None, help="output folder (default runs/<dataset>_<preset>)")
        p.add_argument("--retrain", action="store_true", help="ignore an existing model / checkpoint in --out")
    p = sub.add_parser("evaluate", help="evaluate a checkpoint on a dataset's test split")
    _add_data_args(p)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--json", default=None, help="also write the metrics here")
    p = sub.add_parser("predict", help="anomaly maps and scores for your own images")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", default="predictions")
    p.add_argument("--device", default="auto")
    p.add_argument("images", nargs="+")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command in ("demo", "run"):
            return cmd_run(args)
        if args.command == "train":
            return cmd_run(args, evaluate=False)
        if args.command == "evaluate":
            return cmd_evaluate(args)
        return cmd_predict(args)
    except (ValueError, FileNotFoundError) as e:  # DataError, TextureError, config errors: a clear message
        print(f"destseg: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
