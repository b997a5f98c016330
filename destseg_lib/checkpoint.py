"""Self-describing checkpoints: config, versions, normalisation, weights, optimiser state, thresholds.

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
import os
import pickle
import platform
import re
import secrets
from pathlib import Path

import numpy as np
import torch

from .config import DeSTSegConfig
from .errors import CheckpointError
from .models import DeSTSeg

FORMAT = "destseg-kit/1"


def versions() -> dict:
    import torchvision

    return {"torch": torch.__version__, "torchvision": torchvision.__version__, "numpy": np.__version__,
            "python": platform.python_version()}


# Names of the temporary files of atomic writes: "<target>.<random>.tmp" (this module's, and the
# mkstemp names of earlier versions), for the files a run writes.
_TEMP_RE = re.compile(r"^(?:.+\.pt|metrics\.json|config\.json|per_defect\.csv|per_image\.csv|train_log\.csv)"
                      r"(?:\.[A-Za-z0-9_]{6,24})?\.tmp$")


def _open_temp(path: Path):
    """A new temporary file next to ``path`` (mode 0o666 minus the umask, like any new file)."""
    for _ in range(100):
        tmp = path.with_name(f"{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            return tmp, os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        except FileExistsError:
            continue
    raise FileExistsError(f"cannot create a temporary file next to {path}")


def atomic_write(path, write) -> Path:
    """Call ``write(binary_file)`` on a temporary file next to ``path``, fsync, then rename it over
    ``path``: readers see the old file or the new one, never half of one.  On any error (or
    interruption) the temporary file is removed and ``path`` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp, fd = _open_temp(path)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))


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


def make_checkpoint(model: DeSTSeg, cfg: DeSTSegConfig, **extra) -> dict:
    ckpt = {
        "format": FORMAT,
        "config": cfg.to_dict(),
        "versions": versions(),
        "normalisation": {"mean": model.mean.flatten().tolist(), "std": model.std.flatten().tolist()},
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
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
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a destseg-kit checkpoint (format {FORMAT!r} expected)")
    return ckpt


def _first_line(e: BaseException) -> str:
    """The informative line of an exception message (torch's weights-only errors are long)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    pick = [ln for ln in lines if "Unsupported" in ln] or [
        ln for ln in lines if not ln.startswith(("Weights only load failed", "Please file", "Check the doc"))]
    return ((pick or lines or [type(e).__name__])[0])[:200]


def load_model(path, device="cpu") -> tuple[DeSTSeg, dict]:
    """Load a checkpoint: the model (eval mode, on ``device``) and the checkpoint dict (config, thresholds...)."""
    ckpt = read_checkpoint(path)
    cfg = DeSTSegConfig.from_dict(ckpt["config"])
    model = DeSTSeg.from_config(cfg, teacher_weights="checkpoint")
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval(), ckpt
