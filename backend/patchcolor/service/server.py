"""``patchcolor serve``: a long-running ZeroMQ ROUTER backend (protocol: docs/protocol.md).

Threads:

* the **main thread** (this module) owns the ROUTER socket. It validates every request before anything is kept,
  answers ``ping``/``info``/``cancel`` at once (also while jobs run), puts jobs into a bounded queue (full ->
  ``busy``; jobs.py) and forwards the workers' events to the clients;
* one **worker thread per device** (worker.py) takes jobs from the queue and runs its own ``Pipeline``; it sends
  every event of a job to the main thread over an inproc PUSH/PULL pair.

Requests are read frame by frame (receive.py): the header is checked first, then every data frame against what
the header announced; a message that breaks the rules is drained without keeping its frames and answered with
one ``error``. Remote clients' jobs are admitted by limits.py (option bounds + memory estimate).

Jobs belong to their creator: each has a secret token (``accepted``/``result`` carry it) that ``cancel``,
``ping`` with a job and a recompose must show, plus the creator's CURVE key where the server uses CURVE. A job id
is scoped to the connection that sent it: another connection's job of the same id is simply another job.

Every client (a connection; a CURVE key where clients have lasting keys) has its own budget of request bytes held
by its accepted jobs and its own lane in the queue, which the workers serve round-robin (limits.py, jobs.py);
all clients together have a global budget. A request larger than one client's budget is refused from its header.

A peer that has gone away is noticed through the ROUTER's monitor socket (``EVENT_DISCONNECTED``, also after a
heartbeat timeout; requests carry their connection's file descriptor, see peers.py): its queued jobs are dropped
at once and its running job is cancelled at the next stage boundary. A reply to a vanished peer
(``ZMQ_ROUTER_MANDATORY`` -> ``EHOSTUNREACH``) cancels its job too.
SIGTERM/SIGINT: queued jobs are cancelled, the running ones are asked to stop, sockets are closed, exit code 0
(a second signal exits at once).
"""
from __future__ import annotations

import errno
import hmac
import itertools
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Hashable, Sequence

import numpy as np
import zmq

from .. import __version__
from ..heap import keep_freed_memory, release_memory
from ..options import make_options
from ..prepare import SourceImage
from . import protocol
from .auth import ServerKeys, apply_server_curve, check_endpoint, start_authenticator
from .cache import ByteLRU
from .info import ServerFacts, info_reply
from .jobs import Job, JobQueue, JobRecord, check_recompose
from .limits import Budgets, HeldBytes, RemoteLimits, available_memory, check_job, default_budgets
from .peers import Connections, Peer
from .preview_cache import PreviewSessions
from .receive import TRIM_AFTER_BYTES, Incoming, receive_message
from .worker import Worker, make_record, remote_message

log = logging.getLogger("patchcolor.service")

#: factory(models_dir, device, max_pixels) -> an object with Pipeline's ``run`` / ``recompose``.
PipelineFactory = Callable[[Path | None, str, int], Any]


