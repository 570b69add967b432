"""Helpers for the service tests: server processes on free loopback ports, and pipeline factories for them.

Server processes run ``python -m patchcolor.service.commands serve`` (what ``patchcolor serve`` runs) with this
folder on PYTHONPATH, so ``--pipeline-factory service_support:...`` can wrap or replace the real pipeline. Their
log is followed line by line (``ServerProcess.wait_log``: a test waits for a log line as an event, with a deadline).

* ``slow_pipeline``: the real ``Pipeline`` whose progress callback sleeps ``PATCHCOLOR_TEST_STAGE_DELAY``
  seconds per event (default 0.3), so that stage boundaries are far enough apart for cancel tests;
* ``echo_pipeline``: no networks (and no torch import): a deterministic function of the input pixels, with one
  instance per job, for transport-level tests (8 clients x 25 jobs, CURVE, shutdown) that would otherwise spend
  minutes in the colorizer on 2 CPU cores.
"""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

TESTS_DIR = Path(__file__).resolve().parent


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (bind to port 0, read it back, release it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ServerProcess:
    proc: subprocess.Popen
    endpoint: str
    log_path: Path
    server_key: bytes | None = None
    client_key: Path | None = None
    _lines: list[str] = field(default_factory=list, repr=False)
    _new_line: threading.Condition = field(default_factory=threading.Condition, repr=False)
    _follower: threading.Thread | None = field(default=None, repr=False)

    def log(self) -> str:
        with self._new_line:
            return "".join(self._lines)

    def log_mark(self) -> int:
        """The number of log lines so far: ``wait_log(..., since=mark)`` looks only at later lines."""
        with self._new_line:
            return len(self._lines)

    def wait_log(self, pattern: str, timeout_s: float, since: int = 0) -> re.Match:
        """The first log line (from line ``since`` on) matching ``pattern``, as soon as the server writes it;
        AssertionError with the log after ``timeout_s``."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout_s
        with self._new_line:
            while True:
                for line in self._lines[since:]:
                    m = rx.search(line)
                    if m:
                        return m
                since = len(self._lines)
                left = deadline - time.monotonic()
                assert left > 0, f"no log line matching {pattern!r} within {timeout_s} s:\n{''.join(self._lines)}"
                self._new_line.wait(left)

    def _follow(self, stream: IO[bytes]) -> None:
        """Copy the server's output to ``log_path`` line by line and wake ``wait_log`` (a daemon thread)."""
        with open(self.log_path, "wb") as logf:
            for raw in stream:
                logf.write(raw)
                logf.flush()
                with self._new_line:
                    self._lines.append(raw.decode("utf-8", "replace"))
                    self._new_line.notify_all()

    def rss_bytes(self) -> int:
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 30.0) -> int:
        """Signal the server and wait; SIGKILL if it does not exit in time. Returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self._follower is not None:
            self._follower.join(10)          # the whole log has been read once the process has exited
        return int(self.proc.returncode)


def start_server(tmp_dir: Path, *args: str, models_dir: Path | None = None, env: dict[str, str] | None = None,
                 server_key: bytes | None = None, client_key: Path | None = None, wait: bool = True,
                 startup_s: float = 90.0, port: int | None = None) -> ServerProcess:
    """Start ``patchcolor serve`` on a free 127.0.0.1 port (or ``port``) and wait until it answers ``ping``."""
    port = port or free_port()
    endpoint = f"tcp://127.0.0.1:{port}"
    log_path = Path(tmp_dir) / f"server-{port}.log"
    cmd = [sys.executable, "-m", "patchcolor.service.commands", "serve", "--endpoint", endpoint,
           "--device", "cpu", "--shutdown-grace", "20"]
    if models_dir is not None:
        cmd += ["--models", str(models_dir)]
    cmd += list(args)
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = os.pathsep.join([str(TESTS_DIR), full_env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    full_env.update(env or {})
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=full_env)
    srv = ServerProcess(proc, endpoint, log_path, server_key, client_key)
    assert proc.stdout is not None
    srv._follower = threading.Thread(target=srv._follow, args=(proc.stdout,), name=f"log-{port}", daemon=True)
    srv._follower.start()
    if wait:
        try:
            wait_ready(srv, startup_s)
        except BaseException:
            srv.stop(signal.SIGKILL)
            raise
    return srv


def wait_ready(srv: ServerProcess, timeout_s: float) -> None:
    from patchcolor_client import BackendUnavailable, Client

    deadline = time.monotonic() + timeout_s
    with Client(srv.endpoint, timeout_s=1.0, server_public_key=srv.server_key,
                client_secret_key=srv.client_key) as c:
        while True:
            if srv.proc.poll() is not None:
                raise RuntimeError(f"server exited with {srv.proc.returncode}:\n{srv.log()}")
            try:
                c.ping(0.5)
                return
            except BackendUnavailable:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"server did not answer within {timeout_s} s:\n{srv.log()}") from None


def colorize_beside(endpoint: str, pipeline: Any, w: int, h: int, fmt: str, px: np.ndarray,
                    opts: dict[str, Any], timeout_s: float = 300.0) -> tuple[Any, Any]:
    """Send one colorize job to the server at ``endpoint`` and run the same job in-process meanwhile (the CPU's
    two cores share the work). Returns ``(remote ColorizeResult, local Result)``; a remote error is raised here."""
    from concurrent.futures import ThreadPoolExecutor

    from patchcolor_client import Client

    from patchcolor.options import make_options
    from patchcolor.prepare import SourceImage

    def remote() -> Any:
        with Client(endpoint, timeout_s=timeout_s) as c:
            return c.colorize(w, h, fmt, px, opts)

    with ThreadPoolExecutor(1) as ex:
        sent = ex.submit(remote)
        local = pipeline.run(SourceImage.from_buffer(px.tobytes(), w, h, fmt), make_options(**opts))
        return sent.result(timeout=timeout_s), local


# ------------------------------------------------------------------------------------------ pipeline factories
def _stage_delay() -> float:
    return float(os.environ.get("PATCHCOLOR_TEST_STAGE_DELAY", "0.3"))


class SlowPipeline:
    """The real Pipeline, with a pause after every progress event (cancellation stays the pipeline's own)."""

    def __init__(self, inner: Any, delay: float):
        self.inner, self.delay = inner, delay
        self.device, self.models_dir = inner.device, inner.models_dir

    def _slow(self, progress: Any) -> Any:
        def cb(stage: str, fraction: float) -> None:
            if progress is not None:
                progress(stage, fraction)
            time.sleep(self.delay)
        return cb

    def run(self, src: Any, opts: Any, progress: Any = None, cancelled: Any = None, instances: Any = None) -> Any:
        return self.inner.run(src, opts, self._slow(progress), cancelled, instances)

    def recompose(self, src: Any, state: Any, masks: Any, opts: Any, progress: Any = None,
                  cancelled: Any = None) -> Any:
        return self.inner.recompose(src, state, masks, opts, self._slow(progress), cancelled)


def slow_pipeline(models_dir: Path | None, device: str, max_pixels: int) -> SlowPipeline:
    from patchcolor.pipeline import Pipeline

    return SlowPipeline(Pipeline(models_dir, device=device, max_pixels=max_pixels), _stage_delay())


def echo_expected(pixels: np.ndarray) -> np.ndarray:
    """What EchoPipeline returns for an (H, W, C) input: gray -> RGB, every colour sample inverted, alpha kept."""
    top = 65535 if pixels.dtype == np.uint16 else 255
    ch = pixels.shape[2]
    color = pixels[..., :1] if ch in (1, 2) else pixels[..., :3]
    color = np.repeat(color, 3, axis=2) if color.shape[2] == 1 else color
    out = (top - color).astype(pixels.dtype)
    if ch in (2, 4):
        out = np.dstack([out, pixels[..., ch - 1:]])
    return out


class _Record:
    def __init__(self, **kw: Any):
        self.__dict__.update(kw)


class EchoPipeline:
    """Deterministic stand-in with Pipeline's signatures: inverted colours and one instance whose box encodes
    the image size. Honours ``cancelled`` at each stage boundary; ``PATCHCOLOR_TEST_STAGE_DELAY`` per stage."""

    device = "cpu"
    models_dir = None

    def __init__(self, delay: float):
        self.delay = delay

    def run(self, src: Any, opts: Any, progress: Any = None, cancelled: Any = None, instances: Any = None) -> Any:
        from patchcolor.errors import Cancelled

        # Result-like objects (the server only reads attributes): patchcolor.result would import torch.
        Result = InstanceResult = FusionState = _Record
        for stage in ("prepare", "segment", "colorize", "fuse", "finish"):
            if cancelled is not None and cancelled():
                raise Cancelled("the job was cancelled")
            if progress is not None:
                progress(stage, 0.0)
            if self.delay:
                time.sleep(self.delay)
        color = src.color if src.color.ndim == 3 else src.color[..., None]
        pixels = color if src.alpha is None else np.dstack([color, src.alpha])
        image = echo_expected(pixels)
        w, h = src.width, src.height
        mask = np.zeros((max(1, h // 2), max(1, w // 2)), bool)
        mask[::2] = True
        inst = InstanceResult(class_id=0, class_name="person", score=0.5, box=(0.0, 0.0, float(w), float(h)),
                              mask=mask, mask_origin=(w // 4, h // 4))
        state = FusionState(nbytes=0)
        return Result(image=image, instances=[inst], state=state, timings={"echo": 0.0})

    def recompose(self, src: Any, state: Any, masks: Any, opts: Any, progress: Any = None,
                  cancelled: Any = None) -> Any:
        res = self.run(src, opts, progress, cancelled)
        keep = [np.asarray(m).any() for m in masks]
        res.instances = [i for i, k in zip(res.instances, keep) if k]
        return res


def echo_pipeline(models_dir: Path | None, device: str, max_pixels: int) -> EchoPipeline:
    return EchoPipeline(float(os.environ.get("PATCHCOLOR_TEST_STAGE_DELAY", "0")))


class LeakyPipeline(EchoPipeline):
    """Fails with sentences that name server paths, as real failures do (weights files, caches, temp files):
    ``detector="torchvision-v2"`` -> WeightsMissing, ``colorizer="siggraph17"`` -> an unexpected OSError,
    ``saturation=0.5`` -> a plain PatchColorError. Anything else is echoed."""

    SECRET_DIR = "/srv/patchcolor-secret/models"

    def run(self, src: Any, opts: Any, progress: Any = None, cancelled: Any = None, instances: Any = None) -> Any:
        from patchcolor.errors import PatchColorError, WeightsMissing

        if opts.detector == "torchvision-v2":
            raise WeightsMissing(f"The torchvision-v2 detector weights are missing: run `patchcolor weights fetch "
                                 f"torchvision-v2 --models-dir {self.SECRET_DIR}` ({self.SECRET_DIR}/maskrcnn.pth)")
        if opts.colorizer == "siggraph17":
            raise OSError(f"[Errno 5] Input/output error: '{self.SECRET_DIR}/siggraph17-df00044c.pth'")
        if opts.saturation == 0.5:
            raise PatchColorError(f"cannot write the scratch file {self.SECRET_DIR}/../tmp/job.npy")
        return super().run(src, opts, progress, cancelled, instances)


def leaky_pipeline(models_dir: Path | None, device: str, max_pixels: int) -> LeakyPipeline:
    return LeakyPipeline(0.0)
