"""The colorize service end to end: real ``patchcolor serve`` processes on free loopback ports.

Servers run the real Pipeline on random official-format weights (conftest ``models_dir``), except where a test is
about transport only (8 clients x 25 jobs, CURVE, shutdown): those use ``service_support.EchoPipeline`` so that
they take seconds, not the minutes 200 colorizer passes need on 2 CPU cores. Every server is stopped by its
fixture's finalizer; every wait is bounded.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest
import zmq
from PIL import Image

from patchcolor_client import BackendError, BackendUnavailable, Client, JobCancelled
from patchcolor_client import protocol as CP
from service_support import TESTS_DIR, colorize_beside, echo_expected, free_port, start_server

from patchcolor.options import make_options
from patchcolor.prepare import PIXEL_FORMATS, SourceImage
from patchcolor.result import Result
from patchcolor.service import protocol as P
from patchcolor.service.auth import EndpointRefused, is_loopback
from patchcolor.service.cache import ByteLRU
from patchcolor.service.commands import main as serve_main
from patchcolor.service.remote import run_remote_colorize

FORMATS = list(PIXEL_FORMATS)
R101_FILE = "model_final_a3ec72.pkl"


def make_pixels(fmt: str, width: int, height: int, gray: np.ndarray, seed: int) -> np.ndarray:
    """(H, W, C) test pixels in ``fmt``: a resized photo as the colour channels (a B&W photo stored as RGB
    differs a little per channel), random alpha."""
    rng = np.random.default_rng(seed)
    ch, dt = PIXEL_FORMATS[fmt]
    base = np.asarray(Image.fromarray(gray).resize((width, height), Image.BILINEAR)).astype(np.int32)
    top = 65535 if dt.itemsize == 2 else 255
    if top == 65535:
        base = base * 257 + rng.integers(0, 257, base.shape)
    colour = 3 if ch >= 3 else 1
    planes = [np.clip(base + rng.integers(-2, 3, base.shape) * (c > 0), 0, top) for c in range(colour)]
    if ch in (2, 4):
        planes.append(rng.integers(0, top + 1, base.shape))
    return np.stack(planes, axis=2).astype(dt)


# ------------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def real_server(tmp_path_factory, models_dir):
    srv = start_server(tmp_path_factory.mktemp("real"), "--max-pixels", "1000000", "--queue-size", "16",
                       models_dir=models_dir)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def slow_server(tmp_path_factory, models_dir):
    """Real pipeline, 0.3 s pause after each progress event (observable stage boundaries)."""
    srv = start_server(tmp_path_factory.mktemp("slow"), "--pipeline-factory", "service_support:slow_pipeline",
                       models_dir=models_dir, env={"PATCHCOLOR_TEST_STAGE_DELAY": "0.3"})
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def echo_server(tmp_path_factory):
    srv = start_server(tmp_path_factory.mktemp("echo"), "--pipeline-factory", "service_support:echo_pipeline",
                       "--queue-size", "16")
    yield srv
    srv.stop()


# ------------------------------------------------------------------------------------------ real pipeline
def test_info_ping_and_log(real_server, models_dir):
    with Client(real_server.endpoint, timeout_s=10) as c:
        assert c.ping(5.0) < 5.0
        info = c.info()
    assert info["protocol"] == CP.PROTOCOL_VERSION and info["type"] == "info"
    assert info["versions"]["patchcolor"] and info["versions"]["pyzmq"] == zmq.__version__
    assert info["colorizers"]["eccv16"] == info["colorizers"]["siggraph17"] == "ok"
    assert set(info["colorizers"].values()) <= {"ok", "missing", "corrupt", "unavailable"}   # others not written
    assert info["detectors"]["none"] == "ok" and "r101" in info["detectors"]
    assert info["formats"] == FORMATS and info["devices"] == ["cpu"] and info["curve"] is False
    assert set(info["presets"]) == {"seed", "default"}
    from patchcolor.precision import cpu_report     # the same machine: the server's CPU line is ours
    assert info["cpu"]["line"] == cpu_report().line() and info["cpu"]["native_bf16"] in (True, False)
    # stderr log lines carry a timestamp
    first = real_server.log().splitlines()[0]
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} ", first), first


FAST = {"max_side": 64, "detector": "none"}
DETECT = {"max_side": 64, "detector": "r101", "max_instances": 2}   # the random R101 finds ~90 objects otherwise


@pytest.fixture(scope="module")
def detected_job(real_server, pipeline, models_dir, photo_gray):
    """One gray16 80x60 job (working copy 64x48, upscaled result) with the random R101, on the server and
    in-process (at the same time). Shared by the round-trip and recompose tests: R101 on CPU is slow. 16 bits
    because the random colorizer's colours are so faint that 8-bit output hides small changes."""
    assert (models_dir / R101_FILE).exists(), "conftest should have written the random R101 weights"
    w, h = 80, 60
    px = make_pixels("gray16", w, h, photo_gray, seed=11)
    remote, local = colorize_beside(real_server.endpoint, pipeline, w, h, "gray16", px, DETECT, timeout_s=60)
    return SimpleNamespace(w=w, h=h, px=px, remote=remote, local=local)


