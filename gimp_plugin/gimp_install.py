"""Install the Colorize (Patch) plug-in into GIMP 3 profiles (used by the project's install.py). Standard library only.

    profiles = find_gimp_profiles()                       # existing GIMP 3.x profile folders on this machine
    r = install_plugin(profile, [venv/bin/patchcolor, "serve"], "tcp://127.0.0.1:5555", log_path)
    print(*r.messages, sep="\\n")                         # what was done, and what the user still has to do
    uninstall_plugin(profile)

What an install writes into ``<profile>/plug-ins/colorize-patch/``:
  colorize-patch.py   the plug-in (executable; GIMP ignores it silently otherwise)
  patchcolor_client/  the client package (standard library; pyzmq only when GIMP's Python has it)
  config.json         backend_command (the plug-in appends ``--endpoint E`` when it is missing), endpoint, log_file
  dialog.json         the dialog's choices and ranges from the backend's model registry and Options (see
                      dialog_spec): a new catalogue model or device reaches the dialog without a plug-in edit
  zmq/, pyzmq.libs/   optional: a pyzmq wheel for GIMP's Python (Linux/macOS; see ensure_pyzmq)
and, on a native Linux GIMP whose Python is /usr/bin/python3, ``<profile>/interpreters/colorize-patch.interp`` that
pins .py plug-ins to /usr/bin/python3 (a pyenv/conda python3 first on PATH otherwise makes every Python plug-in crash).
"""
from __future__ import annotations

import importlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import types
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PLUGIN_NAME = "colorize-patch"
HERE = Path(__file__).resolve().parent
PLUGIN_SRC = HERE / PLUGIN_NAME
CLIENT_SRC = HERE / "patchcolor_client"
BACKEND_SRC = HERE.parent / "backend" / "patchcolor"
DIALOG_SPEC = "dialog.json"
INTERP_NAME = "colorize-patch.interp"
INTERP_TEXT = (
    "python=/usr/bin/python3\n"
    "python3=/usr/bin/python3\n"
    "/usr/bin/python=/usr/bin/python3\n"
    "/usr/bin/python3=/usr/bin/python3\n"
    ":Python:E::py::python3:\n"
)
FLATPAK_ID = "org.gimp.GIMP"


@dataclass
class InstallResult:
    plugin_dir: Path
    pyzmq_ok: bool | None            # True: GIMP's Python imports zmq; False: it does not; None: could not check
    messages: list[str] = field(default_factory=list)

    def __fspath__(self) -> str:
        return str(self.plugin_dir)


# ---------------------------------------------------------------------------------------------------------------------
# Profiles
# ---------------------------------------------------------------------------------------------------------------------

def _version_key(p: Path):
    return tuple(int(x) if x.isdigit() else 0 for x in p.name.split("."))


def profile_roots(home: Path | None = None, env: dict | None = None, system: str | None = None) -> list[Path]:
    """Folders whose ``3.*`` children are GIMP 3 profiles, for this platform."""
    env = os.environ if env is None else env
    home = Path(home) if home else Path.home()
    system = system or platform.system()
    roots: list[Path] = []
    if system == "Windows":
        appdata = env.get("APPDATA")
        roots.append(Path(appdata) / "GIMP" if appdata else home / "AppData" / "Roaming" / "GIMP")
    elif system == "Darwin":
        roots.append(home / "Library" / "Application Support" / "GIMP")
    else:
        xdg = env.get("XDG_CONFIG_HOME")
        roots.append((Path(xdg) if xdg else home / ".config") / "GIMP")
        roots.append(home / ".var" / "app" / FLATPAK_ID / "config" / "GIMP")       # Flatpak
        roots.append(home / "snap" / "gimp" / "current" / ".config" / "GIMP")        # Snap
    return roots


def find_gimp_profiles(home: Path | None = None, env: dict | None = None, system: str | None = None) -> list[Path]:
    """Existing GIMP 3.x profile folders (Linux ~/.config/GIMP/3.*, Flatpak ~/.var/app/org.gimp.GIMP/config/GIMP/3.*,
    Snap, macOS ~/Library/Application Support/GIMP/3.*, Windows %APPDATA%/GIMP/3.*), plus $GIMP3_DIRECTORY when set.
    A GIMP that was installed but never started has no profile yet: start it once, or pass the folder explicitly."""
    env = os.environ if env is None else env
    found: list[Path] = []
    for root in profile_roots(home, env, system):
        if root.is_dir():
            found += sorted((p for p in root.iterdir() if p.is_dir() and re.fullmatch(r"3\.\d+", p.name)),
                            key=_version_key)
    if env.get("GIMP3_DIRECTORY"):
        found.append(Path(env["GIMP3_DIRECTORY"]))
    out, seen = [], set()
    for p in found:
        key = os.path.realpath(p)
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


