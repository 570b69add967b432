"""Batch colorization of files and folders: plan, read, run, write — safe to interrupt, resume and run twice.

Public API (the CLI's ``colorize`` and other front ends reuse it):

* :func:`plan_batch` -> :class:`BatchPlan`: one :class:`BatchItem` per input image with a unique output path.
  An input is *done* only when its done-marker (``OUT/.patchcolor/<output name>.json``) records this very
  source (resolved path, size, mtime) and every output it lists exists; a different input's output never makes
  an input done. An output folder equal to or inside an input folder is refused unless outputs get a suffix.
* :func:`read_item` -> :class:`~patchcolor.prepare.SourceImage` (typed one-sentence errors: bombs, 1×1 images,
  truncated files).
* :func:`write_item`: masks first, image next, done-marker last, each through a temporary file renamed into
  place (``.tmp-<pid>-*``; removed on SIGTERM and by the next run once that pid is gone).
* :func:`claim`: a per-output lock file (``flock``: released by the kernel even on kill -9), so two runs on the
  same batch share the work.
* :func:`run_batch` -> :class:`BatchSummary` of :class:`ItemOutcome` s: a reader thread decodes the next image and
  a writer thread encodes the previous one while the networks run (bounded queues of one image each); inputs
  never attempted (backend gone, disk full) are counted as such.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import queue
import shutil
import signal
import tempfile
import threading
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Literal

import numpy as np

from patchcolor_client.launcher import lock_fd, pid_alive, unlock_fd

from .errors import BadOptions, ImageTooLarge, ImageUnreadable, PatchColorError
from .prepare import SourceImage, load_image

log = logging.getLogger("patchcolor")

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".webp", ".jp2", ".ppm", ".pgm",
                  ".pbm", ".pnm", ".tga", ".psd", ".dib", ".jfif", ".pcx", ".sgi", ".ico", ".im", ".xbm"}
STATE_DIR = ".patchcolor"          # done-markers and lock files, inside the output folder
TMP_PREFIX = ".tmp-"
PNG_COMPRESS_LEVEL = 1             # chosen by measurement: bench/bench_batch.py --png-levels
# errors after which every other input would fail the same way: stop, count the rest as not attempted
FATAL_CODES = ("weights_missing", "weights_corrupt", "device_unavailable", "backend_unavailable", "output_unwritable")

Status = Literal["done", "skipped", "failed", "busy", "not_attempted"]


class OutputUnwritable(PatchColorError):
    """The output folder cannot take the results (read-only, disk full, ...): the batch stops."""

    code = "output_unwritable"


# ------------------------------------------------------------------------------------------------ the plan
@dataclass(frozen=True)
class SourceId:
    """What identifies an input file: its resolved path, size and modification time (ns)."""

    path: str
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: Path) -> "SourceId":
        st = path.stat()
        return cls(str(path.resolve()), st.st_size, st.st_mtime_ns)


@dataclass(frozen=True)
class BatchItem:
    """One input and where its results go.

    src:      the input file.
    out:      the colorized image.
    mask_dir: the folder for its per-instance masks and instances.json (None without --masks).
    key:      the output's path relative to the output folder (names its done-marker and lock).
    source:   the input's identity, recorded in the done-marker.
    """

    src: Path
    out: Path
    mask_dir: Path | None
    key: str
    source: SourceId
    out_dir: Path

    @property
    def marker(self) -> Path:
        return self.out_dir / STATE_DIR / (self.key + ".json")

    @property
    def lock_path(self) -> Path:
        return self.out_dir / STATE_DIR / (self.key + ".lock")

    def is_done(self) -> bool:
        """True when the marker records this source and all the outputs it lists exist."""
        try:
            rec = json.loads(self.marker.read_text())
        except (OSError, ValueError):
            return False
        if not isinstance(rec, dict) or rec.get("source") != asdict(self.source):
            return False
        if self.mask_dir is not None and not rec.get("masks"):
            return False
        return all((self.out_dir / f).exists() for f in rec.get("outputs", [])) and self.out.exists()


@dataclass
class BatchPlan:
    """items: what to do, in order; done: inputs whose outputs are complete; notes: skipped paths (one line each)."""

    out_dir: Path
    items: list[BatchItem]
    done: list[BatchItem]
    notes: list[str] = field(default_factory=list)


def output_suffix(fmt: str) -> str:
    """The output file extension for ``fmt`` ("png" | "tiff")."""
    return {"png": ".png", "tiff": ".tif"}[fmt]


def _strip_ext(name: str) -> str:
    """'photo.v1.png' -> 'photo.v1'; '..png' -> '.'; 'README' -> 'README' (string based: Path.with_suffix
    would drop '.v1' and fails on '.')."""
    ext = Path(name).suffix
    return name[: len(name) - len(ext)] or name


def _inside(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def _is_output(f: Path, rf: Path, root: Path, out_dir: Path, suffix: str) -> bool:
    """Is this file in an input folder one of our outputs (or our state)? Inside an output folder that is not the
    input folder: everything; in an input folder used as output folder: names ending in the suffix and their
    mask folders."""
    if not _inside(rf, out_dir):
        return False
    if out_dir != root:
        return True
    rel = rf.relative_to(out_dir)
    return (STATE_DIR in rel.parts or (bool(suffix) and (_strip_ext(rf.name).endswith(suffix)
                                                          or any(p.endswith(suffix + "_masks") for p in rel.parts[:-1]))))


def iter_sources(inputs: Iterable[Path], recursive: bool, out_dir: Path, notes: list[str], suffix: str = ""
                 ) -> list[tuple[Path, str, Path, bool]]:
    """(file, output name relative to OUT without extension, input root, given as part of a folder) for files and
    folders, sorted;
    non-images, missing paths, our own temporary files and our outputs (see _is_output) are skipped."""
    found: list[tuple[Path, str, Path, bool]] = []
    seen: set[Path] = set()
    for p in inputs:
        p = Path(p)
        if p.is_dir():
            root = p.resolve()
            files = sorted(f for f in (p.rglob("*") if recursive else p.iterdir()) if f.is_file())
            for f in files:
                rf = f.resolve()
                if (f.name.startswith(TMP_PREFIX) or STATE_DIR in f.relative_to(p).parts
                        or _is_output(f, rf, root, out_dir, suffix)):
                    continue
                if f.suffix.lower() not in IMAGE_SUFFIXES:
                    if not f.name.startswith("."):
                        notes.append(f"skipping {f}: not an image file")
                    continue
                if rf not in seen:
                    seen.add(rf)
                    rel = f.relative_to(p)
                    found.append((f, str(rel.parent / _strip_ext(rel.name)) if rel.parent != Path(".")
                                  else _strip_ext(rel.name), root, True))
        elif p.is_file():
            rp = p.resolve()
            if rp not in seen:
                seen.add(rp)
                found.append((p, _strip_ext(p.name), rp.parent, False))
        else:
            notes.append(f"skipping {p}: no such file or folder")
    return found


def plan_batch(inputs: Iterable[Path], out_dir: Path, *, fmt: str = "png", suffix: str = "",
               overwrite: bool = False, masks: bool = False, recursive: bool = False) -> BatchPlan:
    """Plan a batch: unique outputs ``OUT/<name><suffix>.<ext>`` (``_<input ext>``, then ``_2`` ... added on
    collisions), done-markers checked, the folder layout checked.

    Raises BadOptions (one sentence) when the output folder is, or is inside, an input folder and ``suffix`` is
    empty, or when it cannot be written."""
    out_dir = Path(out_dir).absolute().resolve()
    if "/" in suffix or "\\" in suffix:
        raise BadOptions(f"the output suffix {suffix!r} must not contain a path separator")
    notes: list[str] = []
    sources = iter_sources(inputs, recursive, out_dir, notes, suffix)
    if not suffix:
        for _, _, root, from_folder in sources:
            # a folder input: OUT must not be it or inside it; a file input: OUT must not be its folder
            if out_dir == root or (from_folder and _inside(out_dir, root)):
                raise BadOptions(f"the output folder {out_dir} is {'the' if out_dir == root else 'inside the'} "
                                 f"input folder {root}: outputs would replace or be taken for the photos; "
                                 "choose another -o folder or give the outputs a --suffix (e.g. _color)")
    _check_writable(out_dir)
    ext = output_suffix(fmt)
    taken = {str(f.resolve()).casefold() for f, _, _, _ in sources}   # never write onto an input
    items, done = [], []
    for f, name, _, _ in sources:
        source = SourceId.of(f)
        for cand in _candidates(name, f.suffix.lstrip(".").lower(), suffix):
            path = out_dir / (cand + ext)
            if str(path).casefold() not in taken and not _owned_by_other(out_dir, cand + ext, source):
                break
        taken.add(str(path).casefold())
        item = BatchItem(f, path, (out_dir / (cand + "_masks")) if masks else None, cand + ext, source, out_dir)
        (done if not overwrite and item.is_done() else items).append(item)
    return BatchPlan(out_dir, items, done, notes)


def _candidates(name: str, src_ext: str, suffix: str) -> Iterator[str]:
    """Output names without extension, in order of preference: photo, photo_jpg, photo_jpg_2, ..."""
    yield name + suffix
    base = f"{name}_{src_ext}" if src_ext else name
    if base != name:
        yield base + suffix
    n = 2
    while True:
        yield f"{base}_{n}{suffix}"
        n += 1


def _owned_by_other(out_dir: Path, key: str, source: SourceId) -> bool:
    """Does an earlier run's marker give this output name to a different input?"""
    try:
        rec = json.loads((out_dir / STATE_DIR / (key + ".json")).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(rec, dict) and isinstance(rec.get("source"), dict) and rec["source"]["path"] != source.path


def _check_writable(out_dir: Path) -> None:
    try:
        (out_dir / STATE_DIR).mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{os.getpid()}-", dir=out_dir)
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise BadOptions(f"cannot write to the output folder {out_dir}: {e.strerror or e}") from None


# ------------------------------------------------------------------------------------------------ temporary files
_live_tmp: set[str] = set()
_live_lock = threading.Lock()
_terminating = threading.Event()


def _tmp_path(folder: Path, suffix: str, directory: bool = False) -> Path:
    if _terminating.is_set():
        raise OutputUnwritable("stopping: no new files are started")
    prefix = f"{TMP_PREFIX}{os.getpid()}-"
    if directory:
        p = tempfile.mkdtemp(prefix=prefix, suffix=suffix, dir=folder)
    else:
        fd, p = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=folder)
        os.close(fd)
    with _live_lock:
        _live_tmp.add(p)
    return Path(p)


