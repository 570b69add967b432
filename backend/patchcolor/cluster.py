"""Batch colorization on a Ray cluster (``patchcolor colorize IN... -o OUT --ray [ADDRESS]``), with Ray Data.

The same plan, outputs, names and resume semantics as the local batch (:mod:`patchcolor.batch`): the CLI plans
with :func:`~patchcolor.batch.plan_batch` (what is done, what collides, what to skip) and hands the plan and the
options to :func:`colorize_on_ray`, which streams the items through a Ray Data pipeline::

    from_items(plan rows) -> map_batches(read: io.load_image, Ray tasks)
                          -> map_batches(ColorizeWorker: one Pipeline per actor; batch.take, run, batch.write_item)
                          -> driver: one ItemOutcome per item -> BatchSummary (the local summary line)

Every output is written by the worker itself, atomically, into OUT, which therefore must be a folder every node
sees at the same path (shared storage; checked at start by :func:`check_shared_storage`). The inputs must be
visible at the same paths on every node too. A done-marker is written after each output (as locally), so a killed
worker loses nothing: Ray retries its items on a restarted actor, and any run (local or Ray) resumes what is left.
Detector and colorizer run in one actor stage: both are small next to the image work around them, and one stage
keeps one copy of the models and of the working image per worker (two stages would ship every crop between
processes); measured in bench/bench_ray.py.
"""
from __future__ import annotations

import json
import logging
import math
import os
import pickle
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .batch import (FATAL_CODES, PNG_COMPRESS_LEVEL, STATE_DIR, BatchItem, BatchPlan, BatchSummary, ItemOutcome,
                    describe_os_error, frames_note, take, write_item)
from .errors import BadOptions, PatchColorError
from .heap import keep_freed_memory
from .io import load_image

log = logging.getLogger("patchcolor")

ROWS_PER_BLOCK_MAX = 4        # inputs per Ray Data block: small, so a killed actor redoes little and work balances


class RayUnavailable(PatchColorError):
    """Ray is not installed or the cluster cannot be reached."""

    code = "backend_unavailable"


@dataclass(frozen=True)
class RaySettings:
    """address: None (a local Ray started for this run), "auto" (the running cluster) or "ray://host:10001".
    cpus_per_worker: CPUs reserved per colorizing actor (torch threads); GPU actors reserve one GPU each.
    workers: number of colorizing actors (None: as many as the cluster's GPUs, else CPUs // cpus_per_worker)."""

    address: str | None = None
    cpus_per_worker: float = 1.0
    workers: int | None = None