def default_profile(home: Path | None = None, env: dict | None = None, system: str | None = None) -> Path:
    """Where a native GIMP 3.0 keeps its profile on this platform (it may not exist yet)."""
    return profile_roots(home, env, system)[0] / "3.0"


def profile_kind(profile_dir: Path, system: str | None = None) -> str:
    """'flatpak' | 'snap' | 'macos' | 'windows' | 'linux'."""
    s = str(Path(profile_dir)).replace("\\", "/")
    system = system or platform.system()
    if f"/.var/app/{FLATPAK_ID}/" in s:
        return "flatpak"
    if "/snap/gimp/" in s:
        return "snap"
    if system == "Darwin":
        return "macos"
    if system == "Windows":
        return "windows"
    return "linux"


# ---------------------------------------------------------------------------------------------------------------------
# Install / uninstall
# ---------------------------------------------------------------------------------------------------------------------

def _shell_quote(text: str) -> str:
    if os.name == "nt":
        return subprocess.list2cmdline([text])
    import shlex
    return shlex.quote(text)


def _ignore(_dir, names):
    return [n for n in names if n == "__pycache__" or n.endswith((".pyc", ".pyo")) or n in ("config.json",
                                                                                             DIALOG_SPEC)]


# ---------------------------------------------------------------------------------------------------------------------
# The dialog's choices and ranges
# ---------------------------------------------------------------------------------------------------------------------

def backend_modules() -> dict[str, types.ModuleType]:
    """The backend's ``registry`` and ``options`` modules (and ``device`` when it has one): the importable
    ``patchcolor`` package, else the source beside this folder loaded under a private package name (both are
    standard library only, so install.py's Python without torch can read them). Empty when neither exists."""
    try:
        return _modules("patchcolor")
    except ImportError:
        pass
    if not (BACKEND_SRC / "registry.py").is_file():
        return {}
    name = "_patchcolor_gimp_install"
    if name not in sys.modules:
        pkg = types.ModuleType(name)
        pkg.__path__ = [str(BACKEND_SRC)]            # type: ignore[attr-defined]
        sys.modules[name] = pkg
    return _modules(name)


def _modules(package: str) -> dict[str, types.ModuleType]:
    mods = {m: importlib.import_module(f"{package}.{m}") for m in ("registry", "options")}
    try:
        mods["device"] = importlib.import_module(f"{package}.device")
    except Exception:       # noqa: BLE001 - no device module (or one that needs torch): no device choice
        pass
    return mods


def dialog_spec(mods: dict[str, types.ModuleType] | None = None) -> dict[str, Any]:
    """The plug-in's dialog.json (patchcolor_client/dialogspec.py reads it): the registry's colorizers and
    detectors (name, label, optional), the presets, the devices, and Options' ranges and defaults."""
    mods = backend_modules() if mods is None else mods
    registry, options = mods["registry"], mods["options"]
    reg = registry.registry()
    models = registry.describe(reg)
    choices: dict[str, list[dict[str, Any]]] = {
        "preset": [{"name": n} for n in sorted(options.PRESETS, key=lambda n: n != options.DEFAULT.preset)],
        **{kind: [{"name": m["name"], "label": m["label"], "optional": bool(m["optional"])} for m in models
                  if m["kind"] == kind] for kind in ("colorizer", "detector")},
    }
    choices["detector"].append({"name": registry.NO_DETECTOR})
    devices = getattr(mods.get("device"), "DEVICES", None)
    if devices:
        labels = getattr(mods["device"], "DEVICE_LABELS", {})
        choices["device"] = [{"name": str(d), "label": labels.get(d)} for d in devices]
    defaults = {k: v for k, v in options.DEFAULT.to_dict().items() if isinstance(v, (str, int, float, bool))}
    return {"schema": 1, "source": str(getattr(reg, "source", "")), "choices": choices,
            "ranges": {k: [lo, hi] for k, (lo, hi) in options.RANGES.items()}, "defaults": defaults}


