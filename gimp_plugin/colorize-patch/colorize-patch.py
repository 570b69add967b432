#!/usr/bin/env python3
"""GIMP 3 plug-in: Filters -> Colorize (Patch)... and Filters -> Colorize (Patch): Re-fuse Masks.

Sends the selected layer to the Patch Colorization backend (``patchcolor serve``) over ZeroMQ and adds, directly above
the source layer, a layer group "Colorize (Patch)" holding a "Colorized" layer and one hidden white-on-black mask layer
per detected object.  After the masks are edited, "Re-fuse Masks" sends them back and updates the Colorized layer in
place without re-running the networks.

Imports: GIMP's gi modules, the standard library, and -- inside the run functions only, so that the plug-in registers
even when they are missing -- pyzmq and ``patchcolor_client`` (copied next to this file by install.py).
"""
from __future__ import annotations

import array
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
import uuid

PLUGIN_DIR = os.path.dirname(os.path.abspath(__file__))
CONFIG_PATH = os.path.join(PLUGIN_DIR, "config.json")

PROC_COLORIZE = "plug-in-colorize-patch"
PROC_REFUSE = "plug-in-colorize-patch-refuse"
GROUP_NAME = "Colorize (Patch)"
COLORIZED_NAME = "Colorized"
PARASITE_GROUP = "colorize-patch"            # on the group: JSON with the job id and what re-fusing needs
PARASITE_COLORIZED = "colorize-patch-colorized"
PARASITE_MASK = "colorize-patch-mask"        # on each mask layer: {"index": i}
DEFAULT_ENDPOINT = "tcp://127.0.0.1:5555"
STARTING_TEXT = "Starting the colorize backend\u2026"

PRESETS = [("default", "Default (full resolution, feathered)"), ("seed", "Seed (as published)")]
COLORIZERS = [("eccv16", "ECCV16 (Zhang et al. 2016)"), ("siggraph17", "SIGGRAPH17 (Zhang et al. 2017)")]
DETECTORS = [("r101", "Mask R-CNN R101-FPN (Detectron2 weights)"),
             ("torchvision-v2", "Mask R-CNN R50-FPN v2 (torchvision weights)"),
             ("detectron2", "Detectron2 library (if installed)"),
             ("none", "None (whole image only)")]

# wire pixel format -> babl format (GEGL reads/writes native-endian u16; the wire is little-endian)
BABL = {
    "gray8": "Y' u8", "graya8": "Y'A u8", "rgb8": "R'G'B' u8", "rgba8": "R'G'B'A u8",
    "gray16": "Y' u16", "graya16": "Y'A u16", "rgb16": "R'G'B' u16", "rgba16": "R'G'B'A u16",
}
CHANNELS = {"gray": 1, "graya": 2, "rgb": 3, "rgba": 4}


# --------------------------------------------------------------------------------------------------------------------
# GIMP-free helpers (importable without gi, so they can be unit-tested with any Python)
# --------------------------------------------------------------------------------------------------------------------

class PluginError(Exception):
    """A failure the user sees as one clear sentence (EXECUTION_ERROR); the image has not been touched."""


class CallingError(PluginError):
    """Wrong input (CALLING_ERROR): group layer, several layers, no layer..."""


def load_config(path: str = CONFIG_PATH) -> dict:
    """config.json written by install.py: backend_command (list), endpoint, log_file, optional extras."""
    try:
        with open(path, encoding="utf-8") as f:
            cfg = json.load(f)
        return cfg if isinstance(cfg, dict) else {}
    except (OSError, ValueError):
        return {}


def split_format(fmt: str) -> tuple[str, int]:
    """'rgba16' -> ('rgba', 16)."""
    bits = 16 if fmt.endswith("16") else 8
    return fmt[: -2 if bits == 16 else -1], bits


def frame_size(width: int, height: int, fmt: str) -> int:
    kind, bits = split_format(fmt)
    return width * height * CHANNELS[kind] * bits // 8


def result_format(request_fmt: str) -> str:
    """The backend answers in colour: gray8 -> rgb8, graya16 -> rgba16, rgb stays."""
    kind, bits = split_format(request_fmt)
    kind = {"gray": "rgb", "graya": "rgba"}.get(kind, kind)
    return f"{kind}{bits}"


def to_wire16(data: bytes) -> bytes:
    """Native-endian u16 (what GEGL gives) -> little-endian (the wire), and back (the same swap)."""
    if sys.byteorder == "little":
        return data
    a = array.array("H")
    a.frombytes(bytes(data))
    a.byteswap()
    return a.tobytes()


from_wire16 = to_wire16


def is_local_endpoint(endpoint: str) -> bool:
    """Only a backend on this machine may be auto-started: loopback TCP, ipc:// or inproc://."""
    ep = endpoint.strip().lower()
    if ep.startswith(("ipc://", "inproc://")):
        return True
    if not ep.startswith("tcp://"):
        return False
    host = ep[len("tcp://"):]
    if host.startswith("["):
        host = host[1:host.find("]")] if "]" in host else host[1:]
    else:
        host = host.rsplit(":", 1)[0]
    if ";" in host:                 # "tcp://src;dst" source-address syntax: look at the destination
        host = host.split(";")[-1]
    return host in ("127.0.0.1", "localhost", "::1", "0:0:0:0:0:0:0:1") or host.startswith("127.")


