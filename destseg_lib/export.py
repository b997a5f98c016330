"""ONNX export of the whole inference graph, and scoring with onnxruntime.

    destseg export --checkpoint runs/part/model.pt --out part.onnx
    destseg predict --checkpoint runs/part/model.pt --onnx part.onnx --out predictions/ images/

:func:`export_onnx` writes :class:`~destseg_lib.fast.InferenceGraph` of the BN-folded model —
teacher + student + segmentation net + bilinear upsampling + top-T score (Sec. 3.4) — as one ONNX
graph: input ``images`` (B x 3 x S x S, float32 in [0, 1], any batch size B, S = the checkpoint's
``image_size``; a model trained with ``aspect="keep"`` takes any H x W that are multiples of 16),
outputs ``anomaly_map`` (B x S x S), ``score`` (B), ``de_st_map``, ``de_st_score``.
The normalisation is inside the graph.  The file's metadata hold the kit's config, the stored
thresholds (JSON) and the checkpoint's weights fingerprint (``destseg_fingerprint``,
:func:`destseg_lib.checkpoint.weights_fingerprint`), so a deployment needs nothing else, and
``destseg predict --onnx F --checkpoint C`` refuses an ``F`` that was not exported from ``C`` (whose
thresholds would otherwise be applied to another model's scores).

The export never replaces the checkpoint it reads (the same file, also through a link), nor any
existing file unless ``overwrite=True`` (``--overwrite``); it writes to a temporary name and renames
it when complete, and an operating-system error (no space left, read-only...) is one
:class:`~destseg_lib.errors.OutputError` line naming the file.  ``tests/test_export.py`` checks onnxruntime's
outputs against PyTorch's (1e-4 absolute).

Needs ``pip install 'destseg-kit[onnx]'`` (onnx, onnxscript, onnxruntime).  Export uses
``torch.onnx.export(dynamo=True)`` and falls back to the TorchScript exporter when onnxscript is
missing.
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from .errors import DestSegError, OutputError
from .files import atomic_write_file
from .fast import OUTPUT_NAMES, InferenceGraph, fold_batchnorm

OPSET = 18


class ExportError(DestSegError, RuntimeError):
    """The ONNX tools are missing, or the export / the runtime failed."""


def _require(module: str, what: str):
    try:
        return __import__(module)
    except ImportError:
        raise ExportError(f"{what} needs the package {module!r}: pip install 'destseg-kit[onnx]' "
                          "(onnx, onnxscript, onnxruntime)") from None


def export_onnx(model, path, image_size: int, top_t: int = 100, metadata: dict | None = None,
                opset: int = OPSET, any_size: bool = False) -> Path:
    """Write the BN-folded inference graph of ``model`` to ``path`` (see the module docstring);
    ``metadata``: string-valued entries stored in the file (values that are not strings as JSON).
    Written to a temporary name and renamed: an interrupted export leaves no partial file."""
    onnx = _require("onnx", "ONNX export")
    path = Path(path)
    graph = InferenceGraph(fold_batchnorm(model).cpu(), top_t).eval()
    example = torch.rand(2, 3, image_size, image_size)
    names = dict(input_names=["images"], output_names=list(OUTPUT_NAMES))
    # any_size (aspect="keep" models): height and width are free too, multiples of 16
    dims = {0: torch.export.Dim("batch", min=1, max=4096)}
    if any_size:
        dims.update({2: 16 * torch.export.Dim("height16", min=2, max=1024),
                     3: 16 * torch.export.Dim("width16", min=2, max=1024)})
        example = torch.rand(2, 3, image_size, image_size + 32)
    # the same for the TorchScript exporter: maps are B x H x W, scores B
    legacy_axes = {"images": {0: "batch", **({2: "height", 3: "width"} if any_size else {})},
                   **{n: {0: "batch", **({1: "height", 2: "width"} if any_size and n.endswith("_map") else {})}
                      for n in OUTPUT_NAMES}}

    def write_to(tmp: Path) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                import onnxscript  # noqa: F401  (the dynamo exporter's translator)

                program = torch.onnx.export(graph, (example,), dynamo=True, opset_version=opset, verbose=False,
                                            dynamic_shapes=(dims,),
                                            **names)
                program.save(str(tmp))
            except ImportError:
                torch.onnx.export(graph, (example,), str(tmp), dynamo=False, opset_version=opset,
                                  dynamic_axes=legacy_axes,
                                  **names)
        proto = onnx.load(str(tmp))
        for key, value in (metadata or {}).items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = str(key), value if isinstance(value, str) else json.dumps(value)
        onnx.checker.check_model(proto)
        onnx.save(proto, str(tmp))

    try:
        atomic_write_file(path, write_to)
    except (ExportError, OutputError):
        raise
    except Exception as e:
        raise ExportError(f"ONNX export to {path} failed ({type(e).__name__}: "
                          f"{str(e).strip().splitlines()[0] if str(e).strip() else ''})") from e
    return path


def check_export_target(checkpoint, path, overwrite: bool = False) -> None:
    """:class:`OutputError` when ``path`` is the checkpoint itself (resolved: links and hard links
    too; always refused), a folder, or an existing file and not ``overwrite``."""
    path = Path(path)
    if not (path.exists() or path.is_symlink()):
        return
    try:
        same = os.path.samefile(path, checkpoint)
    except OSError:
        same = False
    if same:
        raise OutputError(f"--out {path} is the checkpoint {checkpoint} itself: the export would overwrite the "
                          f"model; pass another --out, e.g. {Path(checkpoint).with_suffix('.onnx')}")
    if path.is_dir():
        raise OutputError(f"--out {path} is a folder: pass the .onnx file to write, e.g. {path / 'model.onnx'}")
    if not overwrite:
        raise OutputError(f"--out {path} exists: pass --overwrite to replace it, or another --out")


def check_same_model(onnx_path, metadata: dict, checkpoint, fingerprint: str) -> None:
    """:class:`ExportError` unless the ONNX file's ``destseg_fingerprint`` is ``fingerprint`` (the
    checkpoint's weights): its config and thresholds belong to one model."""
    theirs = metadata.get("destseg_fingerprint")
    if not theirs:
        raise ExportError(f"--onnx {onnx_path} carries no weights fingerprint (exported by an older destseg-kit), "
                          f"so it cannot be matched with --checkpoint {checkpoint}: export it again "
                          f"(destseg export --checkpoint {checkpoint} --out {onnx_path} --overwrite)")
    if theirs != fingerprint:
        raise ExportError(f"--onnx {onnx_path} was not exported from --checkpoint {checkpoint} (weights fingerprint "
                          f"{theirs} in the ONNX file, {fingerprint} in the checkpoint): pass the checkpoint it came "
                          f"from, or export this one (destseg export --checkpoint {checkpoint} --out ...)")


