"""Winograd 3×3 convolutions on the CPU, through the NNPACK library that ships inside PyTorch.

Why this is hand-written: PyTorch's CPU convolutions go to oneDNN, which has no Winograd kernels for AVX2 CPUs
(only direct/GEMM ones), and PyTorch sends a convolution to NNPACK only for batches of 16 or more. NNPACK's
F(6×6, 3×3) Winograd does the same 3×3 convolution with ~4× fewer multiplications. There is no public switch for
it, so :class:`WinogradConv2d` calls ``torch._nnpack_spatial_convolution`` (the ATen op of PyTorch's own NNPACK
path) itself, and only where it was measured to be faster.

Measured (AMD EPYC, 2 cores, AVX2, torch 2 threads; oneDNN = the better of NCHW and channels_last), ms per call:

=========================  ======  ======  =====================================
input, 3×3 conv            oneDNN  NNPACK
=========================  ======  ======  =====================================
1×256×200×304 → 256         392     143    R101 FPN p2 output conv / RPN on p2
1×256×100×152 → 256          92      41    p3
1×256×50×76 → 256            22      14    res4 (23 of them), p4
1×128×128×128 → 128          25      15    ECCV16 / SIGGRAPH17 at 128²
1×256×64×64 → 256            24      14    the colorizers at 64²
1×256×45×45 → 256            12      10
1×256×32×32 → 256           6.3     8.3    slower: small maps (kernel transform dominates)
1×256×25×38 → 256           5.8     9.2    slower
5×512×32×32 → 512           128     187    slower: NNPACK's batched path; one sample at a time is 5×22
=========================  ======  ======  =====================================

Hence the rule (fixed, so results do not depend on timing): NNPACK for float32 CPU maps of at least
:data:`MIN_PIXELS` pixels, one sample at a time; everything else (small maps, strides, dilations, 1×1, bf16
autocast, GPUs) runs the ordinary convolution. Whole detector (R101-FPN at 1199×800): 4.03 → 3.08 s.

Numerics: Winograd rounds differently. Against a float64 reference, a 256-channel 3×3 convolution with
outputs ~7 is off by 8e-5 (NNPACK) vs 2e-5 (oneDNN), i.e. ~1e-5 relative: float32 rounding either way, far below
TF32 (~1e-3 relative), which PyTorch uses by default for cuDNN convolutions on the Ampere-class GPUs the
paper's code runs on. The R101 test checkpoint on a 1024×683 photo: the same 100 detections, boxes within 7e-5 px,
scores within 3e-7, masks identical.

Threads: NNPACK's thread pool is created at its first convolution with ``torch.get_num_threads()`` threads and
keeps that size (``torch.set_num_threads`` later does not resize it); set the thread count before the first image,
as the Ray workers do. Its results do not depend on the thread count (checked: 1 vs 2 threads, bit-equal).

Policy, ``PATCHCOLOR_WINOGRAD``: ``auto`` (default) = on where it was measured: an x86-64 CPU whose best ISA is
AVX2, with NNPACK in this torch build. Off on AVX-512 CPUs: on a 2-core Intel Xeon (AVX-512, AMX) the detector took
3.77 s with Winograd and 3.73 s without (the same 3.45 s of CPU per thread), and Winograd's NCHW layout cost bf16 most
of its gain (1.18× instead of 1.77× with channels_last), so there is nothing to win (``bench/bench_detector.py``);
``on`` = wherever NNPACK is available; ``off`` = never.
"""
from __future__ import annotations

import contextlib
import logging
import os
from typing import Iterator

import torch
from torch import Tensor, nn

log = logging.getLogger("patchcolor")

#: smallest map (H × W) sent to NNPACK: below it the per-call kernel transform outweighs the saving (table above)
MIN_PIXELS = 2000
ENV = "PATCHCOLOR_WINOGRAD"
#: torch's CPU capability strings on which ``auto`` turns Winograd on (where it was measured)
AUTO_ISAS = ("AVX2",)


