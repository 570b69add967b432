"""Client of the PatchColor service (docs/protocol.md). Standard library only (pyzmq used when importable, see
transport.py): GIMP's Python runs it.

    from patchcolor_client import Client, BackendUnavailable
    with Client("tcp://127.0.0.1:5555", timeout_s=10) as c:
        c.ping(2.0)                                   # BackendUnavailable if nothing answers within 2 s
        res = c.colorize(w, h, "rgb8", pixels, {"preset": "default"},
                         progress=lambda stage, frac, overall: ...,   # called on every progress event
                         should_cancel=lambda: False)                 # polled about every 0.1 s
        res.pixels          # memoryview, res.fmt ("rgb8" for gray8/rgb8 input, ...), res.width x res.height
        res.instances[0].mask, .mask_origin, .mask_size, .box, .class_name, .score
        res2 = c.recompose(res.job_id, edited_full_size_masks)   # res.token: the job's secret (kept by this
                                                              # Client; another Client needs token=res.token)

A ``Client`` is not thread-safe: use it from one thread (pass ``should_cancel`` to cancel from a UI).

Reliability: ZeroMQ's ``connect`` to a dead endpoint does not fail, so every job starts with a ``ping`` that must be
answered within ``timeout_s``; while a job runs, ``timeout_s`` of silence triggers another ping, and an unanswered
one means the server is gone. After any timeout the socket is closed and a fresh one is made (the ZeroMQ guide's
*Lazy Pirate* pattern), so a late reply to an abandoned request can never be mistaken for a new one.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence, Union

from . import protocol
from . import transport

BufferLike = Union[bytes, bytearray, memoryview]
#: What may be sent: bytes, bytearray, memoryview or any C-contiguous buffer object (e.g. a numpy array).
InBuffer = Any
ProgressFn = Callable[[str, float, float], None]   # (Stage, fraction within the stage, overall fraction 0..1)
CancelFn = Callable[[], bool]

#: Time slice of the wait loop: ``should_cancel`` is polled (and a UI can pulse) this often.
POLL_S = 0.1


class Stage(str):
    """A progress event's stage name (it is the str), with what runs now (``text``, e.g. "Detecting objects:
    backbone 3/4") and the estimated seconds left (``eta``) when the server sends them (else None)."""

    text: str | None
    eta: float | None

    def __new__(cls, name: str, text: Any = None, eta: Any = None) -> "Stage":
        s = super().__new__(cls, name)
        s.text = str(text) if text else None
        s.eta = float(eta) if isinstance(eta, (int, float)) and not isinstance(eta, bool) else None
        return s


