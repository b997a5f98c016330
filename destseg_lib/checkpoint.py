"""Self-describing checkpoints: config, versions, normalisation, weights, optimiser state, thresholds.

Writes are atomic (temporary file in the same folder, fsync, ``os.replace``): an interrupted save
never leaves a truncated checkpoint behind.
"""
from __future__ import annotations

import os
import platform
import tempfile
from pathlib import Path

import numpy as np
import torch

from .config import DeSTSegConfig
from .models import DeSTSeg

FORMAT = "destseg-kit/1"


def versions() -> dict:
    import torchvision

    return {"torch": torch.__version__, "torchvision": torchvision.__version__, "numpy": np.__version__,
            "python": platform.python_version()}


def atomic_torch_save(obj, path) -> Path:
    """``torch.save`` to a temporary file next to ``path``, then rename over it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


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


def read_checkpoint(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found: train one first (destseg train ...) "
                                "or pass the path of an existing .pt file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # truncated / not a torch file
        raise ValueError(f"checkpoint {path} cannot be read ({type(e).__name__}: {e}); it is damaged "
                         "or not a destseg checkpoint: retrain or restore it") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ValueError(f"{path} is not a destseg-kit checkpoint (format {FORMAT!r} expected)")
    return ckpt


def load_model(path, device="cpu") -> tuple[DeSTSeg, dict]:
    """Load a checkpoint: the model (eval mode, on ``device``) and the checkpoint dict (config, thresholds...)."""
    ckpt = read_checkpoint(path)
    cfg = DeSTSegConfig.from_dict(ckpt["config"])
    model = DeSTSeg(cfg.teacher, "checkpoint", cfg.seg_input, cfg.seg_width)
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval(), ckpt
