#!/usr/bin/env python3
"""Install Patch Colorization: virtual environment, the right torch build, the package, the weights, GIMP 3.

Standard library only; runs with any ``python3`` >= 3.10 (``python3 install.py --help``). It bootstraps; the
weights are the package's job (``patchcolor weights fetch``, which works the same from a wheel install).

Steps of a plain ``python3 install.py``:

1. create ``.venv`` (``python -m venv``) unless it exists (``--skip-venv``: use this interpreter instead);
2. install the torch build that fits this machine (``--torch cpu|cuda|rocm`` overrides; a torch already there is
   kept unless ``--torch`` names another build): an NVIDIA driver -> the CUDA build; ROCm -> the ROCm build;
   macOS -> the default wheels (Apple GPUs through MPS); otherwise the CPU-only build from PyTorch's CPU index.
   When that index cannot be reached, torch comes from the default package index, said in one sentence;
3. ``pip install -e .[test] -c constraints.txt`` into the venv (pyproject.toml declares version ranges;
   constraints.txt holds the exact tested versions; nothing is upgraded, and the step is skipped when neither file
   changed since the last successful run - ``--reinstall`` forces it; ``--ray`` / ``--ddcolor`` add those extras);
4. write ``.venv/patchcolor-install.json`` (python, backend command, models folder);
5. ``patchcolor weights fetch`` (``--optional``, ``--models-from DIR``, ``--models-dir DIR`` are passed on): the
   required weights (≈ 390 MB), resumable and verified, into ``models/``;
6. install the GIMP plug-in into every GIMP 3 profile found (or each ``--gimp-profile DIR``);
7. with ``--autostart``: register the backend as a login service (``patchcolor service install``: a systemd user
   unit, a macOS LaunchAgent or a Windows Startup entry; loopback only, models loaded on the first job), so the
   plug-in finds it whatever sandbox GIMP runs in. ``--uninstall`` removes the plug-in and that service.

Exit codes:
  0  everything requested is installed (or ``--verify``: every required file ok, nothing corrupt)
  1  a weight file is corrupt or was refused; ``--verify``: a required file is missing or any file is corrupt
  2  bad command line
  3  the package and its venv are installed and work, but required weights are missing (no internet?):
     the message lists each file, where to put it and its URL
  4  creating the virtual environment or installing torch or the package failed (or a folder could not be written)
  5  the GIMP plug-in (or the --autostart login service) could not be installed/uninstalled (everything else
     succeeded)
130 interrupted (a partial download is kept and resumed next time)
CI runs ``python3 install.py --no-models`` (exit 0 without network).
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import types
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info < (3, 10):  # pragma: no cover - message for very old interpreters
    sys.exit(f"Patch Colorization needs Python 3.10 or newer (this is {sys.version.split()[0]}).")

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
RECORD_NAME = "patchcolor-install.json"
GIMP_INSTALLER = ROOT / "gimp_plugin" / "gimp_install.py"
DEFAULT_ENDPOINT = "tcp://127.0.0.1:5555"

EXIT_OK, EXIT_CORRUPT, EXIT_USAGE, EXIT_MISSING, EXIT_ENV, EXIT_GIMP, EXIT_INTERRUPTED = 0, 1, 2, 3, 4, 5, 130


def say(msg: str = "") -> None:
    print(msg, flush=True)


def warn(msg: str) -> None:
    print(f"WARNING: {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------- torch build
# PyTorch's own package indexes. The CUDA and ROCm variants follow the torch version in constraints.txt (torch
# 2.14: CUDA 13.0 - the default Linux wheels on PyPI are that CUDA build); pip matches torch==X to X+cpu etc.
PYTORCH_INDEX = "https://download.pytorch.org/whl"
CPU_INDEX = f"{PYTORCH_INDEX}/cpu"
CUDA_INDEX = f"{PYTORCH_INDEX}/cu130"
ROCM_INDEX = f"{PYTORCH_INDEX}/rocm7.0"
TORCH_BUILDS = ("cpu", "cuda", "rocm")


@dataclass(frozen=True)
class Machine:
    """What install.py finds out about this computer to choose a torch build.

    system: ``platform.system()`` lowercased ("linux", "darwin", "windows"); machine: "x86_64", "arm64", ...;
    nvidia: the GPU and driver ``nvidia-smi`` reports ("NVIDIA H100 80GB HBM3, driver 580.65"), None when no NVIDIA
    driver answers; rocm: the ROCm version found (``/opt/rocm/.info/version``, "present" when only the tools are
    there), None without ROCm.
    """

    system: str
    machine: str
    nvidia: str | None = None
    rocm: str | None = None


def _nvidia_smi(run: Callable[..., Any] = subprocess.run) -> str | None:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        r = run([exe, "--query-gpu=name,driver_version", "--format=csv,noheader"], capture_output=True, text=True,
                timeout=20, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = [ln.strip() for ln in (r.stdout or "").splitlines() if ln.strip()]
    if r.returncode != 0 or not lines:
        return None                      # the tool is there but no driver/GPU answers
    name, _, driver = lines[0].rpartition(",")
    return f"{name.strip() or lines[0]}, driver {driver.strip()}" + (f" (+{len(lines) - 1} more)" if len(lines) > 1
                                                                     else "")


def _rocm(root: Path = Path("/opt/rocm")) -> str | None:
    version = root / ".info" / "version"
    if version.is_file():
        return version.read_text(encoding="utf-8", errors="replace").strip().split("-")[0] or "present"
    if root.is_dir() or shutil.which("rocminfo") or shutil.which("rocm-smi"):
        return "present"
    return None


def probe_machine() -> Machine:
    """This computer's OS, CPU architecture, NVIDIA driver and ROCm (see :class:`Machine`)."""
    system = platform.system().lower()
    return Machine(system, platform.machine().lower(), _nvidia_smi(),
                   _rocm() if system == "linux" else None)