def instance_layer_name(class_name: str, score: float) -> str:
    """'person 97%'."""
    return f"{class_name} {int(float(score) * 100 + 0.5)}%"


def full_mask(width: int, height: int, origin, size, mask: bytes) -> bytes:
    """Paste an instance mask (cropped to ``size`` at ``origin``, one byte per pixel) into a width x height gray8 frame
    with 255 inside and 0 outside.  Parts outside the frame are clipped."""
    ox, oy = int(origin[0]), int(origin[1])
    mw, mh = int(size[0]), int(size[1])
    out = bytearray(width * height)
    mask = bytes(mask)
    if len(mask) != mw * mh:
        raise PluginError(f"the colorize backend sent a mask of {len(mask)} bytes for a {mw}x{mh} box")
    x0, x1 = max(0, ox), min(width, ox + mw)
    if x1 <= x0:
        return bytes(out)
    table = bytes(255 if v else 0 for v in range(256))
    for row in range(max(0, oy), min(height, oy + mh)):
        src = (row - oy) * mw
        out[row * width + x0: row * width + x1] = mask[src + x0 - ox: src + x1 - ox].translate(table)
    return bytes(out)


def validate_result(res, width: int, height: int, fmt: str) -> list:
    """Check a ColorizeResult completely before the image is touched. Returns the instances as plain tuples
    (class_name, score, origin, size, mask bytes)."""
    want = frame_size(width, height, result_format(fmt))
    pixels = getattr(res, "pixels", None)
    if pixels is None or len(pixels) != want:
        got = "no pixels" if pixels is None else f"{len(pixels)} bytes"
        raise PluginError(f"the colorize backend sent {got} for a {width}x{height} {result_format(fmt)} image "
                          f"({want} bytes expected); nothing was changed")
    out = []
    for i, inst in enumerate(getattr(res, "instances", None) or []):
        try:
            name = str(inst.class_name)
            score = float(inst.score)
            origin = tuple(int(v) for v in inst.mask_origin)
            size = tuple(int(v) for v in inst.mask_size)
            mask = bytes(inst.mask)
        except (AttributeError, TypeError, ValueError) as e:
            raise PluginError(f"the colorize backend sent a malformed instance #{i + 1} ({e}); nothing was changed")
        if len(origin) != 2 or len(size) != 2 or size[0] < 0 or size[1] < 0 or len(mask) != size[0] * size[1]:
            raise PluginError(f"the colorize backend sent a mask of the wrong size for instance #{i + 1}; "
                              "nothing was changed")
        out.append((name, score, origin, size, mask))
    return out


# ---- backend auto-start --------------------------------------------------------------------------------------------

def _state_paths(endpoint: str) -> tuple[str, str]:
    tag = hashlib.sha1(endpoint.encode()).hexdigest()[:12]
    base = os.path.join(tempfile.gettempdir(), f"colorize-patch-backend-{tag}")
    return base + ".lock", base + ".json"


class _FileLock:
    """An exclusive advisory lock on a file (flock on POSIX, msvcrt on Windows), acquired before a deadline."""

    def __init__(self, path: str, deadline: float, tick=None):
        self.path, self.deadline, self.tick, self.fd = path, deadline, tick, None

    def __enter__(self):
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        while True:
            try:
                if os.name == "nt":
                    import msvcrt
                    msvcrt.locking(self.fd, msvcrt.LK_NBLCK, 1)
                else:
                    import fcntl
                    fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return self
            except OSError:
                if time.monotonic() > self.deadline:
                    os.close(self.fd)
                    self.fd = None
                    raise PluginError("another GIMP plug-in is still starting the colorize backend and it did not "
                                      f"become ready in time (lock file {self.path})")
                if self.tick:
                    self.tick()
                time.sleep(0.1)

    def __exit__(self, *exc):
        if self.fd is not None:
            try:
                if os.name == "nt":
                    import msvcrt
                    os.lseek(self.fd, 0, 0)
                    msvcrt.locking(self.fd, msvcrt.LK_UNLCK, 1)
                else:
                    import fcntl
                    fcntl.flock(self.fd, fcntl.LOCK_UN)
            finally:
                os.close(self.fd)
                self.fd = None


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    if os.name == "nt":
        import ctypes
        h = ctypes.windll.kernel32.OpenProcess(0x1000, False, pid)   # PROCESS_QUERY_LIMITED_INFORMATION
        if not h:
            return False
        code = ctypes.c_ulong()
        ctypes.windll.kernel32.GetExitCodeProcess(h, ctypes.byref(code))
        ctypes.windll.kernel32.CloseHandle(h)
        return code.value == 259                                       # STILL_ACTIVE
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:    # a zombie (our own exited child) is not alive
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _log_tail(path: str | None, n: int = 6) -> str:
    if not path:
        return ""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = [ln.rstrip() for ln in f.readlines()[-n:] if ln.strip()]
        return (" Last lines of the backend log:\n  " + "\n  ".join(lines)) if lines else ""
    except OSError:
        return ""