def _same_instances(got: list, exp: list) -> None:
    assert len(got) == len(exp)
    for gi, ei in zip(got, exp):
        assert gi.class_name == ei.class_name and gi.class_id == ei.class_id
        assert gi.score == pytest.approx(ei.score, abs=1e-6)
        assert gi.box == pytest.approx(ei.box, abs=1e-4)
        assert tuple(gi.mask_origin) == tuple(ei.mask_origin)
        if isinstance(gi.mask, np.ndarray):          # a Result from run_remote_colorize
            assert np.array_equal(gi.mask, ei.mask)
        else:                                         # a ColorizeResult: cropped 0/255 mask frame
            assert gi.mask_size == (ei.mask.shape[1], ei.mask.shape[0])
            assert bytes(gi.mask) == P.mask_to_wire(ei.mask).tobytes()


def test_roundtrip_every_format_equals_in_process(real_server, pipeline, detected_job, photo_gray):
    """Every format, 7 at once from 7 clients (gray16 with instances comes from ``detected_job``); each result
    equals Pipeline.run in this process, bit for bit."""
    formats = [f for f in FORMATS if f != "gray16"]
    sizes = {fmt: ((64, 48) if i % 2 == 0 else (80, 60)) for i, fmt in enumerate(formats)}   # 80x60: upscaled
    inputs = {fmt: make_pixels(fmt, *sizes[fmt], photo_gray, seed=i) for i, fmt in enumerate(formats)}
    results: dict[str, object] = {}

    def submit(fmt: str) -> None:
        w, h = sizes[fmt]
        try:
            if fmt == "graya16":   # through what `patchcolor colorize --remote` calls
                src = SourceImage.from_buffer(inputs[fmt].tobytes(), w, h, fmt)
                results[fmt] = run_remote_colorize(real_server.endpoint, src, make_options(**FAST), timeout_s=60)
            else:
                with Client(real_server.endpoint, timeout_s=60) as c:
                    results[fmt] = c.colorize(w, h, fmt, inputs[fmt], FAST)
        except BaseException as e:  # reported below
            results[fmt] = e

    threads = [threading.Thread(target=submit, args=(f,), daemon=True) for f in formats]
    for t in threads:
        t.start()
    expected = {}
    for fmt in formats:   # meanwhile, the same jobs in-process
        w, h = sizes[fmt]
        expected[fmt] = pipeline.run(SourceImage.from_buffer(inputs[fmt].tobytes(), w, h, fmt),
                                     make_options(**FAST))
    for t in threads:
        t.join(240)
    results["gray16"], expected["gray16"] = detected_job.remote, detected_job.local
    sizes["gray16"], inputs["gray16"] = (detected_job.w, detected_job.h), detected_job.px
    for fmt in FORMATS:
        res, exp = results[fmt], expected[fmt]
        assert not isinstance(res, BaseException), f"{fmt}: {res!r}"
        w, h = sizes[fmt]
        if fmt == "graya16":
            assert isinstance(res, Result) and np.array_equal(res.image, exp.image)
            assert res.image.dtype == np.uint16 and res.image.shape == (h, w, 4)
            assert "server_total" in res.timings and "remote_total" in res.timings
            _same_instances(res.instances, exp.instances)
            continue
        assert (res.width, res.height, res.fmt) == (w, h, CP.RESULT_FORMATS[fmt])
        got = P.image_from_wire(res.pixels, res.width, res.height, res.fmt)
        assert got.dtype == exp.image.dtype and got.shape == exp.image.shape
        assert np.array_equal(got, exp.image), f"{fmt}: pixels differ from the in-process result"
        if fmt in ("graya8", "graya16", "rgba8", "rgba16"):
            assert np.array_equal(got[..., 3], inputs[fmt][..., -1]), "alpha must be kept"
        _same_instances(res.instances, exp.instances)
    assert detected_job.remote.instances, "the biased random detector should find something"


