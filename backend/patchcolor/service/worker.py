"""A worker thread of the service: takes jobs from the queue and runs them on its own pipeline (one per device).

Workers never touch the ROUTER socket (ZeroMQ sockets are not thread-safe): every event of a job goes to the main
thread over an inproc PUSH socket as ``[job number, final flag, envelope..., header, data...]``, and the main
thread forwards it. Pixels travel as zero-copy messages the whole way: received frame -> ``SourceImage`` view ->
pipeline; result array -> inproc -> ROUTER -> TCP.

A remote client's errors never name the server's files: the pipeline's sentences about weights, and unexpected
errors, are replaced by fixed ones (the log keeps the details), and any other path in a message is blanked.
"""
from __future__ import annotations

import itertools
import logging
import re
import time
from typing import Any, Callable, Sequence

import zmq

from ..errors import Cancelled, PatchColorError
from ..prepare import SourceImage
from . import protocol
from .jobs import Job, JobQueue, JobRecord
from .preview_cache import PreviewSessions, run_preview

log = logging.getLogger("patchcolor.service")

#: keep(job, result, header) -> whether the finished job was kept for recompose (the server's cache).
KeepFn = Callable[[Job, Any, dict[str, Any]], bool]

#: What a remote client is told instead of the pipeline's sentence, which names the server's files.
REMOTE_MESSAGES = {
    "weights_missing": "the server does not have the weights this job needs (its info lists the status of each "
                       "model; the server's log has the details)",
    "weights_corrupt": "a weight file this job needs is damaged on the server (the server's log has the details)",
    "internal": "unexpected server error (the server's log has the details)",
}
#: An absolute path (POSIX, home-relative or with a drive letter) inside a message.
_PATH = re.compile(r"(?<![\w.])(?:~|[A-Za-z]:)?(?:[\\/][^\s'\"\\/:,;()]+)+[\\/]?")


def remote_message(code: str, message: str) -> str:
    """The sentence a remote client gets for an error: without the server's paths."""
    return REMOTE_MESSAGES.get(code) or _PATH.sub("<path>", message)


