"""Faster inference with the same maths: BatchNorm folded into the convolutions, ``inference_mode``,
optional channels-last memory format and ``torch.compile`` (with a clean fallback), and the
thread setting that fits the machine.

Everything here is an *engineering* transformation of a trained :class:`~destseg_lib.models.DeSTSeg`:
the outputs equal :func:`destseg_lib.infer.predict`'s within float tolerance (``tests/test_fast.py``
checks maps and scores to 1e-4 absolute after folding, channels-last and both together).

* :func:`fold_batchnorm` — in a *copy* of the model (the original is untouched), every eval-mode
  ``BatchNorm2d`` that directly follows a convolution is merged into that convolution's weight and
  bias (``w' = w * g / sqrt(v + eps)``, ``b' = (b - m) * g / sqrt(v + eps) + beta``) and replaced by
  an identity.  Pairs are taken only where the data flow is known: consecutive children of an
  ``nn.Sequential`` and the named conv/BN pairs of torchvision's ResNet blocks and
  EfficientNet-Lite's MBConv blocks (:data:`CONV_BN_PAIRS`).  Every DeSTSeg variant (both
  teachers, the three students, both ASPPs, adaptive fusion) folds completely.
* :class:`InferenceGraph` — the whole inference as one module, images in [0, 1] -> (anomaly map,
  top-T score, DeST map, DeST score): what :func:`destseg_lib.infer.predict` computes, as tensors
  (so that it can be compiled, or exported to ONNX).
* :class:`FastPredictor` — :class:`InferenceGraph` of the folded copy, run under
  ``torch.inference_mode``; ``channels_last=True`` converts weights and inputs to NHWC;
  ``compile=True`` wraps it in ``torch.compile`` and falls back to eager execution (with a warning)
  if compiling fails on this machine (no C++ compiler, unsupported backend...).  Whether the two
  options pay is a property of the hardware: measure with ``bench/speed.py`` (both default off).
  ``precision="bf16"`` runs the networks under bf16 autocast, the maps in float32
  (:func:`destseg_lib.infer.forward_in`; not the same maths: close, not equal).
* :func:`set_threads` — intra-op threads = the CPUs this process may use (``sched_getaffinity``),
  not ``os.cpu_count()`` of the host.
"""
from __future__ import annotations

import copy
import os
import warnings

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from .infer import forward_in, maps_and_scores
from .precision import check_precision

