"""CURVE keys and ZAP authentication for the service (ZeroMQ's own CURVE + ``zmq.auth``).

Key files are ZeroMQ certificates as ``zmq.auth.create_certificates`` writes them: ``NAME.key`` (public, give it
to clients) and ``NAME.key_secret`` (keep it on the server). A ``--curve-keys DIR`` folder holds
``server.key_secret``; if it also has an ``authorized_clients/`` folder of ``*.key`` files, only those clients
may connect, otherwise any client that knows the server's public key may (traffic is encrypted either way and the
client authenticates the server).
"""
from __future__ import annotations

import ipaddress
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

log = logging.getLogger("patchcolor.service")

SERVER_KEY_NAME = "server"
ZAP_DOMAIN = "patchcolor"
AUTHORIZED_DIR = "authorized_clients"


class EndpointRefused(Exception):
    """The endpoint cannot be served with this configuration (message says why)."""


def endpoint_host(endpoint: str) -> tuple[str, str | None]:
    """``tcp://HOST:PORT`` -> ("tcp", HOST); ``ipc://...`` -> ("ipc", None)."""
    m = re.fullmatch(r"([a-z0-9+]+)://(.*)", endpoint.strip())
    if not m:
        raise EndpointRefused(f"{endpoint!r} is not a ZeroMQ endpoint (e.g. tcp://127.0.0.1:5555)")
    transport, rest = m.group(1), m.group(2)
    if transport != "tcp":
        return transport, None
    host, sep, _port = rest.rpartition(":")
    if not sep:
        raise EndpointRefused(f"{endpoint!r} has no port (e.g. tcp://127.0.0.1:5555)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return transport, host


def is_loopback(endpoint: str) -> bool:
    """True for tcp on a loopback address (127.0.0.0/8, ::1, localhost) and for ipc:// / inproc://."""
    transport, host = endpoint_host(endpoint)
    if transport in ("ipc", "inproc"):
        return True
    if transport != "tcp" or host is None:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False   # "*", interface names, host names: may be reachable from outside


@dataclass(frozen=True)
class ServerKeys:
    public: bytes
    secret: bytes
    authorized_dir: Path | None   # None: any client with the server key may connect


def load_server_keys(keys_dir: Path) -> ServerKeys:
    """Read ``DIR/server.key_secret`` (and note ``DIR/authorized_clients``). Raises EndpointRefused."""
    keys_dir = Path(keys_dir)
    secret_file = keys_dir / f"{SERVER_KEY_NAME}.key_secret"
    if not secret_file.is_file():
        raise EndpointRefused(f"no {secret_file} (make a key pair with `patchcolor keys {keys_dir}`)")
    try:
        public, secret = zmq.auth.load_certificate(secret_file)
    except (OSError, ValueError) as e:
        raise EndpointRefused(f"cannot read {secret_file}: {e}") from None
    if not public or not secret:
        raise EndpointRefused(f"{secret_file} has no secret key")
    auth_dir = keys_dir / AUTHORIZED_DIR
    return ServerKeys(public, secret, auth_dir if auth_dir.is_dir() else None)


def check_endpoint(endpoint: str, keys_dir: Path | None) -> ServerKeys | None:
    """Refuse a non-loopback endpoint without CURVE keys (before anything is bound). Returns the keys."""
    loopback = is_loopback(endpoint)
    if keys_dir is None:
        if not loopback:
            raise EndpointRefused(
                f"refusing to listen on {endpoint} without authentication: a non-loopback address needs CURVE "
                "keys (--curve-keys DIR; make them with `patchcolor keys DIR`)")
        return None
    return load_server_keys(keys_dir)


def start_authenticator(ctx: zmq.Context, keys: ServerKeys) -> ThreadAuthenticator:
    """Start ZAP in a thread: CURVE clients in ``authorized_clients`` only, or any client with the server key."""
    auth = ThreadAuthenticator(ctx, log=logging.getLogger("patchcolor.service.zap"))
    auth.start()
    if keys.authorized_dir is not None:
        auth.configure_curve(domain=ZAP_DOMAIN, location=str(keys.authorized_dir))
        n = len(list(keys.authorized_dir.glob("*.key")))
        log.info("CURVE: only the %d client key(s) in %s may connect", n, keys.authorized_dir)
    else:
        auth.configure_curve(domain=ZAP_DOMAIN, location=zmq.auth.CURVE_ALLOW_ANY)
        log.info("CURVE: any client that has the server public key may connect")
    return auth


def apply_server_curve(sock: zmq.Socket, keys: ServerKeys) -> None:
    sock.curve_secretkey = keys.secret
    sock.curve_publickey = keys.public
    sock.curve_server = True
    sock.zap_domain = ZAP_DOMAIN.encode()


def make_keys(keys_dir: Path, name: str = SERVER_KEY_NAME, force: bool = False) -> tuple[Path, Path]:
    """Write ``DIR/NAME.key`` (public, mode 0644) and ``DIR/NAME.key_secret`` (mode 0600). Refuses to overwrite
    unless ``force``."""
    keys_dir = Path(keys_dir)
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name):
        raise ValueError("key name: 1-64 characters [A-Za-z0-9_.-]")
    public, secret = keys_dir / f"{name}.key", keys_dir / f"{name}.key_secret"
    if not force and (public.exists() or secret.exists()):
        raise FileExistsError(f"{public} or {secret} exists (use --force to replace)")
    keys_dir.mkdir(parents=True, exist_ok=True)
    old = os.umask(0o077)
    try:
        pub, sec = zmq.auth.create_certificates(keys_dir, name)
    finally:
        os.umask(old)
    os.chmod(sec, 0o600)
    os.chmod(pub, 0o644)      # the public key is for clients to read; only the secret stays private
    return Path(pub), Path(sec)
