"""``patchcolor serve``: a long-running ZeroMQ ROUTER backend (protocol: docs/protocol.md).

Threads:

* the **main thread** owns the ROUTER socket. It validates every request (``protocol.parse_request``) before
  anything is allocated, answers ``ping``/``info``/``cancel`` at once (also while jobs run), puts jobs into a
  bounded FIFO queue (full -> ``busy``) and forwards the workers' events to the clients;
* one **worker thread per device** takes jobs from the queue and runs its own ``Pipeline``. Workers never touch
  the ROUTER socket (ZeroMQ sockets are not thread-safe): they push ``[job id, final flag, envelope..., header,
  data...]`` to the main thread over an inproc PUSH/PULL pair. Pixels travel as zero-copy messages the whole way:
  received frame -> ``SourceImage.from_buffer`` view -> pipeline; result array -> inproc -> ROUTER -> TCP.

A peer that has gone away is noticed when the server next sends to it (``ZMQ_ROUTER_MANDATORY`` makes that an
``EHOSTUNREACH``; heartbeats drop dead TCP peers): its running job is cancelled at the next stage boundary.
SIGTERM/SIGINT: queued jobs are cancelled, the running ones are asked to stop, sockets are closed, exit code 0
(a second signal exits at once).
"""
from __future__ import annotations

import errno
import itertools
import logging
import os
import platform
import signal
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import zmq

from .. import __version__
from ..errors import Cancelled, PatchColorError
from ..options import PRESETS, make_options
from ..prepare import SourceImage
from . import protocol as P
from .auth import ServerKeys, apply_server_curve, check_endpoint, start_authenticator
from .cache import ByteLRU

log = logging.getLogger("patchcolor.service")

#: factory(models_dir, device, max_pixels) -> an object with Pipeline's ``run`` / ``refuse``.
PipelineFactory = Callable[[Path | None, str, int], Any]


@dataclass
class ServerConfig:
    """Everything ``patchcolor serve`` can be told (see cli_serve.py for the flags)."""

    endpoint: str = P.DEFAULT_ENDPOINT
    devices: tuple[str, ...] = ("auto",)
    models_dir: Path | None = None
    max_pixels: int = 100_000_000
    queue_size: int = 8
    cache_bytes: int = 1 << 30
    curve_keys: Path | None = None
    preload: bool = False
    shutdown_grace_s: float = 60.0
    heartbeat_ms: int = 5000
    pipeline_factory: PipelineFactory | None = None


@dataclass(eq=False)
class Job:
    """A queued or running colorize/refuse job. ``pixels`` views the request frame (no copy)."""

    job_id: str
    req_id: str
    envelope: list[bytes]
    kind: str                       # protocol.COLORIZE or protocol.REFUSE
    width: int
    height: int
    format: str
    pixels: memoryview | None
    options: Any                    # patchcolor.options.Options
    masks: list[np.ndarray] | None = None      # refuse only
    instances: list[P.GivenInstance] | None = None   # colorize with given instances instead of the detector
    fusion_state: Any = None                   # refuse only: the kept FusionState
    cancel: threading.Event = field(default_factory=threading.Event)
    state: str = "queued"           # queued -> running -> done | cancelled
    submitted: float = field(default_factory=time.monotonic)
    peer: str = ""


class JobQueue:
    """Bounded FIFO of jobs shared by the workers. ``offer`` never blocks (full -> False)."""

    def __init__(self, capacity: int):
        self.capacity = max(1, int(capacity))
        self._q: deque[Job] = deque()
        self._cv = threading.Condition()
        self._closed = False
        self.running = 0

    def offer(self, job: Job) -> int | None:
        """Append ``job``; its 0-based position, or None when the queue is full or closed."""
        with self._cv:
            if self._closed or len(self._q) >= self.capacity:
                return None
            self._q.append(job)
            self._cv.notify()
            return len(self._q) - 1

    def take(self) -> Job | None:
        """Next job (marked running), blocking; None once the queue is closed."""
        with self._cv:
            while not self._q and not self._closed:
                self._cv.wait()
            if not self._q:
                return None
            job = self._q.popleft()
            job.state = "running"
            self.running += 1
            return job

    def finished(self) -> None:
        with self._cv:
            self.running -= 1

    def remove(self, job: Job) -> bool:
        """Take a still-queued job out (cancel). False when a worker already has it."""
        with self._cv:
            try:
                self._q.remove(job)
            except ValueError:
                return False
            job.state = "cancelled"
            return True

    def drain(self) -> list[Job]:
        with self._cv:
            jobs = list(self._q)
            self._q.clear()
            for j in jobs:
                j.state = "cancelled"
            return jobs

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()

    def __len__(self) -> int:
        with self._cv:
            return len(self._q)


