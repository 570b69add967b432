"""Service hardening (docs/protocol.md, "Limits" and "Budgets and fairness"): jobs bound to their creator by a
token, protocol-1 clients still served, orphaned jobs dropped when their client disconnects, `colorize --remote`
retrying on `busy`, remote option limits and memory estimate, key files. Servers use
``service_support.EchoPipeline`` (no networks)."""
from __future__ import annotations

import json
import os
import re
import stat
import time

import numpy as np
import pytest
import zmq

from patchcolor_client import BackendError, Client
from patchcolor_client import protocol as CP
from service_support import start_server

from patchcolor.options import make_options
from patchcolor.prepare import SourceImage
from patchcolor.service.auth import make_keys
from patchcolor.service.remote import RemoteError, busy_waits, run_remote_colorize
from patchcolor.service.limits import RemoteLimits, check_job, estimate_job_bytes


@pytest.fixture(scope="module")
def slow_echo(tmp_path_factory):
    srv = start_server(tmp_path_factory.mktemp("hard"), "--pipeline-factory", "service_support:echo_pipeline",
                       "--queue-size", "10", "--client-queue-size", "10", env={"PATCHCOLOR_TEST_STAGE_DELAY": "0.4"})
    yield srv
    srv.stop()


_unread: dict[int, list[dict]] = {}   # replies read while waiting for another one, per socket


def _dealer(ctx: zmq.Context, endpoint: str) -> zmq.Socket:
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(endpoint)
    _unread[id(s)] = []
    return s


def _colorize_frames(job: str, v: int = 2, token: str | None = None) -> list[bytes]:
    h = {"v": v, "type": "colorize", "id": "r-" + job, "job": job, "width": 4, "height": 4, "format": "gray8",
         "options": {"detector": "none"}}
    if token:
        h["token"] = token
    return [json.dumps(h).encode(), bytes(16)]


def _wait(sock: zmq.Socket, pred, timeout_s: float = 20.0) -> dict:
    """The first reply on ``sock`` matching ``pred``; replies that do not match are kept for later waits (the
    server may answer in either order, e.g. a queued job's ``cancelled`` before the cancel's ``ack``)."""
    kept = _unread.setdefault(id(sock), [])
    deadline = time.monotonic() + timeout_s
    while True:
        for r in kept:
            if pred(r):
                kept.remove(r)
                return r
        left = deadline - time.monotonic()
        assert left > 0 and sock.poll(int(left * 1000)), f"no matching reply; got {kept}"
        kept.append(json.loads(sock.recv_multipart()[0]))


def test_jobs_are_bound_to_their_token(slow_echo):
    """Another client cannot cancel, probe or recompose a job (and so cannot get its photo) without its token."""
    gray = np.arange(48, dtype=np.uint8).reshape(6, 8)
    with Client(slow_echo.endpoint, timeout_s=20) as owner, Client(slow_echo.endpoint, timeout_s=10) as other:
        res = owner.colorize(8, 6, "gray8", gray.tobytes(), {"detector": "none"})
        assert CP.valid_token(res.token)
        masks = [inst.full_mask(res.width, res.height) for inst in res.instances]
        with pytest.raises(BackendError) as ei:
            other.recompose(res.job_id, masks)                         # no token
        assert ei.value.code == "unknown_job"
        with pytest.raises(BackendError) as ei:
            other.recompose(res.job_id, masks, token="0" * 32)         # wrong token
        assert ei.value.code == "unknown_job"
        again = other.recompose(res.job_id, masks, token=res.token)    # the token is what counts (GIMP reconnects)
        assert again.width == 8 and again.token and again.token != res.token
        assert owner.recompose(res.job_id, masks).job_id != res.job_id   # the creating Client remembers its token

    ctx = zmq.Context()
    try:
        a, b = _dealer(ctx, slow_echo.endpoint), _dealer(ctx, slow_echo.endpoint)
        a.send_multipart(_colorize_frames("tok-a"))
        token = _wait(a, lambda r: r["type"] == "accepted")["token"]
        b.send_multipart([json.dumps({"v": 2, "type": "ping", "id": "p1", "job": "tok-a"}).encode()])
        assert _wait(b, lambda r: r["type"] == "pong")["job_state"] == "unknown"
        b.send_multipart([json.dumps({"v": 2, "type": "ping", "id": "p2", "job": "tok-a", "token": token}).encode()])
        assert _wait(b, lambda r: r["type"] == "pong")["job_state"] in ("queued", "running")
        b.send_multipart([json.dumps({"v": 2, "type": "cancel", "id": "c1", "job": "tok-a"}).encode()])
        assert _wait(b, lambda r: r["id"] == "c1")["code"] == "unknown_job"
        result = _wait(a, lambda r: r["type"] in CP.FINAL_TYPES)
        assert result["type"] == "result" and result["token"] == token
        a.close(0), b.close(0)
    finally:
        ctx.destroy(linger=0)   # closes sockets a failed assertion left open; term() alone would hang
    log = slow_echo.log()
    assert "tok-a" not in log and res.job_id not in log, "job ids must not be logged at INFO"


