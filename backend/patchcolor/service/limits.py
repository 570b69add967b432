"""Job admission for the service: option limits for remote clients and a memory estimate checked before a job
is queued (docs/protocol.md, "Limits").

A *remote* client is one whose connection does not come from a loopback address (or any client when the server
runs with ``--untrusted-loopback``, e.g. behind an SSH tunnel). Remote jobs must keep every memory-driving option
within :class:`RemoteLimits` and their estimated peak within ``job_bytes``; loopback jobs keep the options'
own ranges (patchcolor.options.validate) and are refused only when the estimate exceeds the memory available
now. Either refusal is a ``bad_options`` error with one sentence.
"""
from __future__ import annotations

from dataclasses import dataclass

from patchcolor_client.protocol import PIXEL_FORMATS, ProtocolError

from ..options import Options
from ..prepare import working_size

#: Rough per-pixel peak costs (bytes), calibrated on CPU fp32 runs: issue 8 saw 5.7 GB for a batch of 64 x 512^2
#: (~340 B per network pixel); eccv16 here, batch 8 x 512^2 on a 640x480 image, peak RSS rise 1199 MiB over the
#: loaded models (~570 B per network pixel, AMD EPYC, torch CPU); rounded up. An upper bound for admission.
NET_BYTES_PER_PIXEL = 640          # colorizer activations per network input pixel in one batch
DETECTOR_BYTES_PER_PIXEL = 1200    # R101-FPN / torchvision detector activations per working pixel
FINISH_BYTES_PER_PIXEL = 40        # float32 Lab planes and bands of the finish at output size
MODEL_BYTES = 600 << 20            # colorizer + detector weights
BASE_BYTES = 200 << 20             # interpreter, libraries, slack


@dataclass(frozen=True)
class RemoteLimits:
    """Upper bounds for options a remote client may set, and its job's memory budget (bytes)."""

    net_size: int = 512
    batch_size: int = 16
    max_instances: int = 100
    max_side: int = 4096
    min_score_thresh: float = 0.05
    job_bytes: int = 8 << 30


def estimate_job_bytes(width: int, height: int, fmt: str, opts: Options) -> int:
    """Rough peak memory (bytes) of one job on a ``width`` x ``height`` ``fmt`` image with ``opts``: received
    frame, detector, colorizer batches, per-instance a/b crops and masks (each at most the working image), finish
    and result at output size."""
    channels, sample = PIXEL_FORMATS[fmt]
    src_px = width * height
    ww, wh = working_size(width, height, opts.max_side)
    work_px = ww * wh
    out_px = src_px if opts.full_resolution else work_px
    n = opts.max_instances
    total = BASE_BYTES + MODEL_BYTES + src_px * channels * sample           # the request frame (kept for refuse)
    total += work_px * 3 * 4                                                  # working copy (float32 Lab)
    if opts.detector != "none":
        total += work_px * DETECTOR_BYTES_PER_PIXEL
    total += opts.batch_size * opts.net_size ** 2 * NET_BYTES_PER_PIXEL       # one colorizer batch
    total += (1 + n) * opts.net_size ** 2 * 4 * 4                             # network inputs (L + hints)
    total += (1 + n) * work_px * 2 * 4 // 2                                   # a/b per crop (crops ~ half the image)
    total += n * work_px // 2                                                 # cropped uint8/bool masks
    total += out_px * (FINISH_BYTES_PER_PIXEL + 4 * sample)                   # finish + result image
    return int(total)


def available_memory() -> int | None:
    """MemAvailable + SwapFree from /proc/meminfo (bytes): what a job can get before the OOM killer acts (the
    estimate is an upper bound, so swap counts). None where it cannot be read (then no memory check)."""
    found: dict[str, int] = {}
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("MemAvailable", "SwapFree"):
                    found[key] = int(rest.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return found["MemAvailable"] + found.get("SwapFree", 0) if "MemAvailable" in found else None


def check_job(width: int, height: int, fmt: str, opts: Options, remote: bool, limits: RemoteLimits,
              available: int | None, req_id: str | None = None, job: str | None = None) -> int:
    """Admit a job or raise ProtocolError("bad_options") with one sentence. Returns the estimate (bytes)."""
    def refuse(msg: str) -> ProtocolError:
        return ProtocolError("bad_options", msg, req_id, job)

    if remote:
        if opts.detector == "detectron2":
            raise refuse("the detectron2 detector is not available to remote clients (its weight loader is not "
                         "restricted): use r101 or torchvision-v2")
        for name in ("net_size", "batch_size", "max_instances", "max_side"):
            value, top = getattr(opts, name), getattr(limits, name)
            if value > top:
                raise refuse(f"option {name} is {value}; remote clients may use at most {top}")
        if opts.score_thresh < limits.min_score_thresh and opts.detector != "none":
            raise refuse(f"option score_thresh is {opts.score_thresh:g}; remote clients may use no less than "
                         f"{limits.min_score_thresh:g}")
    need = estimate_job_bytes(width, height, fmt, opts)
    if remote and need > limits.job_bytes:
        raise refuse(f"this job would need about {need / 2**30:.1f} GiB, over the {limits.job_bytes / 2**30:.1f} "
                     "GiB a remote job may use: lower max_side, batch_size, net_size or max_instances")
    if available is not None and need > available:
        raise refuse(f"this job would need about {need / 2**30:.1f} GiB but the server has only "
                     f"{available / 2**30:.1f} GiB free: lower max_side, batch_size, net_size or max_instances")
    return need
