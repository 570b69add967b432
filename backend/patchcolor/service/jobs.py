"""The server's job state: a job while it waits or runs (:class:`Job`), the queue the workers take jobs from
(:class:`JobQueue`, round-robin across clients), and what is kept of a finished job for recompose
(:class:`JobRecord`).

Only the main thread creates jobs and touches the server's tables; workers take jobs from the queue (the one
structure both sides share, behind its lock) and report back over an inproc socket (server.py).
"""
from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Hashable

import numpy as np

from ..options import Options
from ..prepare import SourceImage
from . import protocol
from .peers import Peer


@dataclass(eq=False)
class Job:
    """A queued or running colorize/recompose/preview job. ``pixels`` views the request frame (no copy)."""

    job_id: str
    req_id: str
    envelope: list[bytes]
    kind: str                       # protocol.COLORIZE, protocol.RECOMPOSE or protocol.PREVIEW
    width: int
    height: int
    format: str
    pixels: memoryview | None
    options: Any                    # patchcolor.options.Options
    masks: list[np.ndarray] | None = None      # recompose only
    instances: list[protocol.GivenInstance] | None = None   # colorize with given instances instead of the detector
    fusion_state: Any = None                   # recompose only: the kept FusionState
    hints: SourceImage | None = None           # colorize/preview: the colour-hint map (a frame view)
    preview: int | None = None                 # preview only: the proxy's long side
    draft: bool = False                        # preview only: a draft is acceptable
    cancel: threading.Event = field(default_factory=threading.Event)
    state: str = "queued"           # queued -> running -> done | cancelled
    submitted: float = field(default_factory=time.monotonic)
    peer: Peer | None = None
    token: str = field(default="", repr=False)
    v: int = protocol.PROTOCOL_VERSION     # protocol version of the request: every reply about the job uses it
    seq: int = 0                    # per-server job number: what the log shows at INFO (ids only at DEBUG)
    client: Hashable = None         # whose budget and queue lane the job counts in (server.client_key)
    scope: Hashable = None          # the preview sessions it may reuse (preview_cache.py)
    held: int = 0                   # request bytes it holds until its final event (limits.HeldBytes)

    def release(self) -> None:
        """Let go of the request's frames (the cache keeps what recompose needs)."""
        self.pixels = self.masks = self.fusion_state = self.instances = self.hints = None


