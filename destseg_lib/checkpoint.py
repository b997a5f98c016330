"""Self-describing checkpoints: config, versions, weights (the input normalisation among them), optimiser state, thresholds.

A trained ``model.pt`` is never rewritten: the decision thresholds an evaluation chooses on a
validation split live beside it, in ``model.thresholds.json`` (:func:`write_thresholds`), tied to
the weights by their fingerprint; :func:`read_checkpoint` reads them into ``ckpt["thresholds"]``
(copy both files to move a model with its thresholds).

Writes are atomic (temporary file in the same folder, fsync, ``os.replace``): an interrupted save
never leaves a truncated checkpoint behind, and the temporary file an interrupted save leaves is
removed by :func:`remove_stale_temporaries` when the next run starts.  Files get the user's normal
mode (``0o666`` minus the umask), so a shared ``model.pt`` can be read by others.

Loading never executes code from the file: checkpoints are read with ``torch.load(...,
weights_only=True)``, which only rebuilds tensors and plain containers; everything the kit stores
is converted to such types when written (:func:`storable`), and a file holding anything else is
refused with a :class:`~destseg_lib.errors.CheckpointError`.
"""
from __future__ import annotations

import collections
import hashlib
import os
import pickle
import platform
import re
from pathlib import Path

import numpy as np
import torch

from .config import DeSTSegConfig
from .errors import CheckpointError
from .files import atomic_write, atomic_write_text
from .models import DeSTSeg

# The checkpoint format: "destseg-kit/2" adds ``finished`` (a final model, or a training checkpoint
# that resumes), ``fingerprint`` (of the weights, also stored in exported ONNX files) and
# ``dataset``.  Files of format 1 still load: their ``finished`` is derived from ``step``.
FORMAT = "destseg-kit/2"
READABLE_FORMATS = ("destseg-kit/1", FORMAT)
THRESHOLDS_FORMAT = "destseg-kit-thresholds/1"


