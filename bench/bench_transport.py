"""Client transport benchmark (what GIMP's Python uses): the built-in ZMTP dealer vs pyzmq. Prints, asserts nothing.

    .venv/bin/python bench/bench_transport.py [--mp 24] [--repeat 3]

Against ``patchcolor serve`` with the echo pipeline of the tests (no networks: it inverts the pixels), one client
sends a ``--mp`` megapixel gray16 image (2 bytes/pixel up) and receives the rgb16 result (6 bytes/pixel down), then
runs 200 pings; once with ``PATCHCOLOR_TRANSPORT=zmtp`` and once with pyzmq. Each figure is the median of
``--repeat`` runs; the CPU model comes from patchcolor.precision.cpu_report().
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))


def run(endpoint: str, transport: str, px: np.ndarray, repeat: int) -> tuple[float, float]:
    os.environ["PATCHCOLOR_TRANSPORT"] = transport
    from patchcolor_client import Client

    h, w = px.shape
    jobs, pings = [], []
    for _ in range(repeat):
        with Client(endpoint, timeout_s=120) as c:
            assert c._sock.name == transport
            t0 = time.perf_counter()
            res = c.colorize(w, h, "gray16", px, {"detector": "none"})
            jobs.append(time.perf_counter() - t0)
            assert memoryview(res.pixels).nbytes == w * h * 6
            t0 = time.perf_counter()
            for _ in range(200):
                c.ping(5.0)
            pings.append((time.perf_counter() - t0) / 200)
    return statistics.median(jobs), statistics.median(pings)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mp", type=float, default=24.0, help="image size in megapixels (default 24)")
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    from patchcolor.precision import cpu_report
    from service_support import start_server

    import tempfile
    w = int(round((a.mp * 1e6 * 1.5) ** 0.5))
    h = int(a.mp * 1e6 // w)
    px = (np.arange(w * h, dtype=np.uint32) % 65536).astype("<u2").reshape(h, w)
    with tempfile.TemporaryDirectory() as tmp:
        srv = start_server(Path(tmp), "--pipeline-factory", "service_support:echo_pipeline",
                           env={"PATCHCOLOR_TEST_STAGE_DELAY": "0"})
        try:
            cpu = cpu_report()
            print(f"CPU: {cpu.model} ({cpu.cores} cores)")
            print(f"{w}x{h} gray16 up ({w * h * 2 / 1e6:.0f} MB), rgb16 down ({w * h * 6 / 1e6:.0f} MB), "
                  f"echo pipeline, median of {a.repeat}")
            for t in ("zmtp", "pyzmq"):
                job, ping = run(srv.endpoint, t, px, a.repeat)
                print(f"  {t:6s} job {job:6.2f} s ({w * h * 8 / 1e6 / job:5.0f} MB/s both ways)   "
                      f"ping {ping * 1e3:5.2f} ms")
        finally:
            srv.stop()


if __name__ == "__main__":
    main()
