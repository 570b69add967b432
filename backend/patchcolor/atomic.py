"""Atomic writes: every file or folder is written as ``.tmp-<pid>-*`` beside its destination and renamed into
place, so a crash never leaves half a file under a real name.

* :func:`atomic_write` (a file) and :func:`atomic_folder` (a folder, replaced whole);
* this process's temporary files are removed on SIGTERM (:func:`install_sigterm_cleanup`, exit 143), and the ones
  of runs that are gone by the next run (:func:`clean_stale_tmp`: the pid in the name no longer runs).
"""
from __future__ import annotations

import os
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

from patchcolor_client.locks import pid_alive

from .errors import PatchColorError

TMP_PREFIX = ".tmp-"


class OutputUnwritable(PatchColorError):
    """The output folder cannot take the results (read-only, disk full, stopping): a batch stops."""

    code = "output_unwritable"


_live_tmp: set[str] = set()
_live_lock = threading.Lock()
_terminating = threading.Event()


def tmp_path(folder: Path, suffix: str, directory: bool = False) -> Path:
    """A new ``.tmp-<pid>-*<suffix>`` file (or folder) in ``folder``, registered for removal on SIGTERM."""
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


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` into a temporary file in ``path``'s folder (same extension), then rename it to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_path(path.parent, path.suffix)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())   # mkstemp makes 0600; give the file the user's usual mode
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        _forget(tmp)


def atomic_folder(folder: Path, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` into a temporary folder, then put it in ``folder``'s place whole (an earlier ``folder`` and
    everything in it is removed only once the new one is complete)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_path(folder.parent, "-dir", directory=True)
    try:
        write(tmp)
        os.chmod(tmp, 0o777 & ~_umask())
        if folder.exists():
            old = tmp_path(folder.parent, "-old", directory=True)
            os.replace(folder, old / "x")
            os.replace(tmp, folder)
            shutil.rmtree(old, ignore_errors=True)
            _forget(old)
        else:
            os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        _forget(tmp)


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
                if pid == os.getpid() or pid_alive(pid):    # ours, or its run is still going
                    continue
            elif time.time() - p.lstat().st_mtime < older_than_s:
                continue
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
            removed += 1
        except OSError:
            continue
    return removed


def install_sigterm_cleanup() -> None:
    """On SIGTERM: delete this process's temporary files, then raise SystemExit(143) in the main thread."""
    def handler(signum, frame):   # noqa: ARG001
        _terminating.set()
        remove_live_tmp()
        raise SystemExit(128 + signum)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handler)
