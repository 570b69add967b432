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
import hashlib
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
NAME_MAX = 255                     # bytes in one file name (ext4, tmpfs, APFS, NTFS: 255)


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


def fit_name(name: str, limit: int = NAME_MAX) -> str:
    """``name`` if it fits in ``limit`` UTF-8 bytes, else its stem cut short plus ``-`` and 10 hex digits of its
    SHA-1, extension kept: any legal input name gives legal output, marker and lock names."""
    raw = name.encode("utf-8", "surrogateescape")
    if len(raw) <= limit:
        return name
    ext = Path(name).suffix if len(Path(name).suffix) <= 16 else ""
    tag = "-" + hashlib.sha1(raw).hexdigest()[:10]
    room = limit - len(ext.encode("utf-8", "surrogateescape")) - len(tag)
    stem = raw[: len(raw) - len(ext.encode("utf-8", "surrogateescape"))][:room]
    return stem.decode("utf-8", "ignore") + tag + ext


def visible(name: str) -> str:
    """A leading dot would hide the output (and could meet our own ``.patchcolor``/``.tmp-`` names): each leading
    dot becomes ``_`` ('..png' -> stem '.' -> '_')."""
    stripped = name.lstrip(".")
    return "_" * (len(name) - len(stripped)) + stripped


def state_path(out_dir: Path, key: str, kind: str) -> Path:
    """``OUT/.patchcolor/<key><kind>`` (kind ".json": done-marker, ".lock": lock file and its record), the file
    name shortened by :func:`fit_name` when it would be too long."""
    rel = Path(key)
    return out_dir / STATE_DIR / rel.parent / fit_name(rel.name + kind)


def read_record(path: Path) -> dict | None:
    """A marker or lock record ({"source": {...}, ...}) or None (missing, empty, damaged, not ours)."""
    try:
        rec = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(rec, dict) or not isinstance(rec.get("source"), dict):
        return None
    return rec if isinstance(rec["source"].get("path"), str) else None


@dataclass(frozen=True)
class BatchItem:
    """One input and where its results go.

    src:      the input file.
    out:      the colorized image.
    mask_dir: the folder for its per-instance masks and instances.json (None without --masks).
    key:      the output's path relative to the output folder (names its done-marker and lock).
    source:   the input's identity, recorded in the done-marker and the lock record.
    """

    src: Path
    out: Path
    mask_dir: Path | None
    key: str
    source: SourceId
    out_dir: Path

    @property
    def marker(self) -> Path:
        return state_path(self.out_dir, self.key, ".json")

    @property
    def lock_path(self) -> Path:
        return state_path(self.out_dir, self.key, ".lock")

    def is_done(self) -> bool:
        """True when the marker records this source and all the outputs it lists exist."""
        rec = read_record(self.marker)
        if rec is None or rec.get("source") != asdict(self.source):
            return False
        if self.mask_dir is not None and not rec.get("masks"):
            return False
        return all((self.out_dir / f).exists() for f in rec.get("outputs", [])) and self.out.exists()

    def conflict(self) -> str:
        """"" when this input may write its outputs; else why not, in one sentence. Outputs are ours to replace
        only when a record of ours (the done-marker, else the lock record) gives this output name to this very
        input; with no record, nothing may exist at the output paths (a file we did not write is never
        replaced)."""
        recs = [r for r in (read_record(self.marker), read_record(self.lock_path)) if r is not None]
        if recs:
            if recs[0]["source"]["path"] != self.source.path:
                return f"{self.out.name} belongs to another input ({recs[0]['source']['path']})"
            if (self.mask_dir is not None and os.path.lexists(self.mask_dir)
                    and not any(r.get("masks") for r in recs)):
                return f"{self.mask_dir} exists and was not written by patchcolor"
            return ""
        for p in (self.out, self.mask_dir):
            if p is not None and os.path.lexists(p):
                return f"{p} exists and was not written by patchcolor"
        return ""


@dataclass
class BatchPlan:
    """items: what to do, in order; done: inputs whose outputs are complete; notes: skipped paths, renamed
    outputs (one line each)."""

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


def recorded_outputs(out_dir: Path) -> tuple[set[Path], set[Path]]:
    """(image files, mask folders) that OUT's markers and lock records name: what earlier runs wrote there."""
    files: set[Path] = set()
    dirs: set[Path] = set()
    state = out_dir / STATE_DIR
    if not state.is_dir():
        return files, dirs
    for p in state.rglob("*"):
        if p.suffix not in (".json", ".lock") or not p.is_file():
            continue
        rec = read_record(p)
        if rec is None:
            continue
        key = rec.get("key") if isinstance(rec.get("key"), str) else str(p.relative_to(state))[: -len(p.suffix)]
        files.add(out_dir / key)
        mask_dir = rec.get("mask_dir")
        if isinstance(mask_dir, str):
            dirs.add(out_dir / mask_dir)
        dirs.update((out_dir / f).parent for f in rec.get("outputs", []) if isinstance(f, str) and f != key)
    return files, dirs