def backend_command(cfg: dict, endpoint: str) -> list[str]:
    cmd = [str(c) for c in (cfg.get("backend_command") or [])]
    if cmd and "--endpoint" not in cmd:
        cmd += ["--endpoint", endpoint]
    return cmd


def _spawn_backend(cmd: list[str], log_file: str | None) -> subprocess.Popen:
    log = None
    if log_file:
        os.makedirs(os.path.dirname(os.path.abspath(log_file)), exist_ok=True)
        log = open(log_file, "ab")
        log.write(f"\n---- {time.strftime('%Y-%m-%d %H:%M:%S')} started by the GIMP plug-in: {' '.join(cmd)}\n"
                  .encode())
        log.flush()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    kw = dict(stdin=subprocess.DEVNULL, stdout=log or subprocess.DEVNULL, stderr=subprocess.STDOUT, env=env,
              close_fds=True, cwd=os.path.expanduser("~"))
    if os.name == "nt":
        kw["creationflags"] = 0x00000008 | 0x00000200 | 0x08000000   # DETACHED | NEW_PROCESS_GROUP | NO_WINDOW
    else:
        kw["start_new_session"] = True        # survives GIMP killing the plug-in, gets no terminal signals
    try:
        return subprocess.Popen(cmd, **kw)
    except OSError as e:
        raise PluginError(f"could not start the colorize backend ({' '.join(cmd)}): {e.strerror or e}. "
                          "Run install.py again to record a working backend command.")
    finally:
        if log:
            log.close()


def ensure_backend(endpoint: str, auto_start: bool, cfg: dict, ping, set_text=None, tick=None) -> bool:
    """Make sure something answers ``ping(endpoint, timeout_s) -> bool`` at ``endpoint``.

    Starts the backend command recorded in ``cfg`` only for a local endpoint and only when nothing answers; never two
    (a lock file serialises plug-ins, a state file remembers a backend that is still loading).  Returns True when this
    call started the backend.  Raises PluginError with a sentence for the user otherwise.
    """
    ping_timeout = float(cfg.get("ping_timeout_s", 2.0))
    if ping(endpoint, ping_timeout if is_local_endpoint(endpoint) else float(cfg.get("remote_ping_timeout_s", 5.0))):
        return False
    if not is_local_endpoint(endpoint):
        raise PluginError(f"No colorize backend answers at {endpoint}. This is not an address on this computer, so "
                          "the plug-in does not start one: start `patchcolor serve` on that machine, or change the "
                          "backend endpoint.")
    cmd = backend_command(cfg, endpoint)
    if not auto_start:
        hint = f" Start it with: {' '.join(cmd)}" if cmd else " Start it with: patchcolor serve --endpoint " + endpoint
        raise PluginError(f"No colorize backend answers at {endpoint} and automatic start is turned off.{hint}")
    if not cmd:
        raise PluginError(f"No colorize backend answers at {endpoint} and no backend command is recorded in "
                          f"{CONFIG_PATH}. Run `python3 install.py` again, or start `patchcolor serve` yourself.")
    log_file = cfg.get("log_file")
    timeout = float(cfg.get("start_timeout_s", 180.0))
    deadline = time.monotonic() + timeout
    if set_text:
        set_text(STARTING_TEXT)
    lock_path, state_path = _state_paths(endpoint)
    with _FileLock(lock_path, deadline, tick):
        if ping(endpoint, ping_timeout):
            return False                    # another plug-in started it while we waited for the lock
        proc, pid = None, None
        try:
            with open(state_path, encoding="utf-8") as f:
                st = json.load(f)
            if (st.get("endpoint") == endpoint and _pid_alive(int(st.get("pid", 0)))
                    and time.time() - float(st.get("started", 0)) < timeout):
                pid = int(st["pid"])        # a backend started earlier is still loading: wait for it, start nothing
        except (OSError, ValueError, TypeError):
            pass
        if pid is None:
            proc = _spawn_backend(cmd, log_file)
            pid = proc.pid
            try:
                with open(state_path, "w", encoding="utf-8") as f:
                    json.dump({"pid": pid, "endpoint": endpoint, "started": time.time(), "command": cmd}, f)
            except OSError:
                pass
        while time.monotonic() < deadline:
            if ping(endpoint, 0.5):
                return proc is not None
            exited = proc.poll() is not None if proc is not None else not _pid_alive(pid)
            if exited:
                code = f" (exit code {proc.returncode})" if proc is not None else ""
                raise PluginError(f"The colorize backend stopped while starting{code}. "
                                  f"See its log: {log_file or '(no log file configured)'}.{_log_tail(log_file)}")
            if tick:
                tick()
            time.sleep(0.2)
    raise PluginError(f"The colorize backend did not answer at {endpoint} within {timeout:.0f} s of being started. "
                      f"See its log: {log_file or '(no log file configured)'}.{_log_tail(log_file)}")


# ---- cancel watchdog -----------------------------------------------------------------------------------------------
# GIMP cancels a plug-in's progress by killing the plug-in process (SIGKILL after 10 ms).  A tiny helper process holds
# the read end of a pipe; when the plug-in dies before writing "done", the pipe reaches EOF and the helper sends the
# backend a cancel for the running job.