def _forget(p: Path) -> None:
    with _live_lock:
        _live_tmp.discard(str(p))


def remove_live_tmp() -> int:
    """Delete this process's temporary files still being written (on SIGTERM/exit). Returns how many."""
    with _live_lock:
        paths = list(_live_tmp)
        _live_tmp.clear()
    for p in paths:
        shutil.rmtree(p, ignore_errors=True) if os.path.isdir(p) else Path(p).unlink(missing_ok=True)
    return len(paths)


def clean_stale_tmp(out_dir: Path, older_than_s: float = 600.0) -> int:
    """Remove ``.tmp-<pid>-*`` left by runs that are gone (a pid no longer alive; unnamed ones older than
    ``older_than_s``). Returns how many were removed."""
    removed = 0
    if not out_dir.is_dir():
        return 0
    for p in out_dir.rglob(TMP_PREFIX + "*"):
        pid_text = p.name[len(TMP_PREFIX):].split("-", 1)[0]
        try:
            if pid_text.isdigit():
                pid = int(pid_text)
                if pid == os.getpid():
                    continue
                if pid_alive(pid):                # its run is still going (os.kill(pid, 0) would kill on Windows)
                    continue
            elif time.time() - p.lstat().st_mtime < older_than_s:
                continue
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
            removed += 1
        except OSError:
            continue
    return removed