def nnpack_available() -> bool:
    """NNPACK is in this torch build and initialised (the call initialises it; ops fail before that)."""
    try:
        return bool(torch._nnpack_available())
    except (AttributeError, RuntimeError):
        return False


def _cpu_isa() -> str:
    try:
        return str(torch.backends.cpu.get_cpu_capability())
    except (AttributeError, RuntimeError):
        return "unknown"


def winograd_policy() -> str:
    """``auto`` | ``on`` | ``off`` from ``PATCHCOLOR_WINOGRAD`` (anything else: ``auto``, with a warning)."""
    value = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if value not in ("auto", "on", "off"):
        log.warning("%s=%s is not auto, on or off; using auto", ENV, value)
        return "auto"
    return value


_override: bool | None = None     # set by :func:`policy_override` (check-precision builds both kinds of model)


@contextlib.contextmanager
def policy_override(enabled: bool) -> Iterator[None]:
    """Models built inside this block use (True) or do not use (False) Winograd on CPU, whatever
    ``PATCHCOLOR_WINOGRAD`` says. Not thread-safe: for one-off comparisons (``patchcolor check-precision``)."""
    global _override
    saved, _override = _override, enabled
    try:
        yield
    finally:
        _override = saved


def winograd_enabled(device: torch.device | str) -> bool:
    """Should the networks on ``device`` use :class:`WinogradConv2d`? (CPU only; see the module docstring.)"""
    if torch.device(device).type != "cpu":
        return False
    if _override is not None:
        return _override and nnpack_available()
    policy = winograd_policy()
    if policy == "off" or not nnpack_available():
        return False
    return policy == "on" or _cpu_isa() in AUTO_ISAS


def eligible(conv: nn.Module) -> bool:
    """A plain 3×3 convolution NNPACK computes: stride 1, no dilation, one group, symmetric zero padding."""
    return (type(conv) is nn.Conv2d and conv.kernel_size == (3, 3) and conv.stride == (1, 1)
            and conv.dilation == (1, 1) and conv.groups == 1 and conv.padding_mode == "zeros"
            and isinstance(conv.padding, tuple))


class WinogradConv2d(nn.Conv2d):
    """An ``nn.Conv2d`` (same parameters, same state_dict) that runs NNPACK's Winograd on float32 CPU inputs of
    at least :data:`MIN_PIXELS` pixels, one sample at a time, and the ordinary convolution otherwise.

    x: (N, C, H, W) float32; returns (N, C_out, H', W') NCHW-contiguous, as ``nn.Conv2d`` would."""

    def forward(self, x: Tensor) -> Tensor:
        if (x.device.type != "cpu" or x.dtype != torch.float32 or x.dim() != 4 or x.shape[0] == 0
                or x.shape[2] * x.shape[3] < MIN_PIXELS or torch.is_autocast_enabled("cpu")
                or self.weight.dtype != torch.float32):
            return super().forward(x)
        x = x.contiguous()
        weight = self.weight.contiguous()
        pad = list(self.padding)
        try:
            if x.shape[0] == 1:
                return torch._nnpack_spatial_convolution(x, weight, self.bias, pad, [1, 1])
            return torch.cat([torch._nnpack_spatial_convolution(x[i:i + 1], weight, self.bias, pad, [1, 1])
                              for i in range(x.shape[0])])
        except RuntimeError as e:   # NNPACK refused (e.g. could not allocate its workspace): the job goes on
            _warn_once(f"NNPACK convolution failed ({e}); using the ordinary convolution for {tuple(x.shape)}")
            return super().forward(x)


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        log.warning("%s", message)


def use_winograd(model: nn.Module) -> int:
    """Turn every eligible ``nn.Conv2d`` inside ``model`` into a :class:`WinogradConv2d` in place (parameters,
    hooks and state_dict keys unchanged). Returns how many were changed."""
    if not nnpack_available():
        return 0
    changed = 0
    for module in model.modules():
        if eligible(module):
            module.__class__ = WinogradConv2d
            changed += 1
    return changed


def uses_winograd(model: nn.Module) -> bool:
    return any(isinstance(m, WinogradConv2d) for m in model.modules())