_WATCHDOG = r"""
import sys
plugin_dir, endpoint, key = sys.argv[1], sys.argv[2], sys.argv[3] or None
job = None
for line in sys.stdin:
    line = line.strip()
    if line.startswith("job "):
        job = line[4:]
    elif line == "done":
        sys.exit(0)
if job:
    sys.path.insert(0, plugin_dir)
    try:
        from patchcolor_client.client import Client
        c = Client(endpoint, timeout_s=5.0, server_public_key=key)
        try:
            c.cancel(job)
        finally:
            c.close()
    except Exception as e:
        sys.stderr.write("colorize-patch watchdog: cancel failed: %s\n" % e)
"""


class Watchdog:
    def __init__(self, endpoint: str, server_key: str | None):
        self.proc = None
        try:
            kw = {"start_new_session": True} if os.name != "nt" else {"creationflags": 0x08000000}
            self.proc = subprocess.Popen([sys.executable, "-c", _WATCHDOG, PLUGIN_DIR, endpoint, server_key or ""],
                                         stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, close_fds=True, **kw)
        except OSError:
            self.proc = None                # no watchdog: cancelling then relies on the backend noticing

    def job(self, job_id: str):
        self._send(f"job {job_id}\n")

    def done(self):
        self._send("done\n")
        if self.proc is not None:
            try:
                self.proc.stdin.close()
                self.proc.wait(timeout=2)
            except Exception:
                pass
            self.proc = None

    def _send(self, text: str):
        if self.proc is not None and self.proc.stdin:
            try:
                self.proc.stdin.write(text.encode())
                self.proc.stdin.flush()
            except OSError:
                pass


def _import_client():
    """Import pyzmq and patchcolor_client's client module (from this plug-in's folder first)."""
    if PLUGIN_DIR not in sys.path:
        sys.path.insert(0, PLUGIN_DIR)
    try:
        import zmq  # noqa: F401
    except ImportError:
        raise PluginError(f"GIMP's Python ({sys.executable}) cannot import pyzmq. On Debian/Ubuntu install "
                          "python3-zmq (sudo apt install python3-zmq); elsewhere run install.py again so it places a "
                          "pyzmq wheel in the plug-in folder.")
    try:
        from patchcolor_client import client
    except ImportError as e:
        raise PluginError(f"the plug-in's client package is missing or broken ({e}); run install.py again")
    return client


def _backend_message(e: Exception, endpoint: str) -> str:
    """One sentence for a client exception."""
    code = getattr(e, "code", None)
    msg = getattr(e, "message", None) or str(e) or e.__class__.__name__
    if code == "weights_missing":
        return f"The colorize backend cannot find its model weights: {msg}"
    if code == "image_too_large":
        return f"The image is too large for the colorize backend: {msg}"
    if code == "unknown_job":
        return (f"The colorize backend no longer has this colorization ({msg}). Run Filters > Colorize (Patch)... "
                "again, then re-fuse.")
    if e.__class__.__name__ == "BackendUnavailable":
        return f"The colorize backend at {endpoint} stopped answering: {msg}"
    if code:
        return f"The colorize backend reported an error ({code}): {msg}"
    return f"The colorize backend reported an error: {msg}"


# --------------------------------------------------------------------------------------------------------------------
# GIMP part
# --------------------------------------------------------------------------------------------------------------------

try:
    import gi
    gi.require_version("Gimp", "3.0")
    gi.require_version("Gegl", "0.4")
    from gi.repository import Gegl, Gimp, GLib, GObject, Gio  # noqa: F401
except (ImportError, ValueError):      # imported for tests by a Python without GIMP
    Gimp = None


def _choice(items):
    c = Gimp.Choice.new()
    for i, (nick, label) in enumerate(items):
        c.add(nick, i, label, "")
    return c


def _error(procedure, msg: str, status=None):
    return procedure.new_return_values(status or Gimp.PDBStatusType.EXECUTION_ERROR, GLib.Error(msg))


def _bits(image) -> int:
    p = image.get_precision()
    return 8 if p in (Gimp.Precision.U8_LINEAR, Gimp.Precision.U8_NON_LINEAR, Gimp.Precision.U8_PERCEPTUAL) else 16


def _read(drawable, fmt: str, rect=None) -> bytes:
    w, h = drawable.get_width(), drawable.get_height()
    r = rect or (0, 0, w, h)
    data = drawable.get_buffer().get(Gegl.Rectangle.new(*r), 1.0, BABL[fmt], Gegl.AbyssPolicy.NONE)
    return to_wire16(data) if fmt.endswith("16") else bytes(data)


def _write(buffer, w: int, h: int, fmt: str, data: bytes):
    data = from_wire16(data) if fmt.endswith("16") else bytes(data)
    buffer.set(Gegl.Rectangle.new(0, 0, w, h), BABL[fmt], data)
    buffer.flush()


def _attach_json(item, name: str, obj: dict):
    data = json.dumps(obj, separators=(",", ":")).encode()
    item.attach_parasite(Gimp.Parasite.new(name, Gimp.PARASITE_PERSISTENT | Gimp.PARASITE_UNDOABLE, list(data)))


