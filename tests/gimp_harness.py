"""Run a real GIMP 3 headless for the plug-in tests: natively (Debian 13 / any system with gimp-console-3.0 and a
Python with gi + pyzmq at /usr/bin/python3) or inside the trixie chroot made by ../shared/gimp3/setup-gimp3.sh at
``$GIMP3_ROOT`` (default /var/cache/gimp3-root).

    gimp = find_gimp()               # None + reason when no GIMP 3 is usable -> the tests skip with that reason
    work = gimp.workdir("case")      # a throw-away folder the GIMP process can see (host path + path inside)
    gimp.install_plugin(work, backend_cmd=[...], endpoint=..., log_path=...)
    proc = gimp.run_batch(work, "batch.py", timeout=300)

Isolation (see ../shared/reference/gimp3.md): GIMP3_DIRECTORY points to a fresh profile inside the work folder, the
profile holds interpreters/python.interp (python3 = /usr/bin/python3), and GIMP runs under ``env -i`` with a plain
PATH, so a pyenv shim or a venv on the host PATH can never become the plug-ins' interpreter.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PLUGIN_SRC = REPO / "gimp_plugin"
GIMP_CONSOLE = "gimp-console-3.0"
CLEAN_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
PYTHON_INTERP = (
    "python=/usr/bin/python3\n"
    "python3=/usr/bin/python3\n"
    "/usr/bin/python=/usr/bin/python3\n"
    "/usr/bin/python3=/usr/bin/python3\n"
    ":Python:E::py::python3:\n"
)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Workdir:
    host: Path       # path on this machine
    inner: str       # the same folder as GIMP sees it (inside the chroot, or == host natively)

    @property
    def profile(self) -> Path:
        return self.host / "profile"

    def inner_path(self, *parts: str) -> str:
        return "/".join([self.inner.rstrip("/"), *parts])


@dataclass
class Gimp3:
    mode: str                 # "native" | "chroot"
    root: Path | None         # chroot folder (None natively)

    def describe(self) -> str:
        return "native GIMP 3" if self.mode == "native" else f"GIMP 3 in the chroot {self.root}"

    # ---- folders --------------------------------------------------------------------------------------------------
    def workdir(self, name: str = "t") -> Workdir:
        if self.mode == "chroot":
            inner = f"/tmp/patchcolor-gimp-{name}-{uuid.uuid4().hex[:8]}"
            host = self.root / inner.lstrip("/")
            host.mkdir(parents=True)
        else:
            host = Path(tempfile.mkdtemp(prefix=f"patchcolor-gimp-{name}-"))
            inner = str(host)
        for sub in ("home/.config", "home/.cache", "home/.local/share", "profile/interpreters", "out"):
            (host / sub).mkdir(parents=True, exist_ok=True)
        (host / "profile/interpreters/python.interp").write_text(PYTHON_INTERP)
        return Workdir(host, inner)

    def install_plugin(self, work: Workdir, *, backend_cmd: list[str] | None, endpoint: str,
                       log_path: str | None = None, extra_config: dict | None = None) -> Path:
        """Install the plug-in into the work folder's profile with the project's own installer code."""
        sys.path.insert(0, str(PLUGIN_SRC))
        try:
            import gimp_install
        finally:
            sys.path.remove(str(PLUGIN_SRC))
        dest = gimp_install.install_plugin(work.profile, backend_cmd or [], endpoint, log_path,
                                           pyzmq="skip", extra_config=extra_config)
        return Path(dest)

    # ---- running --------------------------------------------------------------------------------------------------
    def block_pyzmq(self, work: Workdir) -> str:
        """A folder for PYTHONPATH whose ``zmq`` package raises ImportError (and notes each attempt in
        out/zmq_import_blocked.txt): GIMP's Python then behaves as one without pyzmq, as on Windows or Flatpak.
        A backend the plug-in starts does not inherit PYTHONPATH, so it still has the real pyzmq."""
        pkg = work.host / "nozmq" / "zmq"
        pkg.mkdir(parents=True, exist_ok=True)
        note = work.inner_path("out", "zmq_import_blocked.txt")
        (pkg / "__init__.py").write_text(f"open({note!r}, 'a').write('blocked\\n')\n"
                                         "raise ImportError('pyzmq is blocked for this GIMP test')\n")
        return work.inner_path("nozmq")

    def command(self, work: Workdir, batch_inner: str, block_pyzmq: bool = False) -> list[str]:
        env = [
            f"HOME={work.inner_path('home')}",
            f"GIMP3_DIRECTORY={work.inner_path('profile')}",
            f"XDG_CONFIG_HOME={work.inner_path('home/.config')}",
            f"XDG_CACHE_HOME={work.inner_path('home/.cache')}",
            f"XDG_DATA_HOME={work.inner_path('home/.local/share')}",
            f"TMPDIR={work.inner_path('out')}",
            f"PATH={CLEAN_PATH}",
            "LANG=C.UTF-8",
        ]
        if block_pyzmq:
            env.append(f"PYTHONPATH={self.block_pyzmq(work)}")
        code = f'exec(open("{batch_inner}").read())'
        gimp = [GIMP_CONSOLE, "-i", "--batch-interpreter=python-fu-eval", "-b", code, "--quit"]
        prefix = ["chroot", str(self.root)] if self.mode == "chroot" else []
        return prefix + ["env", "-i", *env] + gimp

    def run_batch(self, work: Workdir, batch_name: str, timeout: float = 300,
                  block_pyzmq: bool = False) -> subprocess.CompletedProcess:
        return subprocess.run(self.command(work, work.inner_path(batch_name), block_pyzmq), capture_output=True,
                              text=True, errors="replace", timeout=timeout)

    def cleanup(self, work: Workdir):
        shutil.rmtree(work.host, ignore_errors=True)


def _python_ok(prefix: list[str]) -> bool:
    try:
        r = subprocess.run(prefix + ["env", "-i", f"PATH={CLEAN_PATH}", "/usr/bin/python3", "-c",
                                     'import zmq, gi; gi.require_version("Gimp", "3.0"); '
                                     "from gi.repository import Gimp"],
                           capture_output=True, timeout=60)
        return r.returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def find_gimp() -> tuple[Gimp3 | None, str]:
    """The GIMP 3 to test with, or (None, why not)."""
    reasons = []
    if shutil.which(GIMP_CONSOLE, path=CLEAN_PATH):
        if _python_ok([]):
            return Gimp3("native", None), "native"
        reasons.append(f"{GIMP_CONSOLE} is installed but /usr/bin/python3 cannot import gi (Gimp 3.0) and zmq "
                       "(install python3-gi, gir1.2-gimp-3.0, python3-zmq)")
    root = Path(os.environ.get("GIMP3_ROOT", "/var/cache/gimp3-root"))
    if (root / "usr/bin" / GIMP_CONSOLE).exists():
        if os.geteuid() != 0:
            reasons.append(f"a GIMP 3 chroot exists at {root} but running it needs root")
        elif not (root / ".gimp3-ready").exists():
            reasons.append(f"the GIMP 3 chroot at {root} is incomplete (no .gimp3-ready; re-run setup-gimp3.sh)")
        elif _python_ok(["chroot", str(root)]):
            return Gimp3("chroot", root), f"chroot:{root}"
        else:
            reasons.append(f"the GIMP 3 chroot at {root} has no working python3-gi/python3-zmq")
    else:
        reasons.append(f"no {GIMP_CONSOLE} on this system and no chroot at {root}")
    return None, "; ".join(reasons) + " (run `sudo bash ../shared/gimp3/setup-gimp3.sh` to get one)"


# ---------------------------------------------------------------------------------------------------------------------
# GIMP's user interface under Xvfb (the dialog tests and bench/screenshot_dialog_preview.py)
# ---------------------------------------------------------------------------------------------------------------------

GUI_TOOLS = ("Xvfb", "xdotool", "import")       # packages xvfb, xdotool, imagemagick (GIMP3_EXTRA_PKGS)


def gui_missing(gimp: Gimp3) -> str | None:
    """Why the GUI tests cannot run with this GIMP (a missing X tool), or None."""
    base = gimp.root if gimp.mode == "chroot" else Path("/")
    missing = [t for t in GUI_TOOLS if not os.path.lexists(base / "usr/bin" / t)]     # absolute links: chroot's
    if missing:
        return (f"{', '.join(missing)} missing {'in the chroot ' + str(gimp.root) if gimp.root else ''} (install "
                "xvfb xdotool imagemagick there, e.g. GIMP3_EXTRA_PKGS='xvfb xdotool imagemagick' when setting up)")
    return None


class LineWatcher:
    """Reads a process's output lines in a thread; :meth:`wait_for` blocks until a line matches (or a deadline)."""

    def __init__(self, stream, echo: Path | None = None):
        import threading
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._echo = open(echo, "a", encoding="utf-8") if echo else None
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream) -> None:
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\n")
            if self._echo:
                self._echo.write(line + "\n")
                self._echo.flush()
            with self._cond:
                self.lines.append(line)
                self._cond.notify_all()
        with self._cond:
            self.lines.append("")       # EOF marker: wake waiters
            self.closed = True
            self._cond.notify_all()

    closed = False

    def wait_for(self, pattern: str, timeout: float, start: int = 0):
        """The first ``re.search(pattern)`` match among lines[start:], waiting up to ``timeout`` s; None on
        timeout or when the stream ended without one."""
        import re
        rx = re.compile(pattern)
        found = []

        def check() -> bool:
            for ln in self.lines[start:]:
                m = rx.search(ln)
                if m:
                    found.append(m)
                    return True
            return self.closed
        with self._cond:
            self._cond.wait_for(check, timeout)
        return found[0] if found else None


