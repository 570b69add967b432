"""Server side of the wire protocol (docs/protocol.md): request parsing + validation, reply encoding.

The constants and framing shared with the client live in ``patchcolor_client.protocol`` (stdlib only, runs in
GIMP); this module re-exports them and adds what needs numpy or patchcolor: strict request validation *before*
anything is allocated (hint maps and preview fields included), Options from JSON, and Result / Preview -> frames
without copying the pixels. What the server keeps of a request once it is a job is in jobs.py.

Frames on the ROUTER socket: ``[identity, (b"" if the peer is a REQ socket), header, data...]``. The envelope
(identity and optional delimiter) is split off by :func:`split_envelope` and put back in front of every reply.
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, Sequence, Union

import numpy as np

from patchcolor_client.protocol import (  # noqa: F401  (re-exported: the one definition of the protocol)
    ACCEPTED, ACK, CANCEL, CANCELLED, COLORIZE, DEFAULT_ENDPOINT, ERROR, ERROR_CODES, FINAL_TYPES, INFO,
    HINTS_VERSION, MAX_DATA_FRAMES, MAX_HEADER_BYTES, MAX_INSTANCES, PING, PREVIEW, PREVIEW_SIDE,
    PIXEL_FORMATS, PONG, PROGRESS, PROTOCOL_VERSION, RECOMPOSE,
    REPLY_TYPES, REQUEST_TYPES, RESULT, RESULT_FORMATS, STAGE_WEIGHTS, STAGES, SUPPORTED_VERSIONS, ProtocolError,
    decode_header, encode_header, frame_size, new_token, overall_fraction, valid_id, valid_token,
)

from ..options import DEFAULT, Options, current_spelling, make_options
from ..prepare import PIXEL_FORMATS as NUMPY_PIXEL_FORMATS
from ..prepare import SourceImage, working_size

if TYPE_CHECKING:   # patchcolor.result imports torch (through segment): not needed to parse requests
    from ..result import Result


def check_pixel_tables(numpy_table: Any = NUMPY_PIXEL_FORMATS, wire_table: Any = PIXEL_FORMATS) -> None:
    """The client's stdlib table (channels, bytes per sample) and prepare.py's numpy table must describe the same
    formats. Raises RuntimeError (checked at import, also under ``python -O``, unlike an ``assert``)."""
    derived = {k: (ch, np.dtype(dt).itemsize) for k, (ch, dt) in numpy_table.items()}
    if derived != dict(wire_table):
        raise RuntimeError(f"pixel format tables disagree: prepare.PIXEL_FORMATS gives {derived}, "
                           f"the wire protocol's PIXEL_FORMATS {dict(wire_table)}")


check_pixel_tables()

Buffer = Union[bytes, bytearray, memoryview]
#: How far (result pixels) a given instance's box may reach past the image: float rounding of scaled boxes.
BOX_SLACK = 0.01


# ------------------------------------------------------------------------------------- hints and previews
# ``colorize`` / ``preview`` may carry ``"hints": {"width", "height", "format"}`` and one more data frame, the
# **last** one: the hint map (RGB(A) at the image's size, or a uniform scaling of it; see patchcolor/hints.py for
# what counts as painted), checked like the image frame before anything is kept. ``preview`` parses like
# ``colorize`` (no ``instances``) plus ``long_side`` (64..1024, default 384) and ``draft`` (bool, default false).
MIN_PREVIEW_SIDE, MAX_PREVIEW_SIDE = 64, 1024
HINT_FORMATS = tuple(f for f in PIXEL_FORMATS if not f.startswith("gray") or f.startswith("graya"))


@dataclass(frozen=True)
class HintsMeta:
    """The header's ``hints`` object, validated: the hint frame is ``nbytes`` of ``format`` at width x height."""

    width: int
    height: int
    format: str

    @property
    def nbytes(self) -> int:
        return frame_size(self.format, self.width, self.height)

    def source(self, frame: Any) -> SourceImage:
        """The hint map as a zero-copy SourceImage over the received frame (size already checked)."""
        return SourceImage.from_buffer(frame, self.width, self.height, self.format)


