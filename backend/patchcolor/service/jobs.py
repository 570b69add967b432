"""The server's job state: a job while it waits or runs (:class:`Job`), the queue the workers take jobs from
(:class:`JobQueue`), and what is kept of a finished job for ``refuse`` (:class:`JobRecord`).

Only the main thread creates jobs and touches the server's tables; workers take jobs from the queue (the one
structure both sides share, behind its lock) and report back over an inproc socket (server.py).
"""
from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..options import Options
from ..prepare import SourceImage
from . import protocol as P
from .peers import Peer


@dataclass(eq=False)
class Job:
    """A queued or running colorize/refuse/preview job. ``pixels`` views the request frame (no copy)."""

    job_id: str
    req_id: str
    envelope: list[bytes]
    kind: str                       # protocol.COLORIZE, protocol.REFUSE or protocol.PREVIEW
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

    def release(self) -> None:
        """Let go of the request's frames (the cache keeps what ``refuse`` needs)."""
        self.pixels = self.masks = self.fusion_state = self.instances = self.hints = None


class JobQueue:
    """Bounded FIFO of jobs shared by the workers. ``offer`` never blocks (full -> None)."""

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


@dataclass
class JobRecord:
    """What the server keeps of a finished job so that ``refuse`` can re-fuse it (LRU-cached by job id).

    ``pixels`` is the request's source frame (a view; nothing is copied to keep it). ``token`` (and ``owner``,
    the creator's CURVE public key, when the server uses CURVE) must be shown to ``refuse`` it."""

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


def check_refuse(req: P.RefuseRequest, rec: JobRecord) -> list[np.ndarray]:
    """Mask frames of ``req`` against the kept job -> (H, W) uint8 views (no copy). Raises ProtocolError."""
    if len(req.masks) != rec.n_instances:
        raise P.ProtocolError("bad_request", f"job {req.base_job} has {rec.n_instances} instance(s); got "
                              f"{len(req.masks)} mask frame(s)", req.id, req.job)
    need = rec.out_width * rec.out_height
    for i, m in enumerate(req.masks):
        if m.nbytes != need:
            raise P.ProtocolError("bad_request", f"mask {i} is {m.nbytes} bytes; a {rec.out_width}x"
                                  f"{rec.out_height} gray8 mask needs {need}", req.id, req.job)
    return [np.frombuffer(m, np.uint8).reshape(rec.out_height, rec.out_width) for m in req.masks]
