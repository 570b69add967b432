"""Who sent a request: the connection it came on, its address and (with CURVE) its key.

libzmq tells a ROUTER neither who connected nor who left (``ZMQ_ROUTER_NOTIFY`` is a draft API the pyzmq wheels
lack), so the server watches its socket monitor for ``EVENT_DISCONNECTED`` (value = the connection's file
descriptor) and reads each request's ``ZMQ_SRCFD``. A descriptor number is reused by later connections, so a
connection is the pair (fd, generation): the generation of an fd goes up at each disconnect. The disconnect
event is queued before the fd is closed, hence before any message of a later connection on the same number
exists; the server drains the monitor after reading a request and before giving it a connection, so a new
connection never inherits an old one's generation.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

import zmq

#: A connection: (file descriptor, generation).
ConnKey = tuple[int, int]


@dataclass(frozen=True)
class Peer:
    """The sender of one request. ``user_id`` is the CURVE public key (Z85) when the server uses CURVE."""

    identity: bytes = field(repr=False)
    conn: ConnKey
    address: str
    user_id: str | None
    remote: bool

    @property
    def label(self) -> str:
        """Short text for logs (no secrets)."""
        return f"{self.address or 'local'}#{self.conn[0]}.{self.conn[1]}"


def is_loopback_address(address: str) -> bool:
    try:
        return ipaddress.ip_address(address.strip("[]").split("%")[0]).is_loopback
    except ValueError:
        return False


def frame_property(frame: Any, name: str) -> str | None:
    """A received frame's metadata property (``Peer-Address``, ``User-Id``), None when not set."""
    try:
        value = frame.get(name)
    except (zmq.ZMQError, AttributeError, TypeError):
        return None
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return str(value) if value else None


def frame_fd(frame: Any) -> int:
    try:
        return int(frame.get(zmq.SRCFD))
    except (zmq.ZMQError, AttributeError, TypeError, ValueError):
        return -1


class Connections:
    """fd -> generation (main thread only)."""

    def __init__(self) -> None:
        self._gen: dict[int, int] = {}

    def key(self, fd: int) -> ConnKey:
        return fd, self._gen.get(fd, 0)

    def disconnected(self, fd: int) -> ConnKey:
        """The connection that just ended on ``fd`` (later ones on that fd get a new generation)."""
        old = self.key(fd)
        self._gen[fd] = old[1] + 1
        return old

    def peer(self, identity: bytes, frame: Any, local_transport: bool, untrusted_loopback: bool) -> Peer:
        """The Peer of a request whose header ``frame`` was received on a connection of ``identity``."""
        address = frame_property(frame, "Peer-Address") or ""
        local = is_loopback_address(address) if address else local_transport
        return Peer(identity, self.key(frame_fd(frame)), address, frame_property(frame, "User-Id"),
                    untrusted_loopback or not local)