@dataclass
class ServerConfig:
    """Everything ``patchcolor serve`` can be told (see commands.py for the flags)."""

    endpoint: str = protocol.DEFAULT_ENDPOINT
    devices: tuple[str, ...] = ("auto",)
    models_dir: Path | None = None
    max_pixels: int = 100_000_000
    queue_size: int = 8                     # waiting jobs in all
    client_queue_size: int | None = None    # waiting jobs per client (None: half the queue)
    client_bytes: int | None = None         # request bytes one client's jobs may hold (None: limits.py)
    queue_bytes: int | None = None          # request bytes all jobs may hold (None: twice client_bytes)
    cache_bytes: int = 1 << 30
    curve_keys: Path | None = None
    preload: bool = False
    shutdown_grace_s: float = 60.0
    heartbeat_ms: int = 5000
    pipeline_factory: PipelineFactory | None = None
    untrusted_loopback: bool = False        # treat loopback clients as remote (SSH tunnel, proxy)
    remote_limits: RemoteLimits = field(default_factory=RemoteLimits)


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
        self.limits = protocol.Limits(config.max_pixels)
        self.keys: ServerKeys | None = check_endpoint(config.endpoint, config.curve_keys)
        self.local_transport = config.endpoint.startswith(("ipc://", "inproc://"))
        self.conns = Connections()
        self.monitor: zmq.Socket | None = None
        self._seq = itertools.count(1)
        self._given_pipelines = list(pipelines) if pipelines is not None else None
        self.budgets: Budgets = default_budgets(config.max_pixels, config.queue_size, config.client_queue_size,
                                                config.client_bytes, config.queue_bytes)
        self.held = HeldBytes(self.budgets)
        self.cache: ByteLRU[tuple[str, str], JobRecord] = ByteLRU(config.cache_bytes)   # by (job id, token)
        self.previews = PreviewSessions()      # recent preview sessions (all workers; keyed per pipeline)
        self.queue = JobQueue(self.budgets.queue_jobs, self.budgets.client_jobs)
        self.jobs: dict[int, Job] = {}          # queued or running, by job number (main thread only)
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
            worker = Worker(p, d, self.queue, self.ctx, self._events_ep, self.previews, self._keep,
                            self._on_idle)
            t = threading.Thread(target=worker.run, name=f"worker-{i}-{d}", daemon=True)
            t.start()
            self.workers.append(t)
        b = self.budgets
        log.info("patchcolor %s serving protocol %d on %s (%s; %d worker(s): %s; queue %d, %d per client; "
                 "requests held %.0f MB, %.0f MB per client; cache %.0f MB; max %.0f MP)", __version__,
                 protocol.PROTOCOL_VERSION, self.bound_endpoint,
                 "CURVE" if self.keys else "loopback, no authentication",
                 len(self.workers), ", ".join(self.devices), b.queue_jobs, b.client_jobs, b.queue_bytes / 1e6,
                 b.client_bytes / 1e6, cfg.cache_bytes / 1e6, cfg.max_pixels / 1e6)

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
            self._send_final_now(job, {"v": job.v, "type": protocol.CANCELLED, "id": job.req_id,
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
                msg = receive_message(self.router, self.limits, self._frame_sizes)
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
                    self._forget(job)
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
            seq, final = int(frames[0].bytes), frames[1].bytes == b"1"
            job = self.jobs.get(seq)
            self._send(frames[2:], job)
            if final:
                self.queue.finished()
                if job is not None:
                    job.state = "done"
                    self._forget(job)

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
        return self._send([*envelope, protocol.encode_header(header), *data], job)

    def _send_final_now(self, job: Job, header: dict[str, Any]) -> None:
        """Final message for a job that never reached a worker (main thread)."""
        self._forget(job)
        self._reply(job.envelope, header)

    def _forget(self, job: Job) -> None:
        """A job has ended (or was dropped): it leaves the table and its client's budget (main thread)."""
        self.jobs.pop(job.seq, None)
        self.held.release(job.client, job.held)
        job.held = 0
        job.release()

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
        return _same_connection(creator, peer)

    def _frame_sizes(self, req: protocol.Request, msg: Incoming, sizes: list[int] | None) -> list[int] | None:
        """The exact data frame sizes of a request, checked before any of its frames is kept: a recompose's
        come from the kept job; a request larger than one client's budget could never be admitted."""
        if isinstance(req, protocol.RecomposeRequest):
            self._drain_monitor()
            rec = self._record(req.base_job, req.base_token, self._peer_of(msg))
            if rec is None:
                raise protocol.ProtocolError("unknown_job", f"job {req.base_job} is not kept on this server (finished "
                                             "long ago, evicted, never run, or its token is missing or wrong): run "
                                             "colorize again", req.id, req.job)
            sizes = [rec.out_width * rec.out_height] * rec.n_instances
        total, cap = sum(sizes or ()), self.budgets.max_request_bytes
        if total > cap:
            raise protocol.ProtocolError("too_large", f"this request's data frames are {total / 1e6:.0f} MB, over the "
                                         f"{cap / 1e6:.0f} MB one client may hold on this server",
                                         getattr(req, "id", None), getattr(req, "job", None))
        return sizes

    def _record(self, job_id: str, token: str | None, peer: Peer) -> JobRecord | None:
        """The kept record of finished job ``job_id`` that ``peer`` may recompose (with ``token``), or None.
        Records are kept by (job id, token), so a client that reuses another's job id never replaces it."""
        if token is not None:
            rec = self.cache.get((job_id, token))
            return rec if rec is not None and self._may_use(rec.token, rec.owner, rec.creator, token, peer) else None
        for (kept_id, _), rec in self.cache.items():      # protocol 1 (no tokens): the creating connection only
            if kept_id == job_id and self._may_use(rec.token, rec.owner, rec.creator, None, peer):
                return self.cache.get((job_id, rec.token))
        return None

    def _on_message(self, msg: Incoming) -> None:
        if msg.error is not None:
            e = msg.error
            self._rejected_log("rejected request from %s: %s: %s%s", self._peer_of(msg).label
                               if msg.header_frame is not None else "?", e.code, _redact(e.message, msg.header),
                               f" ({msg.dropped_frames} frame(s), {msg.dropped_bytes / 1e6:.1f} MB dropped)"
                               if msg.dropped_frames else "")
            extra = {"supported": list(protocol.SUPPORTED_VERSIONS)} if e.code == "version" else {}
            self._reply(msg.envelope, protocol.error_header(e.code, e.message, e.req_id, e.job, msg.version, **extra))
            return
        assert msg.request is not None
        self._drain_monitor()          # a disconnect queued before this request was read must be seen first
        peer = self._peer_of(msg)
        try:
            self._dispatch(msg.envelope, msg.request, peer)
            return
        except protocol.ProtocolError as e:
            self._rejected_log("rejected request from %s: %s: %s", peer.label, e.code, _redact(e.message, msg.header))
            message = remote_message(e.code, e.message) if peer.remote else e.message
            self._reply(msg.envelope, protocol.error_header(e.code, message, e.req_id, e.job, msg.version))
        refused = sum(len(f) for f in msg.data)    # a refused job's frames go now (the error's traceback is gone)
        msg.data.clear()
        msg.request = None
        if refused > TRIM_AFTER_BYTES:
            release_memory()

    def _dispatch(self, envelope: list[bytes], req: protocol.Request, peer: Peer) -> None:
        if isinstance(req, protocol.PingRequest):
            pong = {"v": req.v, "type": protocol.PONG, "id": req.id, "time": time.time(),
                    "queued": len(self.queue), "running": self.queue.running}
            if req.job is not None:
                job = self._find_job(req.job, req.token, peer)
                pong["job"], pong["job_state"] = req.job, job.state if job is not None else "unknown"
            self._reply(envelope, pong)
        elif isinstance(req, protocol.InfoRequest):
            self._reply(envelope, self._info(req.id, req.v, peer))
        elif isinstance(req, protocol.CancelRequest):
            self._on_cancel(envelope, req, peer)
        else:
            self._on_job(envelope, req, peer)

    def _on_cancel(self, envelope: list[bytes], req: protocol.CancelRequest, peer: Peer) -> None:
        job = self._find_job(req.job, req.token, peer)
        if job is None:
            raise protocol.ProtocolError("unknown_job", f"job {req.job} is not queued or running (or the token is "
                                         "missing or wrong)", req.id, req.job)
        state = self._cancel(job)
        self._reply(envelope, {"v": req.v, "type": protocol.ACK, "id": req.id, "job": req.job, "state": state})

    def _cancel(self, job: Job) -> str:
        """Cancel a job: a queued one is dropped now, a running one stops at its next stage boundary."""
        if self.queue.remove(job):
            log.info("job #%d cancelled while queued", job.seq)
            self._send_final_now(job, {"v": job.v, "type": protocol.CANCELLED, "id": job.req_id, "job": job.job_id})
            return "cancelled"
        job.cancel.set()
        return "cancelling"

    def _on_job(self, envelope: list[bytes], req: protocol.ColorizeRequest | protocol.RecomposeRequest,
                peer: Peer) -> None:
        if self._stopping:
            raise protocol.ProtocolError("shutting_down", "the server is shutting down", req.id, req.job)
        if any(j.job_id == req.job and _same_connection(j.peer, peer) for j in self.jobs.values()):
            raise protocol.ProtocolError("duplicate_job", f"job {req.job} is already queued or running", req.id,
                                         req.job)
        avail = available_memory()
        token = req.token or protocol.new_token()
        held = request_bytes(req)
        if isinstance(req, protocol.ColorizeRequest):
            check_job(req.width, req.height, req.format, req.options, peer.remote, self.config.remote_limits, avail,
                      req.id, req.job, frame_bytes=held,
                      hint_pixels=req.hints.width * req.hints.height if req.hints is not None else 0)
            kind = protocol.PREVIEW if req.preview else protocol.COLORIZE
            job = Job(req.job, req.id, envelope, kind, req.width, req.height, req.format, req.pixels, req.options,
                      instances=req.instances, hints=req.hints, preview=req.preview, draft=req.draft)
        else:
            rec = self._record(req.base_job, req.base_token, peer)
            if rec is None:
                raise protocol.ProtocolError("unknown_job", f"job {req.base_job} is not kept on this server (finished "
                                             "long ago, evicted or never run): run colorize again", req.id, req.job)
            masks = check_recompose(req, rec)
            opts = req.options or rec.options
            check_job(rec.width, rec.height, rec.format, opts, peer.remote, self.config.remote_limits, avail,
                      req.id, req.job, frame_bytes=rec.pixels.nbytes + held)
            job = Job(req.job, req.id, envelope, protocol.RECOMPOSE, rec.width, rec.height, rec.format, rec.pixels,
                      opts, masks=masks, fusion_state=rec.state)
        client = self.client_key(peer)
        self._admit(client, held, req)
        job.peer, job.token, job.v, job.seq = peer, token, req.v, next(self._seq)
        job.client, job.scope, job.held = client, client if peer.remote else None, held
        position = self.queue.offer(job)
        if position is None:
            raise protocol.ProtocolError("busy", f"the job queue is full ({self.queue.capacity} waiting): try again "
                                         "later", req.id, req.job)
        self.jobs[job.seq] = job
        self.held.charge(client, held)
        # Sent before any event of this job: workers' events are forwarded by this thread, later.
        self._reply(envelope, {"v": req.v, "type": protocol.ACCEPTED, "id": req.id, "job": req.job, "token": token,
                               "position": position}, job=job)
        log.info("job #%d (%s %dx%d %s, %.1f MB) from %s%s queued at %d", job.seq, job.kind, job.width,
                 job.height, job.format, held / 1e6, peer.label, " (remote)" if peer.remote else "", position)
        log.debug("job #%d has id %s", job.seq, job.job_id)

    def _admit(self, client: Hashable, held: int, req: protocol.ColorizeRequest | protocol.RecomposeRequest) -> None:
        """``busy`` when ``client`` has its share of the queue waiting, or its jobs (or all jobs) hold their
        budget of request bytes; a job is never refused for what it would need alone (that is ``too_large``,
        from its header)."""
        waiting, cap = self.queue.waiting(client), self.budgets.client_jobs
        if waiting >= cap:
            raise protocol.ProtocolError("busy", f"you already have {waiting} job(s) waiting, the most one client may: "
                                         "try again when one has started", req.id, req.job)
        if len(self.queue) >= self.queue.capacity:
            raise protocol.ProtocolError("busy", f"the job queue is full ({self.queue.capacity} waiting): try again "
                                         "later", req.id, req.job)
        why = self.held.refusal(client, held)
        if why is not None:
            raise protocol.ProtocolError("busy", why, req.id, req.job)

    def client_key(self, peer: Peer) -> Hashable:
        """Whose budget and queue lane a request counts in: the CURVE key where clients have lasting keys
        (``authorized_clients``), otherwise its connection."""
        owner = self._owner(peer)
        return ("key", owner) if owner is not None else ("connection", peer.conn, peer.identity)

    def _find_job(self, job_id: str, token: str | None, peer: Peer) -> Job | None:
        """The queued or running job ``job_id`` that ``peer`` may act on (with ``token``), or None."""
        for job in self.jobs.values():
            if job.job_id == job_id and self._may_use(job.token, self._owner(job.peer), job.peer, token, peer):
                return job
        return None

    def _info(self, req_id: str, v: int, peer: Peer) -> dict[str, Any]:
        facts = ServerFacts(self.devices, self._models_dir, self.limits.max_pixels, self.queue.capacity,
                            len(self.queue), self.queue.running, self.keys is not None, self.cache.stats(),
                            self.started, self.config.remote_limits, self.budgets)
        return info_reply(req_id, v, peer.remote, facts)

    # ---------------------------------------------------------------------------------------------- worker side
    def _keep(self, job: Job, result: Any, header: dict[str, Any]) -> bool:
        """Keep a finished colorize/recompose for a later recompose (a worker thread; the cache has its own lock)."""
        rec = make_record(job, result, header, self._owner(job.peer))
        return self.cache.put((job.job_id, job.token), rec, rec.nbytes)

    def _on_idle(self) -> None:
        """Nothing queued and no worker busy: the jobs' peak memory goes back to the system (never raises)."""
        release_memory()


def _same_connection(a: Peer | None, b: Peer) -> bool:
    return a is not None and a.conn == b.conn and a.identity == b.identity


def request_bytes(req: protocol.ColorizeRequest | protocol.RecomposeRequest) -> int:
    """The data frames a job request holds while it waits and runs: pixels, instance masks and hint map (a
    a recompose: its masks; the base job's pixels are the cache's)."""
    if isinstance(req, protocol.RecomposeRequest):
        return sum(m.nbytes for m in req.masks)
    total = req.pixels.nbytes if req.pixels is not None else 0
    total += sum(i.mask.nbytes for i in req.instances or ())
    return total + (req.hints_meta.nbytes if req.hints_meta is not None else 0)