class BackendError(Exception):
    """The server answered with an error. ``code`` is stable (protocol.ERROR_CODES); ``message`` is for people."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{message} [{code}]")
        self.code = code
        self.message = message


class BackendUnavailable(Exception):
    """Nothing (or nothing that speaks this protocol, or not with our keys) answered in time."""


class ConnectError(BackendUnavailable):
    """No socket could be made for the endpoint (malformed endpoint, CURVE keys without pyzmq): one sentence."""


class JobCancelled(Exception):
    """The job ended because it was cancelled (by us, or by the server shutting down)."""


@dataclass
class WireInstance:
    """A detected object as a result carries it over the wire (the backend's own is
    ``patchcolor.segment.base.Instance``). Coordinates are result pixels; ``mask`` is
    ``mask_size[0] * mask_size[1]`` bytes (0 outside, 255 inside), cropped to the rectangle at ``mask_origin`` of
    that size."""

    class_id: int
    class_name: str
    score: float
    box: tuple[float, float, float, float]
    mask_origin: tuple[int, int]
    mask_size: tuple[int, int]
    mask: BufferLike = field(repr=False)

    def full_mask(self, width: int, height: int) -> bytearray:
        """The mask pasted into a ``width`` x ``height`` gray8 image (what :meth:`Client.recompose` takes)."""
        out = bytearray(width * height)
        x0, y0 = self.mask_origin
        mw, mh = self.mask_size
        src = memoryview(self.mask)
        cx0, cx1 = max(0, x0), min(width, x0 + mw)
        if cx1 <= cx0:
            return out
        for row in range(max(0, y0), min(height, y0 + mh)):
            s = (row - y0) * mw
            out[row * width + cx0: row * width + cx1] = src[s + cx0 - x0: s + cx1 - x0]
        return out


@dataclass
class ColorizeResult:
    """``pixels``: ``width`` x ``height`` in format ``fmt`` (a zero-copy view of the received frame)."""

    job_id: str
    width: int
    height: int
    fmt: str
    pixels: BufferLike = field(repr=False)
    instances: list[WireInstance]
    timings: dict[str, float] = field(default_factory=dict)
    #: False when the server could not keep this job's state (recompose -> unknown_job); "refusable" on the wire
    recomposable: bool = True
    token: str = field(default="", repr=False)   # the job's secret: recompose/cancel of this job need it
    #: other header fields: "hints" (colour hints followed); previews: "preview", "n_instances", "computed",
    #: "draft" (bool: a draft was rendered, see Client.preview)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class HintMap:
    """A colour-hint map to send with ``colorize``/``preview``: ``width`` x ``height`` pixels in ``fmt`` (graya/rgb/
    rgba, 8 or 16 bit), the image's size or a uniform scaling of it. Painted = alpha > 0 (with alpha) or not
    gray (RGB); each painted blob is one hint of its mean colour."""

    width: int
    height: int
    fmt: str
    pixels: InBuffer = field(repr=False)


def load_public_key(key: str | bytes | os.PathLike[str]) -> bytes:
    """A CURVE public key: 40-character Z85 text/bytes, or the path of a ``.key`` / ``.key_secret`` file."""
    if isinstance(key, bytes) and len(key) == 40:
        return key
    if isinstance(key, str) and len(key) == 40 and not os.path.exists(key):
        return key.encode("ascii")
    path = os.fsdecode(key)
    public, _ = transport.load_certificate(path)
    if not public:
        raise ValueError(f"{path}: no public key in this file")
    return public


class Client:
    """One connection to a PatchColor server.

    endpoint:          e.g. ``tcp://127.0.0.1:5555`` (``tcp://host:port`` for a remote server).
    timeout_s:         how long a request may go unanswered (and the silence allowed during a job before a
                       liveness ping) before BackendUnavailable.
    server_public_key: the server's CURVE public key (Z85 or a key file) to talk to a CURVE server.
    client_secret_key: a ``.key_secret`` file for servers that only admit listed clients; otherwise a fresh
                       key pair is made for each connection.
    retries:           extra attempts for ``ping``/``info`` (idempotent) after a timeout, each on a new socket.
    """

    def __init__(self, endpoint: str, timeout_s: float = 10.0, server_public_key: Any = None,
                 client_secret_key: str | os.PathLike[str] | None = None, retries: int = 1):
        self.endpoint = endpoint
        self.timeout_s = float(timeout_s)
        self.retries = max(0, int(retries))
        self._server_key = load_public_key(server_public_key) if server_public_key is not None else None
        self._client_keys: tuple[bytes, bytes] | None = None
        self._tokens: dict[str, str] = {}    # job id -> token of the jobs this Client started (newest 256)
        if client_secret_key is not None:
            pub, sec = transport.load_certificate(os.fspath(client_secret_key))
            if not sec:
                raise ValueError(f"{client_secret_key}: not a secret key file")
            self._client_keys = (pub, sec)
        self._sock: transport.Dealer | None = None
        self._open()

    # ---------------------------------------------------------------------------------------------- socket
    def _open(self) -> None:
        try:     # pyzmq when importable, else the standard-library ZMTP dealer (transport.py)
            self._sock = transport.open_dealer(self.endpoint, self._server_key, self._client_keys)
        except transport.TransportError as e:
            raise ConnectError(str(e)) from None

    def _reset(self) -> None:
        """Lazy Pirate: drop the socket (and anything queued on it) and connect a fresh one."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._open()

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _send(self, header: dict[str, Any], data: Sequence[Any] = (), track: bool = False) -> Any:
        assert self._sock is not None, "client is closed"
        return self._sock.send([protocol.encode_header(header), *data], track=track)

    def _recv(self, timeout_s: float) -> tuple[dict[str, Any], list[Any]] | None:
        """One reply (header, data frames) or None after ``timeout_s``. A malformed reply is BackendError."""
        assert self._sock is not None
        frames = self._sock.recv(timeout_s)
        if frames is None:
            return None
        try:
            header = protocol.decode_header(frames[0])
        except protocol.ProtocolError as e:
            raise BackendError("bad_reply", f"the server sent a malformed reply: {e.message}") from None
        if header.get("v") not in protocol.SUPPORTED_VERSIONS or header.get("type") not in protocol.REPLY_TYPES:
            raise BackendError("bad_reply", f"unexpected reply (v={header.get('v')!r}, "
                                            f"type={str(header.get('type'))[:32]!r})")
        return header, frames[1:]

    def _request(self, header: dict[str, Any], timeout_s: float, retries: int) -> dict[str, Any]:
        """Send a one-reply request and wait for the reply carrying its id (Lazy Pirate retries)."""
        for _attempt in range(retries + 1):
            self._send(header)
            deadline = time.monotonic() + timeout_s
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                msg = self._recv(left)
                if msg is None:
                    break
                reply, _ = msg
                if reply.get("id") != header["id"]:
                    continue     # late event of an abandoned job: not ours
                if reply["type"] == protocol.ERROR:
                    raise BackendError(str(reply.get("code")), str(reply.get("message")))
                return reply
            self._reset()
        raise BackendUnavailable(f"no answer from {self.endpoint} within {timeout_s:g} s "
                                 f"({retries + 1} attempt(s)): is `patchcolor serve` running there"
                                 f"{' and is the server key right' if self._server_key else ''}?")

    # ----------------------------------------------------------------------------------------- requests
    def ping(self, deadline_s: float | None = None) -> float:
        """Round-trip time in seconds; BackendUnavailable if no pong within ``deadline_s`` (default timeout_s)."""
        t0 = time.monotonic()
        self._request({"type": protocol.PING, "id": protocol.new_id()},
                      self.timeout_s if deadline_s is None else deadline_s, 0)
        return time.monotonic() - t0

    def info(self) -> dict[str, Any]:
        """Server description: protocol and package versions, devices, colorizers/detectors and their weights."""
        return self._request({"type": protocol.INFO, "id": protocol.new_id()}, self.timeout_s, self.retries)

    def cancel(self, job_id: str, token: str | None = None) -> str:
        """Cancel a job: any connection that has its ``token`` (default: the one this Client got for it).
        Returns "cancelled" (was queued) or "cancelling" (stops at the next stage boundary).
        BackendError("unknown_job") if it is not queued or running, or the token is missing or wrong."""
        header = {"type": protocol.CANCEL, "id": protocol.new_id(), "job": job_id}
        token = token or self._tokens.get(job_id)
        if token:
            header["token"] = token
        return str(self._request(header, self.timeout_s, 0)["state"])

    def _remember(self, job_id: str, token: str) -> None:
        self._tokens[job_id] = token
        while len(self._tokens) > 256:
            self._tokens.pop(next(iter(self._tokens)))

    def colorize(self, width: int, height: int, fmt: str, pixels: InBuffer, options: dict[str, Any] | None = None,
                 progress: ProgressFn | None = None, should_cancel: CancelFn | None = None,
                 job_id: str | None = None, instances: Sequence[WireInstance] | None = None,
                 token: str | None = None, hints: HintMap | None = None) -> ColorizeResult:
        """Colorize raw pixels (``fmt`` one of protocol.PIXEL_FORMATS, 16-bit little-endian).

        ``options``: the CLI's option names (``{"preset": "seed", "detector": "none", ...}``). ``pixels`` is sent
        without copying: do not modify it until this returns. ``instances`` (e.g. an earlier result's, masks
        possibly edited; ``mask`` is ``mask_size[0] * mask_size[1]`` bytes at ``mask_origin``, nonzero = inside):
        colorize with these instead of running the detector (recompose when the server no longer has the job).
        ``token``: the job's secret (default: a fresh one; pass your own to cancel from another process).
        ``hints``: a colour-hint map (SIGGRAPH17 follows the painted colours; ``res.extra["hints"]`` says how many).
        Raises BackendError, BackendUnavailable, JobCancelled."""
        header, data = self._image_request(protocol.COLORIZE, width, height, fmt, pixels, options, None, {},
                                           job_id, token)
        if instances is not None:
            header["instances"] = []
            for i in instances:
                if memoryview(i.mask).nbytes != i.mask_size[0] * i.mask_size[1]:
                    raise ValueError(f"a {i.mask_size[0]}x{i.mask_size[1]} mask needs "
                                     f"{i.mask_size[0] * i.mask_size[1]} bytes, got {memoryview(i.mask).nbytes}")
                header["instances"].append({
                    "class_id": int(i.class_id), "class_name": str(i.class_name), "score": float(i.score),
                    "box": [float(v) for v in i.box], "mask_origin": [int(v) for v in i.mask_origin],
                    "mask_size": [int(v) for v in i.mask_size]})
                data.append(i.mask)
        _add_hints(header, data, hints)
        return self._job(header, data, progress, should_cancel)

    def preview(self, width: int, height: int, fmt: str, pixels: InBuffer, options: dict[str, Any] | None = None,
                hints: HintMap | None = None, long_side: int = protocol.PREVIEW_SIDE,
                progress: ProgressFn | None = None,
                should_cancel: CancelFn | None = None, draft: bool = False, job_id: str | None = None,
                token: str | None = None) -> ColorizeResult:
        """The result of ``colorize`` with the same options and hints on a proxy of long side <= ``long_side``
        (8-bit, no masks, not recomposable). The server reuses what an earlier preview of the same pixels computed
        (``res.extra["computed"]``: network inputs run this time). Nothing is kept for :meth:`recompose`.
        ``job_id`` / ``token``: chosen by the caller so that another connection can cancel the preview.

        draft=True: a fast approximation (detector and networks on the small proxy, ~1 s instead of tens of
        seconds for a first preview on a CPU) unless the server already has this image's exact detections, in
        which case the exact preview comes back. ``res.extra["draft"]`` says which one it is."""
        more: dict[str, Any] = {"long_side": int(long_side)}
        if draft:
            more["draft"] = True        # only sent when asked, so a server without drafts is not bothered
        header, data = self._image_request(protocol.PREVIEW, width, height, fmt, pixels, options, hints, more,
                                           job_id, token)
        return self._job(header, data, progress, should_cancel)

    def _image_request(self, kind: str, width: int, height: int, fmt: str, pixels: InBuffer,
                       options: dict[str, Any] | None, hints: HintMap | None, more: dict[str, Any],
                       job_id: str | None = None, token: str | None = None) -> tuple[dict[str, Any], list[Any]]:
        """The header and data frames of a request carrying an image (and its optional hint map)."""
        if fmt not in protocol.PIXEL_FORMATS:
            raise ValueError(f"unknown pixel format {fmt!r} (one of {', '.join(protocol.PIXEL_FORMATS)})")
        need = protocol.frame_size(fmt, width, height)
        if memoryview(pixels).nbytes != need:
            raise ValueError(f"{fmt} {width}x{height} needs {need} bytes, got {memoryview(pixels).nbytes}")
        header = {"type": kind, "id": protocol.new_id(), "job": job_id or protocol.new_id(), "width": int(width),
                  "height": int(height), "format": fmt, "options": dict(options or {}),
                  "token": token or protocol.new_token(), **more}
        data: list[Any] = [pixels]
        _add_hints(header, data, hints)         # the hints frame goes last: a colorize adds masks before it
        return header, data

    def recompose(self, job_id: str, masks: Sequence[InBuffer], options: dict[str, Any] | None = None,
                  progress: ProgressFn | None = None, should_cancel: CancelFn | None = None,
                  token: str | None = None) -> ColorizeResult:
        """Recompose an earlier job (fuse it again) with edited masks (the ``refuse`` op): one full result-size
        gray8 mask per instance of that job's result, in result order (nonzero = inside; all zero = drop the
        instance). Instance colours kept on the server are reused. BackendError("unknown_job") means the server
        no longer has that job: colorize again. ``options`` (optional) overrides the earlier job's options.
        ``token``: the earlier job's (default: the one this Client got for it; without the right one the server
        answers unknown_job). Returns a new job (its own ``job_id`` and ``token``)."""
        header: dict[str, Any] = {"type": protocol.RECOMPOSE, "id": protocol.new_id(), "job": protocol.new_id(),
                                  "base_job": job_id,
                                  "token": protocol.new_token()}
        base_token = token or self._tokens.get(job_id)
        if base_token:
            header["base_token"] = base_token
        if options is not None:
            header["options"] = dict(options)
        return self._job(header, list(masks), progress, should_cancel)

    # --------------------------------------------------------------------------------------------- jobs
    def _job(self, header: dict[str, Any], data: list[Any], progress: ProgressFn | None,
             should_cancel: CancelFn | None) -> ColorizeResult:
        self.ping()     # fail fast on a dead endpoint before queueing megabytes on the socket
        req_id, job_id, token = header["id"], header["job"], header["token"]
        if should_cancel is not None and should_cancel():
            raise JobCancelled(f"job {job_id} was cancelled before it was sent")
        self._remember(job_id, token)
        tracker = self._send(header, data, track=True)
        last_heard = time.monotonic()
        # Replies cannot come before the upload is out; allow it at least 1 MB/s on top of the timeout.
        upload_deadline = last_heard + self.timeout_s + sum(memoryview(d).nbytes for d in data) / 1e6
        ping_id: str | None = None
        ping_sent = 0.0
        cancel_id: str | None = None
        try:
            while True:
                if should_cancel is not None and cancel_id is None and should_cancel():
                    cancel_id = protocol.new_id()
                    self._send({"type": protocol.CANCEL, "id": cancel_id, "job": job_id, "token": token})
                msg = self._recv(POLL_S)
                now = time.monotonic()
                if msg is None:
                    if not tracker.done and now < upload_deadline:
                        last_heard = now      # still uploading: the server cannot answer yet
                    elif ping_id is not None and now - ping_sent > self.timeout_s:
                        self._reset()
                        raise BackendUnavailable(f"{self.endpoint} stopped answering during job {job_id}")
                    elif ping_id is None and now - last_heard > self.timeout_s:
                        ping_id, ping_sent = protocol.new_id(), now
                        self._send({"type": protocol.PING, "id": ping_id, "job": job_id, "token": token})
                    continue
                last_heard = now
                reply, frames = msg
                kind, rid = reply["type"], reply.get("id")
                if kind == protocol.PONG:
                    if rid == ping_id:
                        ping_id = None
                        if reply.get("job_state") == "unknown":   # e.g. the server restarted meanwhile
                            raise BackendError("unknown_job", f"the server no longer has job {job_id} "
                                                              "(was it restarted?): run it again")
                    continue
                if rid == cancel_id and cancel_id is not None:
                    continue          # ack, or unknown_job when the job had just ended: its final reply follows
                if rid != req_id:
                    continue          # not this job (late events of an abandoned one)
                if kind == protocol.PROGRESS:
                    if progress is not None:
                        progress(Stage(str(reply.get("stage")), reply.get("text"), reply.get("eta")),
                                 float(reply.get("fraction", 0.0)), float(reply.get("overall", 0.0)))
                elif kind == protocol.RESULT:
                    if cancel_id is not None:
                        raise JobCancelled(f"job {job_id} was cancelled")
                    res = _decode_result(reply, frames)
                    res.token = token
                    return res
                elif kind == protocol.CANCELLED:
                    raise JobCancelled(str(reply.get("reason") or f"job {job_id} was cancelled"))
                elif kind == protocol.ERROR:
                    raise BackendError(str(reply.get("code")), str(reply.get("message")))
        except KeyboardInterrupt:
            if cancel_id is None and self._sock is not None:
                try:
                    self._send({"type": protocol.CANCEL, "id": protocol.new_id(), "job": job_id, "token": token})
                except (OSError, ValueError):
                    pass
            raise