def _read_json(item, name: str):
    p = item.get_parasite(name)
    if p is None:
        return None
    try:
        return json.loads(bytes(p.get_data()).decode())
    except (ValueError, UnicodeDecodeError):
        return None


def _the_layer(image, drawables):
    if image.get_base_type() == Gimp.ImageBaseType.INDEXED:
        raise CallingError("Colorize (Patch) needs an RGB or grayscale image; convert this indexed image first "
                           "(Image > Mode > RGB or Grayscale).")
    if len(drawables) != 1:
        raise CallingError(f"Colorize (Patch) works on exactly one layer, but {len(drawables)} are selected. "
                           "Select a single layer.")
    d = drawables[0]
    if not d.is_layer():
        raise CallingError("Colorize (Patch) works on a layer; a channel or layer mask is selected. "
                           "Select the photo's layer.")
    if d.is_group_layer():
        raise CallingError(f"'{d.get_name()}' is a layer group. Colorize (Patch) works on a single pixel layer: "
                           "select a layer inside the group, or merge the group first.")
    return d


class Progress:
    """Backend stage events -> GIMP's progress bar."""

    STAGES = {"accepted": "Waiting for the colorize backend", "queued": "Waiting in the backend's queue",
              "prepare": "Preparing the image", "segment": "Detecting objects", "detect": "Detecting objects",
              "colorize": "Colorizing", "fuse": "Fusing instance colours", "finish": "Finishing",
              "refuse": "Re-fusing masks"}

    def __init__(self, title: str):
        Gimp.progress_init(title)
        self.stage = None
        self.last = 0.0
        self.events = 0

    def text(self, msg: str):
        Gimp.progress_set_text(msg)

    def __call__(self, stage, fraction=None, overall=None):
        """The client's progress callback: (stage, fraction within the stage, overall fraction)."""
        self.events += 1
        frac = overall if overall is not None else fraction
        if stage and stage != self.stage:
            self.stage = stage
            Gimp.progress_set_text(self.STAGES.get(str(stage), str(stage).replace("_", " ").capitalize()) + "\u2026")
        if isinstance(frac, (int, float)):
            self.last = max(0.0, min(1.0, float(frac)))
            Gimp.progress_update(self.last)
        else:
            Gimp.progress_pulse()

    def tick(self):
        Gimp.progress_pulse()

    def idle(self):
        """Polled by the client about every 0.1 s while it waits: keep the bar moving until the first event."""
        if not self.events:
            Gimp.progress_pulse()
        return False        # GIMP cancels a plug-in by killing it: the watchdog sends the backend's cancel


def _ping(client_mod, server_key):
    def ping(endpoint, timeout_s):
        try:
            c = client_mod.Client(endpoint, timeout_s=timeout_s, server_public_key=server_key, retries=0)
        except client_mod.BackendUnavailable as e:       # a malformed endpoint: no point waiting
            raise PluginError(f"The backend endpoint {endpoint!r} is not usable: {e}. Use e.g. "
                              f"{DEFAULT_ENDPOINT}.")
        except (ValueError, OSError) as e:
            raise PluginError(f"The backend's public key in {CONFIG_PATH} is not usable: {e}")
        try:
            c.ping(timeout_s)
            return True
        except Exception:
            return False
        finally:
            _close(c)
    return ping


def _client(client_mod, endpoint, cfg, server_key):
    return client_mod.Client(endpoint, timeout_s=float(cfg.get("timeout_s", 30.0)), server_public_key=server_key)


def _close(client):
    close = getattr(client, "close", None)
    if close:
        try:
            close()
        except Exception:
            pass