# ------------------------------------------------------------------------------------------------ connecting
def connect(settings: RaySettings) -> bool:
    """Start or join Ray. Returns True when this call started it (then the caller shuts it down)."""
    try:
        import ray
    except ImportError:
        raise RayUnavailable("--ray needs Ray: install it with `python3 install.py --ray` "
                             "(or pip install 'patchcolor[ray]')") from None
    if ray.is_initialized():
        return False
    if (settings.address or "").startswith("ray://"):
        try:
            import grpc  # noqa: F401 - Ray Client's transport
        except ImportError:
            raise RayUnavailable("ray:// addresses need Ray Client: pip install 'ray[client]' (or run the "
                                 "command on the head node with --ray auto)") from None
    try:
        ray.init(address=settings.address, include_dashboard=False, logging_level=logging.WARNING,
                 log_to_driver=True)
    except (ConnectionError, RuntimeError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RayUnavailable(f"cannot reach the Ray cluster at {settings.address or 'a new local Ray'}: {first}") \
            from None
    return True


def pool_size(settings: RaySettings, device: str = "auto") -> tuple[int, bool]:
    """(number of colorizing actors, whether they use GPUs) from the cluster's resources; ``device`` "cpu" (or
    "mps", which Ray does not count as a GPU) keeps the actors off Ray's GPUs."""
    import ray

    res = ray.cluster_resources()
    gpus = int(res.get("GPU", 0)) if device == "auto" or device.startswith("cuda") else 0   # Ray's GPUs: CUDA
    if settings.workers:
        return settings.workers, gpus > 0
    if gpus:
        return gpus, True
    return max(1, int(res.get("CPU", 1) // max(settings.cpus_per_worker, 1e-3))), False


# ------------------------------------------------------------------------------------------------ shared storage
def _probe_node(out_dir: str, token: str, first_input: str | None) -> tuple[str, str]:
    """On one node: read the driver's probe, check the first input is visible, write our own probe.
    Returns (node address, "" or why this node cannot take part)."""
    import ray

    ip = ray.util.get_node_ip_address()
    state = Path(out_dir) / STATE_DIR
    try:
        if (state / f".probe-{token}").read_text() != token:
            return ip, f"{out_dir} holds different files there"
    except OSError:
        return ip, f"it does not see the output folder {out_dir} (or not the same one)"
    if first_input and not os.path.exists(first_input):
        return ip, f"it does not see the input {first_input}"
    try:
        (state / f".probe-{token}-{ip}").write_text(token)
    except OSError as e:
        return ip, f"it cannot write to {out_dir}: {e.strerror or e}"
    return ip, ""


def check_shared_storage(out_dir: Path, first_input: Path | None, timeout_s: float = 120.0) -> int:
    """Check that every alive node sees OUT (and the first input) at the same path and can write there: the driver
    writes a probe file, a task pinned to each node reads it and writes its own, the driver reads those back.
    Returns the number of nodes checked; raises BadOptions (one sentence) otherwise."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    token = uuid.uuid4().hex
    state = out_dir / STATE_DIR
    state.mkdir(parents=True, exist_ok=True)
    probe = state / f".probe-{token}"
    probe.write_text(token)
    probe_fn = ray.remote(num_cpus=0, max_retries=0)(_probe_node)
    try:
        nodes = [n for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) > 0]
        refs = [probe_fn.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                .remote(str(out_dir), token, str(first_input.resolve()) if first_input else None) for n in nodes]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
        if len(ready) < len(refs):
            raise BadOptions(f"the shared-storage check did not finish on every node within {timeout_s:.0f} s")
        for ip, why in ray.get(refs):
            if why:
                raise BadOptions(f"node {ip} cannot take part: {why}; OUT and the inputs must be shared storage "
                                 "mounted at the same path on every node")
            if not (state / f".probe-{token}-{ip}").exists():
                raise BadOptions(f"node {ip} wrote to a different {out_dir} than this machine sees; OUT must be "
                                 "shared storage mounted at the same path on every node")
        return len(nodes)
    finally:
        for p in state.glob(f".probe-{token}*"):
            p.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------------ the stages
def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def _table(rows: dict[str, list]):
    """A pyarrow table; the decoded images travel as pickled bytes in a large_binary column (64-bit offsets:
    blocks may exceed 2 GB)."""
    import pyarrow as pa

    types = {"idx": pa.int64(), "item": pa.binary(), "src": pa.large_binary(), "status": pa.string(),
             "message": pa.string(), "code": pa.string(), "seconds": pa.string(), "note": pa.string()}
    return pa.table({k: pa.array(v, type=types[k]) for k, v in rows.items()})


def read_stage(batch: dict, max_pixels: int) -> object:
    """Ray Data read stage (Ray tasks): item -> decoded SourceImage with the project's loader, or a failure row.
    Items already done (another run finished them since the plan) are passed on as skipped without reading."""
    rows: dict[str, list] = {k: [] for k in ("idx", "item", "src", "status", "message", "code", "seconds", "note")}
    for idx, blob in zip(batch["idx"], batch["item"]):
        item: BatchItem = pickle.loads(blob)
        src, status, message, code, note = None, "read", "", "", ""
        t0 = time.perf_counter()
        try:
            if item.is_done():
                status = "skipped"
            else:
                image = load_image(item.src, max_pixels)
                note = frames_note(image)
                src = pickle.dumps(image, protocol=5)
        except PatchColorError as e:
            status, message, code = "failed", e.message, e.code
        except Exception as e:   # noqa: BLE001 - one bad file must not stop the cluster's batch
            status, message, code = "failed", f"cannot read {item.src}: {_one_line(e)}", "image_unreadable"
        for k, v in (("idx", int(idx)), ("item", bytes(blob)), ("src", src), ("status", status),
                     ("message", message), ("code", code),
                     ("seconds", json.dumps({"read": time.perf_counter() - t0})), ("note", note)):
            rows[k].append(v)
    return _table(rows)


class ColorizeWorker:
    """Ray Data actor: one Pipeline (models loaded once per actor); per item: take the output's lock, check it is
    still not done, run, write atomically (batch.write_item), release. Returns one outcome row per item."""

    def __init__(self, opts, models: str | None, device: str, max_pixels: int, compress_level: int,
                 threads: int | None):
        self.opts = opts
        self.compress_level = compress_level
        self.error: PatchColorError | None = None
        keep_freed_memory()     # this actor process reuses each item's freed feature maps (heap.py)
        if threads:
            import torch

            torch.set_num_threads(threads)
        try:
            from .pipeline import Pipeline

            self.pipe = Pipeline(Path(models) if models else None, device=device, max_pixels=max_pixels)
        except PatchColorError as e:     # e.g. no GPU on this node: every item reports it, the driver stops
            self.error = e

    def __call__(self, batch) -> object:
        rows: dict[str, list] = {k: [] for k in ("idx", "status", "message", "code", "seconds", "note")}
        for row in batch.to_pylist():
            status, message, code = row["status"], row["message"], row["code"]
            secs = json.loads(row["seconds"])
            if status == "read":
                status, message, code = self._one(pickle.loads(row["item"]), row["src"], secs)
            for k, v in (("idx", row["idx"]), ("status", status), ("message", message), ("code", code),
                         ("seconds", json.dumps(secs)), ("note", row["note"])):
                rows[k].append(v)
        return _table(rows)

    def _one(self, item: BatchItem, src_blob: bytes, secs: dict) -> tuple[str, str, str]:
        if self.error is not None:
            return "failed", self.error.message, self.error.code
        c = take(item)
        if isinstance(c, ItemOutcome):
            return c.status, c.message, c.code
        try:
            t0 = time.perf_counter()
            secs["start_epoch"] = time.time()      # wall clock, for bench_ray's scheduling-overhead figures
            try:
                result = self.pipe.run(pickle.loads(src_blob), self.opts)
            except PatchColorError as e:
                return "failed", e.message, e.code
            except Exception as e:   # noqa: BLE001 - a bug on one image must not stop the cluster's batch
                return "failed", f"{item.src}: {_one_line(e)}", "error"
            secs.update({k: float(v) for k, v in getattr(result, "timings", {}).items()})
            secs["run"] = time.perf_counter() - t0
            try:
                secs.update(write_item(item, result, self.compress_level))
            except OSError as e:
                err = describe_os_error(e, item.out)
                return "failed", err.message, err.code
            except PatchColorError as e:
                return "failed", e.message, e.code
            except Exception as e:   # noqa: BLE001 - e.g. a codec refusing the array: say it, go on
                return "failed", f"cannot write {item.out}: {_one_line(e)}", "error"
            secs["end_epoch"] = time.time()
            secs["pid"] = os.getpid()
            return "done", "", ""
        finally:
            c.release()


# ------------------------------------------------------------------------------------------------ the run
def run_ray_batch(plan: BatchPlan, opts, settings: RaySettings, *, models: Path | None = None,
                  device: str = "auto", max_pixels: int = 250_000_000, compress_level: int = PNG_COMPRESS_LEVEL,
                  on_outcome: Callable[[ItemOutcome], None] | None = None, check_storage: bool = True
                  ) -> BatchSummary:
    """Colorize ``plan.items`` on Ray (joined or started by :func:`connect`); the already-done ones are reported as
    skipped. Same outcomes as :func:`patchcolor.batch.run_batch`: a failure whose code is in FATAL_CODES stops
    the batch (the items not reached are not_attempted, unless a worker finished them meanwhile)."""
    import ray
    import ray.data

    outcomes: dict[int, ItemOutcome] = {}
    for o in (ItemOutcome(i, "skipped") for i in plan.done):
        if on_outcome is not None:
            on_outcome(o)
    stopped = ""
    if plan.items:
        if check_storage:
            check_shared_storage(plan.out_dir, plan.items[0].src)
        actors, gpu = pool_size(settings, device)
        threads = None if gpu else max(1, int(math.floor(settings.cpus_per_worker)))
        n = len(plan.items)
        per_block = max(1, min(ROWS_PER_BLOCK_MAX, n // (4 * actors)))
        rows_in = [{"idx": k, "item": pickle.dumps(it, protocol=5)} for k, it in enumerate(plan.items)]
        blocks = math.ceil(n / per_block)
        ds = ray.data.from_items(rows_in, override_num_blocks=blocks)
        # decoding is short next to colorizing: read tasks take no CPU reservation, so actors holding every CPU
        # cannot starve them; at most two reads per actor are in flight (bounded memory).
        ds = ds.map_batches(read_stage, fn_kwargs={"max_pixels": int(max_pixels)}, batch_size=None,
                            batch_format="numpy", num_cpus=0,
                            compute=ray.data.TaskPoolStrategy(size=min(blocks, 2 * actors)))
        ds = ds.map_batches(ColorizeWorker, batch_size=1, batch_format="pyarrow",
                            compute=ray.data.ActorPoolStrategy(size=actors),
                            num_cpus=settings.cpus_per_worker if not gpu else 1, num_gpus=1 if gpu else 0,
                            fn_constructor_args=(opts, str(models) if models else None, device, int(max_pixels),
                                                 compress_level, threads))
        rows = ds.iter_rows()
        try:
            for row in rows:
                item = plan.items[row["idx"]]
                o = ItemOutcome(item, row["status"], row["message"] or "", row["code"] or "",
                                json.loads(row["seconds"]), row["note"] if row["status"] == "done" else "")
                if row["idx"] in outcomes:       # a retried block's duplicate
                    continue
                outcomes[row["idx"]] = o
                if on_outcome is not None:
                    on_outcome(o)
                if o.status == "failed" and o.code in FATAL_CODES:
                    stopped = o.message
                    break
        finally:
            close = getattr(rows, "close", None)
            if close is not None:
                close()
    final: list[ItemOutcome] = [ItemOutcome(i, "skipped") for i in plan.done]
    for k, item in enumerate(plan.items):
        o = outcomes.get(k)
        if o is None:
            o = ItemOutcome(item, "done" if item.is_done() else "not_attempted")
            if on_outcome is not None:
                on_outcome(o)
        final.append(o)
    return BatchSummary(final, stopped)


def colorize_on_ray(plan: BatchPlan, opts, settings: RaySettings, **kw) -> BatchSummary:
    """Start or join Ray (:func:`connect`) when there is work, :func:`run_ray_batch` (``kw``: its keywords), and
    shut down a Ray this call started."""
    started = connect(settings) if plan.items else False
    try:
        return run_ray_batch(plan, opts, settings, **kw)
    finally:
        if started:
            import ray

            ray.shutdown()
