"""Job admission for the service: option limits for remote clients, a memory estimate checked before a job
is queued (docs/protocol.md, "Limits"), and the budgets of request bytes held by accepted jobs ("Budgets").

A *remote* client is one whose connection does not come from a loopback address (or any client when the server
runs with ``--untrusted-loopback``, e.g. behind an SSH tunnel). Remote jobs must keep every memory-driving option
within :class:`RemoteLimits` and their estimated peak within ``job_bytes``; loopback jobs keep the options'
own ranges (patchcolor.options.validate) and are refused only when the estimate exceeds the memory available
now. Either refusal is a ``bad_options`` error with one sentence.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Hashable

from patchcolor_client.protocol import PIXEL_FORMATS, ProtocolError

from ..options import Options
from ..prepare import working_size
from ..registry import NO_DETECTOR, registry

#: Rough per-pixel peak costs (bytes), calibrated on CPU fp32 runs: a batch of 64 x 512^2 peaked at 5.7 GB
#: (~340 B per network pixel); eccv16 here, batch 8 x 512^2 on a 640x480 image, peak RSS rise 1199 MiB over the
#: loaded models (~570 B per network pixel, AMD EPYC, torch CPU); rounded up. An upper bound for admission.
NET_BYTES_PER_PIXEL = 640          # colorizer activations per network input pixel in one batch
#: the same for networks with another input (InputSpec name): DDColor-L, 512² full image, peak RSS 3.0 GB over
#: 2.4 GB loaded (bench/bench_ddcolor.py) ~ 2300 B per input pixel; rounded up
NET_BYTES_BY_INPUT = {"gray-rgb": 2400}
DETECTOR_BYTES_PER_PIXEL = 1200    # R101-FPN / torchvision detector activations per working pixel
FINISH_BYTES_PER_PIXEL = 40        # float32 Lab planes and bands of the finish at output size
HINT_BYTES_PER_PIXEL = 16          # painted mask, its comparisons and the int32 blob labels per hint-map pixel
MODEL_BYTES = 600 << 20            # colorizer + detector weights when the catalogue gives no file size
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


def estimate_job_bytes(width: int, height: int, fmt: str, opts: Options, frame_bytes: int | None = None,
                       hint_pixels: int = 0) -> int:
    """Rough peak memory (bytes) of one job on a ``width`` x ``height`` ``fmt`` image with ``opts``: the received
    frames (``frame_bytes``: pixels, instance masks and hint map; default the pixel frame alone), the hint map's
    processing (``hint_pixels``), detector, colorizer batches, per-instance a/b crops and masks (each at most the
    working image), finish and result at output size."""
    channels, sample = PIXEL_FORMATS[fmt]
    src_px = width * height
    ww, wh = working_size(width, height, opts.max_side)
    work_px = ww * wh
    out_px = src_px if opts.full_resolution else work_px
    n = opts.max_instances
    frames = src_px * channels * sample if frame_bytes is None else frame_bytes   # kept for recompose
    total = BASE_BYTES + model_bytes(opts) + frames + hint_pixels * HINT_BYTES_PER_PIXEL
    total += work_px * 3 * 4                                                  # working copy (float32 Lab)
    if opts.detector != "none":
        total += work_px * DETECTOR_BYTES_PER_PIXEL
    from ..colorizers import input_spec     # torch: not at import (the CLI's `weights` command never loads it)

    spec = input_spec(opts.colorizer)
    net_px = max(spec.side(opts.net_size, True) ** 2, opts.batch_size * spec.side(opts.net_size, False) ** 2)
    total += net_px * NET_BYTES_BY_INPUT.get(spec.name, NET_BYTES_PER_PIXEL)  # the largest colorizer batch
    total += (1 + n) * opts.net_size ** 2 * 4 * 4                             # network inputs (L + hints)
    total += (1 + n) * work_px * 2 * 4 // 2                                   # a/b per crop (crops ~ half the image)
    total += n * work_px // 2                                                 # cropped uint8/bool masks
    total += out_px * (FINISH_BYTES_PER_PIXEL + 4 * sample)                   # finish + result image
    return int(total)


def model_bytes(opts: Options) -> int:
    """The job's colorizer and detector weights as held while loading (twice each file: the state dict read and
    the network), from the catalogue's file sizes; MODEL_BYTES when it gives none."""
    reg = registry()
    sizes = [reg.model(name, kind).weights.size_hint
             for kind, name in (("colorizer", opts.colorizer), ("detector", opts.detector)) if name != NO_DETECTOR]
    return 2 * sum(sizes) if sizes and all(sizes) else MODEL_BYTES


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
              available: int | None, req_id: str | None = None, job: str | None = None,
              frame_bytes: int | None = None, hint_pixels: int = 0) -> int:
    """Admit a job or raise ProtocolError("bad_options") with one sentence. Returns the estimate (bytes);
    ``frame_bytes`` and ``hint_pixels`` as for :func:`estimate_job_bytes`."""
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
    need = estimate_job_bytes(width, height, fmt, opts, frame_bytes, hint_pixels)
    if remote and need > limits.job_bytes:
        raise refuse(f"this job would need about {need / 2**30:.1f} GiB, over the {limits.job_bytes / 2**30:.1f} "
                     "GiB a remote job may use: lower max_side, batch_size, net_size or max_instances")
    if available is not None and need > available:
        raise refuse(f"this job would need about {need / 2**30:.1f} GiB but the server has only "
                     f"{available / 2**30:.1f} GiB free: lower max_side, batch_size, net_size or max_instances")
    return need