def default_pipeline_factory(models_dir: Path | None, device: str, max_pixels: int) -> Any:
    from ..pipeline import Pipeline   # imports torch: only when a server really starts

    return Pipeline(models_dir=models_dir, device=device, max_pixels=max_pixels)


def _peer(envelope: Sequence[bytes]) -> str:
    return envelope[0].hex()[:10] if envelope else "?"


class _RateLimitedLog:
    """At most ``burst`` log lines per ``window_s`` (malformed traffic must not flood the log)."""

    def __init__(self, burst: int = 20, window_s: float = 10.0):
        self.burst, self.window_s = burst, window_s
        self._start, self._count, self._suppressed = 0.0, 0, 0

    def __call__(self, msg: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._start > self.window_s:
            if self._suppressed:
                log.warning("(%d more rejected requests not logged)", self._suppressed)
            self._start, self._count, self._suppressed = now, 0, 0
        if self._count < self.burst:
            self._count += 1
            log.warning(msg, *args)
        else:
            self._suppressed += 1


class Server:
    """The service. ``Server(config).serve_forever()`` blocks until SIGTERM/SIGINT (or :meth:`stop`).

    ``pipelines`` (one per worker) may be given directly (benchmarks, embedding); otherwise they are made with
    ``config.pipeline_factory`` (default: ``patchcolor.pipeline.Pipeline``), one per entry of ``config.devices``.
    Raises ``auth.EndpointRefused`` for a non-loopback endpoint without CURVE keys, before binding anything.
    """

    def __init__(self, config: ServerConfig, pipelines: Sequence[Any] | None = None):
        self.config = config
        self.limits = P.Limits(config.max_pixels)
        self.keys: ServerKeys | None = check_endpoint(config.endpoint, config.curve_keys)
        self._given_pipelines = list(pipelines) if pipelines is not None else None
        self.cache: ByteLRU[str, P.JobRecord] = ByteLRU(config.cache_bytes)
        self.queue = JobQueue(config.queue_size)
        self.jobs: dict[str, Job] = {}          # queued or running, by job id (main thread only)
        self.devices: list[str] = []
        self._models_dir: Path | None = config.models_dir
        self._stop = threading.Event()
        self._stopping = False
        self._signals = 0
        self._rejected_log = _RateLimitedLog()
        self._events_ep = f"inproc://patchcolor-events-{id(self):x}"
        self.ctx: zmq.Context | None = None
        self.router: zmq.Socket | None = None
        self.events: zmq.Socket | None = None
        self.auth: Any = None
        self.workers: list[threading.Thread] = []
        self.bound_endpoint: str | None = None
        self.started = time.time()
        self.counters = {"requests": 0, "rejected": 0, "jobs": 0, "results": 0, "errors": 0, "cancelled": 0}

    # ------------------------------------------------------------------------------------------------ life cycle
    def start(self) -> None:
        """Make the pipelines (and preload), bind the socket, start the workers. Raises on failure."""
        cfg = self.config
        if self._given_pipelines is not None:
            pipelines = self._given_pipelines
            self.devices = [str(getattr(p, "device", "custom")) for p in pipelines]
        else:
            factory = cfg.pipeline_factory or default_pipeline_factory
            pipelines = [factory(cfg.models_dir, d, cfg.max_pixels) for d in cfg.devices]
            self.devices = [str(getattr(p, "device", d)) for p, d in zip(pipelines, cfg.devices)]
        self._models_dir = getattr(pipelines[0], "models_dir", None) or cfg.models_dir
        if cfg.preload:
            for p, d in zip(pipelines, self.devices):
                t0 = time.perf_counter()
                log.info("preloading models on %s ...", d)
                p.run(SourceImage(np.zeros((64, 64), np.uint8)), make_options("default"))
                log.info("models ready on %s (%.1f s)", d, time.perf_counter() - t0)

        self.ctx = zmq.Context()
        if self.keys is not None:
            self.auth = start_authenticator(self.ctx, self.keys)
        r = self.ctx.socket(zmq.ROUTER)
        r.setsockopt(zmq.LINGER, 1000)
        r.setsockopt(zmq.MAXMSGSIZE, self.limits.max_frame_bytes + 4096)
        r.setsockopt(zmq.ROUTER_MANDATORY, 1)
        if cfg.heartbeat_ms > 0:
            r.setsockopt(zmq.HEARTBEAT_IVL, cfg.heartbeat_ms)
            r.setsockopt(zmq.HEARTBEAT_TIMEOUT, cfg.heartbeat_ms * 3)
            r.setsockopt(zmq.HEARTBEAT_TTL, cfg.heartbeat_ms * 3)
        if "[" in cfg.endpoint:
            r.setsockopt(zmq.IPV6, 1)
        if self.keys is not None:
            apply_server_curve(r, self.keys)
        try:
            r.bind(cfg.endpoint)
        except zmq.ZMQError as e:
            r.close(0)
            self._close_context()
            raise OSError(f"cannot listen on {cfg.endpoint}: {e}") from None
        self.router = r
        self.bound_endpoint = r.getsockopt_string(zmq.LAST_ENDPOINT)
        self.events = self.ctx.socket(zmq.PULL)
        self.events.setsockopt(zmq.LINGER, 0)
        self.events.bind(self._events_ep)
        for i, (p, d) in enumerate(zip(pipelines, self.devices)):
            t = threading.Thread(target=self._worker_main, args=(p, d), name=f"worker-{i}-{d}", daemon=True)
            t.start()
            self.workers.append(t)
        log.info("patchcolor %s serving protocol %d on %s (%s; %d worker(s): %s; queue %d; cache %.0f MB; "
                 "max %.0f MP)", __version__, P.PROTOCOL_VERSION, self.bound_endpoint,
                 "CURVE" if self.keys else "loopback, no authentication", len(self.workers), ", ".join(self.devices),
                 self.queue.capacity, cfg.cache_bytes / 1e6, cfg.max_pixels / 1e6)

    def stop(self) -> None:
        """Ask the main loop to shut down (thread-safe)."""
        self._stop.set()

    def serve_forever(self, install_signal_handlers: bool = True) -> int:
        """Run until stopped; 0 after a clean shutdown, 1 when a worker did not stop within the grace time."""
        if self.router is None:
            self.start()
        if install_signal_handlers:
            signal.signal(signal.SIGTERM, self._on_signal)
            signal.signal(signal.SIGINT, self._on_signal)
        assert self.router is not None and self.events is not None
        poller = zmq.Poller()
        poller.register(self.router, zmq.POLLIN)
        poller.register(self.events, zmq.POLLIN)
        while not self._stop.is_set():
            try:
                ready = dict(poller.poll(100))
            except zmq.ZMQError as e:
                if e.errno == errno.EINTR:
                    continue
                raise
            if self.events in ready:
                self._forward_events()
            if self.router in ready:
                self._read_requests()
        return self._shutdown(poller)

    def _on_signal(self, signum: int, _frame: Any) -> None:
        self._signals += 1
        if self._signals > 1:
            log.warning("second %s: exiting now", signal.Signals(signum).name)
            logging.shutdown()
            os._exit(1)
        log.info("%s received: shutting down", signal.Signals(signum).name)
        self._stop.set()

    def _shutdown(self, poller: zmq.Poller) -> int:
        self._stopping = True
        for job in self.queue.drain():
            self._send_final_now(job, {"v": P.PROTOCOL_VERSION, "type": P.CANCELLED, "id": job.req_id,
                                       "job": job.job_id, "reason": "server shutting down"})
        for job in self.jobs.values():
            job.cancel.set()
        self.queue.close()
        deadline = time.monotonic() + self.config.shutdown_grace_s
        while any(t.is_alive() for t in self.workers) and time.monotonic() < deadline:
            ready = dict(poller.poll(100))
            if self.events in ready:
                self._forward_events()
            if self.router in ready:
                self._read_requests()      # ping/info still answered; new jobs get "shutting_down"
        self._forward_events()
        stuck = [t.name for t in self.workers if t.is_alive()]
        if stuck:
            log.error("worker(s) %s did not stop within %.0f s", ", ".join(stuck), self.config.shutdown_grace_s)
        assert self.router is not None and self.events is not None
        self.router.close(linger=1000)
        self.events.close(linger=0)
        if self.auth is not None:
            self.auth.stop()
        if not stuck:
            self._close_context()
        log.info("stopped")
        return 1 if stuck else 0

    def _close_context(self) -> None:
        if self.ctx is not None:
            self.ctx.term()
            self.ctx = None

    # ------------------------------------------------------------------------------------------ main thread I/O
    def _read_requests(self, budget: int = 64) -> None:
        assert self.router is not None
        for _ in range(budget):
            try:
                frames = self.router.recv_multipart(flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            try:
                self._on_request(frames)
            except Exception:   # never die on a message
                log.exception("unexpected failure while handling a request")

    def _forward_events(self, budget: int = 256) -> None:
        assert self.events is not None
        for _ in range(budget):
            try:
                frames = self.events.recv_multipart(flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            job_id, final = frames[0].bytes.decode(), frames[1].bytes == b"1"
            job = self.jobs.get(job_id)
            self._send(frames[2:], job)
            if final:
                self.queue.finished()
                if job is not None:
                    job.state = "done"
                    self.jobs.pop(job_id, None)

    def _send(self, frames: Sequence[Any], job: Job | None = None) -> bool:
        """Send to a client without ever blocking; a vanished client cancels its job."""
        assert self.router is not None
        try:
            self.router.send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
            return True
        except zmq.ZMQError as e:
            peer = bytes(frames[0]).hex()[:10] if frames else "?"
            if e.errno == zmq.EHOSTUNREACH:
                if job is not None and job.state in ("queued", "running") and not job.cancel.is_set():
                    log.info("client %s is gone: cancelling job %s", peer, job.job_id)
                    self._cancel(job)
            elif e.errno == zmq.EAGAIN:
                log.warning("client %s is not reading its replies: message dropped", peer)
            else:
                log.warning("send to client %s failed: %s", peer, e)
            return False

    def _reply(self, envelope: list[bytes], header: dict[str, Any], data: Sequence[Any] = (),
               job: Job | None = None) -> bool:
        return self._send([*envelope, P.encode_header(header), *data], job)

    def _send_final_now(self, job: Job, header: dict[str, Any]) -> None:
        """Final message for a job that never reached a worker (main thread)."""
        self.jobs.pop(job.job_id, None)
        self.counters["cancelled"] += header["type"] == P.CANCELLED
        job.pixels = job.masks = job.fusion_state = job.instances = None
        self._reply(job.envelope, header)

    def _on_request(self, frames: list[Any]) -> None:
        if not frames:
            return
        envelope, body = P.split_envelope(frames)
        self.counters["requests"] += 1
        try:
            req = P.parse_request(body, self.limits)
            self._dispatch(envelope, req)
        except P.ProtocolError as e:
            self.counters["rejected"] += 1
            self._rejected_log("rejected request from %s: %s: %s", _peer(envelope), e.code, e.message)
            extra = {"supported": list(P.SUPPORTED_VERSIONS)} if e.code == "version" else {}
            self._reply(envelope, P.error_header(e.code, e.message, e.req_id, e.job, **extra))

    def _dispatch(self, envelope: list[bytes], req: P.Request) -> None:
        if isinstance(req, P.PingRequest):
            pong = {"v": P.PROTOCOL_VERSION, "type": P.PONG, "id": req.id, "time": time.time(),
                    "queued": len(self.queue), "running": self.queue.running}
            if req.job is not None:
                job = self.jobs.get(req.job)
                pong["job"], pong["job_state"] = req.job, job.state if job is not None else "unknown"
            self._reply(envelope, pong)
        elif isinstance(req, P.InfoRequest):
            self._reply(envelope, self._info(req.id))
        elif isinstance(req, P.CancelRequest):
            self._on_cancel(envelope, req)
        else:
            self._on_job(envelope, req)

    def _on_cancel(self, envelope: list[bytes], req: P.CancelRequest) -> None:
        job = self.jobs.get(req.job)
        if job is None:
            raise P.ProtocolError("unknown_job", f"job {req.job} is not queued or running", req.id, req.job)
        state = self._cancel(job)
        self._reply(envelope, {"v": P.PROTOCOL_VERSION, "type": P.ACK, "id": req.id, "job": req.job,
                               "state": state})

    def _cancel(self, job: Job) -> str:
        """Cancel a job: a queued one is dropped now, a running one stops at its next stage boundary."""
        if self.queue.remove(job):
            log.info("job %s cancelled while queued", job.job_id)
            self._send_final_now(job, {"v": P.PROTOCOL_VERSION, "type": P.CANCELLED, "id": job.req_id,
                                       "job": job.job_id})
            return "cancelled"
        job.cancel.set()
        return "cancelling"

    def _on_job(self, envelope: list[bytes], req: P.ColorizeRequest | P.RefuseRequest) -> None:
        if self._stopping:
            raise P.ProtocolError("shutting_down", "the server is shutting down", req.id, req.job)
        if req.job in self.jobs:
            raise P.ProtocolError("duplicate_job", f"job {req.job} is already queued or running", req.id, req.job)
        if isinstance(req, P.ColorizeRequest):
            job = Job(req.job, req.id, envelope, P.COLORIZE, req.width, req.height, req.format, req.pixels,
                      req.options, instances=req.instances)
        else:
            rec = self.cache.get(req.base_job)
            if rec is None:
                raise P.ProtocolError("unknown_job", f"job {req.base_job} is not kept on this server (finished "
                                      "long ago, evicted or never run): run colorize again", req.id, req.job)
            masks = P.check_refuse(req, rec)
            job = Job(req.job, req.id, envelope, P.REFUSE, rec.width, rec.height, rec.format, rec.pixels,
                      req.options or rec.options, masks=masks, fusion_state=rec.state)
        job.peer = _peer(envelope)
        position = self.queue.offer(job)
        if position is None:
            raise P.ProtocolError("busy", f"the job queue is full ({self.queue.capacity} waiting): try again later",
                                  req.id, req.job)
        self.jobs[job.job_id] = job
        self.counters["jobs"] += 1
        # Sent before any event of this job: workers' events are forwarded by this thread, later.
        self._reply(envelope, {"v": P.PROTOCOL_VERSION, "type": P.ACCEPTED, "id": req.id, "job": req.job,
                               "position": position}, job=job)
        log.info("job %s (%s %dx%d %s) from %s queued at %d", job.job_id, job.kind, job.width, job.height,
                 job.format, job.peer, position)

    def _info(self, req_id: str) -> dict[str, Any]:
        versions = {"patchcolor": __version__, "python": platform.python_version(), "pyzmq": zmq.__version__,
                    "libzmq": zmq.zmq_version(), "numpy": np.__version__}
        if "torch" in sys.modules:
            versions["torch"] = str(sys.modules["torch"].__version__)
        stats = self.cache.stats()
        return {
            "v": P.PROTOCOL_VERSION, "type": P.INFO, "id": req_id, "protocol": P.PROTOCOL_VERSION,
            "supported_versions": list(P.SUPPORTED_VERSIONS), "versions": versions, "devices": self.devices,
            **weights_info(self._models_dir),
            "formats": list(P.PIXEL_FORMATS), "stages": list(P.STAGES), "presets": {
                k: v.to_dict() for k, v in PRESETS.items()},
            "max_pixels": self.limits.max_pixels, "queue_size": self.queue.capacity, "queued": len(self.queue),
            "running": self.queue.running, "curve": self.keys is not None,
            "cache": {"entries": stats.entries, "bytes": stats.bytes, "max_bytes": stats.max_bytes},
            "uptime_s": round(time.time() - self.started, 1),
        }

    # ---------------------------------------------------------------------------------------------- worker side
    def _worker_main(self, pipeline: Any, device: str) -> None:
        assert self.ctx is not None
        push = self.ctx.socket(zmq.PUSH)
        push.setsockopt(zmq.LINGER, 2000)
        push.connect(self._events_ep)
        try:
            while True:
                job = self.queue.take()
                if job is None:
                    break
                try:
                    self._run_job(pipeline, device, job, push)
                except Exception:   # could not even report the failure: keep the worker alive
                    log.exception("job %s: failure while reporting its outcome", job.job_id)
        finally:
            push.close()

    def _run_job(self, pipeline: Any, device: str, job: Job, push: zmq.Socket) -> None:
        job_b = job.job_id.encode()
        seq = itertools.count()

        def emit(header: dict[str, Any], data: Sequence[Any] = (), final: bool = False) -> None:
            push.send_multipart([job_b, b"1" if final else b"0", *job.envelope, P.encode_header(header), *data],
                                copy=False)

        overall = [0.0]

        def progress(stage: str, fraction: float) -> None:
            overall[0] = max(overall[0], P.overall_fraction(str(stage), float(fraction)))
            next(seq)
            try:
                emit(P.progress_header(job.req_id, job.job_id, str(stage), float(fraction), overall[0]))
            except zmq.ZMQError as e:   # a lost progress event must not fail the job
                log.warning("job %s: progress event not sent: %s", job.job_id, e)

        t0 = time.perf_counter()
        try:
            if job.cancel.is_set():
                raise Cancelled("cancelled before it started")
            assert job.pixels is not None
            src = SourceImage.from_buffer(job.pixels, job.width, job.height, job.format)
            if job.kind == P.COLORIZE:
                result = pipeline.run(src, job.options, progress=progress, cancelled=job.cancel.is_set,
                                      instances=job.instances)
            else:
                result = pipeline.refuse(src, job.fusion_state, job.masks, job.options, progress=progress,
                                         cancelled=job.cancel.is_set)
            header, data = P.result_message(job.req_id, job.job_id, result)
            rec = P.JobRecord(job.width, job.height, job.format, job.pixels, job.options, result.state,
                              header["width"], header["height"], len(result.instances))
            header["refusable"] = self.cache.put(job.job_id, rec, rec.nbytes)
            header["timings"]["server_total"] = round(time.perf_counter() - t0, 4)
            emit(header, data, final=True)
            self.counters["results"] += 1
            log.info("job %s done on %s in %.2f s: %dx%d %s, %d instance(s), %d progress event(s)", job.job_id,
                     device, time.perf_counter() - t0, header["width"], header["height"], header["format"],
                     len(result.instances), next(seq))
        except Cancelled as e:
            self.counters["cancelled"] += 1
            log.info("job %s cancelled after %.2f s", job.job_id, time.perf_counter() - t0)
            emit({"v": P.PROTOCOL_VERSION, "type": P.CANCELLED, "id": job.req_id, "job": job.job_id,
                  "reason": str(e)}, final=True)
        except PatchColorError as e:
            self.counters["errors"] += 1
            log.warning("job %s failed: %s: %s", job.job_id, e.code, e.message)
            emit(P.error_header(e.code, e.message, job.req_id, job.job_id), final=True)
        except ValueError as e:
            if job.kind == P.REFUSE:   # Pipeline.refuse: masks/options that do not fit the kept job
                self.counters["errors"] += 1
                log.warning("job %s: cannot re-fuse: %s", job.job_id, e)
                emit(P.error_header("bad_request", f"cannot re-fuse: {e}", job.req_id, job.job_id), final=True)
            else:
                self._internal_error(job, e, emit)
        except MemoryError:
            self.counters["errors"] += 1
            log.error("job %s ran out of memory", job.job_id)
            emit(P.error_header("out_of_memory", "the server ran out of memory for this image", job.req_id,
                                job.job_id), final=True)
        except Exception as e:
            self._internal_error(job, e, emit)
        finally:
            job.pixels = job.masks = job.fusion_state = job.instances = None   # the cache keeps what refuse needs

    def _internal_error(self, job: Job, e: BaseException, emit: Callable[..., None]) -> None:
        self.counters["errors"] += 1
        log.error("job %s failed unexpectedly", job.job_id, exc_info=(type(e), e, e.__traceback__))
        emit(P.error_header("internal", f"unexpected server error: {type(e).__name__}: {e}"[:500],
                            job.req_id, job.job_id), final=True)


def weights_info(models_dir: Path | None) -> dict[str, Any]:
    """The weights part of ``info``, from the model registry (names, kinds, labels for the GIMP dialog, status
    "ok" / "missing" / "corrupt" by cheap checks): see :func:`patchcolor.models.weights_status`."""
    from .. import models

    return models.weights_status(models_dir)