def test_protocol_1_clients_are_still_served(slow_echo):
    """A version-1 client (no tokens) gets version-1 replies and may cancel its own job on its connection."""
    ctx = zmq.Context()
    try:
        s = _dealer(ctx, slow_echo.endpoint)
        s.send_multipart(_colorize_frames("v1-a", v=1))
        acc = _wait(s, lambda r: r.get("job") == "v1-a")
        assert acc["type"] == "accepted" and acc["v"] == 1
        s.send_multipart([json.dumps({"v": 1, "type": "cancel", "id": "c", "job": "v1-a"}).encode()])
        ack = _wait(s, lambda r: r["id"] == "c")
        assert ack["type"] == "ack" and ack["v"] == 1
        final = _wait(s, lambda r: r.get("job") == "v1-a" and r["type"] in CP.FINAL_TYPES)
        assert final["type"] == "cancelled" and final["v"] == 1
        s.send_multipart(_colorize_frames("v1-b", v=1))        # a finished v1 job: recomposed on its connection
        res = _wait(s, lambda r: r.get("job") == "v1-b" and r["type"] in CP.FINAL_TYPES)
        assert res["type"] == "result" and res["v"] == 1 and len(res["instances"]) == 1
        recompose = {"v": 1, "type": "refuse", "id": "rf", "job": "v1-c", "base_job": "v1-b"}
        s.send_multipart([json.dumps(recompose).encode(), bytes([255]) * 16])
        assert _wait(s, lambda r: r.get("job") == "v1-c" and r["type"] in CP.FINAL_TYPES)["type"] == "result"
        other = _dealer(ctx, slow_echo.endpoint)               # ... but not from another connection
        other.send_multipart([json.dumps({**recompose, "job": "v1-d"}).encode(), bytes([255]) * 16])
        assert _wait(other, lambda r: r.get("job") == "v1-d")["code"] == "unknown_job"
        other.close(0)
        s.close(0)
    finally:
        ctx.destroy(linger=0)   # closes sockets a failed assertion left open; term() alone would hang


def test_disconnected_clients_queued_jobs_are_dropped_at_once(slow_echo):
    """A client queues 9 jobs and disconnects: its queued jobs go at once, its running one stops at the next
    stage boundary, so another client's job starts without waiting for them."""
    ctx = zmq.Context()
    try:
        s = _dealer(ctx, slow_echo.endpoint)
        for i in range(9):
            s.send_multipart(_colorize_frames(f"orphan-{i}"))
        accepted = 0
        while accepted < 9:
            accepted += _wait(s, lambda r: r["type"] in ("accepted", "error"))["type"] == "accepted"
        mark = slow_echo.log_mark()
        s.close(0)                           # gone without cancelling anything
        slow_echo.wait_log(r"disconnected: \d+ queued job\(s\) dropped", 10, since=mark)
        t0 = time.monotonic()
        with Client(slow_echo.endpoint, timeout_s=20) as c:
            assert c.colorize(4, 4, "gray8", bytes(16), {"detector": "none"}).width == 4
            waited = time.monotonic() - t0
            assert c.info()["queued"] == 0
    finally:
        ctx.destroy(linger=0)   # closes sockets a failed assertion left open; term() alone would hang
    print(f"\nnew job done {waited:.1f} s after the client with 9 jobs disconnected (5 stages x 0.4 s)")
    assert waited < 5.0, f"the new job waited {waited:.1f} s behind a disconnected client's jobs"
    slow_echo.wait_log(r"8 queued job\(s\) dropped", 1, since=mark)


