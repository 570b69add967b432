"""Find or start the local backend, and the cancel watchdog. Standard library only (GIMP's Python runs it).

    started = ensure_backend(endpoint, auto_start=True, cfg=config, set_text=ui_text, tick=ui_pulse)
    wd = Watchdog(endpoint); wd.job(job_id); ...; wd.done()

Auto-start rules (one place for the plug-in and tests):
* only for a loopback endpoint (``endpoint.is_loopback``), and only when nothing answers a ping;
* never two: a lock file serialises concurrent plug-ins, a state file remembers a backend still loading;
* every failure is one sentence for a person that names the exact command to start the backend by hand and
  ``python3 install.py --autostart`` (a login service that works whatever sandbox GIMP runs in); the backend log's
  last lines go to the log (stderr), not into the sentence.

The watchdog: GIMP cancels a plug-in's progress by killing the plug-in process. ``python -m
patchcolor_client.launcher watchdog ENDPOINT [KEY]`` holds the read end of a pipe; when the plug-in dies before
writing ``done``, the pipe reaches EOF and the watchdog sends the backend a ``cancel`` for the running job.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable

from .endpoint import is_loopback
from .locks import lock_fd, pid_alive, unlock_fd
from .protocol import DEFAULT_ENDPOINT

STARTING_TEXT = "Starting the colorize backend\u2026"
PingFn = Callable[[str, float], bool]
PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class LaunchError(Exception):
    """The backend cannot be reached or started; the message is one sentence for people."""


def state_paths(endpoint: str) -> tuple[str, str]:
    """(lock file, state file) for ``endpoint`` in the temp folder."""
    tag = hashlib.sha1(endpoint.encode()).hexdigest()[:12]
    base = os.path.join(tempfile.gettempdir(), f"colorize-patch-backend-{tag}")
    return base + ".lock", base + ".json"


def backend_command(cfg: dict[str, Any], endpoint: str) -> list[str]:
    """The recorded backend command (config.json ``backend_command``) with ``--endpoint`` appended if missing."""
    cmd = [str(c) for c in (cfg.get("backend_command") or [])]
    if cmd and "--endpoint" not in cmd:
        cmd += ["--endpoint", endpoint]
    return cmd


def manual_hint(cfg: dict[str, Any], endpoint: str) -> str:
    """The clause telling how to run the backend by hand, and how to make it a login service (it ends a
    sentence)."""
    cmd = backend_command(cfg, endpoint) or ["patchcolor", "serve", "--endpoint", endpoint]
    auto = cfg.get("autostart_command") or "python3 install.py --autostart"
    return (f"start it in a terminal with `{_quote(cmd)}`, or run `{auto}` once to have it start at every login "
            f"whatever sandbox GIMP runs in")


def _quote(cmd: list[str]) -> str:
    if os.name == "nt":
        return subprocess.list2cmdline(cmd)
    import shlex
    return shlex.join(cmd)


def default_ping(server_key: Any = None) -> PingFn:
    """ping(endpoint, timeout_s) -> bool with a fresh Client (raises LaunchError for a malformed endpoint)."""
    from .client import BackendUnavailable, Client

    def ping(endpoint: str, timeout_s: float) -> bool:
        try:
            c = Client(endpoint, timeout_s=timeout_s, server_public_key=server_key, retries=0)
        except BackendUnavailable as e:
            raise LaunchError(f"The backend endpoint {endpoint!r} is not usable ({_clause(e)}), so write it like "
                              f"{DEFAULT_ENDPOINT}.") from None
        except (ValueError, OSError) as e:
            raise LaunchError(f"The backend's public key in the plug-in's config.json is not usable: {_clause(e)}.") \
                from None
        try:
            c.ping(timeout_s)
            return True
        except Exception:       # noqa: BLE001 - any failure means "not answering"
            return False
        finally:
            c.close()
    return ping


class FileLock:
    """An exclusive advisory lock on a file (flock on POSIX, msvcrt on Windows), acquired before ``deadline``
    (time.monotonic()). ``tick`` is called while waiting (to keep a progress bar moving)."""

    def __init__(self, path: str, deadline: float, tick: Callable[[], Any] | None = None):
        self.path, self.deadline, self.tick = path, deadline, tick
        self.fd: int | None = None

    def __enter__(self) -> "FileLock":
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        while True:
            try:
                lock_fd(self.fd)
                return self
            except OSError:
                if time.monotonic() > self.deadline:
                    os.close(self.fd)
                    self.fd = None
                    raise LaunchError("Another GIMP plug-in is still starting the colorize backend and it did not "
                                      f"become ready in time, so try again in a moment (lock file {self.path}).") \
                        from None
                if self.tick:
                    self.tick()
                time.sleep(0.1)

    def __exit__(self, *exc: Any) -> None:
        if self.fd is not None:
            try:
                unlock_fd(self.fd)
            finally:
                os.close(self.fd)
                self.fd = None


def log_tail(path: str | None, n: int = 6) -> str:
    """' Last lines of the backend log: ...' or ''."""
    if not path:
        return ""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = [ln.rstrip() for ln in f.readlines()[-n:] if ln.strip()]
    except OSError:
        return ""
    return (" Last lines of the backend log:\n  " + "\n  ".join(lines)) if lines else ""


def spawn_backend(cmd: list[str], log_file: str | None, cfg: dict[str, Any], endpoint: str) -> subprocess.Popen:
    """Start ``cmd`` detached from GIMP (own session / process group), output appended to ``log_file``."""
    log = None
    if log_file:
        try:
            os.makedirs(os.path.dirname(os.path.abspath(log_file)), exist_ok=True)
            log = open(log_file, "ab")
            log.write(f"\n---- {time.strftime('%Y-%m-%d %H:%M:%S')} started by the GIMP plug-in: {_quote(cmd)}\n"
                      .encode())
            log.flush()
        except OSError:
            log = None
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    kw: dict[str, Any] = dict(stdin=subprocess.DEVNULL, stdout=log or subprocess.DEVNULL, stderr=subprocess.STDOUT,
                              env=env, close_fds=True, cwd=os.path.expanduser("~"))
    if os.name == "nt":
        kw["creationflags"] = 0x00000008 | 0x00000200 | 0x08000000   # DETACHED | NEW_PROCESS_GROUP | NO_WINDOW
    else:
        kw["start_new_session"] = True        # survives GIMP killing the plug-in, gets no terminal signals
    try:
        return subprocess.Popen(cmd, **kw)
    except OSError as e:
        raise LaunchError(f"Could not start the colorize backend ({e.strerror or e}: {cmd[0]}), perhaps because GIMP "
                          f"runs in a sandbox, so {manual_hint(cfg, endpoint)}.") from None
    finally:
        if log:
            log.close()


def ensure_backend(endpoint: str, auto_start: bool, cfg: dict[str, Any], ping: PingFn | None = None,
                   set_text: Callable[[str], Any] | None = None, tick: Callable[[], Any] | None = None) -> bool:
    """Make sure a backend answers at ``endpoint``; start the recorded one if allowed and needed.

    ``cfg``: config.json (backend_command, log_file, ping_timeout_s, remote_ping_timeout_s, start_timeout_s,
    server_public_key, autostart_command). Returns True when this call started the backend. Raises LaunchError."""
    ping = ping or default_ping(cfg.get("server_public_key") or None)
    local = is_loopback(endpoint)
    ping_timeout = float(cfg.get("ping_timeout_s", 2.0))
    if ping(endpoint, ping_timeout if local else float(cfg.get("remote_ping_timeout_s", 5.0))):
        return False
    if not local:
        raise LaunchError(f"No colorize backend answers at {endpoint}, which is not an address on this computer, so "
                          "the plug-in does not start one: start `patchcolor serve` on that machine, or change the "
                          "backend endpoint.")
    cmd = backend_command(cfg, endpoint)
    if not auto_start:
        raise LaunchError(f"No colorize backend answers at {endpoint} and automatic start is turned off, so "
                          f"{manual_hint(cfg, endpoint)}.")
    if not cmd:
        raise LaunchError(f"No colorize backend answers at {endpoint} and the plug-in's config.json records no "
                          f"backend command, so {manual_hint(cfg, endpoint)}.")
    log_file = cfg.get("log_file")
    timeout = float(cfg.get("start_timeout_s", 180.0))
    deadline = time.monotonic() + timeout
    if set_text:
        set_text(STARTING_TEXT)
    lock_path, state_path = state_paths(endpoint)
    with FileLock(lock_path, deadline, tick):
        if ping(endpoint, ping_timeout):
            return False                    # another plug-in started it while we waited for the lock
        proc: subprocess.Popen | None = None
        pid: int | None = None
        try:
            with open(state_path, encoding="utf-8") as f:
                st = json.load(f)
            if (st.get("endpoint") == endpoint and pid_alive(int(st.get("pid", 0)))
                    and time.time() - float(st.get("started", 0)) < timeout):
                pid = int(st["pid"])        # a backend started earlier is still loading: wait for it, start nothing
        except (OSError, ValueError, TypeError, AttributeError):
            pass
        if pid is None:
            proc = spawn_backend(cmd, log_file, cfg, endpoint)
            pid = proc.pid
            try:
                with open(state_path, "w", encoding="utf-8") as f:
                    json.dump({"pid": pid, "endpoint": endpoint, "started": time.time(), "command": cmd}, f)
            except OSError:
                pass
        while time.monotonic() < deadline:
            if ping(endpoint, 0.5):
                return proc is not None
            exited = proc.poll() is not None if proc is not None else not pid_alive(pid)
            if exited:
                code = f" (exit code {proc.returncode})" if proc is not None else ""
                _log(f"the backend stopped while starting{code}.{log_tail(log_file)}")
                raise LaunchError(f"The colorize backend stopped while starting{code}, so {_see_log(log_file)}.")
            if tick:
                tick()
            time.sleep(0.2)
    _log(f"the backend did not answer within {timeout:.0f} s of being started.{log_tail(log_file)}")
    raise LaunchError(f"The colorize backend did not answer at {endpoint} within {timeout:.0f} s of being started, "
                      f"so {_see_log(log_file)}.")


def _see_log(log_file: str | None) -> str:
    return f"its log {log_file} says why" if log_file else "run it by hand to see why (no log file is configured)"


def _clause(e: BaseException) -> str:
    """An exception's text as a clause inside one sentence (no final period)."""
    return " ".join(str(e).split()).rstrip(" .") or e.__class__.__name__


