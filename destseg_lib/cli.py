"""Command line: ``destseg demo | train | evaluate | predict``.

    destseg demo                                  # quick preset on the embedded toy data, no download
    destseg demo --dataset mvtec --data-root /data/mvtec_anomaly_detection --category bottle
    destseg train --preset paper --dataset mvtec --data-root ... --category bottle --out runs/bottle
    destseg evaluate --checkpoint runs/bottle/model.pt --dataset mvtec --data-root ... --category bottle
    destseg predict --checkpoint runs/bottle/model.pt --out maps/ img1.png img2.png

Problems the user can fix (bad values, data, checkpoints, devices, unwritable outputs, a diverged
training run) end in one line ``destseg: error: ...`` and exit code 2; ``--debug`` (or
``DESTSEG_DEBUG=1``) shows the traceback instead.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from .errors import ConfigError, DestSegError, DeviceError, OutputError


def _device(name: str) -> str:
    """The device string, checked: an unknown name or an unavailable CUDA / MPS device is a
    :class:`DeviceError` (instead of a traceback at the first tensor moved there)."""
    import torch

    from .viz import resolve_device  # one definition of "auto", shared with the notebooks

    resolved = resolve_device(name)
    try:
        dev = torch.device(resolved)
    except (RuntimeError, ValueError, TypeError) as e:
        raise DeviceError(f"--device {name!r} is not a device ({e}); use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"--device {name}: no CUDA GPU is available here (torch.cuda.is_available() is "
                              "False: no NVIDIA GPU/driver, or a CPU-only PyTorch build); use --device cpu "
                              "or --device auto")
        n = torch.cuda.device_count()
        if dev.index is not None and dev.index >= n:
            raise DeviceError(f"--device {name}: only {n} CUDA device(s) here (cuda:0..cuda:{n - 1})")
    elif dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise DeviceError(f"--device {name}: Apple MPS is not available here; use --device cpu or auto")
    elif dev.type != "cpu":
        raise DeviceError(f"--device {name}: not supported by the kit; use auto, cpu, cuda or cuda:N")
    return resolved


def _overrides(pairs: list[str]) -> dict:
    """``--set KEY=VALUE`` pairs -> {KEY: "VALUE"}; the strings are parsed by the config against the
    field's type ("false" -> False for a bool field, "abc" for an int field is a ConfigError)."""
    out = {}
    for pair in pairs:
        k, sep, v = pair.partition("=")
        if not sep or not k.strip():
            raise ConfigError(f"--set {pair!r}: use KEY=VALUE, e.g. --set seg_steps=200")
        out[k.strip()] = v
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
    print(_summary(out, report.files or []))
    return 0


def _summary(out: Path, files: list) -> str:
    """Where things went: only files that this run wrote (and the model)."""
    files = [Path(f) for f in files]
    numbers = [str(f) for f in files if f.suffix in (".json", ".csv")]
    figures = [f.name for f in files if f.suffix == ".png"]
    lines = [f"checkpoint: {out / 'model.pt'}"]
    if numbers:
        lines.append(f"numbers:    {', '.join(numbers)}")
    if figures:
        lines.append(f"figures:    {out / 'figures'}/ ({', '.join(figures)})")
    return "\n".join(lines)