def parse_hints(obj: Any, width: int, height: int, max_pixels: int, req_id: str | None,
                job: str | None) -> HintsMeta | None:
    """Check a request header's ``hints`` object against the image (width x height). None when absent.

    Raises ProtocolError(bad_request) unless it is {"width": int, "height": int, "format": one of HINT_FORMATS},
    the image's size or a uniform scaling of it (within one hint pixel), at most ``max_pixels``."""
    if obj is None:
        return None

    def bad(what: str) -> ProtocolError:
        return ProtocolError("bad_request", f"hints: {what}", req_id, job)

    if not isinstance(obj, dict) or set(obj) - {"width", "height", "format"}:
        raise bad("must be an object with 'width', 'height' and 'format'")
    w, h, fmt = obj.get("width"), obj.get("height"), obj.get("format")
    if type(w) is not int or type(h) is not int or w <= 0 or h <= 0:
        raise bad("'width' and 'height' must be positive integers")
    if not isinstance(fmt, str) or fmt not in HINT_FORMATS:
        raise bad(f"'format' must be one of {', '.join(HINT_FORMATS)} (gray without alpha cannot hold a hint)")
    if w * h > max_pixels:
        raise ProtocolError("image_too_large", f"hints: {w}x{h} is over this server's limit of "
                            f"{max_pixels / 1e6:g} MP", req_id, job)
    if (w, h) != (width, height) and abs(w / width - h / height) * min(width, height) > 1:
        raise bad(f"the hint map is {w}x{h} but the image is {width}x{height}: paint the hints at the image's "
                  "size (or a uniformly scaled copy)")
    return HintsMeta(w, h, fmt)


def parse_draft(v: Any, req_id: str | None, job: str | None) -> bool:
    """A ``preview`` header's ``draft`` (None -> False). Raises ProtocolError(bad_request) unless a JSON bool."""
    if v is None:
        return False
    if type(v) is not bool:
        raise ProtocolError("bad_request", "'draft' must be true or false", req_id, job)
    return v


def parse_long_side(v: Any, req_id: str | None, job: str | None) -> int:
    """A ``preview`` header's ``long_side`` (None -> PREVIEW_SIDE). Raises ProtocolError(bad_request)."""
    if v is None:
        return PREVIEW_SIDE
    if type(v) is not int or not MIN_PREVIEW_SIDE <= v <= MAX_PREVIEW_SIDE:
        raise ProtocolError("bad_request", f"'long_side' must be an integer in [{MIN_PREVIEW_SIDE}, "
                            f"{MAX_PREVIEW_SIDE}]", req_id, job)
    return v


# ----------------------------------------------------------------------------------------------------- requests
@dataclass(frozen=True)
class InfoRequest:
    id: str
    v: int = PROTOCOL_VERSION


@dataclass(frozen=True)
class PingRequest:
    """``job`` (optional): the pong then says whether that job is still queued/running (liveness of a job);
    ``token`` is that job's token (without it the state is ``unknown`` unless asked on the creating connection)."""

    id: str
    job: str | None = None
    token: str | None = None
    v: int = PROTOCOL_VERSION


@dataclass(frozen=True)
class CancelRequest:
    id: str
    job: str
    token: str | None = None
    v: int = PROTOCOL_VERSION


@dataclass
class GivenInstance:
    """One entry of a ``colorize`` request's ``instances`` (result pixels) with its cropped mask frame.

    ``mask`` is an (h, w) uint8 view of the frame (nonzero = inside) at ``mask_origin``; it has the attributes
    ``Pipeline.run(instances=...)`` reads (those of ``patchcolor.result.InstanceResult``)."""

    class_id: int
    class_name: str
    score: float
    box: tuple[float, float, float, float]
    mask_origin: tuple[int, int]
    mask: np.ndarray = field(repr=False)


@dataclass
class ColorizeRequest:
    """``pixels`` is a zero-copy view of the received frame (keeps the ZeroMQ message alive); None until the data
    frames are attached (:func:`attach_frames`).

    ``instances`` (optional): use these instead of the detector (recompose after the server lost the job).
    ``token``: the client's secret for this job (None: the server makes one)."""

    id: str
    job: str
    width: int
    height: int
    format: str
    options: Options
    pixels: memoryview | None = field(default=None, repr=False)
    instances: list[GivenInstance] | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    v: int = PROTOCOL_VERSION
    instance_metas: list[dict[str, Any]] | None = field(default=None, repr=False)
    hints_meta: HintsMeta | None = field(default=None, repr=False)   # the optional hints frame (last)
    hints: SourceImage | None = field(default=None, repr=False)      # its zero-copy view
    preview: int | None = None       # a ``preview`` request: the proxy's long side
    draft: bool = False              # a ``preview`` request: a draft is acceptable


