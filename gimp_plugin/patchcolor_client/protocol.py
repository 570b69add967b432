"""The PatchColor wire protocol: the constants and framing both ends share (docs/protocol.md).

Standard library only: this module runs inside GIMP's Python (no numpy, no patchcolor). The server
(``patchcolor.service.protocol``) imports everything below from here, so the two ends cannot drift apart.

A message is a ZeroMQ multipart message: frame 0 is a small UTF-8 JSON object (the *header*), the frames
after it are raw bytes (pixels, masks) whose sizes the header determines.
"""
from __future__ import annotations

import json
import re
import secrets
import uuid
from typing import Any

#: Bumped on any change; a server answers versions it does not support with an ``error`` of code ``version``.
#: 2 added job tokens (docs/protocol.md); a version-2 server still answers version-1 requests, in version 1.
#: 3 added the optional hints frame and the ``preview`` request (only in version-3 requests; 1 and 2 as before).
PROTOCOL_VERSION = 3
SUPPORTED_VERSIONS: tuple[int, ...] = (1, 2, 3)
#: the first version with colour hints and ``preview``
HINTS_VERSION = 3

#: Largest accepted header frame (bytes).
MAX_HEADER_BYTES = 64 * 1024
#: Request and job ids: 1..64 characters from this set.
ID_PATTERN = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
#: Most instances a result can carry (the pipeline's ``max_instances`` upper bound).
MAX_INSTANCES = 100
#: Most data frames any request may carry (``colorize``: the pixels + one mask per given instance).
MAX_DATA_FRAMES = 2 + MAX_INSTANCES   # + the optional hints frame
#: Job tokens (the secret that binds a job to the client that created it): 16..128 characters from this set.
TOKEN_PATTERN = re.compile(r"[A-Za-z0-9_-]{16,128}")

DEFAULT_ENDPOINT = "tcp://127.0.0.1:5555"

# Request types (client -> server). RECOMPOSE (fuse a kept job again with edited masks) travels as "refuse",
# its name in the first protocol version, kept so older plug-ins and servers understand each other.
INFO, PING, COLORIZE, RECOMPOSE, CANCEL = "info", "ping", "colorize", "refuse", "cancel"
#: a colorize on a small proxy (the dialog's preview): same fields, answered by one ``result`` with "preview": true
PREVIEW = "preview"
REQUEST_TYPES: tuple[str, ...] = (INFO, PING, COLORIZE, RECOMPOSE, CANCEL, PREVIEW)
#: a preview's default proxy long side
PREVIEW_SIDE = 384

# Reply types (server -> client).  ``info`` answers ``info``; ``pong`` answers ``ping``; ``ack`` answers ``cancel``.
PONG, ACK, ACCEPTED, PROGRESS, RESULT, ERROR, CANCELLED = (
    "pong", "ack", "accepted", "progress", "result", "error", "cancelled")
REPLY_TYPES: tuple[str, ...] = (INFO, PONG, ACK, ACCEPTED, PROGRESS, RESULT, ERROR, CANCELLED)
#: Exactly one of these ends a job.
FINAL_TYPES: tuple[str, ...] = (RESULT, ERROR, CANCELLED)

#: Raw interleaved pixel formats: name -> (channels, bytes per sample). 16-bit samples are little-endian.
PIXEL_FORMATS: dict[str, tuple[int, int]] = {
    "gray8": (1, 1), "gray16": (1, 2), "graya8": (2, 1), "graya16": (2, 2),
    "rgb8": (3, 1), "rgb16": (3, 2), "rgba8": (4, 1), "rgba16": (4, 2),
}
#: Format of the colorized result for each request format: gray becomes RGB, bit depth and alpha are kept.
RESULT_FORMATS: dict[str, str] = {
    "gray8": "rgb8", "gray16": "rgb16", "graya8": "rgba8", "graya16": "rgba16",
    "rgb8": "rgb8", "rgb16": "rgb16", "rgba8": "rgba8", "rgba16": "rgba16",
}