class Worker:
    """Runs jobs from ``queue`` on ``pipeline`` until the queue is closed (:meth:`run` is the thread's target).

    ``keep`` stores a finished colorize/recompose for a later recompose (the server's cache and ownership rules);
    ``on_idle`` is called whenever the server has nothing left to do (the job's peak memory goes back)."""

    def __init__(self, pipeline: Any, device: str, queue: JobQueue, ctx: zmq.Context, events_endpoint: str,
                 previews: PreviewSessions, keep: KeepFn, on_idle: Callable[[], None]):
        self.pipeline, self.device, self.queue = pipeline, device, queue
        self.ctx, self.events_endpoint = ctx, events_endpoint
        self.previews, self.keep, self.on_idle = previews, keep, on_idle

    def run(self) -> None:
        push = self.ctx.socket(zmq.PUSH)
        push.setsockopt(zmq.LINGER, 2000)
        push.connect(self.events_endpoint)
        try:
            while True:
                job = self.queue.take()
                if job is None:
                    break
                try:
                    self.run_job(job, push)
                except Exception:   # could not even report the failure: keep the worker alive
                    log.exception("job #%d: failure while reporting its outcome", job.seq)
                del job
                if self.queue.worker_done():
                    self.on_idle()
        finally:
            push.close()

    def run_job(self, job: Job, push: zmq.Socket) -> None:
        """Run one job and send its events; exactly one final event (result, error or cancelled)."""
        key = str(job.seq).encode()
        n_events = itertools.count()

        def emit(header: dict[str, Any], data: Sequence[Any] = (), final: bool = False) -> None:
            push.send_multipart([key, b"1" if final else b"0", *job.envelope, protocol.encode_header(header), *data],
                                copy=False)

        overall = [0.0]

        def progress(stage: str, fraction: float) -> None:
            overall[0] = max(overall[0], protocol.overall_fraction(str(stage), float(fraction)))
            next(n_events)
            try:
                emit(protocol.progress_header(job.req_id, job.job_id, str(stage), float(fraction), overall[0], job.v,
                                              getattr(stage, "text", None), getattr(stage, "eta_s", None)))
            except zmq.ZMQError as e:   # a lost progress event must not fail the job
                log.warning("job #%d: progress event not sent: %s", job.seq, e)

        def fail(code: str, message: str) -> None:
            if job.peer is not None and job.peer.remote:
                message = remote_message(code, message)
            emit(protocol.error_header(code, message, job.req_id, job.job_id, job.v), final=True)

        t0 = time.perf_counter()
        try:
            if job.cancel.is_set():
                raise Cancelled("cancelled before it started")
            if job.kind == protocol.PREVIEW:
                self._preview(job, progress, emit, t0)
                return
            header, data = self._colorize(job, progress, t0)
            emit(header, data, final=True)
            log.info("job #%d done on %s in %.2f s: %dx%d %s, %d instance(s), %d progress event(s)", job.seq,
                     self.device, time.perf_counter() - t0, header["width"], header["height"], header["format"],
                     len(header["instances"]), next(n_events))
        except Cancelled as e:
            log.info("job #%d cancelled after %.2f s", job.seq, time.perf_counter() - t0)
            emit({"v": job.v, "type": protocol.CANCELLED, "id": job.req_id, "job": job.job_id, "reason": str(e)},
                 final=True)
        except PatchColorError as e:
            log.warning("job #%d failed: %s: %s%s", job.seq, e.code, e.message,
                        f" ({e.details})" if e.details else "")
            fail(e.code, e.message)
        except ValueError as e:
            if job.kind != protocol.RECOMPOSE:
                self._internal_error(job, e, fail)
            else:   # Pipeline.recompose: masks/options that do not fit the kept job
                log.warning("job #%d: cannot recompose: %s", job.seq, e)
                fail("bad_request", f"cannot re-fuse: {e}")
        except MemoryError:
            log.error("job #%d ran out of memory", job.seq)
            fail("out_of_memory", "the server ran out of memory for this image")
        except Exception as e:
            self._internal_error(job, e, fail)
        finally:
            job.release()

    def _preview(self, job: Job, progress: Callable[[str, float], None], emit: Callable[..., None],
                 t0: float) -> None:
        pv = run_preview(self.previews, self.pipeline, job.pixels, job.width, job.height, job.format,
                         job.options, job.hints, job.preview or 0, progress, job.cancel.is_set, draft=job.draft,
                         scope=job.scope)
        header, data = protocol.preview_message(job.req_id, job.job_id, pv, job.v)
        emit(header, data, final=True)
        log.info("job #%d (preview) done on %s in %.2f s: %d network input(s) run", job.seq, self.device,
                 time.perf_counter() - t0, pv.computed)

    def _colorize(self, job: Job, progress: Callable[[str, float], None],
                  t0: float) -> tuple[dict[str, Any], list[Any]]:
        """Run a colorize or recompose job: its ``result`` (header, frames), kept for recompose when it fits."""
        assert job.pixels is not None
        src = SourceImage.from_buffer(job.pixels, job.width, job.height, job.format)
        if job.kind == protocol.COLORIZE:
            extra: dict[str, Any] = {"hints": job.hints} if job.hints is not None else {}   # fakes lack it
            reuse = (None if job.instances is not None else
                     self.previews.find(self.pipeline, job.pixels, job.width, job.height, job.format, job.scope))
            if reuse is not None:     # the dialog previewed this image: its detections / network outputs
                extra["reuse"] = reuse
            result = self.pipeline.run(src, job.options, progress=progress, cancelled=job.cancel.is_set,
                                       instances=job.instances, **extra)
        else:
            result = self.pipeline.recompose(src, job.fusion_state, job.masks, job.options, progress=progress,
                                          cancelled=job.cancel.is_set)
        header, data = protocol.result_message(job.req_id, job.job_id, result, job.v)
        header["token"] = job.token
        header["hints"] = int(getattr(result, "hint_count", 0))
        header["refusable"] = self.keep(job, result, header)    # the wire's name for "can be recomposed"
        header["timings"]["server_total"] = round(time.perf_counter() - t0, 4)
        return header, data

    def _internal_error(self, job: Job, e: BaseException, fail: Callable[[str, str], None]) -> None:
        log.error("job #%d failed unexpectedly", job.seq, exc_info=(type(e), e, e.__traceback__))
        fail("internal", f"unexpected server error: {type(e).__name__}: {e}"[:500])


def make_record(job: Job, result: Any, header: dict[str, Any], owner: str | None) -> JobRecord:
    """What is kept of a finished colorize/recompose job for a later recompose."""
    assert job.pixels is not None
    return JobRecord(job.width, job.height, job.format, job.pixels, job.options, result.state, header["width"],
                     header["height"], len(result.instances), job.token, owner, job.peer)
