"""The standard-library ZMTP transport (patchcolor_client/zmtp.py) against real pyzmq/libzmq peers.

GIMP's Python usually has no pyzmq; the client then speaks ZMTP 3.1 itself. Every op of the real server
(``patchcolor serve`` with the echo pipeline: no networks) is run with ``PATCHCOLOR_TRANSPORT=zmtp``, plus a 24 MP
16-bit image both ways, cancel, server death, a malformed greeting, heartbeats and CURVE (needs pyzmq: one sentence).
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))
from service_support import echo_expected, free_port, start_server  # noqa: E402

from patchcolor_client import BackendError, BackendUnavailable, Client, JobCancelled  # noqa: E402
from patchcolor_client import transport as T  # noqa: E402
from patchcolor_client import zmtp  # noqa: E402
from patchcolor_client.client import WireInstance  # noqa: E402


@pytest.fixture(autouse=True)
def force_zmtp(monkeypatch):
    monkeypatch.setenv(T.ENV_VAR, "zmtp")


@pytest.fixture(scope="module")
def echo_server(tmp_path_factory):
    srv = start_server(tmp_path_factory.mktemp("zmtp"), "--pipeline-factory", "service_support:echo_pipeline",
                       env={"PATCHCOLOR_TEST_STAGE_DELAY": "0"})
    yield srv
    srv.stop()


def _client(endpoint: str, timeout_s: float = 10.0) -> Client:
    c = Client(endpoint, timeout_s=timeout_s)
    assert c._sock is not None and c._sock.name == "zmtp", "the built-in transport was not used"
    return c


def test_every_op_over_the_builtin_transport(echo_server):
    rng = np.random.default_rng(1)
    px = rng.integers(0, 256, (30, 40, 2), dtype=np.uint8)
    with _client(echo_server.endpoint) as c:
        assert c.ping(5.0) < 5.0
        info = c.info()
        assert info["type"] == "info" and info["protocol"] >= 1
        events = []
        res = c.colorize(40, 30, "graya8", px, {"detector": "none"}, progress=lambda *a: events.append(a))
        assert res.fmt == "rgba8" and (res.width, res.height) == (40, 30)
        got = np.frombuffer(res.pixels, np.uint8).reshape(30, 40, 4)
        assert np.array_equal(got, echo_expected(px))
        assert [e[0] for e in events][:1] == ["prepare"] and len(res.instances) == 1
        inst = res.instances[0]
        assert len(inst.mask) == inst.mask_size[0] * inst.mask_size[1] > 0
        # recompose: one mask kept, and one dropped
        ref = c.recompose(res.job_id, [inst.full_mask(40, 30)])
        assert len(ref.instances) == 1
        ref0 = c.recompose(res.job_id, [bytes(40 * 30)])
        assert ref0.instances == []
        # colorize with given instances (recompose after a restart sends this)
        given = c.colorize(40, 30, "graya8", px, {"detector": "none"},
                           instances=[WireInstance(0, "person", 0.9, (0, 0, 10, 10), (0, 0), (10, 10),
                                                   bytes([255]) * 100)])
        assert given.fmt == "rgba8"
        with pytest.raises(BackendError) as ei:
            c.cancel("no-such-job")
        assert ei.value.code == "unknown_job"
        with pytest.raises(BackendError) as ei:
            c.recompose("no-such-job", [bytes(40 * 30)])
        assert ei.value.code == "unknown_job"


def test_24_megapixel_16_bit_both_ways(echo_server):
    w, h = 6000, 4000
    px = (np.arange(w * h, dtype=np.uint32) * 2654435761 % 65536).astype("<u2").reshape(h, w)
    with _client(echo_server.endpoint, timeout_s=60) as c:
        t0 = time.monotonic()
        res = c.colorize(w, h, "gray16", px, {"detector": "none"})
        dt = time.monotonic() - t0
    assert res.fmt == "rgb16" and memoryview(res.pixels).nbytes == w * h * 6
    got = np.frombuffer(res.pixels, "<u2").reshape(h, w, 3)
    want = 65535 - px
    for ch in range(3):
        assert np.array_equal(got[..., ch], want), ch
    print(f"\n[zmtp] 24 MP gray16 -> rgb16 (48 MB up, 144 MB down) in {dt:.2f} s")


def test_cancel_a_running_job(tmp_path):
    srv = start_server(tmp_path, "--pipeline-factory", "service_support:echo_pipeline",
                       env={"PATCHCOLOR_TEST_STAGE_DELAY": "0.5"})
    try:
        started = threading.Event()
        with _client(srv.endpoint) as c:
            with pytest.raises(JobCancelled):
                c.colorize(16, 16, "gray8", bytes(256), {}, progress=lambda *a: started.set(),
                           should_cancel=started.is_set)
            assert c.ping(5.0) >= 0            # the connection is still good after a cancel
    finally:
        srv.stop()


def test_server_death_during_a_job(tmp_path):
    srv = start_server(tmp_path, "--pipeline-factory", "service_support:echo_pipeline",
                       env={"PATCHCOLOR_TEST_STAGE_DELAY": "1"})
    started = threading.Event()

    def kill_when_started():
        started.wait(30)
        srv.proc.send_signal(signal.SIGKILL)
    threading.Thread(target=kill_when_started, daemon=True).start()
    try:
        with _client(srv.endpoint, timeout_s=2.0) as c:
            t0 = time.monotonic()
            with pytest.raises((BackendUnavailable, BackendError)) as ei:
                c.colorize(16, 16, "gray8", bytes(256), {}, progress=lambda *a: started.set())
            assert time.monotonic() - t0 < 20
            if isinstance(ei.value, BackendError):
                assert ei.value.code == "unknown_job"
    finally:
        srv.stop(signal.SIGKILL)


class _ErrorSignallingDealer(zmtp.ZmtpDealer):
    """A ZmtpDealer whose ``failed`` event is set the moment its I/O thread records a connection problem."""

    def __init__(self, endpoint: str) -> None:
        self.failed = threading.Event()
        super().__init__(endpoint)

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)
        if name == "last_error" and value is not None:
            self.failed.set()


def test_nothing_listening_and_a_malformed_greeting():
    port = free_port()
    with _client(f"tcp://127.0.0.1:{port}", timeout_s=0.5) as c:
        with pytest.raises(BackendUnavailable):
            c.ping(0.5)
    # a server that answers the greeting with HTTP
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    stop = threading.Event()

    def serve():
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                continue
            conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n" + bytes(64))
            conn.close()
    threading.Thread(target=serve, daemon=True).start()
    try:
        d = _ErrorSignallingDealer(f"tcp://127.0.0.1:{srv.getsockname()[1]}")
        assert d.failed.wait(5), "the dealer reports the failed handshake"
        assert d.last_error and "does not speak ZeroMQ" in d.last_error
        assert d.recv(0.2) is None
        d.close()
        assert zmtp.wait_closed(d, 3.0)
    finally:
        stop.set()
        srv.close()
    with pytest.raises(zmtp.ZmtpError, match="ZMTP 2"):
        zmtp.check_greeting(b"\xff" + bytes(8) + b"\x7f\x02\x00" + bytes(52))
    with pytest.raises(zmtp.ZmtpError, match="CURVE security; connecting to it needs pyzmq"):
        zmtp.check_greeting(b"\xff" + bytes(8) + b"\x7f\x03\x01" + b"CURVE".ljust(20, b"\0") + bytes(32))
    with pytest.raises(zmtp.ZmtpError):
        zmtp.parse_properties(b"\x0bSocket-Type\x00\x00\x00\x09ROU")


def test_raw_router_peer_heartbeats_and_multipart():
    """A libzmq ROUTER with 100 ms heartbeats (timeout 300 ms): the dealer answers its PINGs, so the connection
    lives on through 1.5 s of silence; empty, short and long frames arrive intact in both directions."""
    ctx = zmq.Context()
    r = ctx.socket(zmq.ROUTER)
    r.setsockopt(zmq.HEARTBEAT_IVL, 100)
    r.setsockopt(zmq.HEARTBEAT_TIMEOUT, 300)
    r.setsockopt(zmq.ROUTER_MANDATORY, 1)
    port = r.bind_to_random_port("tcp://127.0.0.1")
    d = zmtp.ZmtpDealer(f"tcp://127.0.0.1:{port}")
    pongs, quiet = [0], threading.Event()
    queue_put = d._outbox.put

    def put(item: Any, *args: Any, **kwargs: Any) -> None:   # count the dealer's answers to heartbeat PINGs
        queue_put(item, *args, **kwargs)
        if item[2] and b"\x04PONG" in bytes(item[0][0]):
            pongs[0] += 1
            if pongs[0] >= 15:
                quiet.set()

    d._outbox.put = put                                  # type: ignore[method-assign]
    try:
        frames = [b"", b"x" * 255, b"y" * 256, os.urandom(300_000)]
        tr = d.send(frames, track=True)
        assert r.poll(5000)
        got = r.recv_multipart()
        ident = got[0]
        assert got[1:] == frames
        assert tr._event.wait(2)          # the writer marks the tracker right after its last sendall
        assert quiet.wait(10), f"{pongs[0]} heartbeats answered"   # 15 intervals of silence: 5 timeouts
        r.send_multipart([ident, b"back", b"", b"z" * 70_000])      # ROUTER_MANDATORY: fails if the peer dropped
        msg = d.recv(5.0)
        assert msg is not None and [bytes(m) for m in msg] == [b"back", b"", b"z" * 70_000]
    finally:
        d.close()
        r.close(0)
        ctx.destroy(linger=0)   # closes sockets a failed assertion left open; term() alone would hang


def test_curve_without_pyzmq_is_one_sentence(monkeypatch):
    with pytest.raises(BackendUnavailable, match="CURVE keys .* needs pyzmq"):
        Client("tcp://127.0.0.1:5555", server_public_key=b"x" * 40)
    with pytest.raises(BackendUnavailable, match="not a ZeroMQ endpoint"):
        Client("127.0.0.1:5555")


def test_certificate_files_read_without_pyzmq(tmp_path):
    import zmq.auth
    pub_file, sec_file = zmq.auth.create_certificates(str(tmp_path), "k")
    assert T.load_certificate(sec_file) == zmq.auth.load_certificate(sec_file)
    assert T.load_certificate(pub_file) == zmq.auth.load_certificate(pub_file)
    (tmp_path / "bad").write_text("hello")
    with pytest.raises(ValueError, match="not a ZeroMQ certificate"):
        T.load_certificate(tmp_path / "bad")


def test_client_package_imports_with_the_standard_library_alone(tmp_path):
    """Importing and using the client package with ``import zmq`` blocked picks the built-in transport."""
    port = free_port()
    code = ("import builtins, sys\n"
            "real = builtins.__import__\n"
            "def guard(name, *a, **k):\n"
            "    if name.split('.')[0] in ('zmq', 'numpy', 'patchcolor', 'PIL', 'torch'):\n"
            "        raise ImportError('blocked: ' + name)\n"
            "    return real(name, *a, **k)\n"
            "builtins.__import__ = guard\n"
            "import patchcolor_client, patchcolor_client.launcher\n"
            "from patchcolor_client import Client, transport, endpoint\n"
            "assert not transport.pyzmq_available()\n"
            f"c = Client('tcp://127.0.0.1:{port}', timeout_s=0.3)\n"
            "assert c._sock.name == 'zmtp'\n"
            "try:\n"
            "    c.ping(0.3)\n"
            "except patchcolor_client.BackendUnavailable:\n"
            "    print('ok')\n"
            "c.close()\n")
    env = {k: v for k, v in os.environ.items() if k != T.ENV_VAR}
    env["PYTHONPATH"] = str(TESTS.parent / "gimp_plugin")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert out.stdout.strip() == "ok", out.stderr
