"""Service transport benchmark: prints figures, asserts nothing.

    .venv/bin/python bench/bench_service.py [--mp 24] [--repeat 5] [--real-models DIR]

1. A 24 MP 16-bit RGB image (6000x4000x3 uint16 = 144 MB) round trip through ``patchcolor serve`` with the pipeline
   stubbed out (the stub returns the received pixels as the result: no pipeline work, no pipeline copy), against a
   plain in-process copy of the same bytes (one memcpy).
2. How many copies of the image the transport makes, counted three independent ways per side (client = this
   process, server = the server process), each in units of one image (144 MB):
   * **syscall bytes**: ``/proc/PID/io`` rchar + wchar per job. Socket I/O copies user memory <-> kernel once per
     byte, so this counts the unavoidable copies of the TCP transfer itself (1 out + 1 in per side);
   * **user-space copies**: user CPU time per job (``/proc/PID/stat`` utime) divided by the user CPU time of one
     in-process copy of the image. A memcpy we (or pyzmq/libzmq) do in user space shows up here; the kernel's
     socket copies are system time and do not;
   * **peak memory**: rise of the peak RSS (``VmHWM``, reset through ``/proc/PID/clear_refs``) during one job,
     i.e. how many image-sized buffers exist at once.
3. ``ping`` requests/s and tiny-image (16x16 rgb8) colorize jobs/s, one client and 8 client threads.
4. Hostile traffic: 5000 small malformed messages/s, then oversize multi-frame messages (a ``ping`` with
   150 frames of 7.9 MB = 1.19 GB, a colorize whose pixel frame is far larger than its header says): time to the
   error reply, server RSS before / after and its peak (libzmq holds a whole message before the header is read).
5. Budgets and fairness (a server of its own, default budgets for ``--budget-mp``): one client sends 8 valid
   requests of a 2000x2000 image with 100 full-size instance masks (404 MB each), one after the other: how many are
   queued, how many are ``busy`` or ``too_large``, the server's RSS and peak; then, with a stub that works
   ``--job-s`` per job, one client keeps its share of the queue full while another sends jobs one at a time: the
   second client's latency against its latency alone (``--budgets-only`` runs just this section).

With ``--real-models DIR`` (weights in the official formats, e.g. tests' random ones) one real in-process job on
the same image is timed (detector "none") to put the transport overhead in proportion.
"""
from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------------------------------------------ the stub
class StubPipeline:
    """Pipeline's signatures; returns the request's own pixels (a view of the received frame) as the result."""

    device = "stub"
    models_dir = None

    def run(self, src: Any, opts: Any, progress: Any = None, cancelled: Any = None, instances: Any = None) -> Any:
        from patchcolor.result import FusionState, Result

        for stage in ("prepare", "segment", "colorize", "fuse", "finish"):
            if progress is not None:
                progress(stage, 1.0)
        image = src.color if src.alpha is None else np.dstack([src.color, src.alpha])
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=2)
        state = FusionState((src.width, src.height), np.zeros((2, 1, 1), np.float32), [], [], [])
        return Result(image, [], state, {})

    def recompose(self, src: Any, state: Any, masks: Any, opts: Any, progress: Any = None,
                  cancelled: Any = None) -> Any:
        return self.run(src, opts, progress, cancelled)


def stub_pipeline(models_dir: Any, device: str, max_pixels: int) -> StubPipeline:
    return StubPipeline()


class SlowStubPipeline(StubPipeline):
    """The stub, busy ``BENCH_JOB_S`` seconds per job (a worker that is really working)."""

    def run(self, src: Any, opts: Any, progress: Any = None, cancelled: Any = None, instances: Any = None) -> Any:
        time.sleep(float(os.environ.get("BENCH_JOB_S", "0.2")))
        return super().run(src, opts, progress, cancelled, instances)


def slow_stub_pipeline(models_dir: Any, device: str, max_pixels: int) -> StubPipeline:
    return SlowStubPipeline()


# ------------------------------------------------------------------------------------------------ /proc probes
def proc_io(pid: int | str) -> tuple[int, int]:
    vals = dict(line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines())
    return int(vals["rchar"]), int(vals["wchar"])