def cmd_evaluate(args) -> int:
    from .checkpoint import load_model
    from .config import DeSTSegConfig
    from .data import TestImages, validate_split
    from .experiment import evaluate_predictions, format_table, open_split, write_json
    from .infer import predict_dataset

    device = _device(args.device)
    model, ckpt = load_model(args.checkpoint, device)
    cfg = DeSTSegConfig.from_dict(ckpt["config"])
    split = open_split(args.dataset, args.data_root, args.category)
    validate_split(split, require_test=True, check_train=False)  # every test image and mask, up front
    preds = predict_dataset(model, TestImages(split.test, cfg.image_size, resize=cfg.resize), device=device, top_t=cfg.top_t)
    results = evaluate_predictions(preds)
    print(format_table(results))
    if args.json:
        write_json(args.json, results)
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
        x = resize_image(img, cfg.image_size, cfg.resize)[None].to(device)
        res = predict(model, x, cfg.top_t)
        amap = res["anomaly_map"][0].cpu().numpy()
        amap = cv2.resize(amap, (img.shape[1], img.shape[0]), interpolation=cv2.INTER_LINEAR)
        name = Path(path).stem
        png = out / f"{name}_map.png"
        try:
            ok = cv2.imwrite(str(png), (np.clip(amap, 0, 1) * 255).astype(np.uint8))
        except cv2.error as e:
            ok, why = False, str(e).strip().splitlines()[-1]
        else:
            why = "cv2.imwrite returned False"
        if not ok:
            raise OutputError(f"cannot write {png} ({why}); check that {out} is a writable folder with "
                              "free space, or pass another --out")
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


def cmd_reproduce(args) -> int:
    from .reproduce import command

    return command(args)


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
    from .reproduce import add_arguments as _reproduce_arguments

    p = sub.add_parser("reproduce", help="a batch: datasets/categories x seeds x variants -> the paper's tables",
                       description="Run a reproduction grid (resumable; one record per run), then write results.csv, "
                       "summary.csv/.md, figures and REPORT.md.  See destseg_lib/reproduce.py and the README.")
    _reproduce_arguments(p)
    parser.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    for sp in sub.choices.values():  # also accepted after the subcommand (destseg demo --debug)
        sp.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the full traceback on errors")
    return parser


def error_message(e: BaseException) -> str | None:
    """The one-line message for an error the user can act on, or None for a bug (traceback)."""
    import torch

    if isinstance(e, DestSegError):
        return str(e)
    if isinstance(e, torch.cuda.OutOfMemoryError):
        return ("out of GPU memory; lower batch_size or image_size (--set batch_size=...), or use "
                "--device cpu")
    if isinstance(e, OSError):
        if e.filename is not None and e.strerror:
            where = f"{e.filename}" + (f" -> {e.filename2}" if e.filename2 else "")
            return (f"{where}: {e.strerror}; check that the path exists and that you may read / write "
                    "there (or pass another --out / --data-root)")
        return str(e) or type(e).__name__
    if isinstance(e, (ValueError, FloatingPointError)):  # raised before the kit's own types existed
        return f"{e} (run with --debug for the traceback)"
    text = str(e)
    if isinstance(e, (RuntimeError, AssertionError)) and ("CUDA" in text or "cuda" in text):
        first = text.strip().splitlines()[0] if text.strip() else type(e).__name__
        return f"CUDA: {first}; use --device cpu, or check the GPU and driver (run with --debug for details)"
    return None


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    debug = getattr(args, "debug", False) or os.environ.get("DESTSEG_DEBUG", "") not in ("", "0")
    try:
        if args.command in ("demo", "run"):
            return cmd_run(args)
        if args.command == "train":
            return cmd_run(args, evaluate=False)
        if args.command == "evaluate":
            return cmd_evaluate(args)
        if args.command == "reproduce":
            return cmd_reproduce(args)
        return cmd_predict(args)
    except KeyboardInterrupt:
        if debug:
            raise
        _close_progress_bars()
        resume = (" (run the same command again to resume training from the last checkpoint)"
                  if args.command in ("demo", "run", "train") else "")
        print(f"destseg: interrupted{resume}", file=sys.stderr)
        return 130
    except Exception as e:  # a clear line for what the user can fix; bugs keep their traceback
        message = None if debug else error_message(e)
        if message is None:
            raise
        _close_progress_bars()
        print(f"destseg: error: {message}", file=sys.stderr)
        return 2


def _close_progress_bars() -> None:
    """Finish progress bars an exception left open, so the error line stands on its own line."""
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        return
    for bar in list(getattr(tqdm, "_instances", ())):
        try:
            bar.close()
        except Exception:  # pragma: no cover - a bar that cannot close is no reason to hide the error
            pass


if __name__ == "__main__":
    sys.exit(main())
