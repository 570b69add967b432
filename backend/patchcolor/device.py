"""Which device the networks run on: ``--device auto|cpu|cuda|mps`` for the CLI, the service, Ray actors and the
GIMP dialog (which gets :data:`DEVICES` and :data:`DEVICE_LABELS` as data).

* ``auto``: a CUDA device (an NVIDIA GPU, or an AMD GPU through a ROCm build of torch, which torch also calls
  "cuda"), else an Apple GPU (MPS), else the CPU.
* ``mps``: Apple GPUs. Operators MPS lacks run on the CPU instead of failing: importing this module (the package's
  ``__init__`` does, before anything imports torch) sets ``PYTORCH_ENABLE_MPS_FALLBACK=1`` on macOS, which torch
  reads once, when it is imported. Every aten operator the pipeline dispatches, and torchvision's ``roi_align`` and
  ``nms``, has an MPS kernel in torch 2.14 / torchvision 0.29 (``tests/test_device.py`` checks the operator list
  against torch's own kernel table), so the fallback is a safety net, not a path the pipeline takes.

Importing this module does not import torch (the data above is read by clients and the installer's tests).
"""
from __future__ import annotations

import logging
import os
import sys
from typing import TYPE_CHECKING

from .errors import DeviceUnavailable

if TYPE_CHECKING:
    import torch

log = logging.getLogger("patchcolor")

DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda", "mps")
DEVICE_LABELS: dict[str, str] = {
    "auto": "Automatic (NVIDIA/AMD GPU, else Apple GPU, else CPU)",
    "cpu": "CPU",
    "cuda": "NVIDIA GPU (CUDA) or AMD GPU (ROCm)",
    "mps": "Apple GPU (MPS)",
}
MPS_FALLBACK_ENV = "PYTORCH_ENABLE_MPS_FALLBACK"


def enable_mps_fallback() -> bool:
    """On macOS, ask torch to run operators MPS lacks on the CPU (``PYTORCH_ENABLE_MPS_FALLBACK=1``, unless the user
    set it). True when it is in force; False (logged once when it matters) when torch was imported before it was
    set, or elsewhere than macOS."""
    if sys.platform != "darwin":
        return False
    os.environ.setdefault(MPS_FALLBACK_ENV, "1")
    return os.environ[MPS_FALLBACK_ENV] != "0"


_FALLBACK_SET_BEFORE_TORCH = enable_mps_fallback() and "torch" not in sys.modules


def check_device_name(device: str) -> str:
    """``device`` when it is one of :data:`DEVICES` or ``cuda:N``; DeviceUnavailable naming the choices otherwise."""
    name = device.strip().lower()
    if name in DEVICES or (name.startswith("cuda:") and name[5:].isdigit()):
        return name
    raise DeviceUnavailable(f"Unknown device {device!r}: choose {', '.join(DEVICES)} or cuda:N.")


def device_arg(value: str) -> str:
    """argparse ``type=`` for ``--device``: the checked name, or argparse's usage error naming the choices."""
    import argparse

    try:
        return check_device_name(value)
    except DeviceUnavailable as e:
        raise argparse.ArgumentTypeError(e.message) from None


def mps_available() -> bool:
    """Does this torch build run on an Apple GPU here?"""
    import torch

    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device(device: str = "auto") -> torch.device:
    """The torch device for ``device`` (one of :data:`DEVICES` or ``cuda:N``).

    "auto" -> CUDA (NVIDIA, or AMD through ROCm) when available, else MPS, else CPU. Asking for a device that is not
    there raises DeviceUnavailable with one sentence saying what to use instead."""
    import torch

    name = check_device_name(device)
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if mps_available() else torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceUnavailable(f"A CUDA GPU was asked for (--device {name}) but this torch sees none "
                                    f"({_torch_build()}); use --device auto or cpu.")
        index = int(name[5:]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise DeviceUnavailable(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA GPU(s), "
                                    f"numbered from 0.")
        return torch.device(name)
    if name == "mps":
        if not mps_available():
            raise DeviceUnavailable("An Apple GPU was asked for (--device mps) but MPS is not available here (it "
                                    "needs a Mac with Apple silicon and macOS 12.3 or newer); use --device auto or "
                                    "cpu.")
        if sys.platform == "darwin" and not _FALLBACK_SET_BEFORE_TORCH and os.environ.get(MPS_FALLBACK_ENV) != "1":
            log.warning("torch was imported before patchcolor, so operators MPS lacks are not sent to the CPU: "
                        "set %s=1 before starting Python if a job fails with 'not implemented for MPS'",
                        MPS_FALLBACK_ENV)
        return torch.device("mps")
    return torch.device("cpu")


def _torch_build() -> str:
    """``torch 2.14.1+cpu, CPU-only build`` / ``..., CUDA 13.0`` / ``..., ROCm 7.0``."""
    import torch

    if getattr(torch.version, "hip", None):
        kind = f"ROCm {torch.version.hip}"
    elif getattr(torch.version, "cuda", None):
        kind = f"CUDA {torch.version.cuda}"
    else:
        kind = "CPU-only build"
    return f"torch {torch.__version__}, {kind}"


def backend_name(device: torch.device) -> str:
    """What computes on ``device``: "CUDA 13.0", "ROCm 7.0" (an AMD GPU: torch's device type is still "cuda"),
    "MPS" or "CPU"."""
    import torch

    if device.type == "cuda":
        hip = getattr(torch.version, "hip", None)
        return f"ROCm {hip}" if hip else f"CUDA {torch.version.cuda}"
    return {"mps": "MPS"}.get(device.type, device.type.upper())


def device_line(device: torch.device) -> str:
    """One line saying what runs the networks, for the service's ``info``, the benches and ``check-precision``:
    e.g. "GPU NVIDIA H100 80GB HBM3 (cuda:0, CUDA 13.0)", "GPU AMD Instinct MI300X (cuda:0, ROCm 7.0)",
    "GPU Apple M2 (mps, MPS)" or the CPU line of :func:`patchcolor.precision.cpu_report`."""
    import torch

    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"GPU {torch.cuda.get_device_name(index)} (cuda:{index}, {backend_name(device)})"
    if device.type == "mps":
        from .precision import cpu_report

        return f"GPU Apple {cpu_report().model} (mps, MPS)"
    from .precision import cpu_report

    return cpu_report().line()