def proc_cpu(pid: int | str) -> tuple[float, float]:
    """(user, system) CPU seconds of a whole process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def reset_peak(pid: int | str) -> bool:
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss(pid: int | str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def rss(pid: int | str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


# ------------------------------------------------------------------------------------------------ server
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(max_pixels: int, log_path: Path, ipc: bool = False, factory: str = "stub_pipeline",
                 args: tuple[str, ...] = ("--queue-size", "16"),
                 env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    from patchcolor_client import BackendUnavailable, Client

    endpoint = f"ipc://{log_path.with_suffix('.sock')}" if ipc else f"tcp://127.0.0.1:{free_port()}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(BENCH_DIR), os.environ.get("PYTHONPATH", "")]),
           **(env or {})}
    cmd = [sys.executable, "-m", "patchcolor.service.commands", "serve", "--endpoint", endpoint,
           "--pipeline-factory", f"bench_service:{factory}", "--max-pixels", str(max_pixels),
           "--cache-mb", "0", "--log-level", "warning", *args]
    proc = subprocess.Popen(cmd, stdout=open(log_path, "wb"), stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 60
    with Client(endpoint, timeout_s=1.0) as c:
        while True:
            try:
                c.ping(0.5)
                return proc, endpoint
            except BackendUnavailable:
                if proc.poll() is not None or time.monotonic() > deadline:
                    proc.kill()
                    raise RuntimeError(log_path.read_text()) from None


# ------------------------------------------------------------------------------------------------ benches
def bench_copy(img: np.ndarray, repeat: int) -> tuple[float, float]:
    """Median wall time of (a) one in-process copy into a fresh buffer (what a plain ``bytes(x)`` costs, page
    faults included) and (b) one memcpy into an already-touched buffer (the CPU cost of copying the bytes)."""
    fresh, warm = [], []
    dst_warm = np.empty_like(img)
    np.copyto(dst_warm, img)
    for _ in range(repeat):
        t0 = time.perf_counter()
        dst = np.empty_like(img)
        np.copyto(dst, img)
        fresh.append(time.perf_counter() - t0)
        del dst
        t0 = time.perf_counter()
        np.copyto(dst_warm, img)
        warm.append(time.perf_counter() - t0)
    return statistics.median(fresh), statistics.median(warm)


def loopback_rx_bytes() -> int:
    for line in Path("/proc/net/dev").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name.strip() == "lo":
            return int(rest.split()[0])
    return 0


def bench_roundtrip(endpoint: str, server_pid: int, img: np.ndarray, repeat: int) -> dict[str, Any]:
    """Medians of wall times and per-job peak-RSS rises; CPU and loopback bytes as per-job means over all
    repeats (CPU accounting has 10 ms ticks: totals are more telling than medians)."""
    from patchcolor_client import Client

    h, w = img.shape[:2]
    nbytes = img.nbytes
    walls, uploads, srv_peak, cli_peak = [], [], [], []
    with Client(endpoint, timeout_s=60) as c:
        c.colorize(w, h, "rgb16", img, {})   # warm-up (allocator, TCP windows)
        s_cpu0, c_cpu0, lo0 = proc_cpu(server_pid), proc_cpu("self"), loopback_rx_bytes()
        for _ in range(repeat):
            marks: dict[str, float] = {}

            def first_event(stage: str, frac: float, overall: float, marks: dict[str, float] = marks) -> None:
                marks.setdefault("first_event", time.perf_counter())

            reset_peak(server_pid), reset_peak("self")
            s_base, c_base = rss(server_pid), rss("self")
            t0 = time.perf_counter()
            res = c.colorize(w, h, "rgb16", img, {}, progress=first_event)
            t1 = time.perf_counter()
            assert len(res.pixels) == nbytes
            walls.append(t1 - t0)
            uploads.append(marks.get("first_event", t1) - t0)
            srv_peak.append((peak_rss(server_pid) - s_base) / nbytes)
            cli_peak.append((peak_rss("self") - c_base) / nbytes)
            del res
        s_cpu1, c_cpu1, lo1 = proc_cpu(server_pid), proc_cpu("self"), loopback_rx_bytes()
    return {"wall": statistics.median(walls), "upload": statistics.median(uploads),
            "srv_peak": statistics.median(srv_peak), "cli_peak": statistics.median(cli_peak),
            "srv_user": (s_cpu1[0] - s_cpu0[0]) / repeat, "srv_sys": (s_cpu1[1] - s_cpu0[1]) / repeat,
            "cli_user": (c_cpu1[0] - c_cpu0[0]) / repeat, "cli_sys": (c_cpu1[1] - c_cpu0[1]) / repeat,
            "wire": (lo1 - lo0) / repeat / nbytes}


def bench_rate(endpoint: str, n_clients: int, seconds: float, what: str) -> float:
    from patchcolor_client import Client

    counts = [0] * n_clients
    stop = time.perf_counter() + seconds
    tiny = bytes(range(256)) * 3

    def run(i: int) -> None:
        with Client(endpoint, timeout_s=10) as c:
            while time.perf_counter() < stop:
                if what == "ping":
                    c.ping()
                else:
                    c.colorize(16, 16, "rgb8", tiny, {"detector": "none"})
                counts[i] += 1

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n_clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / (time.perf_counter() - t0)


def bench_real_job(models_dir: Path, img: np.ndarray) -> float:
    from patchcolor.options import make_options
    from patchcolor.pipeline import Pipeline
    from patchcolor.prepare import SourceImage

    pipe = Pipeline(models_dir, device="cpu")
    src = SourceImage(img)
    opts = make_options("default", detector="none")
    pipe.run(SourceImage(img[:64, :64].copy()), opts)    # load the model first
    t0 = time.perf_counter()
    pipe.run(src, opts)
    return time.perf_counter() - t0


def bench_hostile(endpoint: str, pid: int) -> None:
    """Malformed-message rate, then oversize messages: reply time and the server's memory (section 4)."""
    import json

    import zmq

    ctx = zmq.Context()
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(endpoint)
    try:
        bad = [json.dumps({"v": 2, "type": "colorize", "id": "x", "job": "j", "width": 4, "height": 4,
                           "format": "rgb8"}).encode(), bytes(47)]
        t0 = time.perf_counter()
        for _ in range(5000):
            s.send_multipart(bad)
            s.recv_multipart()
        print(f"  malformed messages (wrong frame size): {5000 / (time.perf_counter() - t0):8.0f} replies/s")
        blob = bytes(7_900_000)
        ping = json.dumps({"v": 2, "type": "ping", "id": "p"}).encode()
        big = json.dumps({"v": 2, "type": "colorize", "id": "c", "job": "c", "width": 10, "height": 10,
                          "format": "rgb8"}).encode()
        for what, frames in (("ping + 150 x 7.9 MB frames (1.19 GB)", [ping] + [blob] * 150),
                             ("colorize 10x10 with a 7.9 MB pixel frame", [big, blob])):
            before = rss(pid)
            reset_peak(pid)
            t0 = time.perf_counter()
            s.send_multipart(frames, copy=False)
            reply = json.loads(s.recv_multipart()[0])
            took = time.perf_counter() - t0
            time.sleep(0.3)
            print(f"  {what:42s}: {reply['code']} in {took:.2f} s; server RSS {before / 2**20:.0f} -> "
                  f"{rss(pid) / 2**20:.0f} MiB, peak {peak_rss(pid) / 2**20:.0f} MiB")
    finally:
        s.close(0)
        ctx.destroy(linger=0)   # closes sockets a failed assertion left open; term() alone would hang


