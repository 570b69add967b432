"""What one client may take from the service (docs/protocol.md, "Budgets and fairness"): request bytes held per
client and in all, the largest request, round-robin service across clients, job ids scoped to their connection,
preview sessions per remote client, and error messages without server paths for remote clients.

Servers use ``service_support.EchoPipeline`` (no networks) except where previews need the real pipeline."""
from __future__ import annotations

import json
import threading
import time

import pytest
import zmq

from patchcolor_client import BackendError, Client
from patchcolor_client import protocol as CP
from service_support import start_server

from patchcolor.options import make_options
from patchcolor.service.jobs import JobQueue
from patchcolor.service.limits import RemoteLimits, check_job, default_budgets, estimate_job_bytes
from patchcolor.service.worker import remote_message

MB = 10**6


def _dealer(ctx: zmq.Context, endpoint: str) -> zmq.Socket:
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(endpoint)
    return s


def _colorize(job: str, width: int = 4, height: int = 4, token: str | None = None, n_masks: int = 0,
              **fields: object) -> list[bytes]:
    """A colorize request: gray8 pixels and ``n_masks`` full-size given instances."""
    h: dict = {"v": 3, "type": "colorize", "id": "r-" + job, "job": job, "width": width, "height": height,
               "format": "gray8", "options": {"detector": "none"}, **fields}
    if token:
        h["token"] = token
    if n_masks:
        h["instances"] = [{"class_id": 0, "class_name": "person", "score": 0.9, "box": [0, 0, width, height],
                           "mask_origin": [0, 0], "mask_size": [width, height]}] * n_masks
    return [json.dumps(h).encode(), bytes(width * height)] + [bytes(width * height)] * n_masks


class Replies:
    """Replies on one DEALER socket; ``wait`` keeps the ones it skips for later waits. ``on_receive`` sees
    every reply as it arrives."""

    def __init__(self, sock: zmq.Socket, on_receive=None):
        self.sock, self.kept, self.on_receive = sock, [], on_receive

    def receive(self, timeout_s: float) -> bool:
        """Read one reply into ``kept`` if one comes within ``timeout_s``."""
        if not self.sock.poll(int(timeout_s * 1000)):
            return False
        r = json.loads(self.sock.recv_multipart()[0])
        if self.on_receive is not None:
            self.on_receive(r)
        self.kept.append(r)
        return True

    def wait(self, pred, timeout_s: float = 20.0) -> dict:
        deadline = time.monotonic() + timeout_s
        while True:
            for r in self.kept:
                if pred(r):
                    self.kept.remove(r)
                    return r
            left = deadline - time.monotonic()
            assert left > 0 and self.receive(left), f"no matching reply; got {self.kept}"

    def final(self, job: str, timeout_s: float = 20.0) -> dict:
        return self.wait(lambda r: r.get("job") == job and r["type"] in CP.FINAL_TYPES, timeout_s)

    def answer(self, job: str, timeout_s: float = 20.0) -> dict:
        """``accepted`` or the ``error`` that replaced it."""
        return self.wait(lambda r: r.get("job") == job and r["type"] in ("accepted", "error"), timeout_s)