def test_remote_colorize_retries_when_busy(tmp_path):
    srv = start_server(tmp_path, "--pipeline-factory", "service_support:echo_pipeline", "--queue-size", "1",
                       env={"PATCHCOLOR_TEST_STAGE_DELAY": "0.4"})
    ctx = zmq.Context()
    said: list[str] = []

    def fill_queue(first: int) -> None:
        """One job running (its first progress event seen), one queued: the queue is full for ~2 s."""
        s.send_multipart(_colorize_frames(f"fill-{first}"))
        assert _wait(s, lambda r: r.get("job") == f"fill-{first}")["type"] == "accepted"
        _wait(s, lambda r: r.get("job") == f"fill-{first}" and r["type"] == "progress")
        s.send_multipart(_colorize_frames(f"fill-{first + 1}"))
        assert _wait(s, lambda r: r.get("job") == f"fill-{first + 1}")["type"] == "accepted"

    try:
        s = _dealer(ctx, srv.endpoint)
        fill_queue(0)
        src = SourceImage(np.full((4, 4), 9, np.uint8))
        res = run_remote_colorize(srv.endpoint, src, make_options("default", detector="none"), timeout_s=10,
                                  say=said.append)
        assert res.image.shape == (4, 4, 3)
        assert said and all("busy" in line and "retry" in line for line in said)
        # gives up after the bounded retries, and says so
        fill_queue(2)
        with pytest.raises(RemoteError) as ei:
            run_remote_colorize(srv.endpoint, src, make_options("default", detector="none"), timeout_s=10,
                                busy_retries=0, say=said.append)
        assert ei.value.code == "busy"
        s.close(0)
    finally:
        ctx.destroy(linger=0)   # closes sockets a failed assertion left open; term() alone would hang
        srv.stop()


def test_busy_backoff_is_bounded():
    waits = busy_waits()
    assert len(waits) == 8 and max(waits) <= 30 * 1.25 and sum(waits) < 150
    assert all(b > a for a, b in zip(waits[:4], waits[1:5]))     # exponential at first


def test_check_job_limits_and_memory_estimate():
    lim = RemoteLimits()
    ok = make_options("default")
    assert check_job(4000, 3000, "rgb8", ok, True, lim, None) > 0
    for bad in ({"net_size": 1024}, {"batch_size": 64}, {"max_side": 8192}, {"detector": "detectron2"},
                {"score_thresh": 0.0}):
        with pytest.raises(CP.ProtocolError) as ei:
            check_job(640, 480, "rgb8", make_options("default", **bad), True, lim, None)
        assert ei.value.code == "bad_options" and "remote" in ei.value.message
        check_job(640, 480, "rgb8", make_options("default", **bad), False, lim, None)   # loopback: today's ranges
    huge = make_options("default", net_size=1024, batch_size=64)
    need = estimate_job_bytes(640, 480, "rgb8", huge)
    assert need > 20 * 2**30                 # 64 x 1024^2 network pixels
    with pytest.raises(CP.ProtocolError) as ei:   # loopback too, when the memory is not there
        check_job(640, 480, "rgb8", huge, False, lim, need - 1)
    assert "free" in ei.value.message
    with pytest.raises(CP.ProtocolError) as ei:
        check_job(640, 480, "rgb8", make_options("default", batch_size=16, net_size=512), True,
                  RemoteLimits(job_bytes=1 << 30), None)
    assert "remote job may use" in ei.value.message
    assert estimate_job_bytes(4000, 3000, "rgb16", ok) > estimate_job_bytes(4000, 3000, "rgb8", ok)


