"""``patchcolor serve``: a long-running ZeroMQ ROUTER backend (protocol: docs/protocol.md).

Threads:

* the **main thread** owns the ROUTER socket. It validates every request (``protocol.parse_request``) before
  anything is allocated, answers ``ping``/``info``/``cancel`` at once (also while jobs run), puts jobs into a
  bounded FIFO queue (full -> ``busy``) and forwards the workers' events to the clients;
* one **worker thread per device** takes jobs from the queue and runs its own ``Pipeline``. Workers never touch
  the ROUTER socket (ZeroMQ sockets are not thread-safe): they push ``[job id, final flag, envelope..., header,
  data...]`` to the main thread over an inproc PUSH/PULL pair. Pixels travel as zero-copy messages the whole way:
  received frame -> ``SourceImage.from_buffer`` view -> pipeline; result array -> inproc -> ROUTER -> TCP.

Requests are read frame by frame (receive.py): the header is checked first, then every data frame against what
the header announced; a message that breaks the rules is drained without keeping its frames and answered with
one ``error``. Remote clients' jobs are admitted by limits.py (option bounds + memory estimate).

Jobs belong to their creator: each has a secret token (``accepted``/``result`` carry it) that ``cancel``,
``ping`` with a job and ``refuse`` must show, plus the creator's CURVE key where the server uses CURVE.

A peer that has gone away is noticed through the ROUTER's monitor socket (``EVENT_DISCONNECTED``, also after a
heartbeat timeout; requests carry their connection's file descriptor, see peers.py): its queued jobs are dropped
at once and its running job is cancelled at the next stage boundary. A reply to a vanished peer
(``ZMQ_ROUTER_MANDATORY`` -> ``EHOSTUNREACH``) cancels its job too.
SIGTERM/SIGINT: queued jobs are cancelled, the running ones are asked to stop, sockets are closed, exit code 0
(a second signal exits at once).
"""
from __future__ import annotations

import errno
import functools
import hmac
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
from ..heap import keep_freed_memory, release_memory
from ..options import PRESETS, make_options
from ..prepare import SourceImage
from . import protocol as P
from .auth import ServerKeys, apply_server_curve, check_endpoint, start_authenticator
from .cache import ByteLRU
from .hints_wire import PreviewSessions, preview_message, run_preview
from .limits import RemoteLimits, available_memory, check_job
from .peers import Connections, Peer
from .receive import Incoming, receive_message

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
    untrusted_loopback: bool = False        # treat loopback clients as remote (SSH tunnel, proxy)
    remote_limits: RemoteLimits = field(default_factory=RemoteLimits)


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
    hints: SourceImage | None = None           # colorize/preview: the colour-hint map (a frame view)
    preview: int | None = None                 # preview only: the proxy's long side
    draft: bool = False                        # preview only: a draft is acceptable
    cancel: threading.Event = field(default_factory=threading.Event)
    state: str = "queued"           # queued -> running -> done | cancelled
    submitted: float = field(default_factory=time.monotonic)
    peer: Peer | None = None
    token: str = field(default="", repr=False)
    v: int = P.PROTOCOL_VERSION     # protocol version of the request: every reply about the job uses it
    seq: int = 0                    # per-server job number: what the log shows at INFO (ids only at DEBUG)


class JobQueue:
    """Bounded FIFO of jobs shared by the workers. ``offer`` never blocks (full -> False)."""

    def __init__(self, capacity: int):
        self.capacity = max(1, int(capacity))
        self._q: deque[Job] = deque()
        self._cv = threading.Condition()
        self._closed = False
        self.running = 0
        self._busy = 0                  # jobs taken by workers and not yet given back (worker_done)

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
            self._busy += 1
            return job

    def worker_done(self) -> bool:
        """A worker has finished the job it took. True when the server is now idle: nothing queued and no other
        worker busy (``running`` lags behind: the main thread counts a job down when it forwards its result)."""
        with self._cv:
            self._busy -= 1
            return self._busy == 0 and not self._q

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