def iter_sources(inputs: Iterable[Path], recursive: bool, out_dir: Path, notes: list[str]
                 ) -> list[tuple[Path, str, Path, bool]]:
    """(file, output name relative to OUT without extension, input root, given as part of a folder) for files and
    folders, sorted. Skipped: non-images, missing paths, our own state and temporary files, and, in a folder
    that is (or holds) OUT, the outputs OUT's records name — any other file there is an input like the rest."""
    found: list[tuple[Path, str, Path, bool]] = []
    seen: set[Path] = set()
    ours: tuple[set[Path], set[Path]] | None = None
    for p in inputs:
        p = Path(p)
        if p.is_dir():
            root = p.resolve()
            files = sorted(f for f in (p.rglob("*") if recursive else p.iterdir()) if f.is_file())
            for f in files:
                rf = f.resolve()
                if f.name.startswith(TMP_PREFIX) or STATE_DIR in f.relative_to(p).parts:
                    continue
                if _inside(rf, out_dir):
                    ours = ours if ours is not None else recorded_outputs(out_dir)
                    if rf in ours[0] or any(d in ours[1] for d in rf.parents):
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
    """Plan a batch: unique outputs ``OUT/<name><suffix>.<ext>``, done-markers checked, the folder layout checked.

    Names: ``photo.v1.png`` -> ``photo.v1.png``; when two inputs would share a name, the one already in the
    output format keeps it (``photo.png`` -> ``photo.png``, ``photo.jpg`` -> ``photo_jpg.png``), then ``_2``, ...;
    whatever the order of the inputs. A name an earlier run gave to an input stays that input's. A name never
    starts with a dot (:func:`visible`) and never replaces an input or a file patchcolor did not write (the output
    takes the next name and a note says so).

    Raises BadOptions (one sentence) when the output folder is, or is inside, an input folder and ``suffix`` is
    empty, or when it cannot be written."""
    out_dir = Path(out_dir).absolute().resolve()
    if "/" in suffix or "\\" in suffix or "\0" in suffix:
        raise BadOptions(f"the output suffix {suffix!r} must not contain a path separator")
    notes: list[str] = []
    sources = iter_sources(inputs, recursive, out_dir, notes)
    if not suffix:
        for _, _, root, from_folder in sources:
            # a folder input: OUT must not be it or inside it; a file input: OUT must not be its folder
            if out_dir == root or (from_folder and _inside(out_dir, root)):
                raise BadOptions(f"the output folder {out_dir} is {'the' if out_dir == root else 'inside the'} "
                                 f"input folder {root}: outputs would replace or be taken for the photos; "
                                 "choose another -o folder or give the outputs a --suffix (e.g. _color)")
    _check_writable(out_dir)
    ext = output_suffix(fmt)
    same_format = {".png"} if fmt == "png" else {".tif", ".tiff"}
    taken = {str(f.resolve()).casefold() for f, _, _, _ in sources}   # never write onto an input
    named: dict[int, tuple[BatchItem, list[str]]] = {}
    # inputs already in the output format choose first: photo.png keeps photo.png whatever the order
    for k in sorted(range(len(sources)), key=lambda k: (sources[k][0].suffix.lower() not in same_format, k)):
        f, name, _, _ = sources[k]
        try:
            source = SourceId.of(f)
        except OSError as e:
            notes.append(f"skipping {f}: {e.strerror or e}")
            continue
        kept: list[str] = []
        for cand in _candidates(name, f.suffix.lstrip(".").lower(), suffix):
            item = _item(f, cand, ext, source, out_dir, masks)
            if {str(item.out).casefold(), str(item.out.resolve()).casefold()} & taken:
                continue
            why = item.conflict()
            if not why:
                break
            if "not written by patchcolor" in why:
                kept.append(why)
        taken.add(str(item.out).casefold())
        named[k] = (item, [f"{w}; it is kept and {f.name} is written to {item.out.name}" for w in kept])
    items, done = [], []
    for k in sorted(named):
        item, item_notes = named[k]
        if not overwrite and item.is_done():
            done.append(item)
        else:
            items.append(item)
            notes.extend(item_notes)
    return BatchPlan(out_dir, items, done, notes)


