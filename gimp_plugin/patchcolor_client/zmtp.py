"""A ZeroMQ DEALER socket in the standard library: ZMTP 3.1 (rfc.zeromq.org/spec/37), NULL security only.

Why by hand: GIMP's own Python often cannot load pyzmq (MSYS2 Python on Windows, Flatpak runtimes, macOS app
bundles), and the plug-in must work there. This speaks exactly what ``patchcolor serve``'s ROUTER needs from a
DEALER peer and behaves like a libzmq DEALER for the client: ``connect`` never fails (a background thread connects,
and reconnects every 0.1-1 s after a refused or lost connection, as libzmq does); messages sent before the
connection is up wait in a queue; ``recv`` returns whole multipart messages or None after a timeout. The server's
heartbeat PINGs are answered with PONGs. CURVE needs pyzmq (transport.py chooses).

    d = ZmtpDealer("tcp://127.0.0.1:5555")
    tracker = d.send([header, pixels], track=True)    # tracker.done: the last byte has left
    frames = d.recv(1.0)                              # [memoryview, ...] or None
    d.close()

Wire format (RFC 37): a 64-byte greeting each way (signature FF ... 7F, version 3.1, mechanism "NULL",
as-server 0, filler), then a READY command each way (Socket-Type property), then frames: a flags byte (MORE 1,
LONG 2, COMMAND 4), a 1-byte or 8-byte big-endian size, the body.
"""
from __future__ import annotations

import queue
import socket
import struct
import threading
import time
from typing import Any

from .endpoint import parse_endpoint

FLAG_MORE, FLAG_LONG, FLAG_COMMAND = 0x01, 0x02, 0x04
VERSION = (3, 1)
MECHANISM = b"NULL"
#: Peer socket types a DEALER may talk to (libzmq refuses the others).
COMPATIBLE = (b"ROUTER", b"DEALER", b"REP")
#: Largest frame accepted from the peer: more than any legal reply (an rgba16 image of 250 MP is 2 GB).
MAX_FRAME = 1 << 32
#: Most frames in one received message (a result has 1 + at most 100 instance frames).
MAX_PARTS = 1024
CONNECT_TIMEOUT_S = 2.0
RECONNECT_S, RECONNECT_MAX_S = 0.1, 1.0
#: Frames up to this size are copied behind their header into one send call; larger ones are sent in place.
COALESCE = 64 * 1024


class ZmtpError(Exception):
    """The peer broke ZMTP (bad greeting, wrong mechanism or socket type, oversized frame)."""


class Tracker:
    """``done`` becomes True when the message has been written to the socket (or dropped with its connection)."""

    def __init__(self) -> None:
        self._event = threading.Event()

    @property
    def done(self) -> bool:
        return self._event.is_set()

    def _finish(self) -> None:
        self._event.set()


def greeting() -> bytes:
    """Our 64-byte greeting: signature, version, mechanism (20 bytes, NUL-padded), as-server = 0, filler."""
    return (b"\xff" + bytes(8) + b"\x7f" + bytes(VERSION) + MECHANISM.ljust(20, b"\0") + b"\0" + bytes(31))


def check_greeting(data: bytes) -> None:
    """Raise ZmtpError unless ``data`` (64 bytes) is a ZMTP 3.x NULL-mechanism greeting."""
    if len(data) < 11 or data[0] != 0xFF or not data[9] & 0x01:
        raise ZmtpError("the peer does not speak ZeroMQ (bad greeting)")
    if data[10] < 3:
        raise ZmtpError(f"the peer speaks ZMTP {data[10]}.x; 3.0 or newer is needed")
    mech = bytes(data[12:32]).rstrip(b"\0")
    if mech != MECHANISM:
        raise ZmtpError(f"the server uses {mech.decode('ascii', 'replace')} security; connecting to it needs pyzmq "
                        "(install pyzmq for this Python)")


def command(name: bytes, body: bytes = b"") -> bytes:
    """A whole command frame (flags, size, name length, name, body)."""
    data = bytes([len(name)]) + name + body
    return frame_header(len(data), FLAG_COMMAND) + data


def frame_header(size: int, flags: int = 0) -> bytes:
    if size > 255:
        return struct.pack(">BQ", flags | FLAG_LONG, size)
    return struct.pack(">BB", flags, size)


def ready_properties(socket_type: bytes) -> bytes:
    name = b"Socket-Type"
    return bytes([len(name)]) + name + struct.pack(">I", len(socket_type)) + socket_type