def _redact(message: str, header: dict[str, Any] | None) -> str:
    """``message`` without the request's job ids (they are logged at DEBUG only)."""
    for key in ("job", "base_job"):
        value = header.get(key) if header else None
        if isinstance(value, str) and value:
            message = message.replace(value, "<job>")
    return message


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
        self.local_transport = config.endpoint.startswith(("ipc://", "inproc://"))
        self.conns = Connections()
        self.monitor: zmq.Socket | None = None
        self._seq = itertools.count(1)
        self._given_pipelines = list(pipelines) if pipelines is not None else None
        self.cache: ByteLRU[str, P.JobRecord] = ByteLRU(config.cache_bytes)
        self.previews = PreviewSessions()      # recent preview sessions (all workers; keyed per pipeline)
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

    # ------------------------------------------------------------------------------------------------ life cycle
    def start(self) -> None:
        """Make the pipelines (and preload), bind the socket, start the workers. Raises on failure."""
        cfg = self.config
        keep_freed_memory()     # reuse each job's freed feature maps for the next one (heap.py; trimmed when idle)
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
            release_memory()    # the preload's peak: idle until the first job

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
        self.monitor = r.get_monitor_socket(zmq.EVENT_DISCONNECTED)
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
        if self.monitor is not None:
            poller.register(self.monitor, zmq.POLLIN)
        while not self._stop.is_set():
            try:
                ready = dict(poller.poll(100))
            except zmq.ZMQError as e:
                if e.errno == errno.EINTR:
                    continue
                raise
            if self.events in ready:
                self._forward_events()
            if self.monitor in ready:
                self._drain_monitor()
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
            self._send_final_now(job, {"v": job.v, "type": P.CANCELLED, "id": job.req_id,
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
        if self.monitor is not None:
            self.router.disable_monitor()
            self.monitor.close(linger=0)
            self.monitor = None
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
                msg = receive_message(self.router, self.limits, self._refuse_sizes)
            except zmq.ZMQError as e:
                log.warning("receive failed: %s", e)
                return
            if msg is None:
                return
            try:
                self._on_message(msg)
            except Exception:   # never die on a message
                log.exception("unexpected failure while handling a request")

    def _drain_monitor(self) -> None:
        """Disconnected clients: drop their queued jobs now, cancel their running ones (main thread)."""
        if self.monitor is None:
            return
        from zmq.utils.monitor import parse_monitor_message

        while True:
            try:
                event = parse_monitor_message(self.monitor.recv_multipart(zmq.NOBLOCK))
            except zmq.Again:
                return
            except (zmq.ZMQError, ValueError, IndexError) as e:
                log.debug("unreadable monitor event: %s", e)
                continue
            if event.get("event") != zmq.EVENT_DISCONNECTED:
                continue
            conn = self.conns.disconnected(int(event["value"]))
            orphans = [j for j in self.jobs.values() if j.peer is not None and j.peer.conn == conn]
            dropped = running = 0
            for job in orphans:
                if self.queue.remove(job):
                    self.jobs.pop(job.job_id, None)
                    job.pixels = job.masks = job.fusion_state = job.instances = None
                    dropped += 1
                elif not job.cancel.is_set():
                    job.cancel.set()
                    running += 1
            if orphans:
                log.info("client %s disconnected: %d queued job(s) dropped, %d running job(s) cancelled",
                         orphans[0].peer.label if orphans[0].peer else "?", dropped, running)

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
            who = job.peer.label if job is not None and job.peer is not None else "?"
            if e.errno == zmq.EHOSTUNREACH:
                if job is not None and job.state in ("queued", "running") and not job.cancel.is_set():
                    log.info("client %s is gone: cancelling job #%d", who, job.seq)
                    self._cancel(job)
            elif e.errno == zmq.EAGAIN:
                log.warning("client %s is not reading its replies: message dropped", who)
            else:
                log.warning("send to client %s failed: %s", who, e)
            return False

    def _reply(self, envelope: list[bytes], header: dict[str, Any], data: Sequence[Any] = (),
               job: Job | None = None) -> bool:
        return self._send([*envelope, P.encode_header(header), *data], job)

    def _send_final_now(self, job: Job, header: dict[str, Any]) -> None:
        """Final message for a job that never reached a worker (main thread)."""
        self.jobs.pop(job.job_id, None)
        job.pixels = job.masks = job.fusion_state = job.instances = None
        self._reply(job.envelope, header)

    def _peer_of(self, msg: Incoming) -> Peer:
        return self.conns.peer(msg.envelope[0], msg.header_frame, self.local_transport,
                               self.config.untrusted_loopback)

    def _owner(self, peer: Peer | None) -> str | None:
        """The CURVE key a job is bound to: the creator's, when clients have lasting keys (``authorized_clients``);
        with any-client CURVE each connection has a throwaway key, so only the token binds the job."""
        if peer is None or self.keys is None or self.keys.authorized_dir is None:
            return None
        return peer.user_id

    def _may_use(self, token: str, owner: str | None, creator: Peer | None, given: str | None,
                 peer: Peer) -> bool:
        """Whether ``peer`` may act on a job: its CURVE key must be the creator's (when there was one), and it
        must show the job's token, or (requests without a token, e.g. protocol 1) be the creating connection."""
        if owner is not None and peer.user_id != owner:
            return False
        if given is not None:
            return hmac.compare_digest(given.encode(), token.encode())
        return creator is not None and creator.conn == peer.conn and creator.identity == peer.identity

    def _refuse_sizes(self, req: P.Request, msg: Incoming, sizes: list[int] | None) -> list[int] | None:
        """Exact mask frame sizes of a ``refuse`` (from the kept job) before its frames are kept."""
        if not isinstance(req, P.RefuseRequest):
            return sizes
        self._drain_monitor()
        peer = self._peer_of(msg)
        rec = self.cache.get(req.base_job)
        if rec is None or not self._may_use(rec.token, rec.owner, rec.creator, req.base_token, peer):
            raise P.ProtocolError("unknown_job", f"job {req.base_job} is not kept on this server (finished long "
                                  "ago, evicted, never run, or its token is missing or wrong): run colorize "
                                  "again", req.id, req.job)
        return [rec.out_width * rec.out_height] * rec.n_instances

    def _on_message(self, msg: Incoming) -> None:
        if msg.error is not None:
            e = msg.error
            self._rejected_log("rejected request from %s: %s: %s%s", self._peer_of(msg).label
                               if msg.header_frame is not None else "?", e.code, _redact(e.message, msg.header),
                               f" ({msg.dropped_frames} frame(s), {msg.dropped_bytes / 1e6:.1f} MB dropped)"
                               if msg.dropped_frames else "")
            extra = {"supported": list(P.SUPPORTED_VERSIONS)} if e.code == "version" else {}
            self._reply(msg.envelope, P.error_header(e.code, e.message, e.req_id, e.job, msg.version, **extra))
            return
        assert msg.request is not None
        self._drain_monitor()          # a disconnect queued before this request was read must be seen first
        peer = self._peer_of(msg)
        try:
            self._dispatch(msg.envelope, msg.request, peer)
        except P.ProtocolError as e:
            self._rejected_log("rejected request from %s: %s: %s", peer.label, e.code, _redact(e.message, msg.header))
            self._reply(msg.envelope, P.error_header(e.code, e.message, e.req_id, e.job, msg.version))

    def _dispatch(self, envelope: list[bytes], req: P.Request, peer: Peer) -> None:
        if isinstance(req, P.PingRequest):
            pong = {"v": req.v, "type": P.PONG, "id": req.id, "time": time.time(),
                    "queued": len(self.queue), "running": self.queue.running}
            if req.job is not None:
                job = self.jobs.get(req.job)
                known = job is not None and self._may_use(job.token, self._owner(job.peer), job.peer, req.token,
                                                          peer)
                pong["job"], pong["job_state"] = req.job, job.state if known and job is not None else "unknown"
            self._reply(envelope, pong)
        elif isinstance(req, P.InfoRequest):
            self._reply(envelope, self._info(req.id, req.v, peer))
        elif isinstance(req, P.CancelRequest):
            self._on_cancel(envelope, req, peer)
        else:
            self._on_job(envelope, req, peer)

    def _on_cancel(self, envelope: list[bytes], req: P.CancelRequest, peer: Peer) -> None:
        job = self.jobs.get(req.job)
        if job is None or not self._may_use(job.token, self._owner(job.peer), job.peer, req.token, peer):
            raise P.ProtocolError("unknown_job", f"job {req.job} is not queued or running (or the token is "
                                  "missing or wrong)", req.id, req.job)
        state = self._cancel(job)
        self._reply(envelope, {"v": req.v, "type": P.ACK, "id": req.id, "job": req.job, "state": state})

    def _cancel(self, job: Job) -> str:
        """Cancel a job: a queued one is dropped now, a running one stops at its next stage boundary."""
        if self.queue.remove(job):
            log.info("job #%d cancelled while queued", job.seq)
            self._send_final_now(job, {"v": job.v, "type": P.CANCELLED, "id": job.req_id, "job": job.job_id})
            return "cancelled"
        job.cancel.set()
        return "cancelling"

    def _on_job(self, envelope: list[bytes], req: P.ColorizeRequest | P.RefuseRequest, peer: Peer) -> None:
        if self._stopping:
            raise P.ProtocolError("shutting_down", "the server is shutting down", req.id, req.job)
        if req.job in self.jobs:
            raise P.ProtocolError("duplicate_job", f"job {req.job} is already queued or running", req.id, req.job)
        avail = available_memory()
        token = req.token or P.new_token()
        if isinstance(req, P.ColorizeRequest):
            check_job(req.width, req.height, req.format, req.options, peer.remote, self.config.remote_limits, avail,
                      req.id, req.job)
            job = Job(req.job, req.id, envelope, P.PREVIEW if req.preview else P.COLORIZE, req.width, req.height,
                      req.format, req.pixels, req.options, instances=req.instances, hints=req.hints,
                      preview=req.preview, draft=req.draft)
        else:
            rec = self.cache.get(req.base_job)
            if rec is None or not self._may_use(rec.token, rec.owner, rec.creator, req.base_token, peer):
                raise P.ProtocolError("unknown_job", f"job {req.base_job} is not kept on this server (finished "
                                      "long ago, evicted or never run): run colorize again", req.id, req.job)
            masks = P.check_refuse(req, rec)
            opts = req.options or rec.options
            check_job(rec.width, rec.height, rec.format, opts, peer.remote, self.config.remote_limits, avail,
                      req.id, req.job)
            job = Job(req.job, req.id, envelope, P.REFUSE, rec.width, rec.height, rec.format, rec.pixels,
                      opts, masks=masks, fusion_state=rec.state)
        job.peer, job.token, job.v, job.seq = peer, token, req.v, next(self._seq)
        position = self.queue.offer(job)
        if position is None:
            raise P.ProtocolError("busy", f"the job queue is full ({self.queue.capacity} waiting): try again later",
                                  req.id, req.job)
        self.jobs[job.job_id] = job
        # Sent before any event of this job: workers' events are forwarded by this thread, later.
        self._reply(envelope, {"v": req.v, "type": P.ACCEPTED, "id": req.id, "job": req.job, "token": token,
                               "position": position}, job=job)
        log.info("job #%d (%s %dx%d %s) from %s%s queued at %d", job.seq, job.kind, job.width, job.height,
                 job.format, peer.label, " (remote)" if peer.remote else "", position)
        log.debug("job #%d has id %s", job.seq, job.job_id)

    def _info(self, req_id: str, v: int, peer: Peer) -> dict[str, Any]:
        stats = self.cache.stats()
        lim = self.config.remote_limits
        info: dict[str, Any] = {
            "v": v, "type": P.INFO, "id": req_id, "protocol": P.PROTOCOL_VERSION,
            "supported_versions": list(P.SUPPORTED_VERSIONS), "devices": self.devices,
            **weights_info(self._models_dir),
            "formats": list(P.PIXEL_FORMATS), "stages": list(P.STAGES), "presets": {
                k: o.to_dict() for k, o in PRESETS.items()},
            "max_pixels": self.limits.max_pixels, "queue_size": self.queue.capacity, "queued": len(self.queue),
            "running": self.queue.running, "curve": self.keys is not None,
            "cache": {"entries": stats.entries, "bytes": stats.bytes, "max_bytes": stats.max_bytes},
            "uptime_s": round(time.time() - self.started, 1), "remote": peer.remote,
        }
        if peer.remote:   # what this client may ask for; the server's paths and library versions stay private
            info.pop("models_dir", None)
            info["limits"] = {"net_size": lim.net_size, "batch_size": lim.batch_size,
                              "max_instances": lim.max_instances, "max_side": lim.max_side,
                              "min_score_thresh": lim.min_score_thresh, "job_bytes": lim.job_bytes}
        else:
            versions = {"patchcolor": __version__, "python": platform.python_version(), "pyzmq": zmq.__version__,
                        "libzmq": zmq.zmq_version(), "numpy": np.__version__}
            if "torch" in sys.modules:
                versions["torch"] = str(sys.modules["torch"].__version__)
                info["cpu"] = _cpu_info()
            info["versions"] = versions
        return info

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
                    log.exception("job #%d: failure while reporting its outcome", job.seq)
                del job
                if self.queue.worker_done():
                    release_memory()    # idle: the job's peak goes back to the system (never raises)
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
                emit(P.progress_header(job.req_id, job.job_id, str(stage), float(fraction), overall[0], job.v))
            except zmq.ZMQError as e:   # a lost progress event must not fail the job
                log.warning("job #%d: progress event not sent: %s", job.seq, e)

        t0 = time.perf_counter()
        try:
            if job.cancel.is_set():
                raise Cancelled("cancelled before it started")
            assert job.pixels is not None
            src = SourceImage.from_buffer(job.pixels, job.width, job.height, job.format)
            if job.kind == P.PREVIEW:
                pv = run_preview(self.previews, pipeline, job.pixels, job.width, job.height, job.format,
                                 job.options, job.hints, job.preview or 0, progress, job.cancel.is_set,
                                 draft=job.draft)
                header, data = preview_message(job.req_id, job.job_id, pv, job.v)
                emit(header, data, final=True)
                log.info("job #%d (preview) done on %s in %.2f s: %d network input(s) run", job.seq, device,
                         time.perf_counter() - t0, pv.computed)
                return
            if job.kind == P.COLORIZE:
                extra = {"hints": job.hints} if job.hints is not None else {}   # fake pipelines lack it
                reuse = (None if job.instances is not None else
                         self.previews.find(pipeline, job.pixels, job.width, job.height, job.format))
                if reuse is not None:     # the dialog previewed this image: its detections / network outputs
                    extra["reuse"] = reuse
                result = pipeline.run(src, job.options, progress=progress, cancelled=job.cancel.is_set,
                                      instances=job.instances, **extra)
            else:
                result = pipeline.refuse(src, job.fusion_state, job.masks, job.options, progress=progress,
                                         cancelled=job.cancel.is_set)
            header, data = P.result_message(job.req_id, job.job_id, result, job.v)
            rec = P.JobRecord(job.width, job.height, job.format, job.pixels, job.options, result.state,
                              header["width"], header["height"], len(result.instances), job.token,
                              self._owner(job.peer), job.peer)
            header["token"] = job.token
            header["hints"] = int(getattr(result, "hint_count", 0))
            header["refusable"] = self.cache.put(job.job_id, rec, rec.nbytes)
            header["timings"]["server_total"] = round(time.perf_counter() - t0, 4)
            emit(header, data, final=True)
            log.info("job #%d done on %s in %.2f s: %dx%d %s, %d instance(s), %d progress event(s)", job.seq,
                     device, time.perf_counter() - t0, header["width"], header["height"], header["format"],
                     len(result.instances), next(seq))
        except Cancelled as e:
            log.info("job #%d cancelled after %.2f s", job.seq, time.perf_counter() - t0)
            emit({"v": job.v, "type": P.CANCELLED, "id": job.req_id, "job": job.job_id,
                  "reason": str(e)}, final=True)
        except PatchColorError as e:
            log.warning("job #%d failed: %s: %s", job.seq, e.code, e.message)
            emit(P.error_header(e.code, e.message, job.req_id, job.job_id, job.v), final=True)
        except ValueError as e:
            if job.kind == P.REFUSE:   # Pipeline.refuse: masks/options that do not fit the kept job
                log.warning("job #%d: cannot re-fuse: %s", job.seq, e)
                emit(P.error_header("bad_request", f"cannot re-fuse: {e}", job.req_id, job.job_id, job.v),
                     final=True)
            else:
                self._internal_error(job, e, emit)
        except MemoryError:
            log.error("job #%d ran out of memory", job.seq)
            emit(P.error_header("out_of_memory", "the server ran out of memory for this image", job.req_id,
                                job.job_id, job.v), final=True)
        except Exception as e:
            self._internal_error(job, e, emit)
        finally:
            job.pixels = job.masks = job.fusion_state = job.instances = job.hints = None   # the cache keeps what refuse needs

    def _internal_error(self, job: Job, e: BaseException, emit: Callable[..., None]) -> None:
        log.error("job #%d failed unexpectedly", job.seq, exc_info=(type(e), e, e.__traceback__))
        emit(P.error_header("internal", f"unexpected server error: {type(e).__name__}: {e}"[:500],
                            job.req_id, job.job_id, job.v), final=True)


@functools.lru_cache(maxsize=1)
def _cpu_info() -> dict[str, Any]:
    """The CPU line and whether bf16/fp16 run natively (what the dialog's "Fast" choice gets), probed once."""
    from ..precision import cpu_report

    report = cpu_report()
    return {"line": report.line(), "model": report.model, "cores": report.cores, "isa": report.isa,
            "native_bf16": report.native_bf16, "native_fp16": report.native_fp16, "winograd": report.winograd}


def weights_info(models_dir: Path | None) -> dict[str, Any]:
    """The weights part of ``info``, from the model registry (names, kinds, labels for the GIMP dialog, status
    "ok" / "missing" / "corrupt" by cheap checks): see :func:`patchcolor.models.weights_status`."""
    from .. import models

    return models.weights_status(models_dir)
