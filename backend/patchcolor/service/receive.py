"""Bounded receive of one request from the ROUTER socket, frame by frame.

``recv_multipart`` keeps every frame of a message before anything is checked, so a ``ping`` followed by 150
frames of 7.9 MB was held whole (1.19 GB) and refused afterwards. Here the header is read and checked first; each
data frame is then checked against what the header announced (count and exact size per op, protocol.py) and
dropped at once when it does not fit (its memory freed before the next frame is read), and the whole message is
answered with one error. Only frames of a valid request are kept, as zero-copy views.

What this cannot bound: libzmq delivers a multipart message atomically, so its I/O thread has buffered every
frame (each at most ``ZMQ_MAXMSGSIZE``) before the first is readable. That transient peak is returned to the
system right after (``release_memory``: glibc keeps freed large blocks otherwise; 440 MB stayed allocated).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import zmq

from ..heap import release_memory
from . import protocol

#: Dropped bytes above which the allocator is asked to give memory back to the system.
TRIM_AFTER_BYTES = 16 << 20


@dataclass
class Incoming:
    """One received message: the envelope to echo, the header frame, the kept data frames, and either the parsed
    request or the error to answer. ``dropped_*``: what was received and discarded without being kept."""

    envelope: list[bytes]
    header_frame: Any = None
    header: dict[str, Any] | None = None
    request: protocol.Request | None = None
    data: list[Any] = field(default_factory=list)
    error: protocol.ProtocolError | None = None
    dropped_frames: int = 0
    dropped_bytes: int = 0

    @property
    def version(self) -> int:
        return protocol.request_version(self.header) if self.header is not None else protocol.PROTOCOL_VERSION


#: (request, the message so far: envelope + header frame, announced sizes) -> exact data frame sizes, or None for
#: "up to MAX_INSTANCES frames".
SizesFn = Callable[[protocol.Request, "Incoming", "list[int] | None"], "list[int] | None"]


def receive_message(sock: zmq.Socket, limits: protocol.Limits, sizes_for: SizesFn | None = None) -> Incoming | None:
    """Read the next whole message (None when nothing is waiting). Never raises for what a client sent.

    ``sizes_for(request, message, sizes)`` may replace the announced sizes (a recompose: from the kept job)
    or raise ProtocolError (e.g. an unknown base job); then the rest of the message is drained."""
    try:
        first = sock.recv(zmq.NOBLOCK, copy=False)
    except zmq.Again:
        return None
    msg = Incoming([first.bytes])
    if not first.more:
        msg.error = protocol.ProtocolError("bad_request", "empty message")
        return msg
    frame = sock.recv(copy=False)               # the rest is already here: libzmq delivers whole messages
    if len(frame) == 0 and frame.more:          # a REQ peer's delimiter
        msg.envelope.append(b"")
        frame = sock.recv(copy=False)
    msg.header_frame = frame
    more = frame.more
    sizes: list[int] | None = []
    try:
        msg.header = protocol.decode_header(frame.buffer)
        msg.request, sizes = protocol.parse_header(msg.header, limits)
        if sizes_for is not None:
            sizes = sizes_for(msg.request, msg, sizes)
    except protocol.ProtocolError as e:
        msg.error = e
    index = 0
    while more:
        f = sock.recv(copy=False)
        more = f.more
        if msg.error is None:
            try:
                assert msg.request is not None
                protocol.check_frames(sizes, index, len(f), msg.request, limits.max_frame_bytes)
                msg.data.append(f)
            except protocol.ProtocolError as e:
                msg.error = e
                msg.data.clear()                # frames kept so far are released too
        if msg.error is not None:
            msg.dropped_frames += 1
            msg.dropped_bytes += len(f)
        del f
        index += 1
    if msg.error is None and sizes is not None and index != len(sizes):
        req = msg.request
        msg.error = protocol.ProtocolError("bad_request", f"expected {len(sizes)} data frame(s) after the header, got "
                                           f"{index}", getattr(req, "id", None), getattr(req, "job", None))
    if msg.error is None:
        assert msg.request is not None
        try:
            protocol.attach_frames(msg.request, msg.data)
        except protocol.ProtocolError as e:
            msg.error = e
    if msg.error is not None:
        msg.data.clear()
        if msg.dropped_bytes > TRIM_AFTER_BYTES:
            release_memory()
    return msg