@dataclass(frozen=True)
class Budgets:
    """How much accepted jobs may hold. A job holds its request's data frames (pixels, instance masks, hint map;
    a recompose: its masks) from ``accepted`` until its final event; jobs that wait are counted too.

    ``client_bytes`` is also the largest request a client may send: a bigger one could never be admitted, so it is
    refused (``too_large``) from its header, before any data frame is kept."""

    queue_jobs: int                # waiting jobs in all (--queue-size)
    client_jobs: int               # waiting jobs per client (--client-queue-size)
    queue_bytes: int               # request bytes held by all accepted jobs (--queue-mb)
    client_bytes: int              # request bytes held by one client's accepted jobs (--client-mb)

    @property
    def max_request_bytes(self) -> int:
        return min(self.client_bytes, self.queue_bytes)


def default_budgets(max_pixels: int, queue_jobs: int = 8, client_jobs: int | None = None,
                    client_bytes: int | None = None, queue_bytes: int | None = None) -> Budgets:
    """The budgets for a server taking images up to ``max_pixels``: by default a client may hold two of the
    largest frames (an rgba16 image at ``max_pixels`` and a hint map as large), all clients together twice that,
    and a client may keep half the queue waiting."""
    largest_frame = 8 * max_pixels
    client_bytes = client_bytes or max(2 * largest_frame, 64 << 20)
    return Budgets(queue_jobs, client_jobs or max(1, queue_jobs // 2), queue_bytes or 2 * client_bytes,
                   client_bytes)


class HeldBytes:
    """Request bytes held by accepted jobs, per client and in all, against :class:`Budgets` (main thread only)."""

    def __init__(self, budgets: Budgets):
        self.budgets = budgets
        self.total = 0
        self._per_client: dict[Hashable, int] = {}

    def of(self, client: Hashable) -> int:
        return self._per_client.get(client, 0)

    def refusal(self, client: Hashable, nbytes: int) -> str | None:
        """Why ``client`` may not hold ``nbytes`` more now (one sentence), or None when it may."""
        b, mine = self.budgets, self.of(client)
        if mine + nbytes > b.client_bytes:
            return (f"your queued and running jobs hold {mine / 1e6:.0f} MB; this one needs {nbytes / 1e6:.0f} MB "
                    f"more, over the {b.client_bytes / 1e6:.0f} MB one client may hold: try again when one has "
                    "finished")
        if self.total + nbytes > b.queue_bytes:
            return (f"the server's queued and running jobs hold {self.total / 1e6:.0f} MB; this one needs "
                    f"{nbytes / 1e6:.0f} MB more, over its {b.queue_bytes / 1e6:.0f} MB: try again later")
        return None

    def charge(self, client: Hashable, nbytes: int) -> None:
        self.total += nbytes
        self._per_client[client] = self.of(client) + nbytes

    def release(self, client: Hashable, nbytes: int) -> None:
        self.total -= nbytes
        left = self.of(client) - nbytes
        if left > 0:
            self._per_client[client] = left
        else:
            self._per_client.pop(client, None)