def bench_budgets(log_path: Path, max_pixels: int, job_s: float) -> None:
    """Section 5: one client's 8 large requests against the default budgets, then a flooding client's effect
    on another client's latency."""
    import json

    import zmq

    from patchcolor.service.limits import default_budgets

    proc, endpoint = start_server(max_pixels, log_path, factory="slow_stub_pipeline", args=(),
                                  env={"BENCH_JOB_S": str(max(job_s, 2.0))})   # the big jobs stay queued
    ctx = zmq.Context()
    try:
        b = default_budgets(max_pixels)
        print(f"  server: --max-pixels {max_pixels / 1e6:g}e6 -> {b.client_bytes / 1e6:.0f} MB per client, "
              f"{b.queue_bytes / 1e6:.0f} MB in all, {b.client_jobs} of {b.queue_jobs} waiting jobs per client")
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(endpoint)
        side, n = 2000, 100
        inst = {"class_id": 0, "class_name": "person", "score": 0.9, "box": [0, 0, side, side],
                "mask_origin": [0, 0], "mask_size": [side, side]}
        frame = bytes(side * side)
        before = rss(proc.pid)
        reset_peak(proc.pid)
        answers: list[str] = []
        for i in range(8):
            head = {"v": 3, "type": "colorize", "id": f"r{i}", "job": f"big{i}", "width": side, "height": side,
                    "format": "gray8", "options": {"detector": "none"}, "instances": [inst] * n}
            s.send_multipart([json.dumps(head).encode()] + [frame] * (n + 1), copy=False)
            while True:
                r = json.loads(s.recv_multipart()[0])
                if r.get("job") == f"big{i}" and r["type"] in ("accepted", "error"):
                    answers.append(r["type"] if r["type"] == "accepted" else r["code"])
                    break
        s.send_multipart([json.dumps({"v": 3, "type": "ping", "id": "after"}).encode()])
        while json.loads(s.recv_multipart()[0]).get("id") != "after":   # the server is done with the 8
            pass
        each = (n + 1) * side * side
        print(f"  8 requests of {each / 1e6:.0f} MB from one client: "
              + ", ".join(f"{answers.count(a)} {a}" for a in dict.fromkeys(answers))
              + f"; server RSS {before / 2**20:.0f} -> {rss(proc.pid) / 2**20:.0f} MiB, peak "
              f"{peak_rss(proc.pid) / 2**20:.0f} MiB (8 x {each / 1e6:.0f} MB = {8 * each / 1e9:.1f} GB sent)")
        s.close(0)
    finally:
        ctx.destroy(linger=0)
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    proc, endpoint = start_server(max_pixels, log_path, factory="slow_stub_pipeline", args=(),
                                  env={"BENCH_JOB_S": str(job_s)})
    try:
        alone = _latencies(endpoint, 6)
        stop, flooded = threading.Event(), threading.Event()
        flooder = threading.Thread(target=_flood, args=(endpoint, stop, flooded), daemon=True)
        flooder.start()
        flooded.wait(30)
        with_flood = _latencies(endpoint, 6)
        stop.set()
        flooder.join(30)
        print(f"  another client's job latency, one job {job_s:.2f} s: alone median {statistics.median(alone):.2f} s; "
              f"while a client keeps its share of the queue full: median {statistics.median(with_flood):.2f} s, "
              f"max {max(with_flood):.2f} s")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)