def export_checkpoint(checkpoint, path, opset: int = OPSET, *, overwrite: bool = False) -> Path:
    """Export the model of a kit checkpoint, with its config, thresholds and weights fingerprint as
    metadata; refused (:func:`check_export_target`) over the checkpoint itself, and over an existing
    file unless ``overwrite``."""
    from .checkpoint import load_model, weights_fingerprint
    from .config import DeSTSegConfig

    check_export_target(checkpoint, path, overwrite)
    model, ckpt = load_model(checkpoint, "cpu")
    cfg = DeSTSegConfig.from_dict(ckpt["config"])
    meta = {"destseg_config": cfg.to_record(), "destseg_thresholds": ckpt.get("thresholds") or {},
            "destseg_source": str(checkpoint), "destseg_fingerprint": weights_fingerprint(ckpt["model"]),
            "image_size": str(cfg.image_size), "top_t": str(cfg.top_t)}
    return export_onnx(model, path, cfg.image_size, cfg.top_t, meta, opset, any_size=cfg.aspect == "keep")


def read_metadata(path) -> dict:
    """The metadata of an exported file, JSON values decoded."""
    onnx = _require("onnx", "reading ONNX metadata")
    out = {}
    for p in onnx.load(str(path), load_external_data=False).metadata_props:
        try:
            out[p.key] = json.loads(p.value)
        except ValueError:
            out[p.key] = p.value
    return out


class OnnxScorer:
    """``scorer(images) -> (anomaly maps, scores)`` as numpy with onnxruntime (CPU by default):
    the same interface as :func:`destseg_lib.scoring.torch_scorer`.  ``threads``: intra-op threads
    (default: the CPUs this process may use)."""

    def __init__(self, path, threads: int | None = None, providers=None):
        ort = _require("onnxruntime", "scoring with ONNX")
        from .fast import available_cpus

        if not Path(path).is_file():
            raise FileNotFoundError(f"ONNX model {path} not found: export one with destseg export")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(threads or available_cpus())
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=providers or ["CPUExecutionProvider"])
        except Exception as e:
            raise ExportError(f"onnxruntime cannot load {path} ({type(e).__name__}: "
                              f"{str(e).strip().splitlines()[0] if str(e).strip() else ''})") from e
        self.input_name = self.session.get_inputs()[0].name
        # the file's metadata (string values as stored: destseg_fingerprint, destseg_config ...)
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, images) -> dict:
        """All four outputs, as a dict of numpy arrays."""
        x = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
        outs = self.session.run(None, {self.input_name: np.ascontiguousarray(x, np.float32)})
        return dict(zip(self.output_names, outs))

    def __call__(self, images):
        out = self.run(images)
        return out["anomaly_map"], out["score"]
