"""Whether this CPU runs bfloat16 natively, and the precision every trainer and pipeline uses because of it.

bf16 autocast is the fast path on CPUs with AVX-512 BF16 or AMX (the machines the shipped
latent diffusion model and classifier were trained on): oneDNN runs bf16 convolutions and
matrix products in hardware there. On a CPU without them (an AVX2-only AMD EPYC, say) PyTorch
emulates bf16, and a convolution block's training step took about 40x longer than in fp32
(`python benchmarks/bench_precision.py`; results in outputs/benchmarks/precision.json). So a
bf16 request is honoured only where the hardware has it; everywhere else the code runs in fp32,
which changes no result beyond bf16 rounding.

Set ``CXR_BF16=1`` or ``CXR_BF16=0`` to force the choice (e.g. to reproduce a bf16 run exactly).
"""
from __future__ import annotations

import functools
import os
import warnings
from pathlib import Path

import torch

# /proc/cpuinfo flags of CPUs whose bf16 arithmetic is native.
NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")
OVERRIDE_VARIABLE = "CXR_BF16"


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> set[str]:
    """The CPU feature flags the kernel reports (empty where there is no /proc/cpuinfo)."""
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


@functools.lru_cache(maxsize=None)
def cpu_has_native_bf16() -> bool:
    """True when bf16 autocast on this CPU is fast (AMX or AVX-512 BF16), or when ``CXR_BF16=1`` says so."""
    override = os.environ.get(OVERRIDE_VARIABLE, "").strip()
    if override in ("0", "1"):
        return override == "1"
    # No flags to read (not Linux) counts as no native bf16: fp32 is never the slow choice.
    return any(flag in cpu_flags() for flag in NATIVE_BF16_FLAGS)


def cpu_precision(requested: str = "bf16") -> str:
    """The precision ("bf16" or "fp32") that CPU inference runs in when `requested` is asked for."""
    if requested not in ("bf16", "fp32"):
        raise ValueError(f"precision must be 'bf16' or 'fp32', got {requested!r}")
    return "bf16" if requested == "bf16" and cpu_has_native_bf16() else "fp32"


def training_mixed_precision(requested: str | None) -> str:
    """The `accelerate` mixed_precision for a config's request: "bf16" falls back to "no" on a CPU without native bf16."""
    requested = requested or "no"
    if requested == "bf16" and not torch.cuda.is_available() and not cpu_has_native_bf16():
        warnings.warn("this CPU has no native bf16 (AMX / AVX-512 BF16): training in fp32, which is many times faster here", stacklevel=2)
        return "no"
    return requested


def cpu_bf16_autocast():
    """``torch.autocast`` on the CPU in bf16, enabled only where bf16 is native."""
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=cpu_has_native_bf16())


def note_training_precision(state: dict, mixed_precision: str) -> None:
    """Add a session's precision to the run state's ``mixed_precision_used``: a run resumed on another CPU can mix them."""
    used = state.setdefault("mixed_precision_used", [])
    if mixed_precision not in used:
        used.append(mixed_precision)


def training_precision_text(state: dict, configured: str | None) -> str:
    """How a run was computed, for its model card: "bf16 autocast", "fp32", or both."""
    names = {"bf16": "bf16 autocast", "no": "fp32", "fp16": "fp16 autocast"}
    used = state.get("mixed_precision_used")
    if not used:
        return f"{names.get(configured or 'no', configured)} (as configured; the run did not record it)"
    text = " and ".join(names.get(value, value) for value in used)
    return text + (" (sessions on CPUs with and without native bf16)" if len(used) > 1 else "")


def precision_label(precision: str | None) -> str:
    """A user-facing word on how an image was computed, saying why when fp32 was the CPU's choice."""
    if precision == "bf16":
        return "bf16"
    if precision == "fp32":
        return "fp32" if cpu_has_native_bf16() else "fp32 (this CPU has no native bf16)"
    return "precision not recorded"
