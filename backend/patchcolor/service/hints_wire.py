"""Colour hints and previews on the wire (docs/protocol.md, "Colour hints" and "preview").

* ``colorize`` / ``preview`` may carry ``"hints": {"width", "height", "format"}`` in the header and one more
  data frame, the **last** one: the hint map (RGB(A) at the image's size, or a uniform scaling of it; see
  patchcolor/hints.py for what counts as painted). It is checked like the image frame — header first (format,
  size, shape against the image), then its exact byte size — before anything is kept.
* ``preview`` parses exactly like ``colorize`` (no ``instances``) plus an optional ``"long_side"`` (64..1024,
  default 384) and an optional ``"draft"`` (bool, default false: a fast draft is acceptable; the result says
  ``"draft": true|false``, what was rendered). It runs on the worker like a job (progress, cancel), reusing the
  worker's loaded models, and answers one ``result`` with ``"preview": true``: the colorized proxy (8-bit, long
  side <= ``long_side``), no masks, not kept for ``refuse``. Each worker keeps recent
  :class:`~patchcolor.preview.PreviewSession` s (LRU, byte-bounded) keyed by a digest of the image, so a refresh
  with other options or hints runs only what changed.

Everything here is called from small hooks in protocol.py (parsing) and server.py (running).
"""
from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from patchcolor_client.protocol import PIXEL_FORMATS, ProtocolError, frame_size

from ..options import Options
from ..prepare import SourceImage

PREVIEW_SIDE = 384          # default proxy long side (issue 10: "~384 px")
MIN_PREVIEW_SIDE, MAX_PREVIEW_SIDE = 64, 1024
HINT_FORMATS = tuple(f for f in PIXEL_FORMATS if not f.startswith("gray") or f.startswith("graya"))
PREVIEW_CACHE_BYTES = 256 << 20   # per worker: proxies, working copies, detections, network a/b


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


# ------------------------------------------------------------------------------------------------ the worker side
def image_digest(src_frame: Any, width: int, height: int, fmt: str) -> bytes:
    """What identifies a preview's image: blake2b of its pixels, size and format (about 1 GB/s)."""
    h = hashlib.blake2b(digest_size=20)
    h.update(f"{width}x{height}:{fmt}".encode())
    h.update(memoryview(src_frame).cast("B"))
    return h.digest()


class PreviewSessions:
    """Recent preview sessions of one worker (one Pipeline), least recently used out beyond ``max_bytes``.

    A session keeps no reference to the request's frame between previews (only its proxy, working copies,
    detections and network outputs), so the server holds no image frame for a preview once it has answered."""

    def __init__(self, max_bytes: int = PREVIEW_CACHE_BYTES):
        self.max_bytes = max_bytes
        self._sessions: OrderedDict[tuple, Any] = OrderedDict()
        self._lock = threading.Lock()

    def session(self, pipeline: Any, src: SourceImage, key: tuple) -> Any:
        from ..preview import PreviewSession   # imports torch: only on a worker

        with self._lock:
            s = self._sessions.get(key)
            if s is None:
                s = self._sessions[key] = PreviewSession(pipeline, src, long_side=key[-1], keep_source=False)
            self._sessions.move_to_end(key)
            return s

    def find(self, pipeline: Any, frame: Any, width: int, height: int, fmt: str) -> Any | None:
        """The most recent session of this image on ``pipeline`` (any proxy size), or None: what a colorize job of
        the image the dialog previewed reuses (pipeline.Reuse). The frame is digested only when ``pipeline`` has
        sessions at all, so a colorize without a preview pays nothing."""
        with self._lock:
            if not any(k[0] == id(pipeline) for k in self._sessions):
                return None
        digest = image_digest(frame, width, height, fmt)
        with self._lock:
            for key in reversed(self._sessions):
                if key[0] == id(pipeline) and key[1] == digest:
                    return self._sessions[key]
        return None

    def trim(self) -> None:
        with self._lock:
            total = sum(s.nbytes for s in self._sessions.values())
            while total > self.max_bytes and len(self._sessions) > 1:
                _, old = self._sessions.popitem(last=False)
                total -= old.nbytes

    def __len__(self) -> int:
        return len(self._sessions)


def run_preview(sessions: PreviewSessions, pipeline: Any, frame: Any, width: int, height: int, fmt: str,
                opts: Options, hints: SourceImage | None, long_side: int, progress=None, cancelled=None,
                draft: bool = False) -> Any:
    """Render the preview of an image frame on ``pipeline`` (its models stay loaded); returns a
    :class:`~patchcolor.preview.Preview`. The session is found by the image's digest, or made.
    draft: a draft is acceptable (see :meth:`~patchcolor.preview.PreviewSession.render`)."""
    src = SourceImage.from_buffer(frame, width, height, fmt)
    key = (id(pipeline), image_digest(frame, width, height, fmt), long_side)
    session = sessions.session(pipeline, src, key)
    try:
        return session.render(opts, hints=hints, progress=progress, cancelled=cancelled, src=src, draft=draft)
    finally:
        sessions.trim()


def preview_message(req_id: str, job: str, preview: Any, v: int) -> tuple[dict[str, Any], list[Any]]:
    """Preview -> (``result`` header with ``"preview": true``, [pixels])."""
    from .protocol import image_to_wire

    fmt, pixels = image_to_wire(preview.image)
    header = {"v": v, "type": "result", "id": req_id, "job": job, "preview": True, "draft": bool(getattr(preview, "draft", False)),
              "refusable": False,
              "width": int(pixels.shape[1]), "height": int(pixels.shape[0]), "format": fmt, "instances": [],
              "n_instances": int(preview.instances), "hints": int(preview.hints), "computed": int(preview.computed),
              "timings": {str(k): round(float(t), 4) for k, t in preview.timings.items()}}
    return header, [pixels]