def install_sigterm_cleanup() -> None:
    """On SIGTERM: delete this run's temporary files, then raise SystemExit(143) in the main thread."""
    def handler(signum, frame):   # noqa: ARG001
        _terminating.set()
        remove_live_tmp()
        raise SystemExit(128 + signum)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handler)


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write through ``.tmp-<pid>-*`` in the same folder, then rename: a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(path.parent, path.suffix)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)   # mkstemp makes 0600; give the file the user's usual mode
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        _forget(tmp)


# ------------------------------------------------------------------------------------------------ read / write
def read_item(item: BatchItem | Path, max_pixels: int) -> SourceImage:
    """Decode one input at native depth. PIL's decompression-bomb limit follows ``max_pixels``.

    Raises ImageTooLarge / ImageUnreadable with one sentence naming the file (bombs, images under
    prepare.MIN_SIDE pixels a side, truncated or damaged files)."""
    from PIL import Image

    path = item.src if isinstance(item, BatchItem) else Path(item)
    Image.MAX_IMAGE_PIXELS = int(max_pixels)   # PIL refuses at 2× this; check_size refuses above 1×
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            src = load_image(path, int(max_pixels))
    except Image.DecompressionBombError as e:
        declared = str(e).split(" exceeds")[0]          # "Image size (N pixels)"
        raise ImageTooLarge(f"{path.name} is over the limit of {max_pixels:,.0f} pixels ({declared}; PIL refuses "
                            "it as a decompression bomb); raise the limit with --max-pixels") from None
    except (MemoryError, ValueError) as e:
        raise ImageUnreadable(f"cannot decode {path}: {e}") from None
    return src


