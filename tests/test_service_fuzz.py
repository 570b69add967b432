"""Malformed input: thousands of fuzzed messages against a real server process; it answers each with an
``error``, keeps answering ``ping``, still colorizes, and its memory stays flat."""
from __future__ import annotations

import json
import random
import time

import pytest
import zmq

from patchcolor_client import BackendError, Client
from patchcolor_client import protocol as CP
from service_support import start_server

N_WARMUP = 300
N_FUZZ = 5000
MAX_PIXELS = 100_000          # -> ZMQ_MAXMSGSIZE = 800 000 + 4096 bytes


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory, models_dir):
    srv = start_server(tmp_path_factory.mktemp("fuzz"), "--max-pixels", str(MAX_PIXELS), "--queue-size", "2",
                       models_dir=models_dir)
    yield srv
    srv.stop()


def _valid_colorize(rng: random.Random) -> dict:
    w, h = rng.randint(1, 20), rng.randint(1, 20)
    return {"v": 1, "type": "colorize", "id": f"f{rng.randrange(10**6)}", "job": f"j{rng.randrange(10**6)}",
            "width": w, "height": h, "format": rng.choice(list(CP.PIXEL_FORMATS)), "options": {"detector": "none"}}


_JUNK = {   # per header field: values that must all be refused
    "width": [None, True, False, -1, 0, 2**64, 1e308, -0.0, "", "10", [], {}, 3.5],
    "height": [None, True, -5, 0, 2**70, "7", [3], 1.5],
    "format": [None, 5, "", "RGB8", "rgb32", [], {"rgb8": 1}],
    "options": [5, "x", [], [1, 2], True, 3.5],
    "id": [None, 5, "", "x" * 100, [], {}, "bad id!"],
    "job": [None, 5, "", "y" * 65, ["j"], "a/b"],
    "type": [None, 5, "", "COLORIZE", [], "result"],
    "v": [None, True, "1", 1.0, 9, [], {}],
}


def fuzz_message(rng: random.Random) -> list[bytes]:
    """One malformed request (never a valid one): header frame + data frames."""
    kind = rng.randrange(14)
    good = _valid_colorize(rng)
    size = CP.frame_size(good["format"], good["width"], good["height"])
    if kind == 0:      # random frames
        return [rng.randbytes(rng.randint(0, 200)) for _ in range(rng.randint(1, 4))]
    if kind == 1:      # truncated header
        raw = json.dumps(good).encode()
        return [raw[:rng.randint(0, len(raw) - 1)], bytes(size)]
    if kind == 2:      # wrong pixel frame size
        return [json.dumps(good).encode(), bytes(max(0, size + rng.choice([-1, 1, -size, 7])))]
    if kind == 3:      # huge or silly declared dimensions (the frame is small: nothing may be allocated)
        good["width"], good["height"] = rng.choice([(2**31, 2**31), (10**6, 10**6), (MAX_PIXELS, 2), (0, 5),
                                                    (-3, 4), (2**62, 1), (10**40, 10**40)])
        return [json.dumps(good).encode(), bytes(rng.randint(0, 64))]
    if kind == 4:      # wrong types
        key = rng.choice(list(_JUNK))
        good[key] = rng.choice(_JUNK[key])
        return [json.dumps(good).encode(), bytes(size)]
    if kind == 5:      # bad JSON
        return [rng.choice([b"{", b"}", b"[]", b"null", b"42", b'"s"', b'{"v": NaN}', b'{"v": Infinity}',
                            b"{'v': 1}", b'{"v":1,}', b"\xff\xfe\x00", b"[" * 5000, b'{"a":' * 3000,
                            b'{"v": 1e999}', b'{"v": ' + b"9" * 5000 + b"}", b"\x00" * 10]), bytes(size)]
    if kind == 6:      # unknown version / type
        good["v"] = rng.choice([0, 9, 99, -1])
        if rng.random() < 0.5:
            good["type"] = rng.choice(["colourise", "PING", "", "result", "error"])
        return [json.dumps(good).encode(), bytes(size)]
    if kind == 7:      # frames where none belong
        return [json.dumps({"v": 1, "type": rng.choice(["ping", "info", "cancel"]), "id": "x",
                            "job": "j"}).encode(), *[b"x"] * rng.randint(1, 3)]
    if kind == 8:      # missing or extra frames on colorize
        return [json.dumps(good).encode()] + [bytes(size)] * rng.choice([0, 2, 3])
    if kind == 9:      # recompose (op "refuse") of unknown jobs, too many masks
        return [json.dumps({"v": 1, "type": "refuse", "id": "r", "job": "n", "base_job": rng.choice(
            ["nope", "x" * 70, 5])}).encode(), *[bytes(4)] * rng.choice([0, 1, 101])]
    if kind == 10:     # cancel of unknown jobs
        return [json.dumps({"v": 1, "type": "cancel", "id": "c", "job": rng.choice(["nope", "", None])}).encode()]
    if kind == 11:     # header over the size limit
        return [b'{"v":1,"type":"ping","id":"p","pad":"' + b"a" * (CP.MAX_HEADER_BYTES + 10) + b'"}']
    if kind == 12:     # empty frames
        return [b""] * rng.randint(1, 3)
    # bad options
    good["options"] = rng.choice([{"max_side": "big"}, {"nonsense": 1}, {"preset": "vivid"},
                                  {"saturation": 99.0}, {"batch_size": 0}, {"full_resolution": "yes"},
                                  {"detector": "yolo"}, {"preset": None, "feather": [1]}])
    return [json.dumps(good).encode(), bytes(size)]