def run_colorize(procedure, run_mode, image, drawables, config, run_data):
    try:
        layer = _the_layer(image, drawables)
    except CallingError as e:
        return _error(procedure, str(e), Gimp.PDBStatusType.CALLING_ERROR)

    if run_mode == Gimp.RunMode.INTERACTIVE:
        gi.require_version("GimpUi", "3.0")
        from gi.repository import GimpUi
        GimpUi.init("colorize-patch")
        dialog = GimpUi.ProcedureDialog.new(procedure, config, "Colorize (Patch)")
        dialog.fill(["preset", "colorizer", "detector", "score-threshold", "max-instances", "saturation",
                     "feather", "endpoint", "auto-start"])
        ok = dialog.run()
        dialog.destroy()
        if not ok:
            return procedure.new_return_values(Gimp.PDBStatusType.CANCEL, GLib.Error())

    cfg = load_config()
    endpoint = (config.get_property("endpoint") or "").strip() or cfg.get("endpoint") or DEFAULT_ENDPOINT
    options = {
        "preset": config.get_property("preset"),
        "colorizer": config.get_property("colorizer"),
        "detector": config.get_property("detector"),
        "score_thresh": float(config.get_property("score-threshold")),
        "max_instances": int(config.get_property("max-instances")),
        "saturation": float(config.get_property("saturation")),
        "feather": float(config.get_property("feather")) / 100.0,     # percent -> fraction of the box diagonal
    }
    auto_start = bool(config.get_property("auto-start")) and cfg.get("auto_start", True) is not False
    server_key = cfg.get("server_public_key") or None

    progress = Progress("Colorize (Patch)")
    watchdog = None
    try:
        client_mod = _import_client()
        w, h = layer.get_width(), layer.get_height()
        gray = image.get_base_type() == Gimp.ImageBaseType.GRAY
        fmt = ("gray" if gray else "rgb") + ("a" if layer.has_alpha() else "") + str(_bits(image))
        pixels = _read(layer, fmt)

        ensure_backend(endpoint, auto_start, cfg, _ping(client_mod, server_key), progress.text, progress.tick)
        progress.text("Sending the image to the colorize backend\u2026")
        watchdog = Watchdog(endpoint, server_key)
        job_id = uuid.uuid4().hex
        client = _client(client_mod, endpoint, cfg, server_key)
        try:
            watchdog.job(job_id)
            res = client.colorize(w, h, fmt, pixels, options, progress=progress, should_cancel=progress.idle,
                                  job_id=job_id)
        except client_mod.JobCancelled:
            return procedure.new_return_values(Gimp.PDBStatusType.CANCEL, GLib.Error("Cancelled"))
        except (client_mod.BackendError, client_mod.BackendUnavailable) as e:
            raise PluginError(_backend_message(e, endpoint))
        finally:
            _close(client)
        watchdog.done()
        watchdog = None
        if getattr(res, "fmt", result_format(fmt)) != result_format(fmt):
            raise PluginError(f"the colorize backend answered in {res.fmt} instead of {result_format(fmt)}; "
                              "nothing was changed")
        instances = validate_result(res, w, h, fmt)       # everything checked before the image is touched
        job_id = str(getattr(res, "job_id", None) or job_id)

        progress.text("Adding the layers\u2026")
        group = _add_layers(image, layer, fmt, res.pixels, instances, {
            "version": 1, "job_id": job_id, "endpoint": endpoint, "width": w, "height": h,
            "format": fmt, "result_format": result_format(fmt),
            "origin": list(layer.get_offsets()[1:]),
            "instances": [{"class_name": n, "score": s} for (n, s, _o, _z, _m) in instances],
            "options": options,
        })
    except CallingError as e:
        return _error(procedure, str(e), Gimp.PDBStatusType.CALLING_ERROR)
    except PluginError as e:
        return _error(procedure, str(e))
    except Exception as e:           # a bug: still one sentence for the user, the traceback for the terminal
        traceback.print_exc()
        return _error(procedure, f"Colorize (Patch) failed unexpectedly: {e.__class__.__name__}: {e}")
    finally:
        if watchdog is not None:
            watchdog.done()
        Gimp.progress_end()

    return _success(procedure, Gimp.GroupLayer, group, len(instances))


def _success(procedure, gtype, item, count: int):
    """SUCCESS return values: (status, item of ``gtype``, count)."""
    Gimp.displays_flush()
    rv = procedure.new_return_values(Gimp.PDBStatusType.SUCCESS, GLib.Error())
    rv.remove(1)
    rv.insert(1, GObject.Value(gtype, item))
    rv.remove(2)
    rv.insert(2, GObject.Value(GObject.TYPE_INT, count))
    return rv


def _add_layers(image, src, fmt, pixels, instances, meta):
    """All changes to the image, in one undo group."""
    w, h = src.get_width(), src.get_height()
    _, offx, offy = src.get_offsets()
    rfmt = result_format(fmt)
    image.undo_group_start()
    group = None
    converted = False
    try:
        if image.get_base_type() == Gimp.ImageBaseType.GRAY:
            image.convert_rgb()
            converted = True
        parent = src.get_parent()
        pos = image.get_item_position(src)
        group = Gimp.GroupLayer.new(image, GROUP_NAME)
        if not image.insert_layer(group, parent, pos):
            raise PluginError("GIMP refused to add the layer group")
        _attach_json(group, PARASITE_GROUP, meta)

        ltype = Gimp.ImageType.RGBA_IMAGE if rfmt.startswith("rgba") else Gimp.ImageType.RGB_IMAGE
        col = Gimp.Layer.new(image, COLORIZED_NAME, w, h, ltype, 100.0, Gimp.LayerMode.NORMAL)
        image.insert_layer(col, group, 0)
        col.set_offsets(offx, offy)
        _write(col.get_buffer(), w, h, rfmt, pixels)
        _attach_json(col, PARASITE_COLORIZED, {"job_id": meta["job_id"]})
        if not Gimp.Selection.is_empty(image):
            # outside the selection the Colorized layer is transparent, so the source shows unchanged
            col.add_mask(col.create_mask(Gimp.AddMaskType.SELECTION))
        col.update(0, 0, w, h)

        for i, (name, score, origin, size, mask) in enumerate(instances):
            ml = Gimp.Layer.new(image, instance_layer_name(name, score), w, h, Gimp.ImageType.RGB_IMAGE, 100.0,
                                Gimp.LayerMode.NORMAL)
            image.insert_layer(ml, group, i + 1)
            ml.set_offsets(offx, offy)
            _write(ml.get_buffer(), w, h, "gray8", full_mask(w, h, origin, size, mask))
            ml.set_visible(False)
            _attach_json(ml, PARASITE_MASK, {"index": i, "job_id": meta["job_id"]})
            ml.update(0, 0, w, h)
        image.set_selected_layers([group])
    except Exception:
        # best effort to leave the image as it was (the undo group also holds every step)
        try:
            if group is not None and group.is_valid():
                image.remove_layer(group)
            if converted:
                image.convert_grayscale()
        except Exception:
            pass
        raise
    finally:
        image.undo_group_end()
    return group


