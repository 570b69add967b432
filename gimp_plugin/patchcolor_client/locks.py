"""File locks and process liveness, standard library only: shared by the GIMP plug-in's launcher (one backend
start at a time) and the batch CLI (one run per output), so that neither imports the other.

    lock_fd(fd)      exclusive, non-blocking lock on an open file; OSError when another process holds it
    unlock_fd(fd)    release it (closing the file or the process dying releases it too)
    pid_alive(pid)   True while the process runs (a zombie does not count)
"""
from __future__ import annotations

import os


def lock_fd(fd: int) -> None:
    """Exclusive non-blocking lock on an open file (flock; msvcrt byte lock on Windows). OSError when held."""
    if os.name == "nt":
        import msvcrt
        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
    else:
        import fcntl
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def unlock_fd(fd: int) -> None:
    """Release the lock :func:`lock_fd` took on ``fd``."""
    if os.name == "nt":
        import msvcrt
        os.lseek(fd, 0, 0)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
    else:
        import fcntl
        fcntl.flock(fd, fcntl.LOCK_UN)


def pid_alive(pid: int) -> bool:
    """True while process ``pid`` runs (a zombie does not count)."""
    if pid <= 0:
        return False
    if os.name == "nt":
        import ctypes
        k32 = ctypes.windll.kernel32                                   # type: ignore[attr-defined]
        h = k32.OpenProcess(0x1000, False, pid)                        # PROCESS_QUERY_LIMITED_INFORMATION
        if not h:
            return False
        code = ctypes.c_ulong()
        k32.GetExitCodeProcess(h, ctypes.byref(code))
        k32.CloseHandle(h)
        return code.value == 259                                       # STILL_ACTIVE
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True