def _add_hints(header: dict[str, Any], data: list[Any], hints: HintMap | None) -> None:
    """The optional hints frame: announced in the header, sent last."""
    if hints is None:
        return
    if hints.fmt not in protocol.PIXEL_FORMATS:
        raise ValueError(f"unknown hint pixel format {hints.fmt!r}")
    need = protocol.frame_size(hints.fmt, hints.width, hints.height)
    if memoryview(hints.pixels).nbytes != need:
        raise ValueError(f"hints: {hints.fmt} {hints.width}x{hints.height} needs {need} bytes, "
                         f"got {memoryview(hints.pixels).nbytes}")
    header["hints"] = {"width": int(hints.width), "height": int(hints.height), "format": hints.fmt}
    data.append(hints.pixels)


def _decode_result(h: dict[str, Any], frames: list[Any]) -> ColorizeResult:
    """Check a ``result`` reply's frame sizes against its header before handing anything out."""
    try:
        job_id, width, height, fmt = str(h["job"]), int(h["width"]), int(h["height"]), str(h["format"])
        if fmt not in protocol.PIXEL_FORMATS or width <= 0 or height <= 0:
            raise ValueError(f"bad size or format {width}x{height} {fmt!r}")
        metas = list(h.get("instances") or [])
        if len(frames) != 1 + len(metas):
            raise ValueError(f"{len(frames)} data frames for {len(metas)} instance(s)")
        if len(frames[0]) != protocol.frame_size(fmt, width, height):
            raise ValueError("pixel frame size does not match the header")
        instances = []
        for meta, fr in zip(metas, frames[1:]):
            mw, mh = (int(v) for v in meta["mask_size"])
            x0, y0, x1, y1 = (float(v) for v in meta["box"])
            ox, oy = (int(v) for v in meta["mask_origin"])
            if mw < 0 or mh < 0 or len(fr) != mw * mh:
                raise ValueError("mask frame size does not match the header")
            instances.append(WireInstance(int(meta["class_id"]), str(meta["class_name"]), float(meta["score"]),
                                      (x0, y0, x1, y1), (ox, oy), (mw, mh), getattr(fr, "buffer", fr)))
        timings = {str(k): float(v) for k, v in (h.get("timings") or {}).items()}
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise BackendError("bad_reply", f"malformed result from the server: {e!r}") from None
    extra = {k: h[k] for k in ("hints", "preview", "n_instances", "computed") if k in h}
    if h.get("preview"):
        extra["draft"] = h.get("draft") is True     # what the server rendered (False when it does not say)
    return ColorizeResult(job_id, width, height, fmt, getattr(frames[0], "buffer", frames[0]), instances, timings,
                          bool(h.get("refusable", True)), extra=extra)
