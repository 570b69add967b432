"""Reduced-precision inference: which precision really runs on a device, and its autocast context.

Autocast in bf16/fp16 pays off only where the hardware computes in it: a CUDA GPU, or a CPU whose oneDNN
kernels are native (AVX512-BF16 / AMX for bf16, AVX512-FP16 / AMX-FP16 for fp16). Elsewhere torch falls back
to reference kernels that are two orders of magnitude slower than fp32 (measured on an AVX2 EPYC: a 3×3
convolution at 0.3 GFLOP/s in bf16 against 133 GFLOP/s in fp32, see bench/bench_pipeline.py). A colorize job
then takes hours instead of seconds, so such a request runs in fp32 and says so, rather than hang.
"""
from __future__ import annotations

import contextlib
import logging

import torch

from .errors import BadOptions

log = logging.getLogger("patchcolor")

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def _cpu_native(precision: str) -> bool:
    """Does oneDNN have native kernels for this precision on this CPU?"""
    probe = {"bf16": "_is_mkldnn_bf16_supported", "fp16": "_is_mkldnn_fp16_supported"}[precision]
    try:
        return bool(getattr(torch.ops.mkldnn, probe)())
    except (AttributeError, RuntimeError):   # private probe gone in some torch build: trust the request
        return True


def effective_precision(device: torch.device, requested: str) -> tuple[str, str | None]:
    """The precision to run for ``requested`` ("fp32" | "bf16" | "fp16") on ``device``, and why it differs
    (None when it does not)."""
    if requested == "fp32":
        return "fp32", None
    if requested not in AUTOCAST_DTYPES:
        raise BadOptions(f"unknown precision {requested!r} (fp32, bf16, fp16)")
    if device.type == "cuda":
        if requested == "bf16" and not torch.cuda.is_bf16_supported():
            return "fp16", "this GPU has no bf16: running fp16"
        return requested, None
    if _cpu_native(requested):
        return requested, None
    if requested == "fp16" and _cpu_native("bf16"):
        return "bf16", "this CPU has no native fp16 kernels: running bf16"
    return "fp32", (f"this CPU has no native {requested} kernels (they need AVX512-BF16/AMX or a GPU), and the "
                    f"emulated ones are ~100x slower than fp32: running fp32")


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Nothing for "fp32"; ``torch.autocast`` in bf16/fp16 on the device's type otherwise."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision not in AUTOCAST_DTYPES:
        raise BadOptions(f"unknown precision {precision!r} (fp32, bf16, fp16)")
    return torch.autocast(device_type=device.type, dtype=AUTOCAST_DTYPES[precision])