@dataclass
class RecomposeRequest:
    """Recompose job ``base_job`` with edited masks (full output-size gray8 frames, one per instance).

    ``options`` is None when the request kept the base job's options. Mask sizes are checked against the kept
    job by :func:`check_recompose` (they depend on the base job's output size). ``base_token`` is ``base_job``'s
    token (required to use it), ``token`` the client's secret for the new job (None: the server makes one)."""

    id: str
    job: str
    base_job: str
    options: Options | None
    masks: list[memoryview] = field(default_factory=list, repr=False)
    base_token: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    v: int = PROTOCOL_VERSION


Request = Union[InfoRequest, PingRequest, CancelRequest, ColorizeRequest, RecomposeRequest]


@dataclass(frozen=True)
class Limits:
    """What the server accepts. ``max_pixels`` bounds width x height of a request image."""

    max_pixels: int = 100_000_000

    @property
    def max_frame_bytes(self) -> int:
        """Largest legitimate frame (an rgba16 image at ``max_pixels``); used for ZMQ_MAXMSGSIZE."""
        return max(self.max_pixels * 8, MAX_HEADER_BYTES)


def split_envelope(frames: Sequence[Any]) -> tuple[list[bytes], list[Any]]:
    """ROUTER frames -> (envelope to echo back, message body). A REQ peer adds an empty delimiter frame."""
    identity = bytes(frames[0])
    if len(frames) > 2 and len(frames[1]) == 0:
        return [identity, b""], list(frames[2:])
    return [identity], list(frames[1:])


def _buf(frame: Any) -> memoryview:
    """Zero-copy view of a received frame (zmq.Frame, bytes or memoryview)."""
    b = getattr(frame, "buffer", None)
    return b if b is not None else memoryview(frame)


def _int(h: dict[str, Any], key: str, req_id: str | None, job: str | None) -> int:
    v = h.get(key)
    if type(v) is not int:   # bool is an int subclass: refused too
        raise ProtocolError("bad_request", f"{key!r} must be an integer", req_id, job)
    return v


def _job_id(h: dict[str, Any], key: str, req_id: str | None) -> str:
    v = h.get(key)
    if not valid_id(v):
        raise ProtocolError("bad_request", f"{key!r} must be a string of 1-64 characters [A-Za-z0-9_.:-]", req_id)
    return str(v)


def _token(h: dict[str, Any], key: str, req_id: str | None, job: str | None) -> str | None:
    v = h.get(key)
    if v is None:
        return None
    if not valid_token(v):
        raise ProtocolError("bad_request", f"{key!r} must be a string of 16-128 characters [A-Za-z0-9_-]",
                            req_id, job)
    return str(v)


_OPTION_TYPES: dict[str, type] = {f.name: type(getattr(DEFAULT, f.name)) for f in fields(Options)}


def parse_options(obj: Any) -> Options:
    """JSON options (the CLI's option names) -> validated Options. Raises ProtocolError(bad_options).

    ``preset`` picks the starting point; every other key overrides one field (first-published names and values,
    e.g. ``"fusion": "seed"``, are read as today's: :data:`patchcolor.options.RENAMED`). Types are strict: bools
    must be JSON true/false, ints must be integers, floats may be integers."""
    if obj is None:
        obj = {}
    if not isinstance(obj, dict):
        raise ProtocolError("bad_options", "'options' must be a JSON object")
    obj = current_spelling(obj)
    preset = obj.pop("preset", "default")
    if not isinstance(preset, str):
        raise ProtocolError("bad_options", "option 'preset' must be a string")
    clean: dict[str, Any] = {}
    for key, value in obj.items():
        want = _OPTION_TYPES.get(key)
        if want is None:
            raise ProtocolError("bad_options", f"unknown option {key[:64]!r}")
        if value is None:
            continue
        if want is bool:
            ok = isinstance(value, bool)
        elif want is int:
            ok = type(value) is int
        elif want is float:
            ok = type(value) in (int, float)
            value = float(value) if ok else value
        else:
            ok = isinstance(value, want)
        if not ok:
            raise ProtocolError("bad_options", f"option {key!r} must be of type {want.__name__}")
        clean[key] = value
    try:
        return make_options(preset, **clean)
    except (ValueError, TypeError, OverflowError) as e:
        raise ProtocolError("bad_options", str(e)) from None