#: Pipeline stages in order, and their share of a job's time for the ``overall`` progress figure.
STAGES: tuple[str, ...] = ("prepare", "segment", "colorize", "fuse", "finish")
STAGE_WEIGHTS: dict[str, float] = {"prepare": 0.05, "segment": 0.35, "colorize": 0.35, "fuse": 0.20, "finish": 0.05}

#: Stable error codes (``error`` replies).  The pipeline's codes (patchcolor.errors) and the protocol's own.
ERROR_CODES: dict[str, str] = {
    # protocol level
    "bad_request": "the message is malformed (header, types, frame count or sizes)",
    "version": "the server does not speak this protocol version",
    "too_large": "a header, frame or whole message is larger (or has more frames) than the server accepts",
    "busy": "the job queue is full; try again later",
    "unknown_job": "no such job (finished, never submitted, or its kept state was evicted: run colorize again)",
    "duplicate_job": "a job with this id is already queued or running",
    "shutting_down": "the server is stopping and takes no new jobs",
    "out_of_memory": "the server ran out of memory for this job",
    "internal": "unexpected server failure (see the server log)",
    # pipeline level (patchcolor.errors)
    "error": "pipeline error",
    "weights_missing": "model weights are missing on the server",
    "weights_corrupt": "model weights on the server are damaged",
    "image_unreadable": "the pixels do not match the declared format",
    "image_too_large": "width x height is over the server's limit",
    "device_unavailable": "the requested device is not available on the server",
    "bad_options": "an option has a bad name, type or value",
    "cancelled": "the job was cancelled",
}


class ProtocolError(Exception):
    """A message that breaks the protocol; ``code`` is one of ERROR_CODES."""

    def __init__(self, code: str, message: str, req_id: str | None = None, job: str | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.req_id = req_id
        self.job = job


def frame_size(fmt: str, width: int, height: int) -> int:
    """Bytes of a ``width`` x ``height`` image in pixel format ``fmt``."""
    channels, sample = PIXEL_FORMATS[fmt]
    return width * height * channels * sample


def overall_fraction(stage: str, fraction: float) -> float:
    """Whole-job progress in [0, 1] for ``fraction`` of the way through ``stage`` (weights: STAGE_WEIGHTS)."""
    done = 0.0
    for name in STAGES:
        if name == stage:
            return min(1.0, done + STAGE_WEIGHTS[name] * min(max(fraction, 0.0), 1.0))
        done += STAGE_WEIGHTS[name]
    return min(1.0, done)


def new_id() -> str:
    """A fresh random request/job id (32 hex digits)."""
    return uuid.uuid4().hex


def valid_id(value: Any) -> bool:
    return isinstance(value, str) and ID_PATTERN.fullmatch(value) is not None


def new_token() -> str:
    """A fresh job token (32 hex digits from ``secrets``): only its holder may cancel, probe or recompose the job."""
    return secrets.token_hex(16)


def valid_token(value: Any) -> bool:
    return isinstance(value, str) and TOKEN_PATTERN.fullmatch(value) is not None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def encode_header(header: dict[str, Any]) -> bytes:
    """Header dict -> compact UTF-8 JSON (``v`` added when missing). NaN/Infinity are refused."""
    if "v" not in header:
        header = {"v": PROTOCOL_VERSION, **header}
    return json.dumps(header, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


def decode_header(data: bytes | memoryview) -> dict[str, Any]:
    """Header frame -> dict. Raises ProtocolError (too_large / bad_request) on anything else."""
    if len(data) > MAX_HEADER_BYTES:
        raise ProtocolError("too_large", f"header is {len(data)} bytes, the limit is {MAX_HEADER_BYTES}")
    if len(data) == 0:
        raise ProtocolError("bad_request", "empty header frame")
    try:
        obj = json.loads(bytes(data).decode("utf-8"), parse_constant=_reject_constant)
    except (ValueError, RecursionError) as e:   # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise ProtocolError("bad_request", f"header is not valid UTF-8 JSON: {str(e)[:200]}") from None
    if not isinstance(obj, dict):
        raise ProtocolError("bad_request", "header must be a JSON object")
    return obj