def _find_group(drawables):
    if len(drawables) != 1:
        raise CallingError("Select one layer of the 'Colorize (Patch)' group (or the group itself) to re-fuse.")
    item = drawables[0]
    if item.is_layer_mask():                    # a layer's mask is selected: start from its layer
        item = Gimp.Layer.from_mask(Gimp.LayerMask.get_by_id(item.get_id()))
    while item is not None:
        if item.is_group_layer() and item.get_parasite(PARASITE_GROUP) is not None:
            return item
        item = item.get_parent()
    raise CallingError("The selected layer is not part of a 'Colorize (Patch)' group. Select the group made by "
                       "Filters > Colorize (Patch)... or one of its layers, then re-fuse.")


def _mask_frame(layer, origin, w, h) -> bytes:
    """A mask layer as a w x h gray8 frame in the job's coordinates (the source layer's extent at colorize time):
    moved or resized mask layers are handled, transparent pixels count as black."""
    _, mx, my = layer.get_offsets()
    rect = (origin[0] - mx, origin[1] - my, w, h)
    if layer.has_alpha():        # premultiplied gray: transparent counts as black
        return bytes(layer.get_buffer().get(Gegl.Rectangle.new(*rect), 1.0, "Y'aA u8", Gegl.AbyssPolicy.NONE))[0::2]
    return _read(layer, "gray8", rect)


def run_refuse(procedure, run_mode, image, drawables, config, run_data):
    progress = None
    try:
        group = _find_group(drawables)
        meta = _read_json(group, PARASITE_GROUP)
        if not meta or "job_id" not in meta:
            raise PluginError("The 'Colorize (Patch)' group's data is missing or damaged; run Colorize (Patch) "
                              "again.")
        w, h = int(meta["width"]), int(meta["height"])
        n = len(meta.get("instances", []))
        origin = meta.get("origin", [0, 0])
        colorized, masks = None, [None] * n
        for child in group.get_children():
            if child.get_parasite(PARASITE_COLORIZED) is not None and colorized is None:
                colorized = child
            m = _read_json(child, PARASITE_MASK)
            if m is not None and isinstance(m.get("index"), int) and 0 <= m["index"] < n:
                frame = _mask_frame(child, origin, w, h)
                prev = masks[m["index"]]
                masks[m["index"]] = frame if prev is None else bytes(map(max, prev, frame))   # duplicated layer
        if colorized is None:
            raise PluginError("The 'Colorized' layer of this group was deleted; run Colorize (Patch) again.")
        if colorized.get_width() != w or colorized.get_height() != h:
            raise PluginError(f"The 'Colorized' layer was resized ({colorized.get_width()}x{colorized.get_height()}, "
                              f"was {w}x{h}); re-fusing needs its original size. Run Colorize (Patch) again.")
        # white = object: at least 50 % gray counts as inside (soft brush edges do not grow the object);
        # a deleted mask layer removes its instance
        thresh = bytes(255 if v >= 128 else 0 for v in range(256))
        masks = [m.translate(thresh) if m is not None else bytes(w * h) for m in masks]

        cfg = load_config()
        endpoint = (config.get_property("endpoint") or "").strip() or meta.get("endpoint") or DEFAULT_ENDPOINT
        server_key = cfg.get("server_public_key") or None
        progress = Progress("Colorize (Patch): Re-fuse Masks")
        client_mod = _import_client()
        if not _ping(client_mod, server_key)(endpoint, float(cfg.get("ping_timeout_s", 2.0))):
            raise PluginError(f"No colorize backend answers at {endpoint}. Re-fusing needs the backend that made "
                              "this colorization (it keeps the instance colours); start it, or run Colorize (Patch) "
                              "again.")
        client = _client(client_mod, endpoint, cfg, server_key)
        try:
            res = client.refuse(meta["job_id"], masks, progress=progress, should_cancel=progress.idle)
        except client_mod.JobCancelled:
            return procedure.new_return_values(Gimp.PDBStatusType.CANCEL, GLib.Error("Cancelled"))
        except (client_mod.BackendError, client_mod.BackendUnavailable) as e:
            raise PluginError(_backend_message(e, endpoint))
        finally:
            _close(client)
        rfmt = meta.get("result_format") or result_format(meta["format"])
        pixels = res.pixels
        if res.fmt != rfmt or res.width != w or res.height != h or len(pixels) != frame_size(w, h, rfmt):
            raise PluginError("the colorize backend sent a re-fused image of the wrong size; nothing was changed")

        image.undo_group_start()
        try:
            # The shadow buffer + merge_shadow(undo=True) is GIMP's undoable in-place update; merging is clipped to
            # the selection, so the selection is cleared for the merge and restored afterwards (both undoable).
            saved = None
            if not Gimp.Selection.is_empty(image):
                saved = Gimp.Selection.save(image)
                Gimp.Selection.none(image)
            shadow = colorized.get_shadow_buffer()
            _write(shadow, w, h, rfmt, pixels)
            colorized.merge_shadow(True)
            colorized.update(0, 0, w, h)
            if saved is not None:
                image.select_item(Gimp.ChannelOps.REPLACE, saved)
                image.remove_channel(saved)
        finally:
            image.undo_group_end()
    except CallingError as e:
        return _error(procedure, str(e), Gimp.PDBStatusType.CALLING_ERROR)
    except PluginError as e:
        return _error(procedure, str(e))
    except Exception as e:
        traceback.print_exc()
        return _error(procedure, f"Re-fusing failed unexpectedly: {e.__class__.__name__}: {e}")
    finally:
        if progress is not None:
            Gimp.progress_end()
    return _success(procedure, Gimp.Layer, colorized, sum(1 for m in masks if any(m)))