def thresholds_path(checkpoint) -> Path:
    """Where the thresholds of ``checkpoint`` live: ``model.pt`` -> ``model.thresholds.json``."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(f"{checkpoint.stem}.thresholds.json")


def write_thresholds(checkpoint, ckpt: dict, thresholds: dict) -> Path:
    """Store ``thresholds`` beside ``checkpoint`` (atomically), for the weights of ``ckpt``."""
    import json

    record = {"format": THRESHOLDS_FORMAT, "checkpoint": Path(checkpoint).name,
              "fingerprint": _fingerprint_of(ckpt), "thresholds": thresholds}
    return atomic_write_text(thresholds_path(checkpoint), json.dumps(record, indent=2) + "\n")


def _fingerprint_of(ckpt: dict) -> str:
    return ckpt.get("fingerprint") or weights_fingerprint(ckpt["model"])


def _read_thresholds(path: Path, ckpt: dict) -> None:
    """``ckpt["thresholds"]`` from the file beside the checkpoint, when there is one for these weights
    (a file of other weights -- the model was retrained in place -- is ignored)."""
    import json

    side = thresholds_path(path)
    if not side.is_file() or not isinstance(ckpt.get("model"), dict):
        return
    try:
        record = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{side} cannot be read ({e}): delete it (the model's thresholds are then "
                              "chosen again by the next evaluation with a validation split)") from None
    if not isinstance(record, dict) or record.get("format") != THRESHOLDS_FORMAT:
        raise CheckpointError(f"{side} is not a destseg-kit thresholds file: delete or restore it")
    if record.get("fingerprint") == _fingerprint_of(ckpt) and isinstance(record.get("thresholds"), dict):
        ckpt["thresholds"] = record["thresholds"]
        ckpt["thresholds_file"] = str(side)


def versions() -> dict:
    import torchvision

    return {"torch": torch.__version__, "torchvision": torchvision.__version__, "numpy": np.__version__,
            "python": platform.python_version()}


# Names of the temporary files of atomic writes: "<target>.<random>.tmp" (this module's, and the
# mkstemp names of earlier versions), for the files a run writes.
_TEMP_RE = re.compile(r"^(?:.+\.pt|metrics\.json|config\.json|per_defect\.csv|per_image\.csv|train_log\.csv)"
                      r"(?:\.[A-Za-z0-9_]{6,24})?\.tmp$")


def storable(obj, where: str = "checkpoint"):
    """``obj`` with every value converted to what ``torch.load(weights_only=True)`` rebuilds: dicts,
    lists, tuples, str, int, float, bool, None, tensors (numpy scalars -> Python numbers, numpy
    arrays -> tensors, paths -> str).  Anything else is a :class:`CheckpointError` now, rather than
    a checkpoint that cannot be loaded later."""
    if obj is None or type(obj) in (bool, int, float, str):
        return obj
    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, (torch.dtype, torch.Size)):
        return obj
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.array(obj))
    if isinstance(obj, bool):
        return bool(obj)
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return float(obj)
    if isinstance(obj, str):
        return str(obj)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, dict):
        out = {storable(k, where): storable(v, f"{where}[{k!r}]") for k, v in obj.items()}
        return collections.OrderedDict(out) if isinstance(obj, collections.OrderedDict) else out
    if isinstance(obj, (list, tuple)):
        items = [storable(v, f"{where}[{i}]") for i, v in enumerate(obj)]
        return items if isinstance(obj, list) else tuple(items)
    raise CheckpointError(f"{where} holds a {type(obj).__module__}.{type(obj).__qualname__}, which a "
                          "checkpoint cannot store (only tensors, numbers, strings, lists and dicts): "
                          "convert it before saving")


def atomic_torch_save(obj, path) -> Path:
    """``torch.save`` of :func:`storable` ``(obj)`` to a temporary file next to ``path``, then rename
    over it (see :func:`atomic_write`)."""
    obj = storable(obj, Path(path).name)
    return atomic_write(path, lambda f: torch.save(obj, f))


def remove_stale_temporaries(out_dir) -> list[Path]:
    """Delete the temporary files that interrupted atomic writes left in ``out_dir`` and
    ``out_dir/checkpoints`` (``last.pt.<random>.tmp`` can be as large as the model); returns them."""
    removed = []
    for folder in (Path(out_dir), Path(out_dir) / "checkpoints"):
        if not folder.is_dir():
            continue
        for p in folder.iterdir():
            if _TEMP_RE.match(p.name) and p.is_file() and not p.is_symlink():
                try:
                    p.unlink()
                    removed.append(p)
                except FileNotFoundError:
                    pass
    return removed


def weights_fingerprint(state_dict: dict) -> str:
    """16 hex digits of SHA-256 over a state dict's sorted keys and each tensor's dtype, shape and
    bytes: the same weights give the same fingerprint on any machine; exported ONNX files carry the
    checkpoint's, so ``predict --onnx`` can check that both hold one model."""
    h = hashlib.sha256()
    for key in sorted(state_dict):
        t = state_dict[key]
        h.update(key.encode("utf-8"))
        if isinstance(t, torch.Tensor):
            t = t.detach().cpu().contiguous()
            h.update(f"{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        else:
            h.update(repr(t).encode("utf-8"))
    return h.hexdigest()[:16]


def make_checkpoint(model: DeSTSeg, cfg: DeSTSegConfig, *, finished: bool, dataset: str | None = None,
                    **extra) -> dict:
    """The checkpoint dict of ``model``: ``finished`` True for a trained model (``model.pt``), False
    for a training checkpoint that a run resumes from (``checkpoints/last.pt``); ``dataset``: the
    name of the split it was trained on (``mvtec/bottle``)."""
    weights = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    ckpt = {
        "format": FORMAT,
        "config": cfg.to_record(),
        "versions": versions(),
        "model": weights,
        "fingerprint": weights_fingerprint(weights),
        "finished": bool(finished),
        "dataset": dataset,
        "thresholds": {},
    }
    ckpt.update(extra)
    return ckpt


# Checkpoints written before this module converted everything to plain types hold torch.__version__
# as a TorchVersion (a str subclass with no behaviour of its own): allowed, so they still load.
_SAFE_GLOBALS = [torch.torch_version.TorchVersion]


def read_checkpoint(path) -> dict:
    """The checkpoint dict at ``path``, read without executing anything from the file
    (``weights_only=True``).  :class:`CheckpointError` if it is damaged, holds objects a checkpoint
    never holds (refused: unpickling them could run code), or is not a destseg-kit checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found: train one first (destseg train ...) "
                                "or pass the path of an existing .pt file")
    try:
        with torch.serialization.safe_globals(_SAFE_GLOBALS):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        bad = re.search(r"GLOBAL ([\w.]+)", str(e))
        if bad:
            raise CheckpointError(
                f"checkpoint {path} refused: it holds {bad.group(1)}, which no destseg checkpoint "
                "contains, and unpickling it could run code, so it was not loaded; use a checkpoint "
                "written by the kit, or retrain") from None
        raise CheckpointError(f"checkpoint {path} cannot be read ({_first_line(e)}); it is damaged "
                              "or not a destseg checkpoint: retrain or restore it") from None
    except Exception as e:  # truncated / not a torch file
        raise CheckpointError(f"checkpoint {path} cannot be read ({type(e).__name__}: {_first_line(e)}); "
                              "it is damaged or not a destseg checkpoint: retrain or restore it") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") not in READABLE_FORMATS:
        found = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"{path} is not a destseg-kit checkpoint (format {found!r}; this kit reads "
                              f"{', '.join(READABLE_FORMATS)}): pass a model.pt written by destseg train")
    if "finished" not in ckpt:  # format 1: a file is a final model when it holds every step
        try:
            total = DeSTSegConfig.from_dict(ckpt["config"]).total_steps
        except Exception:
            total = None
        ckpt["finished"] = total is not None and ckpt.get("step", total) >= total and "optim_student" not in ckpt
    _read_thresholds(path, ckpt)
    return ckpt


def is_finished(ckpt: dict) -> bool:
    """True for a trained model, False for a training checkpoint of an unfinished run."""
    return bool(ckpt.get("finished"))


def _first_line(e: BaseException) -> str:
    """The informative line of an exception message (torch's weights-only errors are long)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    pick = [ln for ln in lines if "Unsupported" in ln] or [
        ln for ln in lines if not ln.startswith(("Weights only load failed", "Please file", "Check the doc"))]
    line = (pick or lines or [type(e).__name__])[0]
    if len(line) <= 300:
        return line
    cut = line.rfind(". ", 0, 300)  # whole sentences only: never a message cut mid-sentence
    return line[:cut + 1] if cut > 0 else line[:line.rfind(" ", 0, 297)] + " ..."


def load_model(path, device="cpu", *, allow_unfinished: bool = False) -> tuple[DeSTSeg, dict]:
    """Load a checkpoint: the model (eval mode, on ``device``) and the checkpoint dict (config,
    thresholds...).  Refused with a one-line :class:`CheckpointError`: a training checkpoint of an
    unfinished run (``checkpoints/last.pt``: its segmentation net is not trained) unless
    ``allow_unfinished``; weights that are not finite (a diverged or damaged model); weights that do
    not fit the checkpoint's own config (an edited ``seg_width`` or teacher)."""
    ckpt = read_checkpoint(path)
    missing = [k for k in ("config", "model") if not isinstance(ckpt.get(k), dict)]
    if missing:
        raise CheckpointError(f"checkpoint {path} has no {' and no '.join(repr(m) for m in missing)} entry: "
                              "it is damaged or was edited; retrain or restore it")
    if not allow_unfinished and not is_finished(ckpt):
        step = ckpt.get("step")
        raise CheckpointError(
            f"{path} is the checkpoint of an unfinished training run (step {step}): its networks are not "
            "fully trained, so its scores mean little; finish the run (run the same destseg train / run "
            "command again), use its model.pt, or pass --allow-unfinished to use it anyway")
    try:
        cfg = DeSTSegConfig.from_dict(ckpt["config"])
    except Exception as e:
        raise CheckpointError(f"checkpoint {path}: its config is not valid ({_first_line(e)}); the file was "
                              "edited or damaged: retrain or restore it") from None
    bad = [k for k, v in ckpt["model"].items()
           if isinstance(v, torch.Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(f"checkpoint {path}: {len(bad)} weight tensor(s) hold NaN or infinite values "
                              f"(first: {bad[0]}): the training diverged or the file is damaged; retrain")
    model = DeSTSeg.from_config(cfg, teacher_weights="checkpoint")
    mismatch = weights_mismatch(model.state_dict(), ckpt["model"])
    if mismatch:
        raise CheckpointError(f"checkpoint {path}: its weights do not fit its config ({mismatch}); the config "
                              "or the weights were edited, or the file is damaged: retrain or restore it")
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval(), ckpt


def weights_mismatch(expected: dict, found: dict) -> str:
    """'' when ``found`` has exactly ``expected``'s keys and shapes, else a short description."""
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    shapes = [k for k in expected if k in found and tuple(expected[k].shape) != tuple(getattr(found[k], "shape", ()))]
    parts = []
    if shapes:
        k = shapes[0]
        parts.append(f"{len(shapes)} tensor(s) of another shape, e.g. {k}: {tuple(found[k].shape)} in the file, "
                     f"{tuple(expected[k].shape)} for the config")
    if missing:
        parts.append(f"{len(missing)} missing, e.g. {missing[0]}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected, e.g. {unexpected[0]}")
    return "; ".join(parts)