# (conv, batchnorm) attribute pairs of known blocks whose forward applies the BN right after the conv.
CONV_BN_PAIRS = {
    "BasicBlock": (("conv1", "bn1"), ("conv2", "bn2")),  # torchvision ResNet
    "Bottleneck": (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3")),
    "MBConvBlock": (("_expand_conv", "_bn0"), ("_depthwise_conv", "_bn1"), ("_project_conv", "_bn2")),
    "EfficientNet": (("_conv_stem", "_bn0"), ("_conv_head", "_bn1")),
}


def _foldable(conv, bn) -> bool:
    return (isinstance(conv, nn.Conv2d) and type(bn) is nn.BatchNorm2d and bn.track_running_stats
            and bn.running_mean is not None and conv.out_channels == bn.num_features)


def fold_batchnorm(model: nn.Module, inplace: bool = False) -> nn.Module:
    """``model`` (a copy unless ``inplace``) in eval mode with every conv -> BN pair merged into the
    conv (see the module docstring).  BatchNorms that follow no known conv are left in place;
    :func:`unfolded_batchnorms` lists them."""
    model = model if inplace else copy.deepcopy(model)
    model.eval()
    for module in list(model.modules()):
        if isinstance(module, nn.Sequential):
            names = list(module._modules)
            for a, b in zip(names, names[1:]):
                conv, bn = module._modules[a], module._modules[b]
                if _foldable(conv, bn):
                    module._modules[a] = fuse_conv_bn_eval(conv, bn)
                    module._modules[b] = nn.Identity()
        for conv_name, bn_name in CONV_BN_PAIRS.get(type(module).__name__, ()):
            conv, bn = getattr(module, conv_name, None), getattr(module, bn_name, None)
            if _foldable(conv, bn):
                setattr(module, conv_name, fuse_conv_bn_eval(conv, bn))
                setattr(module, bn_name, nn.Identity())
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def unfolded_batchnorms(model: nn.Module) -> list[str]:
    """Names of the BatchNorm layers still in ``model`` (none after folding any DeSTSeg variant)."""
    return [name for name, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


class InferenceGraph(nn.Module):
    """The whole DeSTSeg inference as one module: ``forward(images)`` with images B x 3 x H x W in
    [0, 1] returns ``(anomaly_map, score, de_st_map, de_st_score)`` — B x H x W, B, B x H x W, B —
    exactly the four tensors of :func:`destseg_lib.infer.predict` (the segmentation output upsampled
    bilinearly to H x W, the mean of its top-T values; the DeST map and its top-T mean; for a model
    without segmentation net the anomaly map is the DeST map)."""

    def __init__(self, model: nn.Module, top_t: int = 100, precision: str = "float32"):
        super().__init__()
        self.model, self.top_t, self.precision = model, int(top_t), check_precision(precision)

    def forward(self, images: torch.Tensor):
        return maps_and_scores(forward_in(self.model, images, self.precision), images.shape[-2:], self.top_t)


OUTPUT_NAMES = ("anomaly_map", "score", "de_st_map", "de_st_score")


class FastPredictor:
    """``predictor(images)`` -> dict like :func:`destseg_lib.infer.predict` (same keys, same values
    within float tolerance), from a BN-folded copy of ``model`` under ``torch.inference_mode``.

    ``channels_last``: NHWC weights and inputs; ``precision``: "float32" (default) or "bf16"
    (autocast, maps in float32); ``compile``: ``torch.compile`` the graph, falling back
    to eager (warning once) if compilation or the first compiled call fails; ``fold_bn=False`` keeps
    the BatchNorms (for comparisons).  Attributes ``compiled`` (True once a compiled call succeeded)
    and ``fallback_reason`` (why compiling was abandoned) say what actually runs.
    """

    def __init__(self, model: nn.Module, top_t: int = 100, *, fold_bn: bool = True,
                 channels_last: bool = False, compile: bool = False, compile_mode: str | None = None,
                 precision: str = "float32"):
        base = fold_batchnorm(model) if fold_bn else copy.deepcopy(model).eval()
        for p in base.parameters():
            p.requires_grad_(False)
        self.channels_last = bool(channels_last)
        if self.channels_last:
            base = base.to(memory_format=torch.channels_last)
        self.precision = check_precision(precision)
        self.graph = InferenceGraph(base, top_t, self.precision).eval()
        self.device = next(base.parameters()).device
        self._run = self.graph
        self.compiled, self.fallback_reason = False, None
        self._compile_pending = bool(compile)
        if compile:
            try:
                self._run = torch.compile(self.graph, mode=compile_mode, dynamic=False)
            except Exception as e:  # e.g. an unsupported Python / platform
                self._fall_back(e)

    def _fall_back(self, e: BaseException) -> None:
        self._run, self._compile_pending = self.graph, False
        self.fallback_reason = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
        warnings.warn(f"torch.compile failed here ({self.fallback_reason[:200]}); running eagerly "
                      "instead (same results, no compile speed-up)", RuntimeWarning, stacklevel=3)

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        images = images.to(self.device, torch.float32)
        return images.contiguous(memory_format=torch.channels_last) if self.channels_last else images

    def __call__(self, images: torch.Tensor) -> dict:
        x = self.prepare(images)
        with torch.inference_mode():
            if self._compile_pending:
                try:
                    outs = self._run(x)
                    self.compiled, self._compile_pending = True, False
                except Exception as e:  # compilation happens at the first call
                    self._fall_back(e)
                    outs = self._run(x)
            else:
                outs = self._run(x)
        return dict(zip(OUTPUT_NAMES, outs))


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask), else ``os.cpu_count()``."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def set_threads(n: int | None = None) -> int:
    """Set torch's intra-op threads to ``n`` (default: :func:`available_cpus`) and return it.  More
    threads than cores only adds contention; with DataLoader workers busy synthesising, leave them a
    core (``n = available_cpus() - workers``) when the data would otherwise be late."""
    n = max(1, int(n or available_cpus()))
    torch.set_num_threads(n)
    return n
