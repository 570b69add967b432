"""ZeroMQ endpoint rules, in one place for the client, the GIMP plug-in, the launcher and the server.

Standard library only. ``tcp://HOST:PORT`` (HOST a name, an IPv4 address or ``[IPv6]``; libzmq's ``SRC;DST``
source-address form names the destination after the ``;``), ``ipc://PATH`` (``ipc://@NAME``: Linux abstract
socket) and ``inproc://NAME``.
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

_SCHEME = re.compile(r"([a-z][a-z0-9+]*)://(.+)", re.S)


@dataclass(frozen=True)
class Endpoint:
    """A parsed endpoint: ``transport`` ("tcp", "ipc", "inproc", ...); ``host``/``port`` for tcp; ``path`` else."""

    transport: str
    host: str | None = None
    port: int | None = None
    path: str | None = None


def parse_endpoint(endpoint: str) -> Endpoint:
    """Split an endpoint string. Raises ValueError with one sentence for anything malformed."""
    m = _SCHEME.fullmatch(endpoint.strip())
    if not m:
        raise ValueError(f"{endpoint!r} is not a ZeroMQ endpoint (write it like tcp://127.0.0.1:5555)")
    transport, rest = m.group(1).lower(), m.group(2)
    if transport != "tcp":
        return Endpoint(transport, path=rest)
    rest = rest.rsplit(";", 1)[-1]
    host, sep, port = rest.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{endpoint!r} has no valid port (write it like tcp://127.0.0.1:5555)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host:
        raise ValueError(f"{endpoint!r} has no host (write it like tcp://127.0.0.1:5555)")
    return Endpoint("tcp", host=host, port=int(port))


def is_loopback(endpoint: str) -> bool:
    """True when only this computer can reach ``endpoint``: tcp on 127.0.0.0/8, ::1 or ``localhost``, and
    ipc:// / inproc://. Anything else (``*``, host names, ``127.example.com``, LAN addresses) is not, and so is
    a malformed endpoint. This decides where the plug-in may auto-start a backend and where the server needs
    CURVE keys."""
    try:
        ep = parse_endpoint(endpoint)
    except ValueError:
        return False
    if ep.transport in ("ipc", "inproc"):
        return True
    if ep.transport != "tcp" or ep.host is None:
        return False
    if ep.host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(ep.host).is_loopback
    except ValueError:
        return False