def _exchange(sock: zmq.Socket, frames: list[bytes], timeout_s: float = 5.0) -> dict:
    sock.send_multipart(frames)
    assert sock.poll(int(timeout_s * 1000)), f"no reply to {[f[:60] for f in frames]}"
    reply = sock.recv_multipart()
    if reply[0] == b"":          # a leading empty frame looks like a REQ envelope: echoed back
        reply = reply[1:]
    return json.loads(reply[0])


def test_fuzzed_messages_get_errors_and_memory_stays_flat(fuzz_server):
    rng = random.Random(1234)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(fuzz_server.endpoint)
    codes: dict[str, int] = {}
    t0 = time.monotonic()
    try:
        for i in range(N_WARMUP + N_FUZZ):
            if i == N_WARMUP:
                rss_before = fuzz_server.rss_bytes()
            reply = _exchange(sock, fuzz_message(rng))
            assert reply["type"] == "error", reply
            assert reply["code"] in CP.ERROR_CODES, reply
            codes[reply["code"]] = codes.get(reply["code"], 0) + 1
            assert time.monotonic() - t0 < 120, "fuzzing takes too long"
        rss_after = fuzz_server.rss_bytes()
    finally:
        sock.close(0)
        ctx.destroy(linger=0)   # closes sockets a failed assertion left open; term() alone would hang
    assert {"bad_request", "version", "too_large", "image_too_large", "unknown_job", "bad_options"} <= set(codes)
    growth = (rss_after - rss_before) / rss_before
    print(f"\n{N_FUZZ + N_WARMUP} fuzzed messages in {time.monotonic() - t0:.1f} s; codes {codes}; "
          f"server RSS {rss_before / 2**20:.1f} -> {rss_after / 2**20:.1f} MiB ({growth:+.2%})")
    assert growth < 0.03, f"RSS grew {growth:.1%} ({rss_before >> 20} -> {rss_after >> 20} MiB)"
    with Client(fuzz_server.endpoint, timeout_s=30) as c:
        assert c.ping(2.0) < 2.0
        res = c.colorize(8, 8, "gray8", bytes(64), {"detector": "none", "max_side": 64})
        assert (res.width, res.height, res.fmt) == (8, 8, "rgb8")
    assert fuzz_server.log().count("rejected request") < 200, "malformed traffic must not flood the log"


def test_frame_over_maxmsgsize_disconnects_only_that_peer(fuzz_server):
    """ZMQ_MAXMSGSIZE: libzmq drops a peer that sends a frame larger than the largest legal image."""
    ctx = zmq.Context()
    try:
        bad = ctx.socket(zmq.DEALER)
        bad.setsockopt(zmq.LINGER, 0)
        bad.connect(fuzz_server.endpoint)
        header = json.dumps({"v": 1, "type": "colorize", "id": "big", "job": "big", "width": 1000, "height": 1000,
                             "format": "rgba16", "options": {}}).encode()
        bad.send_multipart([header, bytes(MAX_PIXELS * 8 + 100_000)])
        assert not bad.poll(1500), "an oversized frame must not be answered"
        bad.close(0)
    finally:
        ctx.destroy(linger=0)   # closes sockets a failed assertion left open; term() alone would hang
    with Client(fuzz_server.endpoint, timeout_s=10) as c:
        assert c.ping(2.0) < 2.0


# ------------------------------------------------------------------------------- multi-frame and oversize
BIG_MAX_PIXELS = 2_000_000      # -> ZMQ_MAXMSGSIZE 16 MB: 7.9 MB frames pass libzmq and reach the server's checks
BIG_FRAME = 7_900_000