@dataclass(frozen=True)
class TorchChoice:
    """The torch build to install: build ("cpu" | "cuda" | "rocm" | "default"), the package index it comes from
    (None: the default index) and why, in words."""

    build: str
    index_url: str | None
    why: str


def choose_torch(m: Machine, override: str | None = None) -> TorchChoice:
    """The build for ``m`` (``override``: the user's ``--torch``). ValueError for a build this OS has none of."""
    if m.system == "darwin":
        if override in ("cuda", "rocm"):
            raise ValueError(f"PyTorch publishes no {override.upper()} build for macOS; use --torch cpu or leave "
                             "--torch out (the default wheels use Apple GPUs through MPS)")
        return TorchChoice("default", None, "this is macOS, whose default wheels run on Apple GPUs through MPS "
                           "(Apple silicon) or on the CPU")
    if override == "rocm" and m.system != "linux":
        raise ValueError("PyTorch's ROCm builds are for Linux only; use --torch cpu or --torch cuda")
    build = override or ("cuda" if m.nvidia else "rocm" if m.rocm else "cpu")
    if override:
        why = f"--torch {override}"
    elif m.nvidia:
        why = f"an NVIDIA driver answers ({m.nvidia})"
    elif m.rocm:
        why = f"ROCm {m.rocm} is installed" if m.rocm != "present" else "ROCm is installed"
    else:
        why = "neither an NVIDIA driver nor ROCm was found (the CPU-only build leaves out 3 GB of CUDA libraries)"
    if build == "cuda":
        # PyPI's Linux wheels are the CUDA build; its Windows wheels are CPU-only, so Windows needs PyTorch's index
        return TorchChoice("cuda", None if m.system == "linux" else CUDA_INDEX, why)
    if build == "rocm":
        return TorchChoice("rocm", ROCM_INDEX, why)
    return TorchChoice("cpu", CPU_INDEX, why)


