"""Which run works on which output: a per-output lock file (``flock``; released by the kernel even on kill -9), so
two runs on the same batch share the work, and the lock record written into it before any output.

:func:`take` is the first step of every input, local or on Ray: lock, still to do?, names still its own?, record —
each failure an outcome, never an exception.
"""
from __future__ import annotations

import os

from patchcolor_client.locks import lock_fd, unlock_fd

from .outcome import ItemOutcome
from .outputs import describe_os_error
from .plan import BatchItem
from .records import lock_record, read_record


class Claim:
    """An exclusive, non-blocking lock (flock; a byte lock on Windows) on one output's lock file; released on
    :meth:`release` or process death."""

    def __init__(self, fd: int):
        self._fd: int | None = fd

    def record(self, item: BatchItem) -> None:
        """Write ``item``'s lock record (records.lock_record) before any of its outputs: from then on files at
        these output names are this input's (a rerun after kill -9 replaces them; no other input does)."""
        assert self._fd is not None
        data = lock_record(item.source, item.key, item.mask_key, read_record(item.lock_path))
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


def take(item: BatchItem) -> Claim | ItemOutcome:
    """Start ``item`` in this run: its lock, a check that it is still to do and its output names still its own,
    its record. Else its outcome: busy (another run has it), skipped (done meanwhile), failed (one sentence; a
    full or read-only disk is OutputUnwritable, which stops the batch)."""
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