@pytest.fixture(scope="module")
def big_server(tmp_path_factory):
    srv = start_server(tmp_path_factory.mktemp("fuzzbig"), "--max-pixels", str(BIG_MAX_PIXELS),
                       "--pipeline-factory", "service_support:echo_pipeline", "--untrusted-loopback")
    yield srv
    srv.stop()


def _peak_rss(srv) -> int:
    with open(f"/proc/{srv.proc.pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def test_many_big_frames_are_drained_not_kept(big_server):
    """A ping followed by 150 frames of 7.9 MB (1.19 GB), a colorize with 150 extra frames and a pixel frame
    far larger than its header declares: one error each, and the server's memory comes back (< 100 MB growth)."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(big_server.endpoint)
    blob = bytes(BIG_FRAME)                  # the same buffer sent again and again (zero copy on this side)
    ping = json.dumps({"v": 2, "type": "ping", "id": "p"}).encode()
    colorize = json.dumps({"v": 2, "type": "colorize", "id": "c", "job": "c1", "width": 10, "height": 10,
                           "format": "rgb8", "options": {"detector": "none"}}).encode()
    try:
        assert _exchange(sock, [ping])["type"] == "pong"
        rss_before = big_server.rss_bytes()
        t0 = time.monotonic()
        cases = [("150 x 7.9 MB after a ping", [ping] + [blob] * 150),
                 ("150 x 7.9 MB after a colorize", [colorize, bytes(300)] + [blob] * 150),
                 ("a 7.9 MB pixel frame for a 10x10 header", [colorize, blob]),
                 ("a recompose with 150 big masks", [json.dumps({"v": 2, "type": "refuse", "id": "r", "job": "r1",
                                                              "base_job": "nope"}).encode()] + [blob] * 150)]
        for what, frames in cases:
            sock.send_multipart(frames, copy=False)
            assert sock.poll(60_000), f"no reply to {what}"
            reply = json.loads(sock.recv_multipart()[0])
            assert reply["type"] == "error" and reply["code"] in ("bad_request", "unknown_job"), (what, reply)
        elapsed = time.monotonic() - t0
        assert _exchange(sock, [ping])["type"] == "pong"      # the server is done with every message before it
        rss_after, peak = big_server.rss_bytes(), _peak_rss(big_server)
        growth = rss_after - rss_before
        print(f"\n{len(cases)} oversize messages ({(450 * BIG_FRAME + BIG_FRAME) / 1e9:.2f} GB) refused in "
              f"{elapsed:.1f} s; server RSS {rss_before / 2**20:.0f} -> {rss_after / 2**20:.0f} MiB "
              f"(peak {peak / 2**20:.0f} MiB)")
        assert growth < 100 * 2**20, f"RSS grew {growth / 2**20:.0f} MiB"
        big_server.wait_log(r"frame\(s\), [\d.]+ MB dropped", 10)
        assert _exchange(sock, [ping])["type"] == "pong"
    finally:
        sock.close(0)
        ctx.destroy(linger=0)   # closes sockets a failed assertion left open; term() alone would hang


@pytest.mark.parametrize("options", [
    {"net_size": 1024},
    {"batch_size": 64},
    {"score_thresh": 0.0, "max_instances": 100, "net_size": 512, "batch_size": 64},
    {"max_side": 8192},
    {"detector": "detectron2"},
])
def test_oversize_options_from_remote_clients_are_refused(big_server, options):
    """A remote client (--untrusted-loopback) cannot set memory-driving options past the remote limits: each is
    refused with one bad_options sentence before any job starts, and the server's memory stays flat."""
    rss_before = big_server.rss_bytes()
    with Client(big_server.endpoint, timeout_s=10) as c:
        with pytest.raises(BackendError) as ei:
            c.colorize(64, 64, "gray8", bytes(64 * 64), {**options})
        assert ei.value.code == "bad_options", ei.value
        assert "remote" in ei.value.message and "\n" not in ei.value.message
        assert c.info()["queued"] == 0 and c.info()["running"] == 0
    assert big_server.rss_bytes() - rss_before < 50 * 2**20


def test_remote_client_info_and_jobs_within_the_limits(big_server):
    with Client(big_server.endpoint, timeout_s=10) as c:
        info = c.info()
        assert info["remote"] is True and "models_dir" not in info and "versions" not in info
        assert info["limits"]["net_size"] == 512
        # within every option bound, but 16 x 512^2 crops + a 2 MP rgba16 full-resolution finish: still fine
        res = c.colorize(32, 32, "gray8", bytes(32 * 32), {"net_size": 512, "batch_size": 16, "detector": "none"})
        assert res.width == 32