def save_image(path: Path, image: np.ndarray, compress_level: int = PNG_COMPRESS_LEVEL) -> None:
    """(H, W) / (H, W, 3|4) uint8 -> PNG (or TIFF) via PIL; uint16 -> 16-bit PNG/TIFF via OpenCV (PIL has no
    RGB16). Atomic."""
    def write(tmp: Path) -> None:
        if image.dtype == np.uint16:
            import cv2

            bgr = image if image.ndim == 2 else image[..., [2, 1, 0, 3][: image.shape[2]]]
            params = [cv2.IMWRITE_PNG_COMPRESSION, compress_level] if path.suffix.lower() == ".png" else []
            if not cv2.imwrite(str(tmp), np.ascontiguousarray(bgr), params):
                raise OSError(errno.EIO, f"could not write {path.name}")
        else:
            from PIL import Image

            if path.suffix.lower() in (".tif", ".tiff"):
                Image.fromarray(image).save(tmp, format="TIFF")
            else:
                Image.fromarray(image).save(tmp, format="PNG", compress_level=compress_level)
    atomic_write(path, write)


def write_masks(folder: Path, result, width: int, height: int, compress_level: int = PNG_COMPRESS_LEVEL) -> None:
    """One full-size 8-bit PNG per instance (255 inside) plus instances.json (class, score, box), written into a
    temporary folder that replaces ``folder`` whole (no stale masks from an earlier attempt)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(folder.parent, "-masks", directory=True)
    try:
        meta = []
        for k, inst in enumerate(result.instances):
            name = f"{k:02d}_{inst.class_name.replace(' ', '-').replace('/', '-')}_{round(inst.score * 100)}.png"
            save_image(tmp / name, inst.full_mask(width, height), compress_level)
            meta.append({"file": name, "class": inst.class_name, "score": round(inst.score, 4),
                         "box": [round(v, 2) for v in inst.box]})
        (tmp / "instances.json").write_text(json.dumps(meta, indent=1))
        os.chmod(tmp, 0o777 & ~_umask())
        if folder.exists():
            old = _tmp_path(folder.parent, "-old", directory=True)
            os.replace(folder, old / "x")
            os.replace(tmp, folder)
            shutil.rmtree(old, ignore_errors=True)
            _forget(old)
        else:
            os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        _forget(tmp)


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m


def write_item(item: BatchItem, result, compress_level: int = PNG_COMPRESS_LEVEL) -> dict[str, float]:
    """Write one input's outputs: masks first, image next, done-marker last (so an interrupted write is redone).
    Returns seconds per step {"masks", "encode", "marker"}. OSError propagates (see :func:`describe_os_error`)."""
    t = {}
    t0 = time.perf_counter()
    outputs = [item.key]
    if item.mask_dir is not None:
        h, w = result.image.shape[:2]
        write_masks(item.mask_dir, result, w, h, compress_level)
        outputs.append(str(item.mask_dir.relative_to(item.out_dir) / "instances.json"))
    t1 = time.perf_counter()
    save_image(item.out, result.image, compress_level)
    t2 = time.perf_counter()
    rec = {"source": asdict(item.source), "outputs": outputs, "masks": item.mask_dir is not None,
           "instances": len(result.instances)}
    _write_marker(item, rec)
    t.update(masks=t1 - t0, encode=t2 - t1, marker=time.perf_counter() - t2)
    return t


def _write_marker(item: BatchItem, rec: dict) -> None:
    item.marker.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(item.marker, lambda p: p.write_text(json.dumps(rec)))


def describe_os_error(e: OSError, path: Path) -> PatchColorError:
    """An OSError while writing -> a typed one-sentence error; OutputUnwritable when no other write can work."""
    why = e.strerror or str(e)
    if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM):
        return OutputUnwritable(f"cannot write {path}: {why}; stopping (nothing already written is lost)")
    return PatchColorError(f"cannot write {path}: {why}")


# ------------------------------------------------------------------------------------------------ locks
class Claim:
    """An exclusive, non-blocking lock (flock; a byte lock on Windows) on one output's lock file; released on
    :meth:`release` or process death."""

    def __init__(self, fd: int):
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            unlock_fd(self._fd)
            os.close(self._fd)
            self._fd = None


def claim(item: BatchItem) -> Claim | None:
    """Take this output's lock, or None when another run holds it."""
    item.lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(item.lock_path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        lock_fd(fd)
    except OSError:         # held by another run (BlockingIOError; PermissionError from msvcrt on Windows)
        os.close(fd)
        return None
    return Claim(fd)


# ------------------------------------------------------------------------------------------------ running
@dataclass
class ItemOutcome:
    """status: done | skipped (already done) | failed | busy (another run has it) | not_attempted.
    message: one sentence for failed items. seconds: per step (read, the pipeline's stages, masks, encode)."""

    item: BatchItem
    status: Status
    message: str = ""
    code: str = ""
    seconds: dict[str, float] = field(default_factory=dict)


@dataclass
class BatchSummary:
    outcomes: list[ItemOutcome]
    stopped: str = ""         # why the batch stopped early ("" when it ran to the end)

    def count(self, status: Status) -> int:
        return sum(o.status == status for o in self.outcomes)

    @property
    def ok(self) -> bool:
        return not any(o.status in ("failed", "not_attempted") for o in self.outcomes)

    def line(self, out_dir: Path) -> str:
        """e.g. '3 colorized, 1 skipped (already done), 1 failed, 2 not attempted -> OUT'."""
        parts = [f"{self.count('done')} colorized", f"{self.count('skipped')} skipped (already done)",
                 f"{self.count('failed')} failed"]
        if self.count("not_attempted"):
            parts.append(f"{self.count('not_attempted')} not attempted"
                         + (" (the batch stopped at the error above)" if self.stopped else ""))
        if self.count("busy"):
            parts.append(f"{self.count('busy')} left to another run")
        return ", ".join(parts) + f" -> {out_dir}"


def auto_overlap(networks_on_cpu: bool) -> bool:
    """Should the reader/writer threads overlap the networks? Only where a core is free for them: measured on a
    2-core machine (bench/bench_batch.py), a PNG encode beside torch's 2 OpenMP threads slowed the network more
    (+0.9 s per 1024×683 image) than the overlap saved (0.07 s). Networks on a GPU or a remote backend: yes."""
    if not networks_on_cpu:
        return True
    import torch

    return (os.cpu_count() or 1) > torch.get_num_threads()


RunFn = Callable[..., object]     # src -> Result (options bound by the caller); (src, item) with pass_item
_STOP = object()


def run_batch(plan: BatchPlan, run: RunFn, *, max_pixels: int, compress_level: int = PNG_COMPRESS_LEVEL,
              overlap: bool = True, on_outcome: Callable[[ItemOutcome], None] | None = None,
              pass_item: bool = False) -> BatchSummary:
    """Colorize ``plan.items`` with ``run``; the already-done inputs are reported as skipped.

    overlap: decode the next input (reader thread) and write the previous one (writer thread) while ``run`` works
    on the current one; each hand-over holds at most one image. Outputs are the same bytes either way.
    A PatchColorError whose code is in FATAL_CODES (or an unwritable output) stops the batch: the inputs not
    reached are reported as not_attempted. pass_item: call ``run(src, item)`` (e.g. to find a per-input file)."""
    outcomes: list[ItemOutcome] = [ItemOutcome(i, "skipped") for i in plan.done]
    lock = threading.Lock()
    stop = threading.Event()
    why: list[str] = []

    def report(o: ItemOutcome) -> None:
        with lock:
            outcomes.append(o)
        if o.status == "failed" and o.code in FATAL_CODES and not stop.is_set():
            why.append(o.message)
            stop.set()
        if on_outcome is not None:
            on_outcome(o)

    for o in outcomes:
        if on_outcome is not None:
            on_outcome(o)

    def read_one(item: BatchItem):
        """(item, claim, src | None, seconds) or None when skipped (busy / done meanwhile)."""
        c = claim(item)
        if c is None:
            report(ItemOutcome(item, "busy"))
            return None
        if item.is_done():                          # another run finished it since the plan was made
            c.release()
            report(ItemOutcome(item, "skipped"))
            return None
        t0 = time.perf_counter()
        try:
            src = read_item(item, max_pixels)
        except PatchColorError as e:
            c.release()
            report(ItemOutcome(item, "failed", e.message, e.code))
            return None
        except Exception as e:   # noqa: BLE001 - one bad file never stops the batch
            c.release()
            log.debug("reading %s", item.src, exc_info=True)
            report(ItemOutcome(item, "failed", f"cannot read {item.src}: {e}", "image_unreadable"))
            return None
        return item, c, src, {"read": time.perf_counter() - t0}

    def run_one(job):
        item, c, src, secs = job
        t0 = time.perf_counter()
        try:
            result = run(src, item) if pass_item else run(src)
        except PatchColorError as e:
            c.release()
            report(ItemOutcome(item, "failed", e.message, e.code))
            return None
        except Exception as e:   # noqa: BLE001 - a bug on one odd image must not stop the batch
            c.release()
            log.debug("colorizing %s", item.src, exc_info=True)
            report(ItemOutcome(item, "failed", f"could not colorize {item.src.name}: {type(e).__name__}: {e}",
                               "internal"))
            return None
        secs.update({k: float(v) for k, v in getattr(result, "timings", {}).items()})
        secs["run"] = time.perf_counter() - t0
        return item, c, result, secs

    def write_one(job) -> None:
        item, c, result, secs = job
        if stop.is_set():          # the batch stopped (disk full, backend gone): not attempted
            c.release()
            return
        try:
            secs.update(write_item(item, result, compress_level))
            report(ItemOutcome(item, "done", seconds=secs))
        except OSError as e:
            err = describe_os_error(e, item.out)
            report(ItemOutcome(item, "failed", err.message, err.code))
        except PatchColorError as e:
            report(ItemOutcome(item, "failed", e.message, e.code))
        except Exception as e:   # noqa: BLE001 - e.g. a codec refusing the array: say it, go on
            log.debug("writing %s", item.out, exc_info=True)
            report(ItemOutcome(item, "failed", f"cannot write {item.out}: {e}", "internal"))
        finally:
            c.release()

    if not overlap:
        for item in plan.items:
            if stop.is_set():
                break
            job = read_one(item)
            job = run_one(job) if job is not None else None
            if job is not None:
                write_one(job)
    else:
        read_q: queue.Queue = queue.Queue(maxsize=1)
        write_q: queue.Queue = queue.Queue(maxsize=1)

        def reader() -> None:
            try:
                for item in plan.items:
                    if stop.is_set():
                        break
                    job = read_one(item)
                    if job is not None:
                        _put(read_q, job, stop)
            finally:
                _put(read_q, _STOP, None)

        def writer() -> None:
            while True:
                job = write_q.get()
                if job is _STOP:
                    return
                write_one(job)

        threads = [threading.Thread(target=reader, name="batch-reader", daemon=True),
                   threading.Thread(target=writer, name="batch-writer", daemon=True)]
        for t in threads:
            t.start()
        finished = False
        try:
            while True:
                job = read_q.get()
                if job is _STOP:
                    finished = True
                    break
                if stop.is_set():
                    job[1].release()
                    continue
                job = run_one(job)
                if job is not None:
                    write_q.put(job)
        finally:
            if not finished:       # stopped by an exception (SIGTERM, Ctrl-C): let the reader go, free its locks
                stop.set()
                while threads[0].is_alive() or not read_q.empty():
                    try:
                        job = read_q.get(timeout=0.1)
                    except queue.Empty:
                        continue
                    if job is not _STOP:
                        job[1].release()
            write_q.put(_STOP)
            threads[1].join()
    reached = {id(o.item) for o in outcomes}
    for item in plan.items:
        if id(item) not in reached:
            o = ItemOutcome(item, "not_attempted")
            outcomes.append(o)
            if on_outcome is not None:
                on_outcome(o)
    order = {id(i): k for k, i in enumerate(plan.done + plan.items)}
    outcomes.sort(key=lambda o: order.get(id(o.item), 0))
    return BatchSummary(outcomes, why[0] if why else "")


def _put(q: queue.Queue, item, stop: threading.Event | None) -> None:
    """Put without blocking forever once ``stop`` is set (the consumer may be gone)."""
    while True:
        try:
            q.put(item, timeout=0.1)
            return
        except queue.Full:
            if stop is not None and stop.is_set():
                if item is not _STOP and isinstance(item, tuple):
                    item[1].release()
                return
