"""Process-wide heap policy for batch and service processes (glibc only).

glibc's malloc serves every allocation above its mmap threshold (dynamic, at most 32 MB) with a fresh ``mmap``
and unmaps it on ``free``, so each image's large feature maps (R101 at 1199x800: 60 MB tensors) are page-faulted
and zeroed by the kernel again for every image. :func:`keep_freed_memory` makes malloc keep freed memory in its
heap for the next image instead; :func:`release_memory` gives it back to the system (the service calls it when
idle).

Hand-written through ctypes: neither the standard library nor torch (nor numpy, pyzmq) exposes ``mallopt`` or
``malloc_trim``.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
from typing import Any

#: Environment variable: ``PATCHCOLOR_MALLOC=system`` keeps glibc's default policy (keep_freed_memory -> False).
ENV_VAR = "PATCHCOLOR_MALLOC"

# mallopt parameters (glibc's <malloc.h>).
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
#: Free memory at the top of the heap above which glibc returns it by itself once keep_freed_memory() is set.
TRIM_THRESHOLD = 1 << 30

_libc: Any = None               # None: not loaded yet; False: not glibc / not usable
_kept: bool | None = None       # keep_freed_memory()'s result once decided
_lock = threading.Lock()


def _glibc() -> Any:
    """glibc's handle, or False (another C library, or none found). Loaded once."""
    global _libc
    if _libc is None:
        name = ctypes.util.find_library("c")
        try:
            lib = ctypes.CDLL(name) if name else None
        except OSError:
            lib = None
        # gnu_get_libc_version: glibc's own symbol (other C libraries may export a mallopt that does nothing)
        ok = lib is not None and all(hasattr(lib, s) for s in ("gnu_get_libc_version", "malloc_trim"))
        _libc = lib if ok else False
    return _libc


def keep_freed_memory() -> bool:
    """Keep freed heap memory in the process for the next allocation (glibc: no mmap per large block, no trim
    below 1 GiB of free top memory). Call once at process start; idempotent, thread-safe, never raises.

    Measured (AMD EPYC, 2 cores AVX2, seed preset, a 1024x683 photo, warm ``Pipeline.run``): per image
    ~330 000 -> ~6 000 minor page faults (1.3 GB of freshly zeroed pages), 0.45 -> 0.01 s of system CPU time,
    6.23 -> 5.97 s per image (4 % faster); peak RSS unchanged (1.96 vs 1.92 GiB).
    Cost: after a job the process's RSS stays at that job's peak until :func:`release_memory` (the service calls
    it whenever it becomes idle); the memory is reused by the next job, not lost.

    Returns True when the policy is in effect; False on other C libraries, when ``mallopt`` refuses, or when
    ``PATCHCOLOR_MALLOC=system`` opts out (then nothing is changed)."""
    global _kept
    with _lock:
        if _kept is None:
            _kept = _apply()
        return _kept


def _apply() -> bool:
    if os.environ.get(ENV_VAR, "").strip().lower() == "system":
        return False
    libc = _glibc()
    if not libc:
        return False
    try:
        mallopt = libc.mallopt
        mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        mallopt.restype = ctypes.c_int
        # M_MMAP_MAX=0: large blocks come from the heap too (reused after free instead of unmapped);
        # M_TRIM_THRESHOLD: a fixed value also stops glibc from trimming the heap's top after each big free.
        return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    except Exception:   # housekeeping: never fail a run over it
        return False


def release_memory() -> bool:
    """Ask glibc to return freed heap memory to the system (``malloc_trim(0)``: every arena, free pages inside
    the heap too). True when memory was released; False when there was none, or on another C library. Never
    raises."""
    libc = _glibc()
    if not libc:
        return False
    try:
        return bool(libc.malloc_trim(0))
    except Exception:   # never fail a request over housekeeping
        return False
