"""The ZeroMQ DEALER socket under ``Client``: pyzmq when it imports, else the standard-library ZMTP dealer.

GIMP's Python often has no pyzmq (Windows' MSYS2 Python, Flatpak, macOS bundles), so the client must work without
it; pyzmq is only an optimisation there. CURVE (encrypted, remote) connections need pyzmq.

    d = open_dealer("tcp://127.0.0.1:5555")           # never fails for a well-formed endpoint (connects lazily)
    tracker = d.send([header, pixels], track=True)    # tracker.done: the message has left
    frames = d.recv(0.1)                              # list of memoryview, or None after the timeout
    d.close()

``PATCHCOLOR_TRANSPORT=zmtp`` (or ``pyzmq``) forces one implementation (tests, debugging).
"""
from __future__ import annotations

import os
import re
from typing import Any, Protocol

from . import zmtp
from .endpoint import parse_endpoint

ENV_VAR = "PATCHCOLOR_TRANSPORT"
NEEDS_PYZMQ = ("talking to a server with CURVE keys (a remote backend) needs pyzmq in this Python "
               "(pip install pyzmq, or python3-zmq on Debian/Ubuntu); only loopback servers without keys work "
               "without it")


class TransportError(Exception):
    """The socket cannot be made (malformed endpoint, CURVE without pyzmq); one sentence for people."""


class Tracker(Protocol):
    done: bool


class Dealer(Protocol):
    name: str

    def send(self, frames: list[Any], track: bool = False) -> Tracker | None: ...

    def recv(self, timeout_s: float) -> list[memoryview] | None: ...

    def close(self) -> None: ...


def pyzmq_available() -> bool:
    """True when ``import zmq`` works (and the environment does not force the built-in transport)."""
    if os.environ.get(ENV_VAR, "").lower() == "zmtp":
        return False
    try:
        import zmq  # noqa: F401
    except ImportError:
        return False
    return True


def choose(secure: bool = False) -> str:
    """"pyzmq" or "zmtp". TransportError when ``secure`` (CURVE) is asked for and pyzmq is missing."""
    forced = os.environ.get(ENV_VAR, "").lower()
    if forced == "pyzmq" or pyzmq_available():
        return "pyzmq"
    if secure:
        raise TransportError(NEEDS_PYZMQ[0].upper() + NEEDS_PYZMQ[1:] + ".")
    if forced not in ("", "zmtp"):
        raise TransportError(f"{ENV_VAR}={forced!r}: use 'pyzmq' or 'zmtp'")
    return "zmtp"


class _ZmtpDealer:
    name = "zmtp"

    def __init__(self, endpoint: str):
        try:
            self._d = zmtp.ZmtpDealer(endpoint)
        except ValueError as e:
            raise TransportError(str(e)) from None

    def send(self, frames: list[Any], track: bool = False) -> Any:
        return self._d.send(frames, track=track)

    def recv(self, timeout_s: float) -> list[memoryview] | None:
        return self._d.recv(timeout_s)

    def close(self) -> None:
        self._d.close()

    @property
    def last_error(self) -> str | None:
        return self._d.last_error


class _PyzmqDealer:
    name = "pyzmq"

    def __init__(self, endpoint: str, server_key: bytes | None, client_keys: tuple[bytes, bytes] | None):
        import zmq
        self._zmq = zmq
        self._ctx = zmq.Context()
        s = self._ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        if server_key is not None:
            pub, sec = client_keys or zmq.curve_keypair()
            s.curve_serverkey = server_key
            s.curve_publickey = pub
            s.curve_secretkey = sec
        if "[" in endpoint:
            s.setsockopt(zmq.IPV6, 1)
        try:
            s.connect(endpoint)
        except zmq.ZMQError as e:
            s.close(0)
            self._ctx.term()
            raise TransportError(f"cannot connect to {endpoint!r}: {e}") from None
        self._sock = s
        self._poller = zmq.Poller()
        self._poller.register(s, zmq.POLLIN)
        self.last_error: str | None = None

    def send(self, frames: list[Any], track: bool = False) -> Any:
        return self._sock.send_multipart(frames, copy=False, track=track)

    def recv(self, timeout_s: float) -> list[memoryview] | None:
        if not self._poller.poll(max(0, int(timeout_s * 1000))):
            return None
        return [f.buffer for f in self._sock.recv_multipart(copy=False)]

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close(0)
            self._sock = None
            self._ctx.term()


def open_dealer(endpoint: str, server_key: bytes | None = None,
                client_keys: tuple[bytes, bytes] | None = None) -> Dealer:
    """A connected (lazily, like ZeroMQ) DEALER. ``server_key``: the server's CURVE public key (needs pyzmq)."""
    try:
        parse_endpoint(endpoint)
    except ValueError as e:
        raise TransportError(str(e)) from None
    if choose(secure=server_key is not None) == "pyzmq":
        return _PyzmqDealer(endpoint, server_key, client_keys)
    return _ZmtpDealer(endpoint)


_CERT_LINE = re.compile(r'^\s*(public|secret)-key\s*=\s*"([^"]{40})"\s*$', re.M)


def load_certificate(path: str | os.PathLike[str]) -> tuple[bytes | None, bytes | None]:
    """(public, secret) Z85 keys of a ZeroMQ certificate file (what ``zmq.auth.create_certificates`` writes);
    None for a key the file does not hold. Standard library: the plug-in can read key files without pyzmq.
    Raises OSError when the file cannot be read, ValueError when it holds no key."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    keys = {m.group(1): m.group(2).encode("ascii") for m in _CERT_LINE.finditer(text)}
    if not keys:
        raise ValueError(f"{os.fspath(path)} is not a ZeroMQ certificate (no public-key/secret-key line)")
    return keys.get("public"), keys.get("secret")