def write_dialog_spec(plugin_dir: Path, spec: dict[str, Any] | None = None) -> str:
    """Write dialog.json into an installed plug-in folder; returns a line for the install log. Without a
    readable backend beside this installer the plug-in keeps its built-in choices (and the line says so)."""
    try:
        spec = dialog_spec() if spec is None else spec
    except Exception as e:      # noqa: BLE001 - a broken catalogue must not stop the plug-in install
        return f"The dialog keeps its built-in choices: the model registry could not be read ({e})."
    tmp = Path(plugin_dir) / (DIALOG_SPEC + ".tmp")
    tmp.write_text(json.dumps(spec, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, Path(plugin_dir) / DIALOG_SPEC)
    names = ", ".join(c["name"] for c in spec["choices"]["colorizer"])
    return f"Wrote the dialog's choices ({names}) into {Path(plugin_dir) / DIALOG_SPEC}"


def install_plugin(profile_dir, backend_cmd: list[str], endpoint: str, log_path=None, *, pyzmq: str = "auto",
                   pyzmq_wheel=None, extra_config: dict | None = None,
                   dialog: dict[str, Any] | None = None) -> InstallResult:
    """Install (or update) the plug-in into one GIMP 3 profile folder.

    backend_cmd: the command that starts the backend, e.g. ``[".../.venv/bin/patchcolor", "serve"]`` (the plug-in
                 appends ``--endpoint <endpoint>`` unless the command has one); empty -> never auto-started.
    endpoint:    the default backend endpoint shown in the dialog.
    log_path:    where an auto-started backend writes its log.
    pyzmq:       "auto" (check GIMP's Python; fix what can be fixed, say what cannot), "skip".
    pyzmq_wheel: a pyzmq wheel file to unpack into the plug-in folder (offline installs).
    dialog:      the dialog.json to write (default: :func:`dialog_spec` of the backend beside this installer).
    """
    profile_dir = Path(profile_dir)
    plug_ins = profile_dir / "plug-ins"
    plug_ins.mkdir(parents=True, exist_ok=True)
    dest = plug_ins / PLUGIN_NAME
    stage = Path(tempfile.mkdtemp(prefix=f".{PLUGIN_NAME}-", dir=plug_ins))
    try:
        tree = stage / PLUGIN_NAME
        shutil.copytree(PLUGIN_SRC, tree, ignore=_ignore)
        shutil.copytree(CLIENT_SRC, tree / "patchcolor_client", ignore=_ignore)
        script = tree / f"{PLUGIN_NAME}.py"
        script.chmod(0o755)
        cfg = {
            "backend_command": [str(c) for c in backend_cmd],
            "endpoint": endpoint,
            "log_file": str(log_path) if log_path else None,
            # named in the plug-in's messages when the backend cannot be started from inside GIMP's sandbox
            "autostart_command": f"python3 {_shell_quote(str(HERE.parent / 'install.py'))} --autostart",
        }
        cfg.update(extra_config or {})
        (tree / "config.json").write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
        spec_note = write_dialog_spec(tree, dialog)
        if dest.exists():
            # keep a pyzmq placed by an earlier install (it may have needed the network)
            for keep in ("zmq", "pyzmq.libs", ".dylibs"):
                if (dest / keep).is_dir() and not (tree / keep).exists():
                    shutil.move(str(dest / keep), str(tree / keep))
            for d in dest.glob("pyzmq-*.dist-info"):
                shutil.move(str(d), str(tree / d.name))
            shutil.rmtree(dest)
        os.replace(tree, dest)
    finally:
        shutil.rmtree(stage, ignore_errors=True)

    result = InstallResult(dest, None, [f"Installed the GIMP plug-in into {dest}",
                                        spec_note.replace(str(tree), str(dest))])
    kind = profile_kind(profile_dir)
    if kind == "linux" and _system_python_runs_gimp():
        interp = profile_dir / "interpreters" / INTERP_NAME
        interp.parent.mkdir(exist_ok=True)
        if not interp.exists():
            interp.write_text(INTERP_TEXT)
            result.messages.append(f"Pinned GIMP's Python plug-ins to /usr/bin/python3 ({interp})")
    if pyzmq_wheel:
        _unpack_wheel(Path(pyzmq_wheel), dest)
        result.messages.append(f"Unpacked {Path(pyzmq_wheel).name} into {dest}")
    if pyzmq != "skip":
        result.pyzmq_ok, msgs = ensure_pyzmq(dest, kind)
        result.messages += msgs
    return result


def uninstall_plugin(profile_dir) -> bool:
    """Remove the plug-in (and its interpreter pin) from one profile. True when something was removed."""
    profile_dir = Path(profile_dir)
    removed = False
    dest = profile_dir / "plug-ins" / PLUGIN_NAME
    if dest.exists():
        shutil.rmtree(dest)
        removed = True
    interp = profile_dir / "interpreters" / INTERP_NAME
    if interp.exists() and interp.read_text() == INTERP_TEXT:
        interp.unlink()
        removed = True
    return removed


# ---------------------------------------------------------------------------------------------------------------------
# pyzmq for GIMP's Python
# ---------------------------------------------------------------------------------------------------------------------

def _run(cmd, timeout=60, **kw):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    except (OSError, subprocess.TimeoutExpired):
        return None


def _system_python_runs_gimp() -> bool:
    r = _run(["/usr/bin/python3", "-c", 'import gi; gi.require_version("Gimp", "3.0")'], timeout=30)
    return bool(r and r.returncode == 0)


def gimp_python(kind: str) -> tuple[list[str] | None, str]:
    """The command prefix that runs GIMP's own Python, and a description; (None, why) when it cannot be found."""
    if kind == "linux":
        if Path("/usr/bin/python3").exists():
            return ["/usr/bin/python3"], "/usr/bin/python3"
        return None, "no /usr/bin/python3"
    if kind == "flatpak":
        if shutil.which("flatpak"):
            return ["flatpak", "run", "--command=python3", FLATPAK_ID], f"the Flatpak {FLATPAK_ID}'s python3"
        return None, "the flatpak command is not available"
    if kind == "snap":
        return None, "GIMP's Snap Python cannot be run from outside the snap"
    if kind == "macos":
        for app in sorted(Path("/Applications").glob("GIMP*.app"), reverse=True):
            for name in ("python3", "python"):
                exe = app / "Contents" / "MacOS" / name
                if exe.exists():
                    return [str(exe)], str(exe)
        return None, "no GIMP*.app with a bundled python3 in /Applications"
    if kind == "windows":
        bases = [os.environ.get(v) for v in ("ProgramFiles", "ProgramW6432", "LOCALAPPDATA")]
        for base in filter(None, bases):
            for gdir in sorted(Path(base).glob("GIMP 3*"), reverse=True) + sorted(
                    (Path(base) / "Programs").glob("GIMP 3*"), reverse=True):
                for name in ("python.exe", "python3.exe"):
                    exe = gdir / "bin" / name
                    if exe.exists():
                        return [str(exe)], str(exe)
        return None, "no GIMP 3 installation with bin\\python.exe found"
    return None, f"unknown GIMP kind {kind}"


_PROBE = ("import json, sys, platform, sysconfig; sys.path.insert(0, sys.argv[1])\n"
          "try:\n import zmq; z = str(zmq.__version__)\nexcept Exception:\n z = ''\n"
          "print(json.dumps({'zmq': z, 'python': '%d.%d' % sys.version_info[:2], "
          "'platform': sysconfig.get_platform(), 'machine': platform.machine()}))")


def probe_python(cmd: list[str], plugin_dir: Path) -> dict | None:
    """What GIMP's Python has: {"zmq": version or "" when missing, "python": "3.13", "platform", "machine"}
    (the plug-in folder on sys.path, so a wheel placed there counts). None when it cannot be run.

    The probe prints one JSON line (its last line: anything a sitecustomize prints before it is ignored), so an empty
    zmq version can never be mistaken for a missing line."""
    r = _run(cmd + ["-c", _PROBE, str(plugin_dir)], timeout=120)
    if not r or r.returncode != 0:
        return None
    for line in reversed(r.stdout.splitlines()):
        try:
            info = json.loads(line)
        except ValueError:
            continue
        if isinstance(info, dict) and {"zmq", "python", "platform", "machine"} <= set(info):
            return {k: str(info[k]) for k in ("zmq", "python", "platform", "machine")}
    return None


def _is_debian_like() -> bool:
    try:
        text = Path("/etc/os-release").read_text()
    except OSError:
        return Path("/etc/debian_version").exists()
    return bool(re.search(r"^(ID|ID_LIKE)=.*\b(debian|ubuntu)\b", text, re.M))


def _wheel_platforms(info: dict) -> list[str]:
    plat, mach = info["platform"], info["machine"].lower()
    if plat.startswith("linux"):
        m = {"amd64": "x86_64", "arm64": "aarch64"}.get(mach, mach)
        return [f"manylinux_2_28_{m}", f"manylinux_2_17_{m}", f"manylinux2014_{m}", f"musllinux_1_1_{m}"]
    if plat.startswith("macosx"):
        m = "arm64" if mach in ("arm64", "aarch64") else "x86_64"
        return [f"macosx_11_0_{m}", "macosx_11_0_universal2", f"macosx_10_15_{m}", "macosx_10_9_universal2"]
    if plat.startswith("win"):
        return ["win_arm64"] if "arm" in plat else ["win_amd64"]
    return []


def download_pyzmq_wheel(py_version: str, platforms: list[str], dest_dir: Path) -> Path | None:
    """``pip download`` a binary pyzmq wheel for CPython ``py_version`` (from PyPI, or pip's cache when offline)."""
    if not platforms:
        return None
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--no-deps",
           "--only-binary=:all:", "--implementation", "cp", "--python-version", py_version, "-d", str(dest_dir)]
    for p in platforms:
        cmd += ["--platform", p]
    r = _run(cmd + ["pyzmq"], timeout=300)
    if not r or r.returncode != 0:
        return None
    wheels = sorted(Path(dest_dir).glob("pyzmq-*.whl"))
    return wheels[-1] if wheels else None