def _vm(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {key}")


# ------------------------------------------------------------------------------------------------ memory
def test_a_client_holding_8_large_requests_stays_within_its_budget(tmp_path):
    """8 requests of 41 MB each (a 1000x1000 image with 40 full-size instance masks) from one client: only what
    fits in its 90 MB budget is queued, the rest is ``busy``, and the server's memory follows the budget."""
    each = 1_000_000 * 41
    budget_mb = 90
    srv = start_server(tmp_path, "--pipeline-factory", "service_support:echo_pipeline", "--queue-size", "16",
                       "--client-queue-size", "16", "--client-mb", str(budget_mb), "--queue-mb", "400",
                       env={"PATCHCOLOR_TEST_STAGE_DELAY": "1.0"})        # 5 s per job: the others wait
    ctx = zmq.Context()
    try:
        s = _dealer(ctx, srv.endpoint)
        replies = Replies(s)
        s.send_multipart([json.dumps({"v": 3, "type": "ping", "id": "p0"}).encode()])
        replies.wait(lambda r: r["type"] == "pong")
        # admission loads the colorizers' code (torch) at the server's first job: a tiny job first, so the growth
        # measured is the held requests'
        s.send_multipart(_colorize("warm"), copy=False)
        assert replies.answer("warm")["type"] == "accepted"
        assert replies.final("warm", 60)["type"] == "result"
        rss0 = _vm(srv.proc.pid, "VmRSS")
        frames = _colorize("big-0", 1000, 1000, n_masks=40)
        answers = []
        for i in range(8):          # one at a time: at most one request in flight at the server
            head = json.loads(frames[0])
            head.update(job=f"big-{i}", id=f"r-big-{i}")
            s.send_multipart([json.dumps(head).encode(), *frames[1:]], copy=False)
            answers.append(replies.answer(f"big-{i}"))
        s.send_multipart([json.dumps({"v": 3, "type": "ping", "id": "p1"}).encode()])
        replies.wait(lambda r: r["type"] == "pong")       # the server is done with the 8 requests
        rss = _vm(srv.proc.pid, "VmRSS")
        peak = _vm(srv.proc.pid, "VmHWM")
        accepted = [a for a in answers if a["type"] == "accepted"]
        busy = [a for a in answers if a["type"] == "error"]
        print(f"\n8 requests of {each / MB:.0f} MB from one client, budget {budget_mb} MB: {len(accepted)} queued, "
              f"{len(busy)} busy; server RSS {rss0 / 2**20:.0f} -> {rss / 2**20:.0f} MiB (peak "
              f"{peak / 2**20:.0f} MiB, growth {(rss - rss0) / MB:.0f} MB)")
        assert len(accepted) * each <= budget_mb * MB and len(accepted) >= 1
        assert busy and all(a["code"] == "busy" and "one client may hold" in a["message"] for a in busy)
        # what the documented bound allows: the budget, one request on its way in, and allocator slack
        assert rss - rss0 < budget_mb * MB + each + 40 * MB, f"RSS grew {(rss - rss0) / MB:.0f} MB"
        s.close(0)                  # its queued jobs are dropped, its budget is free again
        srv.wait_log(r"disconnected: \d+ queued job\(s\) dropped", 10)
        with Client(srv.endpoint, timeout_s=30) as c:
            assert c.info()["budgets"]["client_bytes"] == budget_mb * MB
    finally:
        ctx.destroy(linger=0)       # closes sockets a failed assertion left open; term() alone would hang
        srv.stop()


def test_a_request_larger_than_a_clients_budget_is_refused_from_its_header(tmp_path):
    """The largest request is one client's budget: a bigger one is ``too_large`` before any frame is kept."""
    srv = start_server(tmp_path, "--pipeline-factory", "service_support:echo_pipeline", "--client-mb", "20")
    ctx = zmq.Context()
    try:
        s = _dealer(ctx, srv.endpoint)
        replies = Replies(s)
        mark = srv.log_mark()
        s.send_multipart(_colorize("huge", 1000, 1000, n_masks=24), copy=False)        # 25 MB
        err = replies.answer("huge")
        assert err["type"] == "error" and err["code"] == "too_large", err
        assert "25 MB" in err["message"] and "20 MB" in err["message"]
        srv.wait_log(r"too_large: .*\(25 frame\(s\), 25\.0 MB dropped\)", 10, since=mark)
        s.send_multipart(_colorize("fits", 1000, 1000, n_masks=10), copy=False)        # 11 MB
        assert replies.answer("fits")["type"] == "accepted"
        assert replies.final("fits")["type"] == "result"
        s.close(0)
    finally:
        ctx.destroy(linger=0)
        srv.stop()


def test_the_estimate_counts_masks_and_hint_maps():
    opts = make_options("default", detector="none")
    plain = estimate_job_bytes(8, 8, "gray8", opts)
    hinted = estimate_job_bytes(8, 8, "gray8", opts, frame_bytes=64 + 10000**2 * 4, hint_pixels=10000**2)
    assert hinted - plain >= 10000**2 * (4 + 12)       # the rgba8 frame and its processing
    with pytest.raises(CP.ProtocolError) as ei:         # an 8x8 photo with a 10000^2 hint map: over 1 GiB
        check_job(8, 8, "gray8", opts, True, RemoteLimits(job_bytes=1 << 30), None, "r", "j",
                  frame_bytes=64 + 10000**2 * 4, hint_pixels=10000**2)
    assert ei.value.code == "bad_options" and "GiB" in ei.value.message
    masks = estimate_job_bytes(2000, 2000, "gray8", opts, frame_bytes=101 * 2000**2)
    assert masks - estimate_job_bytes(2000, 2000, "gray8", opts) == 100 * 2000**2
    b = default_budgets(100_000_000)
    assert b.client_bytes == 1_600_000_000 and b.queue_bytes == 2 * b.client_bytes and b.client_jobs == 4


# ---------------------------------------------------------------------------------------------- fairness
def test_round_robin_order_and_positions():
    class J:
        def __init__(self, client: str, n: int):
            self.client, self.n = client, n

    q = JobQueue(10, 4)
    assert [q.offer(J("a", i)) for i in range(5)] == [0, 1, 2, 3, None]    # a's lane holds 4
    assert q.offer(J("b", 0)) == 1 and q.offer(J("b", 1)) == 3 and q.offer(J("c", 0)) == 2
    order = []
    while len(q):
        j = q.take()
        order.append(f"{j.client}{j.n}")
    assert order == ["a0", "b0", "c0", "a1", "b1", "a2", "a3"]
    q = JobQueue(10, 4)              # a client that just got served waits behind the one that waited longer
    for i in range(3):
        q.offer(J("a", i))
    assert q.take().client == "a"
    q.offer(J("b", 0))
    assert q.take().client == "b"
    q.offer(J("b", 1))
    assert [q.take().client for _ in range(3)] == ["a", "b", "a"]
    q = JobQueue(10, 4)              # a lane that emptied is still remembered as just served
    q.offer(J("a", 0))
    assert q.take().n == 0           # a's lane is empty now
    for i in range(1, 4):
        q.offer(J("a", i))
    q.offer(J("b", 0))
    assert [f"{j.client}{j.n}" for j in (q.take(), q.take())] == ["b0", "a1"]


def test_a_flooding_client_does_not_starve_another(tmp_path):
    """Client A keeps its share of the queue full; client B's jobs, one at a time, each wait for at most the
    job that is running (round-robin), not for A's whole backlog."""
    delay = 0.1                                                    # 5 stages: 0.5 s per job
    srv = start_server(tmp_path, "--pipeline-factory", "service_support:echo_pipeline",
                       env={"PATCHCOLOR_TEST_STAGE_DELAY": str(delay)})
    ctx = zmq.Context()
    a_done: list[float] = []
    saturated, stop = threading.Event(), threading.Event()
    failures: list[BaseException] = []

    def flood() -> None:
        try:
            s = _dealer(ctx, srv.endpoint)
            replies = Replies(s, lambda r: r["type"] == "result" and a_done.append(time.monotonic()))
            n, full = 0, False
            while not stop.is_set():
                if full:
                    replies.receive(0.2)
                else:
                    s.send_multipart(_colorize(f"a{n}"))
                    full = replies.answer(f"a{n}")["type"] == "error"     # busy: A's share of the queue waits
                    n += 1
                    if full:
                        saturated.set()
                if any(r["type"] == "result" for r in replies.kept):     # a place in A's lane is free again
                    full = False
                replies.kept = [r for r in replies.kept if r["type"] not in ("result", "progress")]
            s.close(0)
        except BaseException as e:
            failures.append(e)

    flooder = threading.Thread(target=flood, daemon=True)
    try:
        flooder.start()
        assert saturated.wait(20)
        windows = []
        with Client(srv.endpoint, timeout_s=30) as b:
            b.ping()                                               # connected before the clock starts
            for k in range(4):
                t0 = time.monotonic()
                res = b.colorize(4, 4, "gray8", bytes(16), {"detector": "none"})
                windows.append((t0, time.monotonic()))
                assert res.width == 4
        stop.set()
        flooder.join(20)
        assert not failures, failures
        ahead = [sum(t0 < t < t1 for t in a_done) for t0, t1 in windows]
        latency = [t1 - t0 for t0, t1 in windows]
        print(f"\nB's job latency with A flooding: {', '.join(f'{x:.2f}' for x in latency)} s (one job "
              f"{5 * delay:.1f} s); A's jobs finished meanwhile: {ahead}; A finished {len(a_done)} in all")
        assert max(ahead) <= 2, f"B waited for {max(ahead)} of A's jobs: not served round-robin"
    finally:
        stop.set()
        ctx.destroy(linger=0)
        srv.stop()


# ------------------------------------------------------------------------------------------ job ids
def test_job_ids_are_scoped_to_their_connection(tmp_path):
    """Another connection's job id is just another job: no ``duplicate_job`` answer tells it that the id is in
    use, and reusing the id of a finished job does not evict its owner's record."""
    srv = start_server(tmp_path, "--pipeline-factory", "service_support:echo_pipeline",
                       env={"PATCHCOLOR_TEST_STAGE_DELAY": "0.2"})
    ctx = zmq.Context()
    token_a, token_b = "a" * 32, "b" * 32
    try:
        a, b = _dealer(ctx, srv.endpoint), _dealer(ctx, srv.endpoint)
        ra, rb = Replies(a), Replies(b)
        a.send_multipart(_colorize("same", token=token_a))
        assert ra.answer("same")["type"] == "accepted"
        a.send_multipart(_colorize("same", token="c" * 32))       # the same id again on its own connection
        assert ra.wait(lambda r: r.get("job") == "same" and r["type"] == "error")["code"] == "duplicate_job"
        b.send_multipart(_colorize("same", token=token_b))        # another connection: a job of its own
        assert rb.answer("same")["type"] == "accepted"
        b.send_multipart([json.dumps({"v": 3, "type": "cancel", "id": "c1", "job": "same",
                                      "token": token_b}).encode()])
        assert rb.wait(lambda r: r.get("id") == "c1")["type"] == "ack"
        assert rb.final("same")["type"] == "cancelled"
        first = ra.final("same")
        assert first["type"] == "result" and first["token"] == token_a       # A's job was not touched
        b.send_multipart(_colorize("same", token=token_b))        # B reuses the finished job's id
        assert rb.final("same")["type"] == "result"
        recompose = {"v": 3, "type": "refuse", "id": "rf", "job": "same-2", "base_job": "same", "base_token": token_a}
        a.send_multipart([json.dumps(recompose).encode(), bytes([255]) * 16])
        again = ra.final("same-2")
        assert again["type"] == "result", again                  # A's record is still there
        a.close(0), b.close(0)
    finally:
        ctx.destroy(linger=0)
        srv.stop()


# ------------------------------------------------------------------------------------ remote clients
def test_remote_errors_name_no_server_paths(tmp_path):
    """A remote client's errors never contain the server's paths; a loopback client gets the whole sentence."""
    secret = "/srv/patchcolor-secret"
    cases = [({"detector": "torchvision-v2"}, "weights_missing"), ({"colorizer": "siggraph17"}, "internal"),
             ({"saturation": 0.5}, "error")]
    for remote in (True, False):
        srv = start_server(tmp_path, "--pipeline-factory", "service_support:leaky_pipeline",
                           *(["--untrusted-loopback"] if remote else []))
        try:
            with Client(srv.endpoint, timeout_s=20) as c:
                assert c.info()["remote"] is remote
                for opts, code in cases:
                    with pytest.raises(BackendError) as ei:
                        c.colorize(4, 4, "gray8", bytes(16), opts)
                    assert ei.value.code == code
                    if remote:
                        assert secret not in ei.value.message and "/" not in ei.value.message, ei.value.message
                    else:
                        assert secret in ei.value.message
            if remote:
                srv.wait_log(secret, 5)           # the details stay in the server's log
        finally:
            srv.stop()
    assert remote_message("error", "cannot read C:\\data\\x.pth or ~/models/y.pth") == \
        "cannot read <path> or <path>"


def test_preview_sessions_are_per_remote_client(tmp_path, models_dir, photo_gray):
    """A remote client's preview never reuses another client's session (``computed: 0`` would tell it that
    someone previewed the same photo); its own sessions are reused."""
    from test_service import make_pixels

    opts = {"colorizer": "siggraph17", "net_size": 64, "detector": "none"}
    px = make_pixels("gray8", 96, 72, photo_gray, seed=5)
    srv = start_server(tmp_path, "--untrusted-loopback", models_dir=models_dir)
    try:
        with Client(srv.endpoint, timeout_s=60) as one, Client(srv.endpoint, timeout_s=60) as two:
            assert one.preview(96, 72, "gray8", px, opts, long_side=64).extra["computed"] > 0
            assert one.preview(96, 72, "gray8", px, {**opts, "saturation": 1.4},
                               long_side=64).extra["computed"] == 0          # its own session
            assert two.preview(96, 72, "gray8", px, opts, long_side=64).extra["computed"] > 0
            with pytest.raises(BackendError) as ei:     # the real pipeline's missing weights: no path either
                one.colorize(96, 72, "gray8", px, {"detector": "torchvision-v2", "max_side": 96})
            assert ei.value.code == "weights_missing" and str(models_dir) not in ei.value.message
    finally:
        srv.stop()
