"""Recent preview sessions on the workers (docs/protocol.md, "preview").

A ``preview`` runs on a worker like a job and reuses that worker's loaded models. The worker keeps recent
:class:`~patchcolor.preview.PreviewSession` s (least recently used out beyond a byte budget) keyed by the pipeline,
a digest of the image, the proxy size and a *scope*, so that a refresh with other options or hints runs only what
changed, and a ``colorize`` of a previewed image reuses its detections and network outputs. The scope keeps remote
clients apart: a remote client's sessions are found only by that client (a preview's ``computed: 0`` would
otherwise tell it that someone else previewed the same photo); loopback clients share the scope ``None``.
"""
from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from typing import Any, Hashable

from ..options import Options
from ..prepare import SourceImage

PREVIEW_CACHE_BYTES = 256 << 20   # per server: proxies, working copies, detections, network a/b


def image_digest(src_frame: Any, width: int, height: int, fmt: str) -> bytes:
    """What identifies a preview's image: blake2b of its pixels, size and format (about 1 GB/s)."""
    h = hashlib.blake2b(digest_size=20)
    h.update(f"{width}x{height}:{fmt}".encode())
    h.update(memoryview(src_frame).cast("B"))
    return h.digest()


class PreviewSessions:
    """Recent preview sessions, least recently used out beyond ``max_bytes``. Keys are
    ``(scope, id(pipeline), image digest, long side)``.

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

    def find(self, pipeline: Any, frame: Any, width: int, height: int, fmt: str,
             scope: Hashable = None) -> Any | None:
        """The most recent session of this image on ``pipeline`` in ``scope`` (any proxy size), or None: what a
        colorize job of the image the dialog previewed reuses (pipeline.Reuse). The frame is digested only when
        there are sessions of ``pipeline`` in ``scope`` at all, so a colorize without a preview pays nothing."""
        with self._lock:
            if not any(k[0] == scope and k[1] == id(pipeline) for k in self._sessions):
                return None
        digest = image_digest(frame, width, height, fmt)
        with self._lock:
            for key in reversed(self._sessions):
                if key[:3] == (scope, id(pipeline), digest):
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
                draft: bool = False, scope: Hashable = None) -> Any:
    """Render the preview of an image frame on ``pipeline`` (its models stay loaded); returns a
    :class:`~patchcolor.preview.Preview`. The session is found by the image's digest in ``scope``, or made.
    draft: a draft is acceptable (see :meth:`~patchcolor.preview.PreviewSession.render`)."""
    src = SourceImage.from_buffer(frame, width, height, fmt)
    key = (scope, id(pipeline), image_digest(frame, width, height, fmt), long_side)
    session = sessions.session(pipeline, src, key)
    try:
        return session.render(opts, hints=hints, progress=progress, cancelled=cancelled, src=src, draft=draft)
    finally:
        sessions.trim()