def index_unreachable(url: str, timeout: float = 10.0) -> str | None:
    """None when ``url``'s server answers (any HTTP status), else why not (one short phrase)."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url + "/torch/", method="HEAD"), timeout=timeout):
            return None
    except urllib.error.HTTPError:
        return None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        return str(reason) or type(reason).__name__


def build_of(version: str, system: str) -> str:
    """The build of an installed torch version string: its local label (``+cpu``, ``+cu130``, ``+rocm7.0``), else
    the default wheels of ``system`` (Linux: CUDA, Windows: CPU, macOS: default)."""
    local = version.partition("+")[2]
    if local.startswith("cpu"):
        return "cpu"
    if local.startswith("cu"):
        return "cuda"
    if local.startswith("rocm"):
        return "rocm"
    return {"linux": "cuda", "windows": "cpu"}.get(system, "default")


@dataclass
class TorchPlan:
    """What the torch step runs (``commands``, in order) and the sentences it says first (``notes``)."""

    commands: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def plan_torch(python: Path, m: Machine, override: str | None, installed: str | None,
               unreachable: Callable[[str], str | None] | None = None) -> TorchPlan:
    """The pip commands that put the chosen torch build into ``python``'s environment (``installed``: the torch
    version already there, or None; ``unreachable``: the index probe, default :func:`index_unreachable`)."""
    unreachable = unreachable or index_unreachable
    choice = choose_torch(m, override)
    plan = TorchPlan()
    if installed is not None:
        have = build_of(installed, m.system)
        if have == choice.build or (choice.build == "default" and m.system == "darwin"):
            plan.notes.append(f"torch {installed} is installed (the {have} build); kept.")
            return plan
        if not override:
            plan.notes.append(f"torch {installed} is installed (the {have} build); kept (this machine would get the "
                              f"{choice.build} build: {choice.why}; `--torch {choice.build}` replaces it).")
            return plan
        plan.notes.append(f"Replacing torch {installed} (the {have} build) with the {choice.build} build.")
        plan.commands.append([str(python), "-m", "pip", "uninstall", "-y", "torch", "torchvision"])
    pip = [str(python), "-m", "pip", "install", "--disable-pip-version-check", "torch", "torchvision"]
    if CONSTRAINTS.is_file():
        pip += ["-c", str(CONSTRAINTS)]
    index = choice.index_url
    why_not = unreachable(index) if index is not None else None
    if why_not is not None:
        fallback = {"rocm": "its build does not use AMD GPUs: the networks will run on the CPU",
                    "cuda": "on Windows its build runs on the CPU only",
                    "cpu": "the CUDA build, about 3 GB larger, which runs on the CPU too" if m.system == "linux"
                    else "a CPU-only build too"}[choice.build]
        plan.notes.append(f"torch: the {choice.build} build was chosen because {choice.why}, but {index} cannot be "
                          f"reached ({why_not}), so torch comes from the default package index instead ({fallback}).")
        index = None
    else:
        plan.notes.append(f"torch: the {choice.build} build, because {choice.why}; from "
                          + (index or "the default package index") + ".")
    plan.commands.append(pip + (["--index-url", index] if index else []))
    return plan


def installed_torch(python: Path) -> str | None:
    """The torch version installed in ``python``'s environment (its metadata; torch is not imported), or None."""
    code = "import importlib.metadata as m\ntry: print(m.version('torch'))\nexcept m.PackageNotFoundError: pass"
    try:
        r = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=False, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout.strip() or None


def torch_step(python: Path, override: str | None, probe: Callable[[], Machine] = probe_machine) -> None:
    """Install the chosen torch build (see :func:`plan_torch`). RuntimeError with a sentence when pip fails."""
    try:
        plan = plan_torch(python, probe(), override, installed_torch(python))
    except ValueError as e:
        raise RuntimeError(str(e)) from None
    for note in plan.notes:
        say(note)
    for cmd in plan.commands:
        say("Running: " + " ".join(cmd))
        proc = subprocess.run(cmd, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"installing torch failed (pip exit {proc.returncode}); see its output above")