def request_version(h: dict[str, Any]) -> int:
    """The version to answer a header in: its own when supported, else this server's."""
    v = h.get("v")
    return v if type(v) is int and v in SUPPORTED_VERSIONS else PROTOCOL_VERSION


def parse_header(h: dict[str, Any], limits: Limits) -> tuple[Request, list[int] | None]:
    """Validate a decoded request header; (request without its data, the exact byte size of every data frame
    the header announces). The sizes are None for a recompose (they depend on the kept base job; at most
    MAX_INSTANCES frames). Nothing is allocated. Raises ProtocolError with the request/job id when known."""
    req_id = h.get("id") if valid_id(h.get("id")) else None
    job = h.get("job") if valid_id(h.get("job")) else None
    v = h.get("v")
    if type(v) is not int or v not in SUPPORTED_VERSIONS:
        raise ProtocolError("version", f"protocol version {v!r} is not supported (this server speaks "
                            f"{', '.join(map(str, SUPPORTED_VERSIONS))})", req_id, job)
    kind = h.get("type")
    if kind not in REQUEST_TYPES:
        raise ProtocolError("bad_request", f"unknown request type {str(kind)[:32]!r} "
                            f"(one of {', '.join(REQUEST_TYPES)})", req_id, job)
    if req_id is None:
        raise ProtocolError("bad_request", "'id' must be a string of 1-64 characters [A-Za-z0-9_.:-]", None, job)

    if kind == INFO:
        return InfoRequest(req_id, v), []
    if kind == PING:
        if "job" not in h:
            return PingRequest(req_id, None, None, v), []
        pjob = _job_id(h, "job", req_id)
        return PingRequest(req_id, pjob, _token(h, "token", req_id, pjob), v), []
    if kind == CANCEL:
        cjob = _job_id(h, "job", req_id)
        return CancelRequest(req_id, cjob, _token(h, "token", req_id, cjob), v), []

    job = _job_id(h, "job", req_id)
    token = _token(h, "token", req_id, job)
    if kind in (COLORIZE, PREVIEW):
        width, height = _int(h, "width", req_id, job), _int(h, "height", req_id, job)
        fmt = h.get("format")
        if not isinstance(fmt, str) or fmt not in PIXEL_FORMATS:
            raise ProtocolError("bad_request", f"'format' must be one of {', '.join(PIXEL_FORMATS)}", req_id, job)
        if width <= 0 or height <= 0:
            raise ProtocolError("bad_request", "width and height must be positive", req_id, job)
        if width * height > limits.max_pixels:
            raise ProtocolError("image_too_large", f"image is {width}x{height} = {width * height / 1e6:.1f} MP, "
                                f"over this server's limit of {limits.max_pixels / 1e6:g} MP", req_id, job)
        opts = _options(h, req_id, job)
        metas = _instance_metas(h.get("instances"), result_size(width, height, opts), req_id, job)
        sizes = [frame_size(fmt, width, height)] + [m["mask_size"][0] * m["mask_size"][1] for m in metas or []]
        if (kind == PREVIEW or h.get("hints") is not None) and v < HINTS_VERSION:
            raise ProtocolError("bad_request", f"colour hints and previews need protocol {HINTS_VERSION} (this "
                                f"request says {v})", req_id, job)
        if kind == PREVIEW and metas is not None:
            raise ProtocolError("bad_request", "a preview takes no 'instances'", req_id, job)
        hints = parse_hints(h.get("hints"), width, height, limits.max_pixels, req_id, job)
        sizes += [hints.nbytes] if hints is not None else []
        return ColorizeRequest(req_id, job, width, height, fmt, opts, token=token, v=v, instance_metas=metas,
                               hints_meta=hints, preview=parse_long_side(h.get("long_side"), req_id, job)
                               if kind == PREVIEW else None,
                               draft=parse_draft(h.get("draft"), req_id, job) if kind == PREVIEW else False), sizes

    # RECOMPOSE (the op is named "refuse" on the wire)
    base = _job_id(h, "base_job", req_id)
    recompose_opts = _options(h, req_id, job) if h.get("options") is not None else None
    return RecomposeRequest(req_id, job, base, recompose_opts, [], _token(h, "base_token", req_id, job), token, v), None


