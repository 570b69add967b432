"""heap.py: keep freed memory for the next image (glibc mallopt), give it back when the service is idle.

The allocator settings are process-wide, so the fault and RSS measurements run in subprocesses
(``sys.executable -c``): this test process keeps glibc's defaults."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading

import pytest
from PIL import Image

from patchcolor import heap

glibc_only = pytest.mark.skipif(not heap._glibc(), reason="mallopt/malloc_trim are glibc's")

# Allocates and frees a 64 MB array 3 times (np.ones: every page touched) and prints the minor page faults of
# each allocation.
FAULTS = textwrap.dedent("""
    import json, resource, sys
    import numpy as np
    from patchcolor import heap
    kept = heap.keep_freed_memory() if sys.argv[1] == "keep" else None
    faults = []
    for _ in range(3):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        a = np.ones(64 << 20, np.uint8)
        del a
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    print(json.dumps({"kept": kept, "faults": faults}))
""")

# RSS (/proc/self/statm) before, after freeing 256 MB, and after release_memory().
RSS = textwrap.dedent("""
    import json, os
    import numpy as np
    from patchcolor import heap
    page = os.sysconf("SC_PAGE_SIZE")
    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * page
    kept = heap.keep_freed_memory()
    before = rss()
    a = np.ones(256 << 20, np.uint8)
    del a
    freed = rss()
    released = heap.release_memory()
    print(json.dumps({"kept": kept, "before": before, "freed": freed, "after": rss(), "released": released}))
""")


def _child(script: str, *args: str, env: dict[str, str] | None = None) -> dict:
    import os

    full_env = dict(os.environ)
    full_env.pop(heap.ENV_VAR, None)
    full_env.update(env or {})
    r = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=120,
                       env=full_env)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


@glibc_only
def test_freed_memory_is_reused_without_new_page_faults():
    r = _child(FAULTS, "keep")
    first, *later = r["faults"]
    assert r["kept"] is True
    assert first >= 16, r            # the first allocation does touch fresh pages (4 KiB or 2 MiB ones)
    assert all(f < 0.1 * first for f in later), r


@pytest.mark.parametrize("how", ["not called", "PATCHCOLOR_MALLOC=system"])
@glibc_only
def test_without_it_every_allocation_faults_again(how):
    """The control: glibc's default policy unmaps the 64 MB block on free, so each allocation faults anew."""
    r = _child(FAULTS, "keep" if how != "not called" else "system-default",
               env={heap.ENV_VAR: "system"} if how != "not called" else None)
    first, *later = r["faults"]
    assert r["kept"] in (None, False)
    assert first >= 16 and all(f >= 0.5 * first for f in later), r


@glibc_only
def test_release_memory_gives_the_kept_memory_back():
    r = _child(RSS)
    mib = 1 << 20
    assert r["kept"] is True
    assert r["freed"] - r["before"] > 200 * mib, r      # kept after free: that is the point ...
    assert r["released"] is True
    assert r["after"] - r["before"] < 64 * mib, r       # ... until release_memory()


def test_keep_freed_memory_is_idempotent_and_the_opt_out_changes_nothing(monkeypatch):
    calls: list[tuple[int, int]] = []

    class FakeLibc:
        def __init__(self) -> None:
            self.mallopt = self._mallopt

        @staticmethod
        def _mallopt(param: int, value: int) -> int:
            calls.append((param, value))
            return 1

    monkeypatch.setattr(heap, "_libc", FakeLibc())
    monkeypatch.setattr(heap, "_kept", None)
    monkeypatch.setenv(heap.ENV_VAR, "system")
    assert heap.keep_freed_memory() is False and calls == []
    monkeypatch.setattr(heap, "_kept", None)
    monkeypatch.delenv(heap.ENV_VAR)
    assert heap.keep_freed_memory() is True and heap.keep_freed_memory() is True
    assert calls == [(heap.M_MMAP_MAX, 0), (heap.M_TRIM_THRESHOLD, heap.TRIM_THRESHOLD)]
    monkeypatch.setattr(heap, "_kept", None)
    monkeypatch.setattr(heap, "_libc", False)       # another C library
    assert heap.keep_freed_memory() is False and heap.release_memory() is False


