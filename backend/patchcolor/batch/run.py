"""The batch executor: each input goes read -> colorize -> write (:class:`Steps`), one after the other or
overlapped (a reader thread decodes the next input and a writer thread encodes the previous one while the
networks run; bounded queues of one image each). Outputs are the same bytes either way."""
from __future__ import annotations

import logging
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from ..errors import PatchColorError
from ..io import PNG_COMPRESS_LEVEL, load_image
from ..prepare import SourceImage
from .locks import Claim, take
from .outcome import FATAL_CODES, BatchSummary, ItemOutcome
from .outputs import describe_os_error, write_item
from .plan import BatchItem, BatchPlan

log = logging.getLogger("patchcolor")

RunFn = Callable[..., object]     # src -> Result (options bound by the caller); (src, item) with pass_item
OnOutcome = Callable[[ItemOutcome], None]


def run_batch(plan: BatchPlan, run: RunFn, *, max_pixels: int, compress_level: int = PNG_COMPRESS_LEVEL,
              overlap: bool = True, on_outcome: OnOutcome | None = None, pass_item: bool = False) -> BatchSummary:
    """Colorize ``plan.items`` with ``run``; the already-done inputs are reported as skipped.

    overlap: decode the next input and write the previous one while ``run`` works on the current one.
    A PatchColorError whose code is in FATAL_CODES (or an unwritable output) stops the batch: the inputs not
    reached are reported as not_attempted. pass_item: call ``run(src, item)`` (e.g. to find a per-input file)."""
    steps = Steps(run, max_pixels=max_pixels, compress_level=compress_level, pass_item=pass_item,
                  on_outcome=on_outcome)
    for item in plan.done:
        steps.report(ItemOutcome(item, "skipped"))
    (_overlapped if overlap else _sequential)(steps, plan.items)
    reached = {id(o.item) for o in steps.outcomes}
    for item in plan.items:
        if id(item) not in reached:
            steps.report(ItemOutcome(item, "not_attempted"))
    order = {id(i): k for k, i in enumerate(plan.done + plan.items)}
    return BatchSummary(sorted(steps.outcomes, key=lambda o: order.get(id(o.item), 0)), steps.why)


def auto_overlap(networks_on_cpu: bool) -> bool:
    """Should the reader/writer threads overlap the networks? Only where a core is free for them: measured on a
    2-core machine (bench/bench_batch.py), a PNG encode beside torch's 2 OpenMP threads slowed the network more
    (+0.9 s per 1024×683 image) than the overlap saved (0.07 s). Networks on a GPU or a remote backend: yes."""
    if not networks_on_cpu:
        return True
    import torch

    return (os.cpu_count() or 1) > torch.get_num_threads()


def frames_note(src: SourceImage) -> str:
    """The one line said when a file holds several frames or pages (animated GIF, multi-page TIFF), else ""."""
    return f"only the first of its {src.frames} frames is colorized" if src.frames > 1 else ""


@dataclass
class Job:
    """One claimed input on its way through read -> colorize -> write. data: the SourceImage, then the Result."""

    item: BatchItem
    claim: Claim
    data: object = None
    seconds: dict[str, float] = field(default_factory=dict)
    note: str = ""