class JobQueue:
    """The waiting jobs: one FIFO lane per client, taken round-robin across clients, shared by the workers.

    ``take`` serves the lane served least recently (a client's first lane before the lanes already served, in
    the order they came), so a client that keeps the queue full waits its turn while every other client's next
    job goes ahead of its second. ``offer`` never blocks: it refuses (None) when ``capacity`` jobs wait in all or
    ``client_capacity`` for that client. A job's lane is its ``client`` attribute (None when it has none)."""

    #: Clients whose last turn is remembered after their lane has emptied (a returning client that was served
    #: recently must not count as new); the ones served longest ago are forgotten first.
    REMEMBERED = 1024

    def __init__(self, capacity: int, client_capacity: int | None = None):
        self.capacity = max(1, int(capacity))
        self.client_capacity = max(1, int(client_capacity or capacity))
        self._lanes: dict[Hashable, deque[Job]] = {}
        self._turns: dict[Hashable, int] = {}     # client -> the take that last served it
        self._arrivals: dict[Hashable, int] = {}  # lane -> when it was opened (ties between never-served lanes)
        self._taken = itertools.count(1)
        self._opened = itertools.count()
        self._waiting = 0
        self._cv = threading.Condition()
        self._closed = False
        self.running = 0
        self._busy = 0                  # jobs taken by workers and not yet given back (worker_done)

    def _order(self) -> list[Hashable]:
        """Lanes in the order they will be served (least recently served first)."""
        return sorted(self._lanes, key=lambda c: (self._turns.get(c, 0), self._arrivals[c]))

    def waiting(self, client: Hashable = None) -> int:
        """Jobs of ``client`` waiting."""
        with self._cv:
            lane = self._lanes.get(client)
            return len(lane) if lane is not None else 0

    def offer(self, job: Job) -> int | None:
        """Queue ``job`` in its client's lane; its 0-based position (jobs taken before it if nothing else
        arrives), or None when the queue, the client's lane, or the server is closed for it."""
        client = getattr(job, "client", None)
        with self._cv:
            lane = self._lanes.get(client)
            if self._closed or self._waiting >= self.capacity or (lane is not None
                                                                   and len(lane) >= self.client_capacity):
                return None
            if lane is None:
                lane = self._lanes[client] = deque()
                self._arrivals[client] = next(self._opened)
            lane.append(job)
            self._waiting += 1
            self._cv.notify()
            rounds = len(lane) - 1        # complete rounds before this job's
            order = self._order()
            mine = order.index(client)
            return rounds + sum(min(len(self._lanes[c]), rounds + (i < mine))
                                for i, c in enumerate(order) if c != client)

    def take(self) -> Job | None:
        """Next job (marked running), blocking; None once the queue is closed."""
        with self._cv:
            while not self._waiting and not self._closed:
                self._cv.wait()
            if not self._waiting:
                return None
            order = self._order()
            client = order[0]
            job = self._pop(client)
            self._turns[client] = next(self._taken)
            if len(self._turns) > self.REMEMBERED:     # forget those served longest ago: they would go first anyway
                idle = sorted((c for c in self._turns if c not in self._lanes), key=self._turns.__getitem__)
                for c in idle[:len(self._turns) - self.REMEMBERED]:
                    del self._turns[c]
            job.state = "running"
            self.running += 1
            self._busy += 1
            return job

    def _pop(self, client: Hashable, job: Job | None = None) -> Job:
        lane = self._lanes[client]
        if job is None:
            job = lane.popleft()
        else:
            lane.remove(job)
        self._waiting -= 1
        if not lane:
            del self._lanes[client], self._arrivals[client]
        return job

    def worker_done(self) -> bool:
        """A worker has finished the job it took. True when the server is now idle: nothing queued and no other
        worker busy (``running`` lags behind: the main thread counts a job down when it forwards its result)."""
        with self._cv:
            self._busy -= 1
            return self._busy == 0 and not self._waiting

    def finished(self) -> None:
        with self._cv:
            self.running -= 1

    def remove(self, job: Job) -> bool:
        """Take a still-queued job out (cancel). False when a worker already has it."""
        client = getattr(job, "client", None)
        with self._cv:
            if job not in self._lanes.get(client, ()):
                return False
            self._pop(client, job)
            job.state = "cancelled"
            return True

    def drain(self) -> list[Job]:
        with self._cv:
            jobs = [j for c in self._order() for j in self._lanes[c]]
            self._lanes.clear()
            self._arrivals.clear()
            self._waiting = 0
            for j in jobs:
                j.state = "cancelled"
            return jobs

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()

    def __len__(self) -> int:
        with self._cv:
            return self._waiting


@dataclass
class JobRecord:
    """What the server keeps of a finished job so that it can be recomposed (LRU-cached by job id).

    ``pixels`` is the request's source frame (a view; nothing is copied to keep it). ``token`` (and ``owner``,
    the creator's CURVE public key, when the server uses CURVE) must be shown to recompose it."""

    width: int
    height: int
    format: str
    pixels: memoryview = field(repr=False)
    options: Options
    state: Any            # patchcolor.result.FusionState
    out_width: int
    out_height: int
    n_instances: int
    token: str = field(default="", repr=False)
    owner: str | None = None
    creator: Peer | None = field(default=None, repr=False)   # the Peer of the creating request

    @property
    def nbytes(self) -> int:
        return int(self.pixels.nbytes + getattr(self.state, "nbytes", 0) + 1024)

    def source(self) -> SourceImage:
        return SourceImage.from_buffer(self.pixels, self.width, self.height, self.format)


def check_recompose(req: protocol.RecomposeRequest, rec: JobRecord) -> list[np.ndarray]:
    """Mask frames of ``req`` against the kept job -> (H, W) uint8 views (no copy). Raises ProtocolError."""
    if len(req.masks) != rec.n_instances:
        raise protocol.ProtocolError("bad_request", f"job {req.base_job} has {rec.n_instances} instance(s); got "
                                     f"{len(req.masks)} mask frame(s)", req.id, req.job)
    need = rec.out_width * rec.out_height
    for i, m in enumerate(req.masks):
        if m.nbytes != need:
            raise protocol.ProtocolError("bad_request", f"mask {i} is {m.nbytes} bytes; a {rec.out_width}x"
                                         f"{rec.out_height} gray8 mask needs {need}", req.id, req.job)
    return [np.frombuffer(m, np.uint8).reshape(rec.out_height, rec.out_width) for m in req.masks]