def test_key_files(tmp_path, capsys):
    pub, sec = make_keys(tmp_path / "k")
    assert stat.S_IMODE(os.stat(pub).st_mode) == 0o644 and stat.S_IMODE(os.stat(sec).st_mode) == 0o600
    from patchcolor.cli import main as cli_main
    from PIL import Image

    (tmp_path / "src").mkdir()
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(tmp_path / "src" / "a.png")
    for flag, value in (("--server-key", str(tmp_path / "missing.key")),
                        ("--client-key", str(tmp_path / "missing.key_secret"))):
        extra = [] if flag == "--server-key" else ["--server-key", str(pub)]
        rc = cli_main(["colorize", str(tmp_path / "src" / "a.png"), "-o", str(tmp_path / "out"), "--remote",
                       "tcp://127.0.0.1:9", flag, value, *extra, "--remote-timeout", "0.5"])
        err = capsys.readouterr().err
        assert rc != 0 and "Traceback" not in err and f"{flag} {value}: no such file" in err, err


@pytest.mark.parametrize("payload", [
    # builtins.bytearray(3_000_000_000) through REDUCE: a few bytes that would allocate 3 GB
    b"\x80\x04\x8c\x08builtins\x8c\tbytearray\x93\x8a\x05\x00^\xd0\xb2\x00\x85R.",
    # BYTEARRAY8 / BINBYTES8 declaring 3e9 bytes that the file does not have
    b"\x80\x05\x96" + (3_000_000_000).to_bytes(8, "little") + b"x.",
    b"\x80\x04\x8e" + (3_000_000_000).to_bytes(8, "little") + b"x.",
    # numpy _reconstruct of a 3e9-element shape
    b"\x80\x02cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n\x8a\x05\x00^\xd0\xb2\x00\x85C\x01b\x87R.",
])
def test_detector_pickle_sizes_are_bounded_before_allocating(tmp_path, payload):
    """A .pkl declaring 3 GB is refused (WeightsCorrupt, one sentence) without allocating it."""
    import tracemalloc

    from patchcolor.errors import WeightsCorrupt
    from patchcolor.segment.d2_pickle import read_d2_pickle

    path = tmp_path / "evil.pkl"
    path.write_bytes(payload)
    tracemalloc.start()          # Python and numpy allocations, also the ones never touched (RSS misses those)
    try:
        with pytest.raises(WeightsCorrupt) as ei:
            read_d2_pickle(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "\n" not in str(ei.value)
    assert peak < 50 * 2**20, f"{peak / 2**30:.2f} GiB allocated while reading a {len(payload)}-byte file"


def test_frozen_client_is_dropped_after_the_heartbeat_timeout(tmp_path):
    """A client that stops answering (SIGSTOP: its TCP connection stays open) loses its jobs when the server's
    heartbeat times out (5 s interval, 15 s timeout), not after they have all run."""
    import signal
    import subprocess
    import sys

    srv = start_server(tmp_path, "--pipeline-factory", "service_support:echo_pipeline",
                       env={"PATCHCOLOR_TEST_STAGE_DELAY": "2"})             # 10 s per job
    script = ("import json, sys, zmq\n"
              "s = zmq.Context().socket(zmq.DEALER)\n"
              "s.connect(sys.argv[1])\n"
              "for i in range(4):\n"
              "    s.send_multipart([json.dumps({'v': 2, 'type': 'colorize', 'id': 'r%d' % i, 'job': 'f%d' % i,\n"
              "        'width': 4, 'height': 4, 'format': 'gray8', 'options': {}}).encode(), bytes(16)])\n"
              "n = 0\n"
              "while n < 4:\n"
              "    n += json.loads(s.recv_multipart()[0])['type'] == 'accepted'\n"
              "print('queued', flush=True)\n"
              "import time; time.sleep(600)\n")
    proc = subprocess.Popen([sys.executable, "-c", script, srv.endpoint], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "queued"
        proc.send_signal(signal.SIGSTOP)
        t0 = time.monotonic()
        line = srv.wait_log(r"disconnected: .*", 30)
        took = time.monotonic() - t0
        print(f"\nfrozen client dropped {took:.1f} s after it stopped")
        assert re.search(r"disconnected: [1-3] queued job\(s\) dropped, 1 running job\(s\) cancelled", line[0])
        assert took < 25
    finally:
        proc.kill()
        proc.wait(10)
        srv.stop()
