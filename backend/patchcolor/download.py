"""Resumable HTTP downloads for the weight files (standard library only).

:func:`download` fetches a URL into ``<file>.part``, continuing an interrupted file with an HTTP Range request and
retrying dropped connections, time-outs and 5xx/429 answers with exponential backoff; :class:`Progress` draws its
progress line on stderr. Verification and the rename into place are :mod:`patchcolor.weights`' job.
"""
from __future__ import annotations

import http.client
import os
import socket
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from . import __version__

USER_AGENT = f"patchcolor/{__version__} (+urllib)"
CHUNK = 1 << 20                      # 1 MiB reads


def say(msg: str = "") -> None:
    """One line on stdout, flushed (the weights command's messages)."""
    print(msg, flush=True)


def human(n: int | None) -> str:
    """A byte count for people: ``"129.0 MB"`` (decimal units), ``"?"`` when unknown."""
    if n is None:
        return "?"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000  # type: ignore[assignment]
    return str(n)


class DownloadError(Exception):
    """A download could not be completed; ``offline`` when the host could not even be resolved/reached."""

    def __init__(self, message: str, offline: bool = False, permanent: bool = False):
        super().__init__(message)
        self.offline = offline
        self.permanent = permanent


class _Truncated(Exception):
    """The server closed the connection before the announced length (retried, resuming)."""


@dataclass
class Progress:
    """Progress line on stderr: redrawn in place on a terminal, one line per 10 % otherwise."""

    label: str
    total: int | None
    enabled: bool = True

    def __post_init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.t0 = time.monotonic()
        self.last = 0.0
        self.last_decile = -1
        self.start_bytes: int | None = None

    def begin(self, have: int) -> None:
        """A new request starts at byte ``have`` (the rate is measured per request)."""
        self.t0, self.start_bytes = time.monotonic(), have
        if have == 0:
            self.last_decile = -1

    def update(self, done: int, final: bool = False) -> None:
        if not self.enabled:
            return
        if self.start_bytes is None:
            self.start_bytes = done
        now = time.monotonic()
        rate = (done - self.start_bytes) / max(now - self.t0, 1e-6)
        pct = f"{100 * done / self.total:5.1f}%" if self.total else "     "
        line = f"  {self.label}: {human(done)} / {human(self.total)} {pct}  {human(int(rate))}/s"
        if self.tty:
            if final or now - self.last >= 0.2:
                sys.stderr.write("\r" + line.ljust(78) + ("\n" if final else ""))
                sys.stderr.flush()
                self.last = now
        else:
            decile = int(10 * done / self.total) if self.total else -1
            if decile > self.last_decile or (final and decile < 10):
                self.last_decile = decile
                sys.stderr.write(line + "\n")
                sys.stderr.flush()


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """Parse ``bytes START-END/TOTAL`` or ``bytes */TOTAL`` -> (start, total); None where unknown."""
    if not value or not value.startswith("bytes"):
        return None, None
    spec = value[5:].strip()
    rng, _, total = spec.partition("/")
    tot = int(total) if total.strip().isdigit() else None
    start = int(rng.split("-")[0]) if rng and rng[0].isdigit() else None
    return start, tot


def _is_offline_error(exc: BaseException) -> bool:
    reason = getattr(exc, "reason", exc)
    return isinstance(reason, socket.gaierror)


def download(url: str, part: Path, *, retries: int = 5, retry_wait: float = 1.0, timeout: float = 30.0,
             label: str | None = None, progress: bool = True, expected_size: int | None = None) -> int:
    """Download ``url`` into ``part``, resuming from its current length with an HTTP Range request.

    A 206 answer is appended; a 200 answer (server ignores Range) restarts the file cleanly; a 416 answer means the
    part is already complete (or stale: then it restarts).  Connection drops, timeouts and 5xx/429 answers are
    retried with exponential backoff (``retry_wait`` * 2**n, max 60 s), each retry continuing where the file stopped;
    attempts that made progress do not count against ``retries``.  Returns the final size.
    Raises :class:`DownloadError` (``offline=True`` when the host name does not resolve).
    """
    part.parent.mkdir(parents=True, exist_ok=True)
    failures = 0
    total_tries = 0
    ever_got = http_seen = False                   # neither: the network itself is unusable (offline)
    prog = Progress(label or part.name, expected_size, enabled=progress)
    while True:
        total_tries += 1
        have = part.stat().st_size if part.exists() else 0
        headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
        if have:
            headers["Range"] = f"bytes={have}-"
        got = 0
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout) as resp:
                http_seen = True
                status = resp.status
                length = resp.headers.get("Content-Length")
                if status == 206:
                    start, total = _content_range(resp.headers.get("Content-Range"))
                    if start != have:          # resumed somewhere else: start over
                        part.unlink(missing_ok=True)
                        continue
                    mode = "ab"
                elif status == 200:
                    if have:
                        say(f"  {prog.label}: the server does not resume downloads; starting over")
                    have, mode = 0, "wb"
                    total = int(length) if length and length.isdigit() else None
                else:
                    raise DownloadError(f"unexpected HTTP status {status} for {url}")
                prog.total = total or prog.total
                prog.begin(have)
                with open(part, mode) as f:
                    while True:
                        try:
                            chunk = resp.read(CHUNK)
                        except http.client.IncompleteRead as e:
                            f.write(e.partial)
                            got += len(e.partial)
                            raise _Truncated("connection closed early") from None
                        if not chunk:
                            break
                        f.write(chunk)
                        got += len(chunk)
                        prog.update(have + got)
                    f.flush()
                    os.fsync(f.fileno())
                size = have + got
                if total is not None and size < total:
                    raise _Truncated(f"got {size} of {total} bytes")
                prog.update(size, final=True)
                return size
        except urllib.error.HTTPError as e:
            http_seen = True
            if e.code == 416 and have:
                _, total = _content_range(e.headers.get("Content-Range"))
                if total == have:
                    prog.update(have, final=True)
                    return have
                part.unlink(missing_ok=True)       # stale or oversized part: restart
                continue
            if e.code in (401, 403, 404, 410):
                raise DownloadError(f"HTTP {e.code} {e.reason} for {url}", permanent=True) from None
            reason = f"HTTP {e.code} {e.reason}"
        except urllib.error.URLError as e:
            if _is_offline_error(e):
                raise DownloadError(f"cannot resolve the host of {url} ({e.reason})", offline=True) from None
            reason = str(e.reason)
        except (_Truncated, http.client.HTTPException, ConnectionError, TimeoutError, OSError) as e:
            reason = str(e) or type(e).__name__
        if got > 0:
            failures = 0                           # progress was made: a fresh budget of retries
            ever_got = True
        failures += 1
        if failures > retries or total_tries > max(50, 10 * retries):
            raise DownloadError(f"{reason} (gave up after {failures - 1} retries)",
                                offline=not (ever_got or http_seen))
        wait = min(retry_wait * 2 ** (failures - 1), 60.0)
        if prog.tty and progress:
            sys.stderr.write("\n")
        say(f"  {prog.label}: {reason}; retry {failures}/{retries} in {wait:.0f} s "
            f"(resuming at {human(part.stat().st_size if part.exists() else 0)})")
        time.sleep(wait)