def _log(text: str) -> None:
    """Details for the log (GIMP's terminal): the backend log's tail when a start fails."""
    try:
        sys.stderr.write(f"colorize-patch: {text}\n")
    except (OSError, ValueError):
        pass


class Watchdog:
    """Runs ``python -m patchcolor_client.launcher watchdog`` beside the plug-in (see the module docstring)."""

    def __init__(self, endpoint: str, server_key: str | None = None, python: str | None = None):
        self.proc: subprocess.Popen | None = None
        kw: dict[str, Any] = {"start_new_session": True} if os.name != "nt" else {"creationflags": 0x08000000}
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONHOME", "PYTHONSTARTUP")}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (PACKAGE_PARENT, os.environ.get("PYTHONPATH")) if p)
        try:
            self.proc = subprocess.Popen([python or sys.executable, "-m", "patchcolor_client.launcher", "watchdog",
                                          endpoint, server_key or ""], stdin=subprocess.PIPE,
                                         stdout=subprocess.DEVNULL, close_fds=True, env=env, **kw)
        except OSError:
            self.proc = None                # no watchdog: cancelling then relies on the backend noticing

    def job(self, job_id: str, token: str | None = None) -> None:
        """The job to cancel if the plug-in dies (``token``: its secret, needed by servers that bind jobs)."""
        self._send(f"job {job_id} {token or ''}".rstrip() + "\n")

    def done(self) -> None:
        self._send("done\n")
        if self.proc is not None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.close()
                self.proc.wait(timeout=2)
            except Exception:       # noqa: BLE001 - best effort
                pass
            self.proc = None

    def _send(self, text: str) -> None:
        if self.proc is not None and self.proc.stdin:
            try:
                self.proc.stdin.write(text.encode())
                self.proc.stdin.flush()
            except OSError:
                pass


def watchdog_main(endpoint: str, key: str | None, lines: Any = None) -> int:
    """Read ``job ID [TOKEN]`` / ``done`` lines from stdin; at EOF without ``done``, cancel the last job."""
    job, token = None, None
    for line in (lines if lines is not None else sys.stdin):
        words = line.split()
        if len(words) in (2, 3) and words[0] == "job":
            job, token = words[1], (words[2] if len(words) == 3 else None)
        elif words == ["done"]:
            return 0
    if job:
        from .client import Client
        try:
            c = Client(endpoint, timeout_s=5.0, server_public_key=key or None)
            try:
                c.cancel(job, token) if token else c.cancel(job)
            finally:
                c.close()
        except Exception as e:      # noqa: BLE001 - the plug-in is gone: stderr is all there is
            sys.stderr.write(f"colorize-patch watchdog: cancel failed: {e}\n")
    return 0


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "watchdog":
        sys.exit(watchdog_main(sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else None))
    sys.stderr.write("usage: python -m patchcolor_client.launcher watchdog ENDPOINT [SERVER_KEY]\n")
    sys.exit(2)