if Gimp is not None:
    RW = GObject.ParamFlags.READWRITE

    class ColorizePatch(Gimp.PlugIn):
        def do_set_i18n(self, name):
            return False

        def do_query_procedures(self):
            return [PROC_COLORIZE, PROC_REFUSE]

        def do_create_procedure(self, name):
            endpoint = load_config().get("endpoint") or DEFAULT_ENDPOINT
            if name == PROC_COLORIZE:
                p = Gimp.ImageProcedure.new(self, name, Gimp.PDBProcType.PLUGIN, run_colorize, None)
                p.set_image_types("RGB*, GRAY*")
                p.set_sensitivity_mask(Gimp.ProcedureSensitivityMask.DRAWABLE)
                p.set_menu_label("Colorize (Patch)...")
                p.add_menu_path("<Image>/Filters")
                p.set_documentation(
                    "Colorize a black-and-white photo, object by object",
                    "Sends the selected layer to the Patch Colorization backend and adds a layer group above it: a "
                    "'Colorized' layer and one hidden white-on-black mask layer per detected object. Edit the masks "
                    "and run 'Colorize (Patch): Re-fuse Masks' to update the colours without re-running the "
                    "networks. Outside a selection the source stays unchanged.", name)
                p.set_attribution("Patch Colorization contributors", "MIT", "2025")
                p.add_choice_argument("preset", "_Preset", "Processing preset", _choice(PRESETS), "default", RW)
                p.add_choice_argument("colorizer", "Colori_zer", "Colorization network", _choice(COLORIZERS),
                                      "eccv16", RW)
                p.add_choice_argument("detector", "_Detector", "Object detector", _choice(DETECTORS), "r101", RW)
                p.add_double_argument("score-threshold", "Score _threshold", "Keep objects detected at least this "
                                      "confidently", 0.0, 1.0, 0.3, RW)
                p.add_int_argument("max-instances", "_Maximum objects", "At most this many objects",
                                   0, 100, 100, RW)
                p.add_double_argument("saturation", "Satur_ation", "Saturation gain", 0.0, 4.0, 1.0, RW)
                p.add_double_argument("feather", "_Feathering (% of object size)", "Width of the soft edge where an "
                                      "object's colour blends into the rest, in percent of the object's box "
                                      "diagonal", 0.0, 50.0, 2.0, RW)
                p.add_string_argument("endpoint", "Backend _endpoint", "ZeroMQ endpoint of `patchcolor serve`",
                                      endpoint, RW)
                p.add_boolean_argument("auto-start", "Start the _backend if needed", "Start the local backend "
                                       "recorded by install.py when nothing answers (never for a remote endpoint)",
                                       True, RW)
                p.add_group_layer_return_value("group", "Group", "The new 'Colorize (Patch)' layer group", True, RW)
                p.add_int_return_value("n-instances", "Instances", "Number of detected objects (mask layers)",
                                       0, 100000, 0, RW)
                return p
            if name == PROC_REFUSE:
                p = Gimp.ImageProcedure.new(self, name, Gimp.PDBProcType.PLUGIN, run_refuse, None)
                p.set_image_types("RGB*")
                p.set_sensitivity_mask(Gimp.ProcedureSensitivityMask.DRAWABLE)
                p.set_menu_label("Colorize (Patch): Re-fuse Masks")
                p.add_menu_path("<Image>/Filters")
                p.set_documentation(
                    "Update a Colorize (Patch) result from its edited mask layers",
                    "Select the 'Colorize (Patch)' group or one of its layers. The edited mask layers (white = "
                    "object) are sent to the backend, which re-fuses the colours it kept from that run; the "
                    "'Colorized' layer is updated in place (one undo step). A deleted or all-black mask layer "
                    "removes its object.", name)
                p.set_attribution("Patch Colorization contributors", "MIT", "2025")
                p.add_string_argument("endpoint", "Backend _endpoint", "Empty: the endpoint that made the group",
                                      "", RW)
                p.add_layer_return_value("colorized", "Colorized", "The updated 'Colorized' layer", True, RW)
                p.add_int_return_value("n-instances", "Instances", "Objects still present after re-fusing",
                                       0, 100000, 0, RW)
                return p
            return None

    if __name__ == "__main__":
        Gimp.main(ColorizePatch.__gtype__, sys.argv)
