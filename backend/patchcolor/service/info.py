"""The ``info`` reply (docs/protocol.md, "info reply"): what this server offers, and for loopback clients what it
runs on. Remote clients get the option limits that apply to them instead of paths and library versions."""
from __future__ import annotations

import functools
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from .. import __version__
from ..options import PRESETS
from . import protocol
from .cache import CacheStats
from .limits import Budgets, RemoteLimits


@dataclass
class ServerFacts:
    """What ``info`` reports about the server at the moment of the request."""

    devices: list[str]
    models_dir: Path | None
    max_pixels: int
    queue_size: int
    queued: int
    running: int
    curve: bool
    cache: CacheStats
    started: float
    remote_limits: RemoteLimits
    budgets: Budgets


def info_reply(req_id: str, v: int, remote: bool, facts: ServerFacts) -> dict[str, Any]:
    """The ``info`` header for a client (``remote``: without the server's paths and library versions)."""
    stats, lim = facts.cache, facts.remote_limits
    info: dict[str, Any] = {
        "v": v, "type": protocol.INFO, "id": req_id, "protocol": protocol.PROTOCOL_VERSION,
        "supported_versions": list(protocol.SUPPORTED_VERSIONS), "devices": facts.devices,
        **weights_info(facts.models_dir),
        "formats": list(protocol.PIXEL_FORMATS), "stages": list(protocol.STAGES),
        "presets": {k: o.to_dict() for k, o in PRESETS.items()},
        "max_pixels": facts.max_pixels, "queue_size": facts.queue_size, "queued": facts.queued,
        "running": facts.running, "curve": facts.curve,
        "cache": {"entries": stats.entries, "bytes": stats.bytes, "max_bytes": stats.max_bytes},
        "uptime_s": round(time.time() - facts.started, 1), "remote": remote,
        "budgets": {"queue_jobs": facts.budgets.queue_jobs, "client_jobs": facts.budgets.client_jobs,
                    "queue_bytes": facts.budgets.queue_bytes, "client_bytes": facts.budgets.client_bytes},
    }
    if remote:   # what this client may ask for; the server's paths and library versions stay private
        info.pop("models_dir", None)
        info["limits"] = {"net_size": lim.net_size, "batch_size": lim.batch_size,
                          "max_instances": lim.max_instances, "max_side": lim.max_side,
                          "min_score_thresh": lim.min_score_thresh, "job_bytes": lim.job_bytes}
    else:
        versions = {"patchcolor": __version__, "python": platform.python_version(), "pyzmq": zmq.__version__,
                    "libzmq": zmq.zmq_version(), "numpy": np.__version__}
        if "torch" in sys.modules:
            versions["torch"] = str(sys.modules["torch"].__version__)
            info["cpu"] = cpu_info()
            info["device_lines"] = device_lines(tuple(facts.devices))
        info["versions"] = versions
    return info


@functools.lru_cache(maxsize=1)
def cpu_info() -> dict[str, Any]:
    """The CPU line and whether bf16/fp16 run natively (what the dialog's "Fast" choice gets), probed once."""
    from ..precision import cpu_report

    report = cpu_report()
    return {"line": report.line(), "model": report.model, "cores": report.cores, "isa": report.isa,
            "native_bf16": report.native_bf16, "native_fp16": report.native_fp16, "winograd": report.winograd}


@functools.lru_cache(maxsize=4)
def device_lines(devices: tuple[str, ...]) -> list[str]:
    """What runs each worker's networks, in words (:func:`patchcolor.device.device_line`: the GPU and CUDA/ROCm/MPS,
    or the CPU line), probed once."""
    import torch

    from ..device import device_line

    out = []
    for d in devices:
        try:
            out.append(device_line(torch.device(d)))
        except (RuntimeError, ValueError):       # a custom pipeline factory's device that torch does not know
            out.append(d)
    return out


def weights_info(models_dir: Path | None) -> dict[str, Any]:
    """The weights part of ``info``, from the model registry (names, kinds, labels for the GIMP dialog, status
    "ok" / "missing" / "corrupt" by cheap checks): see :func:`patchcolor.models.weights_status`."""
    from .. import models

    return models.weights_status(models_dir)