def _unpack_wheel(wheel: Path, dest: Path):
    with zipfile.ZipFile(wheel) as z:
        for info in z.infolist():
            target = (dest / info.filename).resolve()
            if not str(target).startswith(str(dest.resolve()) + os.sep):
                raise ValueError(f"unsafe path in {wheel.name}: {info.filename}")
        z.extractall(dest)
        for info in z.infolist():        # zipfile drops the execute bits of shared libraries
            mode = (info.external_attr >> 16) & 0o777
            if mode:
                os.chmod(dest / info.filename, mode)


BUILTIN_NOTE = ("the plug-in then uses its built-in ZeroMQ transport, which is all a backend on this computer "
                "needs; only a remote backend with CURVE keys needs pyzmq")


def ensure_pyzmq(plugin_dir: Path, kind: str) -> tuple[bool | None, list[str]]:
    """An optimisation only: the plug-in works without pyzmq (patchcolor_client/zmtp.py). Checks GIMP's Python and,
    on Debian/Ubuntu as root, installs python3-zmq; on Linux/macOS it may place a matching pyzmq wheel beside the
    plug-in (never on Windows: GIMP's MSYS2 Python cannot load PyPI's win_amd64 wheels). Returns (has pyzmq, notes)."""
    cmd, desc = gimp_python(kind)
    if cmd is None:
        return None, [f"Could not run GIMP's Python ({desc}) to look for pyzmq; {BUILTIN_NOTE}."]
    info = probe_python(cmd, plugin_dir)
    if info is None:
        return None, [f"Could not run GIMP's Python ({desc}) to look for pyzmq; {BUILTIN_NOTE}."]
    if info["zmq"]:
        return True, [f"GIMP's Python ({desc}, {info['python']}) imports pyzmq {info['zmq']}."]
    msgs = [f"GIMP's Python ({desc}, {info['python']}) has no pyzmq; {BUILTIN_NOTE}."]
    if kind == "linux" and _is_debian_like() and hasattr(os, "geteuid") and os.geteuid() == 0 \
            and shutil.which("apt-get"):
        _run(["apt-get", "install", "-y", "-q", "python3-zmq"], timeout=600,
             env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        info2 = probe_python(cmd, plugin_dir)
        if info2 and info2["zmq"]:
            return True, [f"Installed python3-zmq for GIMP's Python ({desc})."]
        return False, msgs
    if kind == "linux" and _is_debian_like():
        msgs.append("Optional, for remote backends: sudo apt install python3-zmq")
        return False, msgs
    if kind not in ("linux", "macos"):
        return False, msgs
    with tempfile.TemporaryDirectory() as tmp:
        wheel = download_pyzmq_wheel(info["python"], _wheel_platforms(info), Path(tmp))
        if wheel is None:
            return False, msgs
        _unpack_wheel(wheel, plugin_dir)
    info2 = probe_python(cmd, plugin_dir)
    if info2 and info2["zmq"]:
        return True, [f"Placed a pyzmq wheel for GIMP's Python ({desc}) in {plugin_dir}: pyzmq {info2['zmq']}."]
    for d in list(plugin_dir.glob("pyzmq-*.dist-info")) + [plugin_dir / "zmq", plugin_dir / "pyzmq.libs"]:
        shutil.rmtree(d, ignore_errors=True)        # a wheel that does not load would only shadow nothing
    return False, msgs