def parse_properties(data: bytes) -> dict[bytes, bytes]:
    """READY metadata -> {name: value}. Raises ZmtpError when malformed."""
    props: dict[bytes, bytes] = {}
    i = 0
    while i < len(data):
        n = data[i]
        if i + 1 + n + 4 > len(data):
            raise ZmtpError("malformed READY command")
        name = bytes(data[i + 1:i + 1 + n])
        (vlen,) = struct.unpack_from(">I", data, i + 1 + n)
        start = i + 1 + n + 4
        if start + vlen > len(data):
            raise ZmtpError("malformed READY command")
        props[name.lower()] = bytes(data[start:start + vlen])
        i = start + vlen
    return props


def _split_command(body: bytes | bytearray) -> tuple[bytes, bytes]:
    if not body or 1 + body[0] > len(body):
        raise ZmtpError("malformed command frame")
    return bytes(body[1:1 + body[0]]), bytes(body[1 + body[0]:])


class _Connection:
    """One connected, handshaken TCP/IPC stream. ``read_frame`` runs in the reader thread only."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.rfile = sock.makefile("rb", buffering=COALESCE)
        self.alive = True

    def read_exact(self, n: int) -> bytearray:
        buf = bytearray(n)
        view = memoryview(buf)
        got = 0
        while got < n:
            k = self.rfile.readinto(view[got:])
            if not k:
                raise ConnectionError("connection closed by the peer")
            got += k
        return buf

    def read_frame(self) -> tuple[int, bytearray]:
        flags = self.read_exact(1)[0]
        if flags & FLAG_LONG:
            (size,) = struct.unpack(">Q", self.read_exact(8))
        else:
            size = self.read_exact(1)[0]
        if size > MAX_FRAME:
            raise ZmtpError(f"the peer sent a frame of {size} bytes (more than {MAX_FRAME})")
        return flags, self.read_exact(size)

    def handshake(self) -> None:
        self.sock.sendall(greeting())
        check_greeting(self.read_exact(64))
        self.sock.sendall(command(b"READY", ready_properties(b"DEALER")))
        flags, body = self.read_frame()
        if not flags & FLAG_COMMAND:
            raise ZmtpError("the peer sent data before its READY command")
        name, data = _split_command(body)
        if name == b"ERROR":
            reason = data[1:1 + data[0]] if data else b""
            raise ZmtpError(f"the server refused the connection: {reason.decode('utf-8', 'replace')}")
        if name != b"READY":
            raise ZmtpError(f"the peer sent {name!r} instead of READY")
        kind = parse_properties(data).get(b"socket-type", b"")
        if kind not in COMPATIBLE:
            raise ZmtpError(f"the peer is a {kind.decode('ascii', 'replace')} socket; a DEALER cannot talk to it")

    def close(self) -> None:
        self.alive = False
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.rfile.close()
        self.sock.close()


class ZmtpDealer:
    """A DEALER socket connected to one endpoint (tcp:// or, on POSIX, ipc://). Thread-safe ``send``; ``recv``
    from one thread. ``last_error`` holds the most recent connection problem, for error messages."""

    def __init__(self, endpoint: str):
        ep = parse_endpoint(endpoint)
        if ep.transport == "tcp":
            self._address: Any = (ep.host, ep.port)
            self._family = None
        elif ep.transport == "ipc" and hasattr(socket, "AF_UNIX"):
            path = ep.path or ""
            self._address = "\0" + path[1:] if path.startswith("@") else path
            self._family = socket.AF_UNIX
        else:
            raise ValueError(f"{endpoint!r}: the built-in ZeroMQ transport speaks tcp:// (and ipc:// on POSIX) "
                             "only; install pyzmq for other transports")
        self.endpoint = endpoint
        self.last_error: str | None = None
        self._inbox: queue.Queue[list[memoryview]] = queue.Queue()
        # (frames, tracker, raw): raw items are whole pre-built command frames (PONG), written as they are
        self._outbox: queue.Queue[tuple[list[Any], Tracker | None, bool]] = queue.Queue()
        self._closed = threading.Event()
        self._conn: _Connection | None = None
        self._thread = threading.Thread(target=self._run, name=f"zmtp {endpoint}", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------------------------------------ API
    def send(self, frames: list[Any], track: bool = False) -> Tracker | None:
        """Queue one multipart message (bytes-like frames, sent without copying large ones)."""
        if self._closed.is_set():
            raise ValueError("the socket is closed")
        tracker = Tracker() if track else None
        self._outbox.put(([memoryview(f).cast("B") for f in frames], tracker, False))
        return tracker

    def recv(self, timeout_s: float) -> list[memoryview] | None:
        """The next whole message, or None when none arrives within ``timeout_s``."""
        try:
            return self._inbox.get(timeout=max(0.0, timeout_s)) if timeout_s > 0 else self._inbox.get_nowait()
        except queue.Empty:
            return None

    def close(self) -> None:
        """Drop the connection and everything queued (linger 0)."""
        self._closed.set()
        conn = self._conn
        if conn is not None:
            conn.close()
        self._thread.join(2.0)

    # ------------------------------------------------------------------------------------------- threads
    def _connect(self) -> socket.socket:
        if self._family is None:
            sock = socket.create_connection(self._address, timeout=CONNECT_TIMEOUT_S)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        else:
            sock = socket.socket(self._family, socket.SOCK_STREAM)
            sock.settimeout(CONNECT_TIMEOUT_S)
            try:
                sock.connect(self._address)
            except OSError:
                sock.close()
                raise
        sock.settimeout(None)
        return sock

    def _run(self) -> None:
        """Connect, handshake, read; on any failure wait and start again, until closed."""
        wait = RECONNECT_S
        while not self._closed.is_set():
            conn = None
            try:
                conn = _Connection(self._connect())
                self._conn = conn
                if self._closed.is_set():
                    break
                conn.handshake()
                self.last_error = None
                wait = RECONNECT_S
                writer = threading.Thread(target=self._write, args=(conn,), name="zmtp writer", daemon=True)
                writer.start()
                try:
                    self._read(conn)
                finally:
                    conn.alive = False
                    writer.join()
            except ZmtpError as e:
                self.last_error = str(e)
                wait = RECONNECT_MAX_S
            except OSError as e:
                self.last_error = e.strerror or str(e) or type(e).__name__
            except ValueError:          # a read on the stream that close() just closed
                if not self._closed.is_set():
                    raise
            finally:
                if conn is not None:
                    conn.close()
                self._conn = None
            self._closed.wait(wait)
            wait = min(wait * 2, RECONNECT_MAX_S)

    def _read(self, conn: _Connection) -> None:
        parts: list[memoryview] = []
        while not self._closed.is_set():
            flags, body = conn.read_frame()
            if flags & FLAG_COMMAND:
                name, data = _split_command(body)
                if name == b"PING":           # heartbeat: PONG with the ping's context (after its 2-byte TTL)
                    self._outbox.put(([memoryview(command(b"PONG", data[2:]))], None, True))
                elif name == b"ERROR":
                    reason = data[1:1 + data[0]].decode("utf-8", "replace") if data else ""
                    raise ZmtpError(f"the server closed the connection: {reason}" if reason
                                    else "the server closed the connection")
                continue
            parts.append(memoryview(body))
            if len(parts) > MAX_PARTS:
                raise ZmtpError(f"the peer sent a message of more than {MAX_PARTS} frames")
            if not flags & FLAG_MORE:
                self._inbox.put(parts)
                parts = []

    def _write(self, conn: _Connection) -> None:
        while conn.alive and not self._closed.is_set():
            try:
                frames, tracker, raw = self._outbox.get(timeout=0.1)
            except queue.Empty:
                continue
            try:
                if raw:
                    conn.sock.sendall(frames[0])
                else:
                    _send_message(conn.sock, frames)
            except OSError:
                conn.alive = False
                try:
                    conn.sock.shutdown(socket.SHUT_RDWR)    # wake the reader: the connection is gone
                except OSError:
                    pass
            finally:
                if tracker is not None:
                    tracker._finish()


def _send_message(sock: socket.socket, frames: list[memoryview]) -> None:
    pending = bytearray()
    for i, f in enumerate(frames):
        pending += frame_header(f.nbytes, FLAG_MORE if i < len(frames) - 1 else 0)
        if f.nbytes <= COALESCE:
            pending += f
        else:
            sock.sendall(pending)
            pending = bytearray()
            sock.sendall(f)
    if pending:
        sock.sendall(pending)


def wait_closed(dealer: ZmtpDealer, timeout_s: float) -> bool:
    """For tests: True once the dealer's background thread has ended."""
    end = time.monotonic() + timeout_s
    while dealer._thread.is_alive() and time.monotonic() < end:
        time.sleep(0.01)
    return not dealer._thread.is_alive()