def check_frames(sizes: list[int] | None, index: int, nbytes: int, req: Request, max_frame_bytes: int) -> None:
    """Data frame ``index`` (0-based, after the header) of ``nbytes`` against what the header announced (``sizes``;
    None: up to MAX_INSTANCES frames of at most ``max_frame_bytes``). Raises ProtocolError."""
    req_id, job = getattr(req, "id", None), getattr(req, "job", None)
    limit = len(sizes) if sizes is not None else MAX_INSTANCES
    if index >= limit:
        if sizes is None:
            raise ProtocolError("bad_request", f"at most {MAX_INSTANCES} mask frames", req_id, job)
        raise ProtocolError("bad_request", f"expected {limit} data frame(s) after the header, got more",
                            req_id, job)
    if sizes is None:
        if nbytes > max_frame_bytes:
            raise ProtocolError("too_large", f"mask frame {index} is {nbytes} bytes, over this server's limit",
                                req_id, job)
        return
    if nbytes != sizes[index]:
        if isinstance(req, ColorizeRequest) and req.hints_meta is not None and index == len(sizes) - 1:
            m = req.hints_meta
            raise ProtocolError("bad_request", f"hints frame is {nbytes} bytes; {m.format} {m.width}x{m.height} "
                                f"needs {sizes[index]}", req_id, job)
        if index == 0 and isinstance(req, ColorizeRequest):
            raise ProtocolError("bad_request", f"pixel frame is {nbytes} bytes; {req.format} {req.width}x"
                                f"{req.height} needs {sizes[0]}", req_id, job)
        raise ProtocolError("bad_request", f"instance {index - 1}: mask frame is {nbytes} bytes; its mask_size "
                            f"needs {sizes[index]}", req_id, job)


def attach_frames(req: Request, data: Sequence[Any]) -> Request:
    """Put the (already size-checked) data frames into the request, as zero-copy views."""
    if isinstance(req, ColorizeRequest):
        req.pixels = _buf(data[0])
        if req.hints_meta is not None:
            req.hints = req.hints_meta.source(_buf(data[-1]))
            data = data[:-1]
        if req.instance_metas is not None:
            req.instances = [_given_instance(m, f, i, req.id, req.job)
                             for i, (m, f) in enumerate(zip(req.instance_metas, data[1:]))]
        req.instance_metas = None
    elif isinstance(req, RecomposeRequest):
        req.masks = [_buf(f) for f in data]
    return req


def parse_request(body: Sequence[Any], limits: Limits) -> Request:
    """Validate a whole request body (header + data frames) and return its dataclass (the server does the same
    frame by frame, see server.py; this is the one-shot form).

    Every check happens before anything is allocated: header size, JSON, version, type, ids, dimensions against
    ``limits``, frame count and each frame's byte size. Raises ProtocolError with the request/job id when known.
    """
    if not body:
        raise ProtocolError("bad_request", "empty message")
    req, sizes = parse_header(decode_header(_buf(body[0])), limits)
    data = body[1:]
    for i, f in enumerate(data):
        check_frames(sizes, i, len(f), req, limits.max_frame_bytes)
    if sizes is not None and len(data) != len(sizes):
        raise ProtocolError("bad_request", f"expected {len(sizes)} data frame(s) after the header, got "
                            f"{len(data)}", getattr(req, "id", None), getattr(req, "job", None))
    return attach_frames(req, data)


def result_size(width: int, height: int, opts: Options) -> tuple[int, int]:
    """(W, H) of the result of a ``width`` x ``height`` request with ``opts`` (the working size unless
    ``full_resolution``): the pixel space of result boxes and masks."""
    return (width, height) if opts.full_resolution else working_size(width, height, opts.max_side)


