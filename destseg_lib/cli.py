"""Command line: ``destseg run | demo | train | evaluate | predict | export | reproduce``.

    destseg demo                                  # = destseg run: quick preset on the embedded toy data
    destseg run --dataset mvtec --data-root /data/mvtec_anomaly_detection --category bottle
    destseg run --config runs/mvtec_bottle_quick/config.json --seed 1 --dataset mvtec ...  # repeat a run
    destseg train --preset paper --device cuda --dataset mvtec --data-root ... --category bottle --out runs/bottle
    destseg evaluate --checkpoint runs/bottle/model.pt --dataset mvtec --data-root ... --category bottle
    destseg predict --checkpoint runs/bottle/model.pt --out maps/ img1.png folder/ 'more/**/*.png'
    destseg export --checkpoint runs/bottle/model.pt --out bottle.onnx

``run`` trains (or loads the model already in ``--out``), evaluates and draws the figures; ``demo`` is
the same command, the README's first; ``train`` only trains.  Their base config is ``--preset``
(default quick) or ``--config FILE`` (a run's own ``config.json``, or YAML / JSON of config fields),
with ``--set KEY=VALUE`` on top.

Problems the user can fix (bad values, data, checkpoints, devices, unwritable outputs, a diverged
training run) end in one line ``destseg: error: ...`` and exit code 2; ``--debug`` (or
``DESTSEG_DEBUG=1``) shows the traceback instead.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from .config import PRESETS, TEACHERS
from .errors import ConfigError, DestSegError, DeviceError

#: The preset of run / demo / train without --preset or --config: minutes on a laptop CPU.
DEFAULT_PRESET = "quick"


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
    from .config import DeSTSegConfig, get_preset

    over = _overrides(args.set)
    if args.teacher:
        over["teacher"] = args.teacher
    if args.texture_dir:
        over["texture_dir"] = args.texture_dir
    if args.seed is not None:
        over["seed"] = args.seed
    if args.config:  # a run's config.json (or any YAML / JSON of fields): repeat or share a run
        if args.preset:
            raise ConfigError(f"--config {args.config} and --preset {args.preset}: the file is the whole config; "
                              "pass one of them (change single fields with --set KEY=VALUE)")
        return DeSTSegConfig.from_file(args.config).replace(**over)
    return get_preset(args.preset or DEFAULT_PRESET, **over)


def cmd_run(args, evaluate: bool = True) -> int:
    from .experiment import format_table, open_split, run
    from .train import train_model

    cfg = _config(args)
    split = open_split(args.dataset, args.data_root, args.category)
    out = Path(args.out or f"runs/{split.name.replace('/', '_')}_{cfg.preset}")
    device = _device(args.device)
    print(f"dataset {split.name}: {len(split.train)} train, {len(split.test)} test images "
          f"({'grayscale' if split.grayscale else 'colour'}); preset {cfg.preset}, teacher {cfg.teacher}, "
          f"{cfg.image_size}px, {cfg.student_steps}+{cfg.seg_steps} steps, device {device}")
    t0 = time.perf_counter()
    if not evaluate:
        res = train_model(cfg, split, out, device=device, resume=not args.retrain)
        print(f"trained in {res.seconds:.0f} s -> {res.checkpoint}")
        return 0
    report = run(cfg, split, out, device=device, retrain=args.retrain)
    print()
    print(format_table(report.results))
    print(f"\n(percent; {int(report.preds.labels.sum())} anomalous / {len(report.preds.labels)} test images; "
          f"pixel metrics at {_eval_size_words(cfg)}; total {time.perf_counter() - t0:.0f} s)")
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
    from .data import TestImages
    from .data_checks import validate_split
    from .experiment import evaluate_predictions, format_table, open_split, write_json
    from .infer import predict_dataset
    from .precision import resolve_precision
    from .thresholds import validation_of, split_off_validation

    device = _device(args.device)
    model, ckpt = load_model(args.checkpoint, device, allow_unfinished=args.allow_unfinished)
    if args.allow_unfinished and not ckpt.get("finished"):
        print(f"destseg: warning: {args.checkpoint} is an UNFINISHED training checkpoint (step {ckpt.get('step')}): "
              "these numbers are not those of a trained model", file=sys.stderr)
    cfg = DeSTSegConfig.from_dict(ckpt["config"])
    split = open_split(args.dataset, args.data_root, args.category)
    validate_split(split, require_test=True, check_train=False)  # every test image and mask, up front
    val_fraction, val_seed = validation_of(ckpt, cfg)
    val, test = split_off_validation(split.test, val_fraction, val_seed)
    if val:  # the images its thresholds were chosen on are not evaluated
        print(f"evaluating {len(test)} of {len(split.test)} test images: the other {len(val)} are the "
              f"validation split its thresholds were chosen on (val_fraction={val_fraction}, val_seed={val_seed})")
    test_set = TestImages.for_config(test, cfg)
    precision = resolve_precision(cfg.amp, device)  # the precision cfg.amp gives on this device
    preds = predict_dataset(model, test_set, device=device, top_t=cfg.top_t, precision=precision)
    if cfg.baseline:  # the training-free yardstick, from the checkpoint's own teacher (baseline.py)
        from .baseline import add_baseline

        preds, _ = add_baseline(preds, model, cfg, split.train, test_set)
    results = evaluate_predictions(preds)
    print(format_table(results))
    print(f"(percent; pixel metrics at {_eval_size_words(cfg)})")
    if args.json:
        extra = {"eval_size": cfg.resolved_eval_size, "precision": precision,
                 "train_precision": ckpt.get("precision")}
        if not ckpt.get("finished", True):  # --allow-unfinished: the file says so too
            extra["unfinished_checkpoint"] = f"{args.checkpoint} (step {ckpt.get('step')})"
        write_json(args.json, {name: {**res, **extra} for name, res in results.items()})
    return 0


def _eval_size_words(cfg) -> str:
    es = cfg.resolved_eval_size
    return f"{es} x {es}" if isinstance(es, int) else "each image's native size"


def cmd_predict(args) -> int:
    from .checkpoint import load_model, weights_fingerprint
    from .config import DeSTSegConfig
    from .scoring import check_threshold, predict_files, stored_thresholds, torch_scorer

    cli_image = check_threshold(args.threshold, "--threshold")  # nan / inf: one line, before any work
    cli_pixel = check_threshold(args.pixel_threshold, "--pixel-threshold")
    device = _device(args.device)
    model, ckpt = load_model(args.checkpoint, device, allow_unfinished=args.allow_unfinished)
    note = ""
    if not ckpt.get("finished", True):
        note = (f"UNFINISHED training checkpoint {args.checkpoint} (step {ckpt.get('step')}): "
                "not the scores of a trained model")
        print(f"destseg: warning: {args.checkpoint} is an UNFINISHED training checkpoint (step {ckpt.get('step')}): "
              "its scores are not those of a trained model; every row of predictions.csv says so", file=sys.stderr)
    cfg = DeSTSegConfig.from_dict(ckpt["config"])
    stored = stored_thresholds(ckpt)
    image_t = cli_image if cli_image is not None else check_threshold(
        stored["image"], f"the image threshold stored in {args.checkpoint}")
    pixel_t = cli_pixel if cli_pixel is not None else check_threshold(
        stored["pixel"], f"the pixel threshold stored in {args.checkpoint}")
    source = []
    if image_t is not None:
        source.append("image: " + ("--threshold" if cli_image is not None else stored["source"]))
    if pixel_t is not None:
        source.append("pixel: " + ("--pixel-threshold" if cli_pixel is not None else stored["source"]))
    if image_t is None or pixel_t is None:
        missing = " and ".join(n for n, t in (("image", image_t), ("pixel", pixel_t)) if t is None)
        print(f"destseg: note: no {missing} threshold: {args.checkpoint} stores none (it was trained without a "
              "validation split); scores and maps are written, decisions/masks need --threshold / "
              "--pixel-threshold, or train with --set val_fraction=0.3", file=sys.stderr)
    fingerprint = weights_fingerprint(ckpt["model"])
    if args.onnx:
        from .export import OnnxScorer, check_same_model

        scorer = OnnxScorer(args.onnx)
        check_same_model(args.onnx, scorer.metadata, args.checkpoint, fingerprint)
    else:
        scorer = torch_scorer(model, cfg.top_t)
    report = predict_files(args.inputs, scorer, cfg.image_size, args.out, resize=cfg.resize,
                           aspect=cfg.aspect, max_aspect=cfg.max_aspect,
                           image_threshold=image_t, pixel_threshold=pixel_t, threshold_source="; ".join(source),
                           batch_size=args.batch_size, overwrite=args.overwrite, resume=args.resume,
                           model_id=fingerprint, note=note)
    flagged = sum(r.get("decision") == "anomalous" for r in report.rows)
    decided = f", {flagged} anomalous at threshold {image_t:.4f} ({source[0]})" if image_t is not None else ""
    kept = f" ({report.resumed} kept from the earlier run)" if report.resumed else ""
    unfinished = " [UNFINISHED checkpoint]" if note else ""
    print(f"scored {report.n_scored} image(s){kept}{decided}; {len(report.failed)} input(s) failed -> "
          f"{report.csv_path}{unfinished}")
    return 1 if report.failed else 0


def cmd_export(args) -> int:
    from .export import export_checkpoint

    path = export_checkpoint(args.checkpoint, args.out, overwrite=args.overwrite)
    print(f"exported {args.checkpoint} -> {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0


def cmd_reproduce(args) -> int:
    from .reproduce import command

    return command(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="destseg", description=_plain(__doc__),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_ in (("run", "train (or load) + evaluate + figures: the kit's main command"),
                        ("demo", "the same as run (quick preset, embedded toy data unless told otherwise)"),
                        ("train", "train only (resumes an interrupted run in --out)")):
        p = sub.add_parser(name, help=help_, description=help_)
        _add_data_args(p)
        p.add_argument("--preset", default=None, choices=sorted(PRESETS),
                       help=f"the base config (default {DEFAULT_PRESET}; paper: the official recipe, a GPU job)")
        p.add_argument("--config", default=None, metavar="FILE",
                       help="the base config from a file instead: a run's config.json, or YAML / JSON of fields")
        p.add_argument("--teacher", default=None, choices=list(TEACHERS))
        p.add_argument("--texture-dir", default=None, help="DTD-layout folder (default: built-in textures)")
        p.add_argument("--seed", type=int, default=None)
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
        p.add_argument("--out", default=None, help="output folder (default runs/<dataset>_<preset>)")
        p.add_argument("--retrain", action="store_true", help="ignore an existing model / checkpoint in --out")
    p = sub.add_parser("evaluate", help="evaluate a checkpoint on a dataset's test split")
    _add_data_args(p)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--json", default=None, help="also write the metrics here")
    p.add_argument("--allow-unfinished", action="store_true",
                   help="accept the checkpoint of an unfinished training run (checkpoints/last.pt)")
    p = sub.add_parser("predict", help="anomaly maps and scores for your own images")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", default="predictions", help="output folder (refused if not empty, see --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="write into an existing, non-empty --out")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run into the same --out: images already done are kept")
    p.add_argument("--allow-unfinished", action="store_true",
                   help="accept the checkpoint of an unfinished training run (every output then says so)")
    p.add_argument("--threshold", type=float, default=None,
                   help="image-score threshold (default: the one stored with the checkpoint)")
    p.add_argument("--pixel-threshold", type=float, default=None,
                   help="anomaly-map threshold of the masks (default: the one stored with the checkpoint)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--onnx", default=None, help="score with onnxruntime on this exported file (destseg export)")
    p.add_argument("--device", default="auto")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders (recursive) or quoted globs")
    p = sub.add_parser("export", help="export a checkpoint's inference graph to ONNX")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", required=True, help="the .onnx file to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    from .reproduce import add_arguments as _reproduce_arguments

    p = sub.add_parser("reproduce", help="a batch: datasets/categories x seeds x variants -> the paper's tables",
                       description="Run a reproduction grid (resumable; one record per run), then write results.csv, "
                       "summary.csv/.md, figures and REPORT.md.  See destseg_lib/reproduce/ and the README.")
    _reproduce_arguments(p)
    parser.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    for sp in sub.choices.values():  # also accepted after the subcommand (destseg demo --debug)
        sp.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the full traceback on errors")
    return parser


def _plain(text: str) -> str:
    """A docstring for the terminal: reST literals (``x``) printed as x."""
    return text.replace("``", "")


COMMANDS = {
    "run": cmd_run,
    "demo": cmd_run,  # the README's first command: run, with the quick preset and the toy data by default
    "train": lambda args: cmd_run(args, evaluate=False),
    "evaluate": cmd_evaluate,
    "predict": cmd_predict,
    "export": cmd_export,
    "reproduce": cmd_reproduce,
}


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
        return COMMANDS[args.command](args)
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