class GuiSession:
    """Xvfb (``width`` x ``height``) and a GIMP with its user interface in ``work``, running ``batch_name`` through
    python-fu-eval and quitting when it returns; xdotool/import helpers for its windows.

        with GuiSession(gimp, work, "gui.py", 1366, 768) as gui:
            wid = gui.window("^Colorize \\\\(Patch\\\\)$", timeout=240)
            gui.geometry(wid); gui.click(wid, x, y); gui.shot(wid, "out/dialog.png")
    """

    def __init__(self, gimp: Gimp3, work: Workdir, batch_name: str, width: int = 1366, height: int = 768):
        self.gimp, self.work, self.batch = gimp, work, batch_name
        self.size = (width, height)
        self.procs: list[subprocess.Popen] = []
        self.display = ""

    def _prefix(self) -> list[str]:
        return ["chroot", str(self.gimp.root)] if self.gimp.mode == "chroot" else []

    def env(self) -> list[str]:
        w = self.work
        return ["env", "-i", f"HOME={w.inner_path('home')}", f"GIMP3_DIRECTORY={w.inner_path('profile')}",
                f"XDG_CONFIG_HOME={w.inner_path('home/.config')}", f"XDG_CACHE_HOME={w.inner_path('home/.cache')}",
                f"XDG_DATA_HOME={w.inner_path('home/.local/share')}", f"TMPDIR={w.inner_path('out')}",
                f"PATH={CLEAN_PATH}", "LANG=C.UTF-8", f"DISPLAY={self.display}"]

    def __enter__(self) -> "GuiSession":
        r, wfd = os.pipe()
        xvfb = subprocess.Popen(self._prefix() + ["Xvfb", "-displayfd", str(wfd), "-screen", "0",
                                                  f"{self.size[0]}x{self.size[1]}x24", "-nolisten", "tcp"],
                                pass_fds=(wfd,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.procs.append(xvfb)
        os.close(wfd)
        with os.fdopen(r) as f:          # Xvfb writes its display number when it is ready
            number = f.readline().strip()
        if not number:
            self.__exit__(None, None, None)
            raise RuntimeError("Xvfb did not start")
        self.display = f":{number}"
        code = f'exec(open("{self.work.inner_path(self.batch)}").read())'
        self.gimp_log = self.work.host / "out" / "gimp.log"
        gimp = subprocess.Popen(self._prefix() + self.env() + [
            "gimp-3.0", "--no-splash", "--batch-interpreter=python-fu-eval", "-b", code, "--quit"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.procs.append(gimp)
        self.gimp_proc = gimp
        self.gimp_out = LineWatcher(gimp.stdout, self.gimp_log)
        return self

    def x(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(self._prefix() + self.env() + list(args), capture_output=True, text=True,
                              timeout=timeout)

    def window(self, name_regex: str, timeout: float) -> str | None:
        """The id of the first visible window whose name matches, waiting for it (xdotool --sync) up to
        ``timeout`` s; None when none appeared."""
        try:
            r = self.x("xdotool", "search", "--sync", "--onlyvisible", "--name", name_regex, timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        ids = r.stdout.split()
        return ids[-1] if ids else None

    def gone(self, wid: str) -> bool:
        return self.x("xdotool", "getwindowname", wid).returncode != 0

    def geometry(self, wid: str) -> dict[str, int]:
        out = self.x("xdotool", "getwindowgeometry", "--shell", wid).stdout
        return {k: int(v) for k, v in (ln.split("=", 1) for ln in out.split() if "=" in ln) if v.lstrip("-").isdigit()}

    def key(self, wid: str, keys: str) -> None:
        """Give ``wid`` the keyboard focus and type ``keys`` (xdotool syntax, e.g. "alt+o", "Escape")."""
        self.x("xdotool", "windowfocus", "--sync", wid)
        self.x("xdotool", "key", keys)

    def click(self, wid: str, x: int, y: int) -> None:
        self.x("xdotool", "mousemove", "--window", wid, str(x), str(y), "click", "1")

    def shot(self, wid: str | None, host_path: Path) -> Path:
        """A PNG of the window (or of the whole screen when ``wid`` is None) at ``host_path`` (inside work/out)."""
        inner = self.work.inner_path(os.path.relpath(host_path, self.work.host))
        self.x("import", "-window", wid or "root", inner)
        return host_path

    def __exit__(self, *exc) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