# ---------------------------------------------------------------------------------------------------- callers
def _counter(result: bool = False):
    calls: list[int] = []

    def fn() -> bool:
        calls.append(1)
        return result
    return fn, calls


def test_cli_colorize_keeps_freed_memory(monkeypatch, models_dir, photo_gray, tmp_path):
    from patchcolor import cli

    keep, calls = _counter()
    monkeypatch.setattr(heap, "keep_freed_memory", keep)   # cmd_colorize imports it when it runs
    src = tmp_path / "a.png"
    Image.fromarray(photo_gray[:48, :64]).save(src)
    rc = cli.main(["colorize", str(src), "-o", str(tmp_path / "out"), "--preset", "seed", "--detector", "none",
                   "--max-side", "64", "--device", "cpu", "--models", str(models_dir)])
    assert rc == 0 and (tmp_path / "out" / "a.png").exists()
    assert len(calls) == 1
    # --ray: the driver too (the actors call it in ColorizeWorker.__init__)
    monkeypatch.setattr(cli, "cmd_colorize_ray", lambda args: 0)
    assert cli.main(["colorize", str(src), "-o", str(tmp_path / "out"), "--ray"]) == 0
    assert len(calls) == 2


def test_ray_worker_keeps_freed_memory(monkeypatch, models_dir):
    from patchcolor import cluster
    from patchcolor.options import make_options

    keep, calls = _counter()
    monkeypatch.setattr(cluster, "keep_freed_memory", keep)
    w = cluster.ColorizeWorker(make_options("seed"), str(models_dir), "cpu", 10**6, 1, None)
    assert w.error is None and len(calls) == 1


def test_job_queue_is_idle_only_when_no_worker_is_busy_and_nothing_waits():
    from patchcolor.service.server import JobQueue

    q = JobQueue(4)
    a, b, c = (object.__new__(type("J", (), {})) for _ in range(3))
    for j in (a, b, c):
        assert q.offer(j) is not None   # type: ignore[arg-type]
    q.take()
    assert q.worker_done() is False            # two still queued
    q.take()
    q.take()                                   # two workers busy
    assert q.worker_done() is False            # the other one still runs
    assert q.worker_done() is True


def test_service_gives_memory_back_when_idle(monkeypatch):
    from patchcolor_client import Client
    from service_support import EchoPipeline, free_port

    from patchcolor.service import server as S

    keep, kept = _counter(True)
    released: list[int] = []
    gave_back = threading.Semaphore(0)

    def release() -> bool:
        released.append(1)
        gave_back.release()
        return True
    monkeypatch.setattr(S, "keep_freed_memory", keep)
    monkeypatch.setattr(S, "release_memory", release)
    srv = S.Server(S.ServerConfig(endpoint=f"tcp://127.0.0.1:{free_port()}", heartbeat_ms=0),
                   pipelines=[EchoPipeline(0.0)])
    srv.start()
    t = threading.Thread(target=srv.serve_forever, kwargs={"install_signal_handlers": False}, daemon=True)
    t.start()
    try:
        assert len(kept) == 1 and released == []
        with Client(srv.bound_endpoint, timeout_s=20) as c:
            for n in (1, 2):
                res = c.colorize(8, 8, "gray8", bytes(range(64)), {"detector": "none", "max_side": 64})
                assert (res.width, res.height) == (8, 8)
                assert gave_back.acquire(timeout=10), "each job that leaves the server idle gives its memory back"
                assert len(released) == n
                assert len(memoryview(res.pixels).cast("B")) == 8 * 8 * 3   # rgb8
    finally:
        srv.stop()
        t.join(30)
    assert not t.is_alive()