def _latencies(endpoint: str, n: int) -> list[float]:
    from patchcolor_client import Client

    out = []
    with Client(endpoint, timeout_s=60) as c:
        c.ping()
        for _ in range(n):
            t0 = time.perf_counter()
            c.colorize(16, 16, "rgb8", bytes(768), {"detector": "none"})
            out.append(time.perf_counter() - t0)
    return out


def _flood(endpoint: str, stop: threading.Event, flooded: threading.Event) -> None:
    """Keep as many jobs queued as the server accepts from this client; a new one after each result."""
    import json

    import zmq

    ctx = zmq.Context()
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(endpoint)
    n, full = 0, False
    try:
        while not stop.is_set():
            if not full:
                s.send_multipart([json.dumps({"v": 3, "type": "colorize", "id": f"f{n}", "job": f"f{n}",
                                              "width": 16, "height": 16, "format": "rgb8",
                                              "options": {"detector": "none"}}).encode(), bytes(768)])
                n += 1
            if s.poll(100):
                r = json.loads(s.recv_multipart()[0])
                if r["type"] == "error" and r.get("code") == "busy":
                    full = True
                    flooded.set()
                elif r["type"] == "result":
                    full = False
    finally:
        s.close(0)
        ctx.destroy(linger=0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mp", type=float, default=24.0, help="image size in megapixels (3:2), default 24")
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--rate-seconds", type=float, default=3.0)
    ap.add_argument("--real-models", type=Path, help="also time one real in-process job on the same image")
    ap.add_argument("--ipc", action="store_true", help="use an ipc:// (Unix socket) endpoint instead of TCP")
    ap.add_argument("--budget-mp", type=float, default=100.0,
                    help="--max-pixels (MP) of the budgets section's server, default 100 (serve's default)")
    ap.add_argument("--job-s", type=float, default=0.2, help="work per job in the fairness case, default 0.2 s")
    ap.add_argument("--budgets-only", action="store_true", help="run only section 5")
    args = ap.parse_args()
    log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench_service_{os.getpid()}.log"
    if args.budgets_only:
        from patchcolor.precision import cpu_report

        print(f"machine: {cpu_report().line()}; load {os.getloadavg()[0]:.2f}")
        print("budgets and fairness:")
        bench_budgets(log_path, int(args.budget_mp * 1e6), args.job_s)
        log_path.unlink(missing_ok=True)
        return

    w = int(round((args.mp * 1e6 * 1.5) ** 0.5))
    h = int(round(args.mp * 1e6 / w))
    rng = np.random.default_rng(0)
    img = rng.integers(0, 65536, (h, w, 3), dtype=np.uint16)
    mb = img.nbytes / 1e6
    proc, endpoint = start_server(w * h + 1, log_path, args.ipc)
    try:
        from patchcolor.precision import cpu_report

        print(f"machine: {cpu_report().model}, {os.cpu_count()} CPU(s); python {sys.version.split()[0]}; "
              f"endpoint {endpoint}")
        print(f"image: {w}x{h} rgb16 = {mb:.0f} MB")
        copy_wall, copy_user = bench_copy(img, args.repeat)
        print(f"\nplain in-process copy            : {copy_wall * 1e3:8.1f} ms  ({mb / copy_wall / 1e3:.2f} GB/s; "
              f"into a fresh buffer; a memcpy into a touched one: {copy_user * 1e3:.1f} ms)")
        rt = bench_roundtrip(endpoint, proc.pid, img, args.repeat)
        print(f"service round trip (stub pipeline): {rt['wall'] * 1e3:8.1f} ms  "
              f"(upload until first event {rt['upload'] * 1e3:.1f} ms)  median of {args.repeat}")
        overhead = rt["wall"] - copy_wall
        print(f"transport overhead vs the copy    : {overhead * 1e3:8.1f} ms  ({rt['wall'] / copy_wall:.1f}x the copy)")
        print("\nper job, in units of one image (144 MB at 24 MP):")
        if not args.ipc:
            print(f"  bytes on the loopback wire      : {rt['wire']:.3f}   (request + result, raw: 2.000 + headers)")
        print(f"  peak RSS rise  client {rt['cli_peak']:.2f}  server {rt['srv_peak']:.2f}   (image-sized buffers "
              "alive at once: server = the received frame, sent back as is; client = the result it keeps)")
        print(f"  user-space copies  client {rt['cli_user'] / copy_user:.2f}  server {rt['srv_user'] / copy_user:.2f}"
              f"   (user CPU per job / one memcpy of the image, {copy_user * 1e3:.0f} ms; includes Python + JSON)")
        print(f"  kernel (system) CPU per job: client {rt['cli_sys'] * 1e3:.0f} ms, server {rt['srv_sys'] * 1e3:.0f} ms"
              "   (socket send/receive: 1 copy out + 1 in per side, inherent to any socket transport)")
        if args.real_models:
            real = bench_real_job(args.real_models, img)
            print(f"\nreal in-process job, same image (detector none, CPU): {real:.1f} s -> transport overhead "
                  f"{overhead / real * 100:.2f} % of it")
        print("\nprotocol overhead (stub pipeline):")
        for n in (1, 8):
            print(f"  ping            {n} client(s): {bench_rate(endpoint, n, args.rate_seconds, 'ping'):8.0f} req/s")
        for n in (1, 8):
            print(f"  16x16 colorize  {n} client(s): {bench_rate(endpoint, n, args.rate_seconds, 'tiny'):8.0f} jobs/s"
                  "  (each: ping + request + accepted + 5 progress + result)")
        print("\nhostile traffic:")
        bench_hostile(endpoint, proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    print("\nbudgets and fairness:")
    bench_budgets(log_path, int(args.budget_mp * 1e6), args.job_s)
    log_path.unlink(missing_ok=True)      # kept (and shown by start_server) only when the server failed
    log_path.with_suffix(".sock").unlink(missing_ok=True)


if __name__ == "__main__":
    main()