def _number(v: Any) -> bool:
    return type(v) in (int, float) and math.isfinite(v)


def _instance_metas(obj: Any, size: tuple[int, int], req_id: str, job: str) -> list[dict[str, Any]] | None:
    """Check a ``colorize`` request's ``instances`` field against the result size (W, H): every box and mask
    window inside the image (boxes may overshoot by BOX_SLACK from float rounding). None when absent."""
    if obj is None:
        return None
    if not isinstance(obj, list) or len(obj) > MAX_INSTANCES:
        raise ProtocolError("bad_request", f"'instances' must be a list of at most {MAX_INSTANCES} objects",
                            req_id, job)
    w, h = size
    for i, m in enumerate(obj):
        def bad(what: str) -> ProtocolError:
            return ProtocolError("bad_request", f"instance {i}: {what}", req_id, job)

        if not isinstance(m, dict):
            raise bad("must be an object")
        if type(m.get("class_id")) is not int or not 0 <= m["class_id"] < 1 << 16:
            raise bad("'class_id' must be an integer in [0, 65535]")
        if not isinstance(m.get("class_name"), str) or len(m["class_name"]) > 64:
            raise bad("'class_name' must be a string of at most 64 characters")
        if not _number(m.get("score")) or not 0 <= m["score"] <= 1:
            raise bad("'score' must be a number in [0, 1]")
        box, origin, msize = m.get("box"), m.get("mask_origin"), m.get("mask_size")
        if not (isinstance(box, list) and len(box) == 4 and all(_number(v) for v in box)
                and -BOX_SLACK <= box[0] <= box[2] <= w + BOX_SLACK and -BOX_SLACK <= box[1] <= box[3] <= h + BOX_SLACK):
            raise bad(f"'box' must be [x0, y0, x1, y1] with 0 <= x0 <= x1 <= {w} and 0 <= y0 <= y1 <= {h}")
        if not (isinstance(origin, list) and isinstance(msize, list) and len(origin) == len(msize) == 2
                and all(type(v) is int for v in origin + msize)
                and 0 <= origin[0] and 0 <= origin[1] and 0 <= msize[0] and 0 <= msize[1]
                and origin[0] + msize[0] <= w and origin[1] + msize[1] <= h):
            raise bad(f"'mask_origin' [x, y] and 'mask_size' [w, h] must be integers, the mask inside the "
                      f"{w}x{h} result")
    return obj


def _given_instance(meta: dict[str, Any], frame: Any, i: int, req_id: str, job: str) -> GivenInstance:
    mw, mh = meta["mask_size"]
    if len(frame) != mw * mh:
        raise ProtocolError("bad_request", f"instance {i}: mask frame is {len(frame)} bytes; a {mw}x{mh} gray8 "
                            f"mask needs {mw * mh}", req_id, job)
    mask = np.frombuffer(_buf(frame), np.uint8).reshape(mh, mw)
    return GivenInstance(meta["class_id"], meta["class_name"], float(meta["score"]),
                         tuple(float(v) for v in meta["box"]), tuple(meta["mask_origin"]), mask)  # type: ignore[arg-type]


def _options(h: dict[str, Any], req_id: str, job: str) -> Options:
    try:
        return parse_options(h.get("options"))
    except ProtocolError as e:
        e.req_id, e.job = req_id, job
        raise


# ------------------------------------------------------------------------------------------------------ replies
def error_header(code: str, message: str, req_id: str | None = None, job: str | None = None,
                 v: int = PROTOCOL_VERSION, **extra: Any) -> dict[str, Any]:
    h: dict[str, Any] = {"v": v, "type": ERROR, "id": req_id, "code": code, "message": message}
    if job is not None:
        h["job"] = job
    h.update(extra)
    return h


def progress_header(req_id: str, job: str, stage: str, fraction: float, overall: float,
                    v: int = PROTOCOL_VERSION, text: str | None = None, eta: float | None = None) -> dict[str, Any]:
    """A ``progress`` event; ``text`` (what runs now) and ``eta`` (estimated seconds left) are sent when known."""
    h: dict[str, Any] = {"v": v, "type": PROGRESS, "id": req_id, "job": job, "stage": stage,
                         "fraction": round(float(fraction), 4), "overall": round(float(overall), 4)}
    if text:
        h["text"] = str(text)
    if eta is not None:
        h["eta"] = round(float(eta), 1)
    return h