# ----------------------------------------------------------------------------------------------- weights
def patchcolor_command(python: Path) -> list[str]:
    """The ``patchcolor`` command of ``python``'s environment: its script, else ``python -m patchcolor.cli``."""
    script = Path(python).parent / ("patchcolor.exe" if os.name == "nt" else "patchcolor")
    return [str(script)] if script.exists() else [str(python), "-m", "patchcolor.cli"]


def weights_command(python: Path, args: argparse.Namespace) -> list[str]:
    """``patchcolor weights verify|fetch ...`` with install.py's weight options passed on."""
    cmd = patchcolor_command(python) + ["weights", "verify" if args.verify else "fetch"]
    if args.optional:
        cmd.append("--optional")
    if args.models_dir:
        cmd += ["--models-dir", str(Path(args.models_dir).expanduser().resolve())]
    if args.models_from and not args.verify:
        cmd += ["--from", str(Path(args.models_from).expanduser().resolve())]
    if args.quiet and not args.verify:
        cmd.append("--quiet")
    return cmd


def weights_step(python: Path, args: argparse.Namespace) -> int:
    """Run ``patchcolor weights fetch`` (``--verify``: ``verify``) in the package's environment; its exit code
    (0, EXIT_CORRUPT, EXIT_MISSING, EXIT_ENV for an unwritable folder, EXIT_INTERRUPTED) is install.py's."""
    cmd = weights_command(python, args)
    say("Model weights: " + " ".join(cmd))
    try:
        return subprocess.run(cmd, check=False).returncode
    except OSError as e:
        warn(f"cannot run {cmd[0]}: {e}")
        return EXIT_ENV


def default_models_dir(args: argparse.Namespace) -> Path:
    """The weights folder the package will use: ``--models-dir``, else $PATCHCOLOR_MODELS, else ``models/``."""
    chosen = args.models_dir or os.environ.get("PATCHCOLOR_MODELS")
    return Path(chosen).expanduser().resolve() if chosen else ROOT / "models"


# ----------------------------------------------------------------------------------------------- venv + package
def venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _runs(python: Path) -> bool:
    try:
        return subprocess.run([str(python), "-c", "import sys; sys.exit(sys.version_info < (3, 10))"],
                              check=False, capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def ensure_venv(venv: Path) -> Path:
    """Create ``venv`` unless a working one is there; returns its python. Raises RuntimeError with advice."""
    py = venv_python(venv)
    if py.exists() and _runs(py):
        say(f"Using the existing virtual environment {venv}")
        return py
    cmd = [sys.executable, "-m", "venv"] + (["--clear"] if venv.exists() else []) + [str(venv)]
    say(f"Creating the virtual environment {venv}" + (" (the existing one is broken)" if venv.exists() else ""))
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True)
    if proc.returncode != 0 or not py.exists():
        hint = ""
        if "ensurepip" in (proc.stderr + proc.stdout):
            hint = (" Python's venv module is incomplete; on Debian/Ubuntu run `sudo apt install python3-venv` "
                    "(or python3.X-venv) and try again.")
        raise RuntimeError(f"could not create {venv}: {proc.stderr.strip() or proc.stdout.strip()}.{hint}")
    return py


CONSTRAINTS = ROOT / "constraints.txt"


def _pyproject_hash() -> str:
    """sha256 of pyproject.toml and constraints.txt together (either changing re-runs pip)."""
    h = hashlib.sha256((ROOT / "pyproject.toml").read_bytes())
    if CONSTRAINTS.is_file():
        h.update(CONSTRAINTS.read_bytes())
    return h.hexdigest()