class Steps:
    """The three steps of one input, each reporting its own outcome (every error included) and releasing the
    claim when the input goes no further; ``stop`` is set by the first error after which nothing else can work
    (FATAL_CODES: weights, device, backend gone, disk full or read-only)."""

    def __init__(self, run: RunFn, *, max_pixels: int, compress_level: int, pass_item: bool,
                 on_outcome: OnOutcome | None):
        self.run, self.max_pixels, self.compress_level, self.pass_item = run, max_pixels, compress_level, pass_item
        self.on_outcome = on_outcome
        self.outcomes: list[ItemOutcome] = []
        self.stop = threading.Event()
        self.why = ""
        self._lock = threading.Lock()

    def report(self, o: ItemOutcome) -> None:
        with self._lock:
            if o.status == "failed" and o.code in FATAL_CODES:
                if self.stop.is_set():      # the same cause met by a thread running ahead: said once already
                    o = ItemOutcome(o.item, "not_attempted")
                else:
                    self.why = o.message
                    self.stop.set()
            self.outcomes.append(o)
        if self.on_outcome is not None:
            self.on_outcome(o)

    def _fail(self, job: Job, e: Exception, what: str, code: str) -> None:
        job.claim.release()
        if isinstance(e, PatchColorError):
            self.report(ItemOutcome(job.item, "failed", e.message, e.code))
        else:       # a bug on one odd image must not stop the batch
            log.debug("%s %s", what, job.item.src, exc_info=True)
            self.report(ItemOutcome(job.item, "failed", f"{what} {job.item.src.name}: {type(e).__name__}: {e}",
                                    code))

    def read(self, item: BatchItem) -> Job | None:
        """Claim and decode ``item``; None when it goes no further (busy, done meanwhile, failed)."""
        c = take(item)
        if isinstance(c, ItemOutcome):
            self.report(c)
            return None
        job = Job(item, c)
        t0 = time.perf_counter()
        try:
            job.data = load_image(item.src, self.max_pixels)
        except Exception as e:   # noqa: BLE001 - one bad file never stops the batch
            self._fail(job, e, "cannot read", "image_unreadable")
            return None
        job.seconds["read"] = time.perf_counter() - t0
        job.note = frames_note(job.data)
        return job

    def colorize(self, job: Job) -> Job | None:
        t0 = time.perf_counter()
        try:
            result = self.run(job.data, job.item) if self.pass_item else self.run(job.data)
        except Exception as e:   # noqa: BLE001 - PatchColorError: its sentence; anything else: one line
            self._fail(job, e, "could not colorize", "internal")
            return None
        job.seconds.update({k: float(v) for k, v in getattr(result, "timings", {}).items()})
        job.seconds["run"] = time.perf_counter() - t0
        job.data = result
        return job

    def write(self, job: Job) -> None:
        if self.stop.is_set():          # the batch stopped (disk full, backend gone): not attempted
            job.claim.release()
            return
        try:
            job.seconds.update(write_item(job.item, job.data, self.compress_level))
        except OSError as e:
            self._fail(job, describe_os_error(e, job.item.out), "cannot write", "")
            return
        except Exception as e:   # noqa: BLE001 - e.g. a codec refusing the array: say it, go on
            self._fail(job, e, "cannot write", "internal")
            return
        job.claim.release()
        self.report(ItemOutcome(job.item, "done", seconds=job.seconds, note=job.note))


def _sequential(steps: Steps, items: list[BatchItem]) -> None:
    for item in items:
        if steps.stop.is_set():
            return
        job = steps.read(item)
        job = steps.colorize(job) if job is not None else None
        if job is not None:
            steps.write(job)


_END = object()


def _overlapped(steps: Steps, items: list[BatchItem]) -> None:
    """Reader thread -> (queue of 1) -> networks in this thread -> (queue of 1) -> writer thread."""
    read_q: queue.Queue = queue.Queue(maxsize=1)
    write_q: queue.Queue = queue.Queue(maxsize=1)

    def reader() -> None:
        try:
            for item in items:
                if steps.stop.is_set():
                    break
                job = steps.read(item)
                if job is not None:
                    _put(read_q, job, steps.stop)
        finally:
            _put(read_q, _END, None)

    def writer() -> None:
        while (job := write_q.get()) is not _END:
            steps.write(job)

    threads = [threading.Thread(target=reader, name="batch-reader", daemon=True),
               threading.Thread(target=writer, name="batch-writer", daemon=True)]
    for t in threads:
        t.start()
    finished = False
    try:
        while (job := read_q.get()) is not _END:
            if steps.stop.is_set():
                job.claim.release()
                continue
            job = steps.colorize(job)
            if job is not None:
                write_q.put(job)
        finished = True
    finally:
        if not finished:       # stopped by an exception (SIGTERM, Ctrl-C): let the reader go, free its locks
            steps.stop.set()
            while threads[0].is_alive() or not read_q.empty():
                try:
                    job = read_q.get(timeout=0.1)
                except queue.Empty:
                    continue
                if job is not _END:
                    job.claim.release()
        write_q.put(_END)
        threads[1].join()


def _put(q: queue.Queue, job, stop: threading.Event | None) -> None:
    """Put without blocking forever once ``stop`` is set (the consumer may be gone; the job's claim is freed)."""
    while True:
        try:
            q.put(job, timeout=0.1)
            return
        except queue.Full:
            if stop is not None and stop.is_set():
                if isinstance(job, Job):
                    job.claim.release()
                return