def image_to_wire(image: np.ndarray) -> tuple[str, np.ndarray]:
    """(H, W) / (H, W, 1..4) uint8/uint16 array -> (format, C-contiguous little-endian array).

    No copy when the array is already contiguous and little-endian (the usual case)."""
    if image.dtype.kind != "u" or image.dtype.itemsize not in (1, 2):
        raise ValueError(f"result image has dtype {image.dtype}, expected uint8 or uint16")
    ch = 1 if image.ndim == 2 else int(image.shape[2])
    name = {1: "gray", 2: "graya", 3: "rgb", 4: "rgba"}.get(ch)
    if name is None:
        raise ValueError(f"result image has {ch} channels")
    depth = 8 * image.dtype.itemsize
    little = image.dtype.byteorder == "<" or (image.dtype.byteorder == "=" and sys.byteorder == "little")
    if depth == 16 and not little:
        image = image.astype("<u2")
    return f"{name}{depth}", np.ascontiguousarray(image)


def image_from_wire(data: Buffer, width: int, height: int, fmt: str) -> np.ndarray:
    """Raw frame -> (H, W, C) array view (native byte order; a copy only on big-endian machines)."""
    ch, dt = NUMPY_PIXEL_FORMATS[fmt]
    arr = np.frombuffer(data, dtype=dt).reshape(height, width, ch)
    return arr.astype(dt.newbyteorder("="), copy=False)


def source_to_wire(src: SourceImage) -> tuple[str, np.ndarray]:
    """SourceImage -> (request format, interleaved array). Copies only to interleave alpha."""
    color = src.color
    if src.alpha is not None:
        color = np.dstack([color if color.ndim == 3 else color[..., None], src.alpha])
    return image_to_wire(color)


def mask_to_wire(mask: np.ndarray) -> np.ndarray:
    """(h, w) bool mask -> (h, w) uint8 0/255 (small: one per instance, cropped to its box)."""
    return np.ascontiguousarray(mask, dtype=bool).view(np.uint8) * np.uint8(255)


def result_message(req_id: str, job: str, result: Result, v: int = PROTOCOL_VERSION
                   ) -> tuple[dict[str, Any], list[Any]]:
    """Result -> (header dict, [pixels, mask_0, ...]). The pixels go out as they are (no copy); the caller
    encodes the header (it may add fields first) and sends ``[encode_header(header), *frames]``."""
    fmt, pixels = image_to_wire(result.image)
    height, width = int(pixels.shape[0]), int(pixels.shape[1])
    instances: list[dict[str, Any]] = []
    frames: list[Any] = [pixels]
    for inst in result.instances:
        m = mask_to_wire(inst.mask)
        frames.append(m)
        instances.append({
            "class_id": int(inst.class_id), "class_name": str(inst.class_name), "score": float(inst.score),
            "box": [float(x) for x in inst.box], "mask_origin": [int(inst.mask_origin[0]), int(inst.mask_origin[1])],
            "mask_size": [int(m.shape[1]), int(m.shape[0])],
        })
    header = {"v": v, "type": RESULT, "id": req_id, "job": job, "width": width, "height": height,
              "format": fmt, "instances": instances,
              "timings": {str(k): float(v) for k, v in (result.timings or {}).items()}}
    return header, frames


def preview_message(req_id: str, job: str, preview: Any, v: int) -> tuple[dict[str, Any], list[Any]]:
    """Preview -> (``result`` header with ``"preview": true``, [pixels])."""
    fmt, pixels = image_to_wire(preview.image)
    header = {"v": v, "type": RESULT, "id": req_id, "job": job, "preview": True,
              "draft": bool(getattr(preview, "draft", False)), "refusable": False,
              "width": int(pixels.shape[1]), "height": int(pixels.shape[0]), "format": fmt, "instances": [],
              "n_instances": int(preview.instances), "hints": int(preview.hints), "computed": int(preview.computed),
              "timings": {str(k): round(float(t), 4) for k, t in preview.timings.items()}}
    return header, [pixels]