def record_path(python: Path) -> Path:
    """Where the install record lives: next to the venv's ``pyvenv.cfg``; for a non-venv interpreter
    (``--skip-venv`` on a system python) ``~/.local/share/patchcolor/patchcolor-install.json``."""
    prefix = Path(python).parent.parent
    if (prefix / "pyvenv.cfg").is_file():
        return prefix / RECORD_NAME
    data_home = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return data_home / "patchcolor" / RECORD_NAME


def read_record(python: Path) -> dict[str, Any]:
    try:
        return json.loads(record_path(python).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def pip_install(python: Path, reinstall: bool = False, ray: bool = False, ddcolor: bool = False) -> None:
    """``pip install -e .[test] -c constraints.txt`` into ``python``'s environment (no ``--upgrade``: only what
    is missing or pinned differently changes - an installed torch build stays; the constraints file pins the
    tested versions within pyproject.toml's ranges). Skipped when neither file changed and ``patchcolor`` imports.
    ray: also the ``ray`` extra (Ray Data, for ``colorize --ray``); ddcolor: the ``ddcolor`` extra (spandrel)."""
    extras = ["test"] + (["ray"] if ray else []) + (["ddcolor"] if ddcolor else [])
    probes = "import patchcolor" + ("; import ray.data" if ray else "") + ("; import spandrel" if ddcolor else "")
    rec = read_record(python)
    if not reinstall and rec.get("pyproject_sha256") == _pyproject_hash():
        ok = subprocess.run([str(python), "-c", probes], check=False, capture_output=True, cwd=str(Path.home()))
        if ok.returncode == 0:
            say("The package is already installed and pyproject.toml is unchanged (--reinstall forces pip).")
            return
    cmd = [str(python), "-m", "pip", "install", "--disable-pip-version-check", "-e", f"{ROOT}[{','.join(extras)}]"]
    if CONSTRAINTS.is_file():
        cmd += ["-c", str(CONSTRAINTS)]
    say("Installing the package: " + " ".join(cmd))
    proc = subprocess.run(cmd, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"pip failed (exit {proc.returncode}); see its output above")


def backend_command(python: Path) -> list[str]:
    """Command that starts the backend service, for the GIMP plug-in and the install record: ``python``'s own
    ``patchcolor serve`` (never another ``patchcolor`` found on PATH)."""
    return patchcolor_command(python) + ["serve"]


def write_record(python: Path, folder: Path) -> Path:
    p = record_path(python)
    p.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "python": str(python),
        "backend_cmd": backend_command(python),
        "models_dir": str(folder),
        "repo": str(ROOT),
        "pyproject_sha256": _pyproject_hash(),
        "installed_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, p)
    return p


# ----------------------------------------------------------------------------------------------- GIMP
def load_gimp_installer(path: Path = GIMP_INSTALLER) -> types.ModuleType | None:
    """Import ``gimp_plugin/gimp_install.py`` by path; None (with a note) when absent, broken or incomplete."""
    if not path.is_file():
        return None
    name = "patchcolor_gimp_install"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        return None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod                       # dataclasses & co. look their module up while it executes
    try:
        spec.loader.exec_module(mod)
    except Exception as e:  # noqa: BLE001 - a broken plug-in installer must not break the rest
        sys.modules.pop(name, None)
        warn(f"cannot load {path}: {type(e).__name__}: {e}; GIMP step skipped")
        return None
    need = ("find_gimp_profiles", "install_plugin", "uninstall_plugin")
    if not all(callable(getattr(mod, n, None)) for n in need):
        warn(f"{path} lacks one of {', '.join(need)}; GIMP step skipped")
        return None
    return mod


def gimp_step(args: argparse.Namespace, backend_cmd: list[str] | None,
              loader: Callable[[], types.ModuleType | None] = load_gimp_installer) -> int:
    """Install (or with ``--uninstall`` remove) the plug-in in each profile; 0 or EXIT_GIMP."""
    mod = loader()
    if mod is None:
        say("GIMP plug-in: installer not available yet (gimp_plugin/gimp_install.py); skipped.")
        return EXIT_OK
    profiles = [Path(p).expanduser() for p in args.gimp_profile] if args.gimp_profile else \
        [Path(p) for p in mod.find_gimp_profiles()]
    if not profiles:
        say("GIMP plug-in: no GIMP 3 profile found (start GIMP 3 once, or pass --gimp-profile DIR); skipped.")
        return EXIT_OK
    failed = False
    for prof in profiles:
        try:
            if args.uninstall:
                removed = mod.uninstall_plugin(prof)
                say(f"GIMP plug-in {'removed from' if removed is not False else 'was not installed in'} {prof}")
            else:
                log = Path(args.log).expanduser()
                log.parent.mkdir(parents=True, exist_ok=True)
                res = mod.install_plugin(prof, backend_cmd, args.endpoint, log)
                msgs = list(getattr(res, "messages", None) or [f"GIMP plug-in installed in {prof}"])
                for line in msgs:
                    say(f"GIMP: {line}")
        except Exception as e:  # noqa: BLE001 - report every profile, never a traceback
            failed = True
            warn(f"GIMP plug-in {'removal' if args.uninstall else 'installation'} failed for {prof}: {e}")
    return EXIT_GIMP if failed else EXIT_OK


def service_step(python: Path, action: str, args: argparse.Namespace, folder: Path) -> int:
    """``patchcolor service install|uninstall`` in the venv's Python; 0 or EXIT_GIMP (messages printed)."""
    if not Path(python).exists():
        if action == "uninstall":
            return EXIT_OK                      # no venv: no service could have been installed from it
        warn(f"{python} does not exist: cannot register the login service")
        return EXIT_GIMP
    cmd = [str(python), "-m", "patchcolor.cli", "service", action, "--endpoint", args.endpoint]
    if action == "install":
        cmd += ["--models", str(folder), "--log", str(Path(args.log).expanduser())]
    r = subprocess.run(cmd, capture_output=True, text=True, check=False)
    for line in (r.stdout + r.stderr).splitlines():
        say(f"Login service: {line}")
    return EXIT_OK if r.returncode == 0 else EXIT_GIMP


# ----------------------------------------------------------------------------------------------- CLI
def _default_log() -> str:
    state = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    return str(state / "patchcolor" / "patchcolor.log")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    doc = __doc__ or ""
    p = argparse.ArgumentParser(
        prog="install.py", description="Install Patch Colorization (venv, torch, package, weights, GIMP plug-in).",
        epilog=doc[doc.index("Exit codes:"):], formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("environment")
    g.add_argument("--skip-venv", action="store_true", help="install into this interpreter instead of .venv")
    g.add_argument("--torch", choices=TORCH_BUILDS,
                   help="torch build to install (default: chosen from what this machine has: an NVIDIA driver -> "
                        "cuda, ROCm -> rocm, macOS -> the default wheels with MPS, otherwise cpu); replaces an "
                        "installed torch of another build")
    g.add_argument("--reinstall", action="store_true", help="run pip even if pyproject.toml is unchanged")
    g.add_argument("--ray", action="store_true", help="also install Ray (patchcolor[ray]) for colorize --ray")
    g.add_argument("--ddcolor", action="store_true",
                   help="also install the DDColor colorizer's libraries (patchcolor[ddcolor]: spandrel)")
    g.add_argument("--models-only", action="store_true", help="only fetch/check the weights (no venv, no pip)")
    m = p.add_argument_group("model weights (passed on to `patchcolor weights fetch`)")
    m.add_argument("--no-models", action="store_true", help="skip the weights (CI)")
    m.add_argument("--optional", action="store_true",
                   help="also fetch the optional models' weights (`patchcolor weights list` names them)")
    m.add_argument("--models-from", metavar="DIR", help="copy/link the weights from this offline folder")
    m.add_argument("--models-dir", metavar="DIR", help="weights folder (default: $PATCHCOLOR_MODELS or models/)")
    m.add_argument("--verify", action="store_true", help="check every present weight file and exit "
                                                         "(`patchcolor weights verify`)")
    m.add_argument("--quiet", action="store_true", help="no download progress lines")
    gp = p.add_argument_group("GIMP 3 plug-in")
    gp.add_argument("--gimp-profile", metavar="DIR", action="append", default=[],
                    help="install into this GIMP profile (repeatable; default: every GIMP 3 profile found)")
    gp.add_argument("--no-gimp", action="store_true", help="do not touch GIMP")
    gp.add_argument("--autostart", action="store_true",
                    help="also register the backend as a login service (systemd user unit / LaunchAgent / Windows "
                         "Startup entry), for a GIMP that cannot start it itself (Flatpak, Snap, macOS)")
    gp.add_argument("--uninstall", action="store_true",
                    help="remove the plug-in from the profiles and exit (.venv and models/ are kept)")
    gp.add_argument("--endpoint", default=DEFAULT_ENDPOINT, help=f"backend endpoint (default {DEFAULT_ENDPOINT})")
    gp.add_argument("--log", default=_default_log(), help="backend log file the plug-in points to")
    a = p.parse_args(argv)
    if a.no_models and (a.models_from or a.optional):
        p.error("--no-models cannot be combined with --models-from or --optional")
    if a.uninstall and a.autostart:
        p.error("--uninstall removes the login service too; it cannot be combined with --autostart")
    if a.models_from and not Path(a.models_from).expanduser().is_dir():
        p.error(f"--models-from: {a.models_from} is not a folder")
    return a


def _package_python() -> Path:
    """The interpreter that has the package for --verify / --models-only: the venv's, else this one."""
    py = venv_python(VENV)
    return py if py.exists() else Path(sys.executable)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    folder = default_models_dir(args)
    if args.verify:
        return weights_step(_package_python(), args)
    if args.uninstall:
        gcode = EXIT_OK if args.no_gimp else gimp_step(args, None)
        return service_step(venv_python(VENV), "uninstall", args, folder) or gcode

    code = EXIT_OK
    python = _package_python() if args.models_only else Path(sys.executable)
    if not args.models_only:
        try:
            python = Path(sys.executable) if args.skip_venv else ensure_venv(VENV)
            torch_step(python, args.torch)
            pip_install(python, reinstall=args.reinstall, ray=args.ray, ddcolor=args.ddcolor)
            rec = write_record(python, folder)
            say(f"Install record: {rec}")
        except RuntimeError as e:
            warn(str(e))
            return EXIT_ENV

    if not args.no_models:
        code = weights_step(python, args)
        if code == EXIT_INTERRUPTED:
            return code

    if not args.models_only and not args.no_gimp:
        gcode = gimp_step(args, backend_command(python))
        code = code or gcode

    if args.autostart and not args.models_only:
        code = code or service_step(python, "install", args, folder)

    say("")
    if code == EXIT_OK:
        say("Done." + ("" if args.models_only else f" Backend: {' '.join(backend_command(python))}"))
    elif code == EXIT_MISSING:
        warn("the package is installed and its environment works, but required model weights are missing "
             f"(see above; `{' '.join(patchcolor_command(python))} weights fetch` resumes). Exit code {EXIT_MISSING}.")
    elif code == EXIT_CORRUPT:
        warn(f"a model file was refused or is corrupt (see above). Exit code {EXIT_CORRUPT}.")
    return code


if __name__ == "__main__":
    try:
        sys.exit(main())
    except OSError as exc:                        # e.g. a read-only folder: one sentence, no traceback
        print(f"ERROR: {exc}", file=sys.stderr)
        sys.exit(EXIT_ENV)
    except KeyboardInterrupt:
        print("\nInterrupted. Partial downloads are kept; run the same command again to resume.", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