def test_recompose_changes_only_the_edited_instance(real_server, pipeline, detected_job):
    w, h, first, local1 = detected_job.w, detected_job.h, detected_job.remote, detected_job.local
    k = 0
    masks = [bytearray(i.full_mask(w, h)) for i in first.instances]
    edited = np.frombuffer(masks[k], np.uint8).reshape(h, w).copy()
    ys, xs = np.nonzero(edited)
    edited[ys.min() + (ys.max() - ys.min() + 1) // 2:] = 0      # drop the lower half of instance k
    masks[k] = bytearray(edited.tobytes())
    with Client(real_server.endpoint, timeout_s=60) as c:     # another Client: it needs the job's token
        with pytest.raises(BackendError) as ei:
            c.recompose(first.job_id, masks)
        assert ei.value.code == "unknown_job"
        second = c.recompose(first.job_id, masks, token=first.token)
        assert second.job_id != first.job_id and (second.width, second.height) == (w, h)
        with pytest.raises(BackendError) as ei:
            c.recompose("no-such-job", masks)
        assert ei.value.code == "unknown_job"
        with pytest.raises(BackendError) as ei:
            c.recompose(first.job_id, masks + masks, token=first.token)
        assert ei.value.code == "bad_request"
        with pytest.raises(BackendError) as ei:
            c.recompose(first.job_id, [m[:-1] for m in masks], token=first.token)
        assert ei.value.code == "bad_request"

    a = P.image_from_wire(first.pixels, w, h, first.fmt)
    b = P.image_from_wire(second.pixels, w, h, second.fmt)
    # the same as the in-process recompose with the same kept state
    src = SourceImage.from_buffer(detected_job.px.tobytes(), w, h, "gray16")
    local2 = pipeline.recompose(src, local1.state, [np.frombuffer(m, np.uint8).reshape(h, w) for m in masks],
                             make_options(**DETECT))
    assert np.array_equal(local2.image, b)
    _same_instances(second.instances, local2.instances)
    # only pixels within instance k's crop box changed (box in working pixels -> output, 2 px slack)
    changed_y, changed_x = np.nonzero((a != b).any(axis=2))
    assert changed_y.size > 0, "editing a mask must change some pixels"
    ww, wh = local1.state.work_size
    x0, y0, x1, y1 = local1.state.inst_boxes[k]
    sx, sy = w / ww, h / wh
    assert changed_x.min() >= x0 * sx - 2 and changed_x.max() <= x1 * sx + 2
    assert changed_y.min() >= y0 * sy - 2 and changed_y.max() <= y1 * sy + 2
    others_before = [bytes(m.mask) for i, m in enumerate(first.instances) if i != k]
    removed = len(second.instances) < len(first.instances)      # a one-row mask may have been cleared
    others_after = [bytes(m.mask) for i, m in enumerate(second.instances) if removed or i != k]
    assert others_before == others_after


def test_cancel_stops_at_next_stage_boundary(slow_server):
    events: list[tuple[float, str]] = []
    asked: list[float] = []

    def should_cancel() -> bool:
        if any(stage == "colorize" for _, stage in events):
            asked.append(time.monotonic())
            return True
        return False

    with Client(slow_server.endpoint, timeout_s=30) as c:
        t0 = time.monotonic()
        with pytest.raises(JobCancelled):
            c.colorize(64, 64, "gray8", bytes(range(64)) * 64, {"detector": "none", "max_side": 64},
                       progress=lambda stage, f, o: events.append((time.monotonic(), stage)),
                       should_cancel=should_cancel, job_id="cancel-me")
        took = time.monotonic() - t0
        assert c.ping(5.0) < 5.0
    stages = [s for _, s in events]
    assert "fuse" not in stages and "finish" not in stages, stages
    after = [s for t, s in events if t > asked[0]]
    assert set(after) <= {"colorize"}, after
    assert took < 60
    slow_server.wait_log(r"job #\d+ cancelled after", 10)
    assert "cancel-me" not in slow_server.log()       # job ids are logged at DEBUG only


def test_killed_client_mid_job(slow_server):
    script = (
        "import sys\n"
        "from patchcolor_client import Client\n"
        "c = Client(sys.argv[1], timeout_s=30)\n"
        "c.colorize(64, 64, 'gray8', bytes(64 * 64), {'detector': 'none', 'max_side': 64},\n"
        "           progress=lambda s, f, o: print(s, flush=True), job_id='doomed')\n")
    mark = slow_server.log_mark()
    proc = subprocess.Popen([sys.executable, "-c", script, slow_server.endpoint], stdout=subprocess.PIPE,
                            text=True)
    try:
        line = proc.stdout.readline()          # first progress event: the job is running
        assert line.strip() in CP.STAGES
        proc.kill()
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    # The server notices at its next send to the dead client, cancels, and carries on with others.
    with Client(slow_server.endpoint, timeout_s=60) as c:
        res = c.colorize(16, 16, "rgb8", bytes(16 * 16 * 3), {"detector": "none", "max_side": 64})
        assert (res.width, res.height, res.fmt) == (16, 16, "rgb8")
    slow_server.wait_log(r"job #\d+ cancelled after", 30, since=mark)
    # noticed through the socket monitor (disconnect) or, failing that, at the next send (EHOSTUNREACH)
    slow_server.wait_log(r"disconnected: 0 queued job\(s\) dropped, 1 running job\(s\) cancelled|is gone: "
                         r"cancelling job #\d+", 10, since=mark)
    assert "doomed" not in slow_server.log()


# --------------------------------------------------------------------------------------- transport (echo)
def test_eight_clients_25_jobs_each(echo_server):
    """Every reply reaches the right client: none lost, none crossed (a unique size and content per job)."""
    n_clients, n_jobs = 8, 25
    failures: list[str] = []
    done = [0] * n_clients

    def client_main(ci: int) -> None:
        rng = np.random.default_rng(100 + ci)
        try:
            with Client(echo_server.endpoint, timeout_s=30) as c:
                for j in range(n_jobs):
                    fmt = FORMATS[(ci + j) % len(FORMATS)]
                    ch, dt = PIXEL_FORMATS[fmt]
                    w, h = 8 + ci, 8 + j
                    px = rng.integers(0, 65536 if dt.itemsize == 2 else 256, (h, w, ch)).astype(dt)
                    job_id = f"c{ci}-j{j}"
                    res = c.colorize(w, h, fmt, px, {"detector": "none"}, job_id=job_id)
                    got = P.image_from_wire(res.pixels, res.width, res.height, res.fmt)
                    if (res.job_id, res.width, res.height, res.fmt) != (job_id, w, h, CP.RESULT_FORMATS[fmt]) \
                            or not np.array_equal(got, echo_expected(px)) \
                            or res.instances[0].box != (0.0, 0.0, float(w), float(h)):
                        failures.append(f"{job_id}: crossed or corrupted reply")
                    done[ci] += 1
        except BaseException as e:
            failures.append(f"client {ci}: {e!r}")

    threads = [threading.Thread(target=client_main, args=(i,), daemon=True) for i in range(n_clients)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(1.0, 120 - (time.monotonic() - t0)))
    assert not any(t.is_alive() for t in threads), "clients hung"
    assert not failures, failures[:5]
    assert done == [n_jobs] * n_clients


def test_cli_colorize_remote_end_to_end(echo_server, tmp_path, capsys):
    """`patchcolor colorize --remote` (the lead's CLI) through the same client, masks included."""
    from patchcolor.cli import main as cli_main

    rng = np.random.default_rng(5)
    gray = rng.integers(0, 256, (24, 32), dtype=np.uint8)
    (tmp_path / "src").mkdir()
    Image.fromarray(gray).save(tmp_path / "src" / "in.png")
    out = tmp_path / "out"
    rc = cli_main(["colorize", str(tmp_path / "src" / "in.png"), "-o", str(out), "--remote", echo_server.endpoint,
                   "--detector", "none", "--masks"])
    assert rc == 0, capsys.readouterr().err
    got = np.asarray(Image.open(out / "in.png"))
    assert np.array_equal(got, echo_expected(gray[..., None]))
    meta = json.loads((out / "in_masks" / "instances.json").read_text())
    assert [m["class"] for m in meta] == ["person"] and meta[0]["box"] == [0.0, 0.0, 32.0, 24.0]
    # a dead endpoint: one clear error, exit code 1
    rc = cli_main(["colorize", str(tmp_path / "src" / "in.png"), "-o", str(tmp_path / "out2"), "--remote",
                   f"tcp://127.0.0.1:{free_port()}", "--remote-timeout", "0.5"])
    assert rc == 1 and "no answer from" in capsys.readouterr().err


def test_busy_queue_cancel_queued_and_ping_while_running(tmp_path):
    srv = start_server(tmp_path, "--pipeline-factory", "service_support:echo_pipeline", "--queue-size", "1",
                       env={"PATCHCOLOR_TEST_STAGE_DELAY": "0.3"})
    ctx = zmq.Context()
    try:
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(srv.endpoint)

        def colorize(job: str) -> None:
            s.send_multipart([CP.encode_header({"type": "colorize", "id": "r-" + job, "job": job, "width": 4,
                                                "height": 4, "format": "gray8", "options": {}}), bytes(16)])

        seen: list[dict] = []

        def wait_for(job: str, kind: str, timeout_s: float = 10.0) -> dict:
            """Read replies (keeping them all) until one for ``job`` of type ``kind``."""
            deadline = time.monotonic() + timeout_s
            while True:
                for r in seen:
                    if r.get("job") == job and r["type"] == kind:
                        seen.remove(r)
                        return r
                left = deadline - time.monotonic()
                assert left > 0 and s.poll(int(left * 1000)), f"no {kind} for {job}; got {seen}"
                seen.append(json.loads(s.recv_multipart()[0]))

        colorize("a")
        wait_for("a", "accepted")
        wait_for("a", "progress")                    # a is running
        colorize("b")
        token_b = wait_for("b", "accepted")["token"]   # b waits in the queue (capacity 1)
        colorize("c")
        assert wait_for("c", "error")["code"] == "busy"
        with Client(srv.endpoint, timeout_s=5) as other:
            assert other.ping(1.0) < 1.0             # answered while a job runs
            assert other.info()["queued"] == 1
            with pytest.raises(BackendError) as ei:   # another client without b's token may not touch it
                other.cancel("b")
            assert ei.value.code == "unknown_job"
            assert other.cancel("b", token=token_b) == "cancelled"  # queued: dropped at once, by its token
            with pytest.raises(BackendError) as ei:
                other.cancel("nope")
            assert ei.value.code == "unknown_job"
        wait_for("b", "cancelled")
        wait_for("a", "result", timeout_s=20)
        assert not any(r["type"] in CP.FINAL_TYPES and r.get("job") in ("a", "b") for r in seen)
        s.close(0)
    finally:
        ctx.destroy(linger=0)   # closes sockets a failed assertion left open; term() alone would hang
        srv.stop()


def test_sigterm_cancels_and_exits_zero(tmp_path):
    srv = start_server(tmp_path, "--pipeline-factory", "service_support:echo_pipeline",
                       env={"PATCHCOLOR_TEST_STAGE_DELAY": "0.5"})
    outcome: list[str] = []
    started = threading.Event()

    def run() -> None:
        try:
            with Client(srv.endpoint, timeout_s=10) as c:
                c.colorize(4, 4, "gray8", bytes(16), {}, progress=lambda *a: started.set())
                outcome.append("result")
        except JobCancelled:
            outcome.append("cancelled")
        except BaseException as e:
            outcome.append(repr(e))

    t = threading.Thread(target=run, daemon=True)
    try:
        t.start()
        assert started.wait(20)
        assert srv.stop(signal.SIGTERM, timeout_s=20) == 0
        t.join(20)
        assert outcome == ["cancelled"], outcome
        assert "SIGTERM received" in srv.log() and srv.log().rstrip().endswith("stopped")
    finally:
        srv.stop(signal.SIGKILL)


def test_server_restart_mid_job_is_detected(tmp_path):
    """The job's liveness ping reaches a *new* server on the same port: it says the job is unknown."""
    srv = start_server(tmp_path, "--pipeline-factory", "service_support:echo_pipeline",
                       env={"PATCHCOLOR_TEST_STAGE_DELAY": "1"})
    port = int(srv.endpoint.rsplit(":", 1)[1])
    outcome: list[BaseException] = []
    started = threading.Event()

    def run() -> None:
        try:
            with Client(srv.endpoint, timeout_s=3.0) as c:     # > the new server's start-up
                c.colorize(4, 4, "gray8", bytes(16), {}, progress=lambda *a: started.set())
        except BaseException as e:
            outcome.append(e)

    t = threading.Thread(target=run, daemon=True)
    srv2 = None
    try:
        t.start()
        assert started.wait(20)
        srv.stop(signal.SIGKILL)
        srv2 = start_server(tmp_path, "--pipeline-factory", "service_support:echo_pipeline", port=port)
        t.join(30)
        assert not t.is_alive()
        assert len(outcome) == 1 and isinstance(outcome[0], BackendError), outcome
        assert outcome[0].code == "unknown_job"
    finally:
        srv.stop(signal.SIGKILL)
        if srv2 is not None:
            srv2.stop()


def test_lazy_pirate_retry_after_a_stalled_server(echo_server):
    """A request that times out is retried on a fresh socket; the stale reply to the first try is never seen."""
    got: list[object] = []
    with Client(echo_server.endpoint, timeout_s=1.0, retries=3) as c:
        c.ping(5.0)
        replaced = threading.Event()
        reset = c._reset

        def reset_and_tell() -> None:
            reset()
            replaced.set()

        c._reset = reset_and_tell               # type: ignore[method-assign]
        echo_server.proc.send_signal(signal.SIGSTOP)
        try:
            t = threading.Thread(target=lambda: got.append(c.info()), daemon=True)
            t0 = time.monotonic()
            t.start()
            assert replaced.wait(10), "the first attempt should time out and its socket be replaced"
        finally:
            echo_server.proc.send_signal(signal.SIGCONT)
        t.join(10)
        assert got and got[0]["type"] == "info" and 1.0 < time.monotonic() - t0 < 10
        assert c.ping(2.0) < 2.0


def test_remote_unavailable_fails_fast():
    port = free_port()     # nothing listens there
    with Client(f"tcp://127.0.0.1:{port}", timeout_s=0.5) as c:
        t0 = time.monotonic()
        with pytest.raises(BackendUnavailable):
            c.ping(0.3)
        with pytest.raises(BackendUnavailable):
            c.colorize(2, 2, "gray8", bytes(4), {})
        assert time.monotonic() - t0 < 3


# --------------------------------------------------------------------------------------------- security
def test_non_loopback_bind_without_keys_is_refused(tmp_path):
    for ep in ("tcp://0.0.0.0:5555", "tcp://*:5555", "tcp://192.168.1.20:5555", "tcp://myhost:5555",
               "tcp://[::]:5555"):
        assert not is_loopback(ep)
    for ep in ("tcp://127.0.0.1:5555", "tcp://localhost:5555", "tcp://[::1]:5555", "ipc:///tmp/x"):
        assert is_loopback(ep)
    from patchcolor.service.server import Server, ServerConfig

    with pytest.raises(EndpointRefused, match="--curve-keys"):
        Server(ServerConfig(endpoint="tcp://0.0.0.0:5555"))
    # the command refuses before binding anything, and says why
    proc = subprocess.run([sys.executable, "-m", "patchcolor.service.commands", "serve", "--endpoint",
                           f"tcp://0.0.0.0:{free_port()}"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "refusing to listen" in proc.stderr and "--curve-keys" in proc.stderr


def test_curve_server_key_required(tmp_path, capsys):
    keys = tmp_path / "keys"
    assert serve_main(["keys", str(keys)]) == 0
    assert "Z85 public key" in capsys.readouterr().out
    assert oct((keys / "server.key_secret").stat().st_mode & 0o777) == "0o600"
    assert serve_main(["keys", str(keys)]) == 1          # never overwrites silently
    public_file = keys / "server.key"
    srv = start_server(tmp_path, "--pipeline-factory", "service_support:echo_pipeline", "--curve-keys", str(keys),
                       server_key=public_file.read_bytes().split(b'public-key = "')[1][:40])
    try:
        with Client(srv.endpoint, timeout_s=5, server_public_key=public_file) as c:
            assert c.ping(2.0) < 2.0
            assert c.info()["curve"] is True
            res = c.colorize(3, 2, "rgb8", bytes(range(18)), {})
            assert bytes(res.pixels) == bytes(255 - v for v in range(18))
        with Client(srv.endpoint, timeout_s=1) as plain:       # no server key: the handshake never completes
            with pytest.raises(BackendUnavailable):
                plain.ping(1.0)
        wrong = zmq.curve_keypair()[0]
        with Client(srv.endpoint, timeout_s=1, server_public_key=wrong) as c:
            with pytest.raises(BackendUnavailable):
                c.ping(1.0)
    finally:
        assert srv.stop() == 0


def test_curve_authorized_clients_only(tmp_path):
    keys = tmp_path / "keys"
    assert serve_main(["keys", str(keys)]) == 0
    assert serve_main(["keys", str(tmp_path / "clients"), "--name", "alice"]) == 0
    (keys / "authorized_clients").mkdir()
    (keys / "authorized_clients" / "alice.key").write_bytes((tmp_path / "clients" / "alice.key").read_bytes())
    assert serve_main(["keys", str(tmp_path / "clients"), "--name", "bob"]) == 0
    (keys / "authorized_clients" / "bob.key").write_bytes((tmp_path / "clients" / "bob.key").read_bytes())
    server_pub = keys / "server.key"
    srv = start_server(tmp_path, "--pipeline-factory", "service_support:echo_pipeline", "--curve-keys", str(keys),
                       server_key=server_pub.read_bytes().split(b'public-key = "')[1][:40],
                       client_key=tmp_path / "clients" / "alice.key_secret")
    try:
        with Client(srv.endpoint, timeout_s=5, server_public_key=server_pub,
                    client_secret_key=tmp_path / "clients" / "alice.key_secret") as c:
            assert c.ping(2.0) < 2.0
            res = c.colorize(3, 2, "rgb8", bytes(range(18)), {})
        masks = [i.full_mask(res.width, res.height) for i in res.instances]
        with Client(srv.endpoint, timeout_s=5, server_public_key=server_pub,
                    client_secret_key=tmp_path / "clients" / "bob.key_secret") as bob:
            with pytest.raises(BackendError) as ei:     # alice's job, alice's token, but bob's key
                bob.recompose(res.job_id, masks, token=res.token)
            assert ei.value.code == "unknown_job"
        with Client(srv.endpoint, timeout_s=5, server_public_key=server_pub,
                    client_secret_key=tmp_path / "clients" / "alice.key_secret") as again:   # alice reconnects
            assert again.recompose(res.job_id, masks, token=res.token).width == 3
        with Client(srv.endpoint, timeout_s=1, server_public_key=server_pub) as stranger:   # unlisted key
            with pytest.raises(BackendUnavailable):
                stranger.ping(1.0)
    finally:
        srv.stop()


# --------------------------------------------------------------------------------------------- units
def test_first_published_option_spellings_are_read_as_todays():
    """``fusion``/``finish`` "seed" and ``seed_desaturate`` (the first names) still arrive from older clients."""
    old = P.parse_options({"preset": "default", "fusion": "seed", "finish": "seed", "seed_desaturate": False})
    assert (old.fusion, old.finish, old.paper_desaturate, old.preset) == ("paper", "paper", False, "default")
    assert old == make_options("default", fusion="paper", finish="paper", paper_desaturate=False)
    assert make_options("default", fusion="seed", seed_desaturate=False) == make_options(
        "default", fusion="paper", paper_desaturate=False)
    published = make_options("seed")
    assert (published.preset, published.fusion, published.finish) == ("seed", "paper", "paper")
    for bad in ({"fusion": "nope"}, {"seed_desaturate": "yes"}, {"preset": "paper"}):
        with pytest.raises(P.ProtocolError):
            P.parse_options(bad)


def test_parse_request_validation():
    limits = P.Limits(max_pixels=1000)
    hdr = {"v": 1, "type": "colorize", "id": "r1", "job": "j1", "width": 10, "height": 10, "format": "rgb8",
           "options": {"preset": "seed", "detector": "none", "feather": 0}}

    def parse(h: dict, *frames: bytes):
        return P.parse_request([json.dumps(h).encode(), *frames], limits)

    req = parse(hdr, bytes(300))
    assert isinstance(req, P.ColorizeRequest) and req.options.preset == "seed" and req.options.feather == 0.0
    cases = [
        ({**hdr, "v": 99}, [bytes(300)], "version"),
        ({**hdr, "type": "explode"}, [bytes(300)], "bad_request"),
        ({**hdr, "width": 101}, [bytes(300)], "image_too_large"),
        ({**hdr, "width": True}, [bytes(300)], "bad_request"),
        ({**hdr, "width": 10.0}, [bytes(300)], "bad_request"),
        ({**hdr, "width": -10}, [bytes(300)], "bad_request"),
        ({**hdr, "format": "cmyk8"}, [bytes(300)], "bad_request"),
        (hdr, [bytes(299)], "bad_request"),
        (hdr, [bytes(300), b""], "bad_request"),
        (hdr, [], "bad_request"),
        ({**hdr, "id": 5}, [bytes(300)], "bad_request"),
        ({**hdr, "job": "x" * 65}, [bytes(300)], "bad_request"),
        ({**hdr, "options": {"max_side": "64"}}, [bytes(300)], "bad_options"),
        ({**hdr, "options": {"full_resolution": 1}}, [bytes(300)], "bad_options"),
        ({**hdr, "options": {"colour": "x"}}, [bytes(300)], "bad_options"),
        ({**hdr, "options": {"max_side": 10}}, [bytes(300)], "bad_options"),
        ({**hdr, "options": []}, [bytes(300)], "bad_options"),
        ({"v": 1, "type": "ping", "id": "p"}, [b"x"], "bad_request"),
        ({"v": 1, "type": "cancel", "id": "p"}, [], "bad_request"),
    ]
    for h, frames, code in cases:
        with pytest.raises(CP.ProtocolError) as ei:
            parse(h, *frames)
        assert ei.value.code == code, (h, ei.value.message)
    with pytest.raises(CP.ProtocolError) as ei:   # the id is echoed when it could be read
        parse({**hdr, "v": 9}, bytes(300))
    assert ei.value.req_id == "r1" and ei.value.job == "j1"
    for raw, code in [(b"{", "bad_request"), (b"[1]", "bad_request"), (b"\xff", "bad_request"),
                      (b'{"v": NaN}', "bad_request"), (b"[" * 100000, "too_large"),
                      (b"[" * 60000 + b"]" * 60000, "too_large"), (b"[" * 30000 + b"]" * 30000, "bad_request")]:
        with pytest.raises(CP.ProtocolError) as ei:
            P.parse_request([raw], limits)
        assert ei.value.code == code
    assert isinstance(parse({"v": 1, "type": "refuse", "id": "r", "job": "n", "base_job": "j1"}, b"a", b"b"),
                      P.RecomposeRequest)


def test_wire_conversions_and_helpers():
    rgb16 = np.arange(2 * 3 * 3, dtype=np.uint16).reshape(2, 3, 3) * 1000
    fmt, arr = P.image_to_wire(rgb16)
    assert fmt == "rgb16" and arr.tobytes() == rgb16.astype("<u2").tobytes()
    assert np.array_equal(P.image_from_wire(arr.tobytes(), 3, 2, fmt), rgb16)
    big_endian = rgb16.astype(">u2")
    assert P.image_to_wire(big_endian)[1].tobytes() == rgb16.astype("<u2").tobytes()
    src = SourceImage(np.full((2, 2), 7, np.uint8), np.full((2, 2), 9, np.uint8))
    fmt, arr = P.source_to_wire(src)
    assert fmt == "graya8" and arr.tobytes() == bytes([7, 9] * 4)
    assert CP.overall_fraction("prepare", 0) == 0 and CP.overall_fraction("finish", 1) == pytest.approx(1)
    assert CP.overall_fraction("fuse", 0.5) == pytest.approx(0.85)
    from patchcolor_client.client import WireInstance

    inst = WireInstance(0, "person", 1.0, (0, 0, 1, 1), (1, 1), (2, 2), bytes([255, 0, 255, 255]))
    assert bytes(inst.full_mask(3, 3)) == bytes([0, 0, 0, 0, 255, 0, 0, 255, 255])
    edge = WireInstance(0, "person", 1.0, (0, 0, 1, 1), (2, 2), (2, 2), bytes([255] * 4))
    assert bytes(edge.full_mask(3, 3)) == bytes([0] * 8 + [255])


def test_client_checks_result_frames_against_the_header():
    from patchcolor_client.client import _decode_result

    class F(bytes):
        @property
        def buffer(self) -> memoryview:
            return memoryview(self)

    inst = {"class_id": 0, "class_name": "person", "score": 0.5, "box": [0, 0, 2, 1], "mask_origin": [0, 0],
            "mask_size": [2, 1]}
    good = {"type": "result", "job": "j", "width": 2, "height": 1, "format": "rgb8", "instances": [inst]}
    res = _decode_result(good, [F(bytes(6)), F(b"\xff\x00")])
    assert (res.width, res.fmt, res.instances[0].mask_size, bytes(res.instances[0].mask)) == (2, "rgb8", (2, 1),
                                                                                            b"\xff\x00")
    bad_cases = [
        (good, [F(bytes(5)), F(bytes(2))]),                    # pixel frame too short
        (good, [F(bytes(6))]),                                 # a mask frame missing
        (good, [F(bytes(6)), F(bytes(3))]),                    # mask size mismatch
        ({**good, "width": -2, "height": -1}, [F(bytes(6)), F(bytes(2))]),
        ({**good, "format": "cmyk"}, [F(bytes(6)), F(bytes(2))]),
        ({**good, "instances": [{**inst, "box": [1]}]}, [F(bytes(6)), F(bytes(2))]),
        ({k: v for k, v in good.items() if k != "job"}, [F(bytes(6)), F(bytes(2))]),
    ]
    for header, frames in bad_cases:
        with pytest.raises(BackendError) as ei:
            _decode_result(header, frames)
        assert ei.value.code == "bad_reply"


def test_byte_lru():
    c: ByteLRU[str, int] = ByteLRU(100)
    assert c.put("a", 1, 40) and c.put("b", 2, 40)
    assert c.get("a") == 1                 # a is now the most recent
    assert c.put("c", 3, 40)               # evicts b
    assert "b" not in c and c.get("a") == 1 and c.get("c") == 3
    assert not c.put("huge", 4, 101) and "huge" not in c
    assert c.nbytes == 80 and c.stats().evictions == 1
    assert c.put("a", 5, 10) and c.nbytes == 50 and c.get("a") == 5
    assert c.pop("a") == 5 and c.nbytes == 40


def test_client_module_is_stdlib_and_zmq_only():
    """GIMP's Python has no numpy and no patchcolor: the client package must import without them."""
    code = ("import sys, builtins\n"
            "real = builtins.__import__\n"
            "def guard(name, *a, **k):\n"
            "    if name.split('.')[0] in ('numpy', 'patchcolor', 'PIL', 'torch'):\n"
            "        raise ImportError('forbidden: ' + name)\n"
            "    return real(name, *a, **k)\n"
            "builtins.__import__ = guard\n"
            "import patchcolor_client, patchcolor_client.client, patchcolor_client.protocol\n"
            "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(TESTS_DIR.parent / "gimp_plugin")})
    assert out.stdout.strip() == "ok", out.stderr
