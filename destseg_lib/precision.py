"""Numeric precision: the ``amp`` config field resolved for a device, and the autocast it means.

``amp`` (see :class:`~destseg_lib.config.DeSTSegConfig`) is a wish; :func:`resolve_precision` turns
it into what runs on a given device, ``"float32"`` or ``"bf16"``:

* ``"off"`` — float32 everywhere (the official code trains and tests in float32; the default);
* ``"auto"`` — bf16 where it is native: CUDA devices that support bf16, and CPUs with native BF16
  instructions (``avx512_bf16`` or ``amx_bf16`` among the flags of ``/proc/cpuinfo``, Linux;
  :func:`native_bf16_cpu`); float32 elsewhere (on an AVX2-only CPU bf16 is emulated and slower
  than float32);
* ``"bf16"`` — bf16 on every device (emulated on CPUs without native BF16: for tests and
  measurements);
* ``"cuda"`` — bf16 on CUDA only, float32 on the CPU: what ``amp=true`` meant before ``amp``
  became a string (old configs' ``true`` / ``false`` read as ``"cuda"`` / ``"off"``).

"bf16" means ``torch.autocast(..., dtype=torch.bfloat16)`` around the networks' forward passes:
convolutions and matrix products in bf16, the weights (master copies), gradients and SGD state in
float32, and the losses (cosine, focal, L1) computed from outputs cast back to float32
(:func:`destseg_lib.train.training_step`).  Inference follows the same rule: the precision a
config resolves to on the device it runs on (so on the same kind of device it is the precision the
model was trained in, which the checkpoint records under ``"precision"``).
"""
from __future__ import annotations

import contextlib
from pathlib import Path

import torch

AMP_CHOICES = ("off", "auto", "bf16", "cuda")
PRECISIONS = ("float32", "bf16")
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> set[str]:
    """The CPU's feature flags as listed by the first ``flags`` line of ``/proc/cpuinfo`` (Linux);
    the empty set where that file does not exist or has no such line."""
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def native_bf16_cpu(flags=None) -> bool:
    """True when this CPU computes bf16 natively: ``avx512_bf16`` (AVX512-BF16, Cooper Lake / Zen 4
    and later) or ``amx_bf16`` (AMX, Sapphire Rapids and later) among ``flags`` (default: this
    machine's, :func:`cpu_flags`).  Where ``/proc/cpuinfo`` is missing (not Linux) torch's own
    CPU probe is asked, when this torch has one."""
    if flags is None:
        flags = cpu_flags()
        if not flags:
            probe = [getattr(torch.cpu, n, None) for n in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
            return any(bool(p()) for p in probe if callable(p))
    return any(f in set(flags) for f in NATIVE_BF16_FLAGS)


def cuda_bf16(device=None) -> bool:
    """True when ``device`` (a CUDA device; default the current one) supports bf16."""
    if not torch.cuda.is_available():
        return False
    try:
        with torch.cuda.device(torch.device(device) if device is not None else torch.cuda.current_device()):
            return bool(torch.cuda.is_bf16_supported())
    except Exception:  # noqa: BLE001 - an unknown device index: no bf16
        return False


def resolve_precision(amp: str, device="cpu", flags=None) -> str:
    """``"float32"`` or ``"bf16"``: what ``amp`` (a config's field) means on ``device`` (see the
    module docstring); ``flags`` fakes the CPU's flags (tests)."""
    from .config import parse_field  # boolean spellings (True / "false" ...) too

    amp = parse_field("amp", amp)
    kind = torch.device(device).type
    if amp == "off":
        return "float32"
    if amp == "bf16":
        return "bf16"
    if amp == "cuda":
        return "bf16" if kind == "cuda" else "float32"
    # "auto"
    if kind == "cuda":
        return "bf16" if cuda_bf16(device) else "float32"
    if kind == "cpu":
        return "bf16" if native_bf16_cpu(flags) else "float32"
    return "float32"


def describe_precision(amp: str, device="cpu", flags=None) -> str:
    """One line for the start of a run: the resolved precision and why."""
    precision = resolve_precision(amp, device, flags)
    kind = torch.device(device).type
    if kind == "cpu":
        native = native_bf16_cpu(flags)
        why = "this CPU has native BF16" if native else \
            "this CPU has no native BF16 (no avx512_bf16 / amx_bf16 flag)"
        if precision == "bf16" and not native:
            why += ": bf16 is emulated (slow)"
        elif precision == "float32" and native and amp != "auto":
            why += ": --set amp=auto would train in bf16 (faster, not yet the presets' default)"
    else:
        why = f"{kind} device"
    return f"precision: {precision} (amp={amp!r}; {why})"


def check_precision(precision) -> str:
    """``precision`` as one of :data:`PRECISIONS` (``True`` / ``False``, the old ``use_amp``
    argument, read as ``"bf16"`` / ``"float32"``)."""
    if isinstance(precision, bool):
        return "bf16" if precision else "float32"
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r}: choose one of {PRECISIONS} (resolve a config's amp "
                         "with destseg_lib.precision.resolve_precision)")
    return precision


def autocast(precision: str, device_type: str):
    """The context of ``precision`` on ``device_type``: bf16 autocast, or nothing for float32."""
    if check_precision(precision) == "bf16":
        return torch.autocast(device_type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