def _item(src: Path, cand: str, ext: str, source: SourceId, out_dir: Path, masks: bool) -> BatchItem:
    """The item for output name ``cand`` (relative, no extension): image ``cand<ext>``, masks ``cand_masks``,
    each file name visible and short enough."""
    *folders, stem = [visible(part) for part in cand.replace(os.sep, "/").split("/")]   # not Path: '.' is a name
    parent = Path(*folders) if folders else Path()
    image = parent / fit_name(stem + ext)
    mask_dir = out_dir / parent / fit_name(stem + "_masks") if masks else None
    return BatchItem(src, out_dir / image, mask_dir, str(image), source, out_dir)


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

    def record(self, item: BatchItem) -> None:
        """Write ``item``'s record into its lock file before any of its outputs: from then on files at these
        output names are this input's (a rerun after kill -9 replaces them; no other input does). A mask
        folder recorded once stays recorded."""
        assert self._fd is not None
        old = read_record(item.lock_path)
        old = old if old is not None and old["source"]["path"] == item.source.path else {}
        mask_dir = (str(item.mask_dir.relative_to(item.out_dir)) if item.mask_dir is not None
                    else old.get("mask_dir") if isinstance(old.get("mask_dir"), str) else None)
        rec = {"source": asdict(item.source), "key": item.key, "masks": item.mask_dir is not None
               or bool(old.get("masks")), "mask_dir": mask_dir}
        data = json.dumps(rec).encode()
        os.ftruncate(self._fd, 0)
        os.lseek(self._fd, 0, os.SEEK_SET)
        while data:
            data = data[os.write(self._fd, data):]

    def release(self) -> None:
        if self._fd is not None:
            unlock_fd(self._fd)
            os.close(self._fd)
            self._fd = None


def claim(item: BatchItem) -> Claim | None:
    """Take this output's lock, or None when another run holds it. OSError when the lock file cannot be made."""
    item.lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(item.lock_path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        lock_fd(fd)
    except OSError:         # held by another run (BlockingIOError; PermissionError from msvcrt on Windows)
        os.close(fd)
        return None
    return Claim(fd)


def take(item: BatchItem) -> "Claim | ItemOutcome":
    """Start ``item`` in this run: its lock, a check that it is still to do and its output names still its own,
    its record. Else the outcome, every error included: busy (another run has it), skipped (done meanwhile),
    failed (one sentence; a full or read-only disk is OutputUnwritable, which stops the batch)."""
    try:
        c = claim(item)
    except OSError as e:
        err = describe_os_error(e, item.lock_path)
        return ItemOutcome(item, "failed", err.message, err.code)
    if c is None:
        return ItemOutcome(item, "busy")
    try:
        if item.is_done():                          # another run finished it since the plan was made
            c.release()
            return ItemOutcome(item, "skipped")
        why = item.conflict()                       # a file appeared, or a concurrent run gave the name away
        if why:
            c.release()
            return ItemOutcome(item, "failed", f"{why}: not replaced; run again to give {item.src.name} another "
                               "name", "output_taken")
        c.record(item)
    except OSError as e:
        c.release()
        err = describe_os_error(e, item.lock_path)
        return ItemOutcome(item, "failed", err.message, err.code)
    return c


# ------------------------------------------------------------------------------------------------ running
@dataclass
class ItemOutcome:
    """status: done | skipped (already done) | failed | busy (another run has it) | not_attempted.
    message: one sentence for failed items; note: one sentence worth saying about a done item (e.g. only the first
    frame of an animated GIF was colorized). seconds: per step (read, the pipeline's stages, masks, encode)."""

    item: BatchItem
    status: Status
    message: str = ""
    code: str = ""
    seconds: dict[str, float] = field(default_factory=dict)
    note: str = ""


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


def frames_note(src: SourceImage) -> str:
    """The one line said when a file holds several frames or pages (animated GIF, multi-page TIFF), else ""."""
    return f"only the first of its {src.frames} frames is colorized" if src.frames > 1 else ""


RunFn = Callable[..., object]     # src -> Result (options bound by the caller); (src, item) with pass_item


@dataclass
class Job:
    """One claimed input on its way through read -> run -> write. data: the SourceImage, then the Result."""

    item: BatchItem
    claim: Claim
    data: object
    seconds: dict[str, float]
    note: str = ""


class Steps:
    """The three steps of one input, each reporting its own outcome (every error included) and releasing the
    claim when the input goes no further; ``stop`` is set by the first error after which nothing else can work
    (FATAL_CODES: weights, device, backend gone, disk full or read-only)."""

    def __init__(self, run: RunFn, *, max_pixels: int, compress_level: int, pass_item: bool,
                 on_outcome: Callable[[ItemOutcome], None] | None):
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
        job = Job(item, c, None, {})
        t0 = time.perf_counter()
        try:
            job.data = read_item(item, self.max_pixels)
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
            err = describe_os_error(e, job.item.out)
            self._fail(job, err, "cannot write", err.code)
            return
        except Exception as e:   # noqa: BLE001 - e.g. a codec refusing the array: say it, go on
            self._fail(job, e, "cannot write", "internal")
            return
        job.claim.release()
        self.report(ItemOutcome(job.item, "done", seconds=job.seconds, note=job.note))


def run_batch(plan: BatchPlan, run: RunFn, *, max_pixels: int, compress_level: int = PNG_COMPRESS_LEVEL,
              overlap: bool = True, on_outcome: Callable[[ItemOutcome], None] | None = None,
              pass_item: bool = False) -> BatchSummary:
    """Colorize ``plan.items`` with ``run``; the already-done inputs are reported as skipped.

    overlap: decode the next input (reader thread) and write the previous one (writer thread) while ``run`` works
    on the current one; each hand-over holds at most one image. Outputs are the same bytes either way.
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
