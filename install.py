#!/usr/bin/env python3
"""Install Patch Colorization: virtual environment, package, model weights and the GIMP 3 plug-in.

Standard library only; runs with any ``python3`` >= 3.10 (``python3 install.py --help``).

Steps of a plain ``python3 install.py``:

1. create ``.venv`` (``python -m venv``) unless it exists (``--skip-venv``: use this interpreter instead);
2. ``pip install -e .[test] -c constraints.txt`` into it (pyproject.toml declares version ranges; constraints.txt
   holds the exact tested versions; nothing is upgraded, and the step is skipped when neither file changed since
   the last successful run - ``--reinstall`` forces it);
3. write ``.venv/patchcolor-install.json`` (python, backend command, models folder);
4. fetch the required weights (``--optional``: all of them) into ``models/``: resumable HTTP Range downloads into
   ``<file>.part`` with retries, checked against the catalogue before the atomic rename; or, with
   ``--models-from DIR``, hard-link/copy them from an offline folder, checked the same way;
5. install the GIMP plug-in into every GIMP 3 profile found (or each ``--gimp-profile DIR``);
6. with ``--autostart``: register the backend as a login service (``patchcolor service install``: a systemd user
   unit, a macOS LaunchAgent or a Windows Startup entry; loopback only, models loaded on the first job), so the
   plug-in finds it whatever sandbox GIMP runs in. ``--uninstall`` removes the plug-in and that service.

Exit codes:
  0  everything requested is installed (or ``--verify``: every required file ok, nothing corrupt)
  1  a weight file is corrupt or was refused; ``--verify``: a required file is missing or any file is corrupt
  2  bad command line
  3  the package and its venv are installed and work, but required weights are missing (no internet?):
     the message lists each file, where to put it and its URL
  4  creating the virtual environment or installing the package failed (or a folder could not be written)
  5  the GIMP plug-in (or the --autostart login service) could not be installed/uninstalled (everything else
     succeeded)
130 interrupted (a partial download is kept and resumed next time)
CI runs ``python3 install.py --no-models`` (exit 0 without network).
"""
from __future__ import annotations

import argparse
import hashlib
import http.client
import importlib
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import types
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if sys.version_info < (3, 10):  # pragma: no cover - message for very old interpreters
    sys.exit(f"Patch Colorization needs Python 3.10 or newer (this is {sys.version.split()[0]}).")

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
RECORD_NAME = "patchcolor-install.json"
GIMP_INSTALLER = ROOT / "gimp_plugin" / "gimp_install.py"
DEFAULT_ENDPOINT = "tcp://127.0.0.1:5555"
USER_AGENT = "patchcolor-install/0.1 (+urllib)"

EXIT_OK, EXIT_CORRUPT, EXIT_USAGE, EXIT_MISSING, EXIT_ENV, EXIT_GIMP, EXIT_INTERRUPTED = 0, 1, 2, 3, 4, 5, 130


# ----------------------------------------------------------------------------------------------- shared rules
def _load_models_module() -> types.ModuleType:
    """Import backend/patchcolor/models.py (stdlib only) without importing the ``patchcolor`` package, whose
    ``__init__`` may need torch; a private package name keeps its relative import of ``errors`` working."""
    name = "_patchcolor_boot"
    if f"{name}.models" in sys.modules:
        return sys.modules[f"{name}.models"]
    pkg = types.ModuleType(name)
    pkg.__path__ = [str(ROOT / "backend" / "patchcolor")]  # type: ignore[attr-defined]
    sys.modules[name] = pkg
    return importlib.import_module(f"{name}.models")


M = _load_models_module()


def say(msg: str = "") -> None:
    print(msg, flush=True)


def warn(msg: str) -> None:
    print(f"WARNING: {msg}", file=sys.stderr, flush=True)


def human(n: int | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000  # type: ignore[assignment]
    return str(n)


# ----------------------------------------------------------------------------------------------- downloads
class DownloadError(Exception):
    """A download could not be completed; ``offline`` when the host could not even be resolved/reached."""

    def __init__(self, message: str, offline: bool = False, permanent: bool = False):
        super().__init__(message)
        self.offline = offline
        self.permanent = permanent


class _Truncated(Exception):
    pass


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
                            chunk = resp.read(M.CHUNK)
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


# ----------------------------------------------------------------------------------------------- models
@dataclass
class ModelOutcome:
    entry: Any                                # registry.WeightFile
    result: Any | None                        # models.VerifyResult, None when not obtained
    action: str                               # "present" | "downloaded" | "copied" | "linked" | "failed" | ...
    detail: str = ""
    offline: bool = False


def _report(entry: Any, res: Any) -> None:
    if res.status == "unconfirmed":
        warn(f"{entry.file}: {res.message}")
    elif res.prefix_algorithm and not entry.hash_prefix.confirmed:
        say(f"  {entry.file}: the name's prefix matched its {res.prefix_algorithm} digest "
            f"(catalogue declares {entry.hash_prefix.describe()}; recorded in verified.json)")


def _accept(part: Path, final: Path, entry: Any, folder: Path) -> Any:
    """Verify ``part`` (against the catalogue and any pin) and atomically move it to ``final`` when usable;
    a refused part is deleted."""
    res = M.verify_file(part, entry, full=True, recorded=M.load_verified(folder).get(entry.file))
    if not res.usable:
        part.unlink(missing_ok=True)
        return res
    os.replace(part, final)
    res.path = final
    M.record_verified(folder, entry, res)
    _report(entry, res)
    return res


def _check_present(entry: Any, folder: Path) -> Any | None:
    """Verify an installed file. Usable -> its result; corrupt -> moved aside to ``<file>.corrupt``, None."""
    final = folder / entry.file
    if not final.exists():
        return None
    res = M.verify_file(final, entry, full=True, recorded=M.load_verified(folder).get(entry.file))
    if res.usable:
        M.record_verified(folder, entry, res)
        _report(entry, res)
        return res
    aside = final.with_name(final.name + ".corrupt")
    os.replace(final, aside)
    warn(f"{final} is corrupt ({res.message}); moved to {aside.name}, fetching it again")
    return None


def fetch_model(entry: Any, folder: Path, *, retries: int = 5, retry_wait: float = 1.0, timeout: float = 30.0,
                progress: bool = True) -> ModelOutcome:
    """Make sure ``entry``'s file is in ``folder``: keep a good copy, else download (resuming a ``.part``)."""
    folder.mkdir(parents=True, exist_ok=True)
    res = _check_present(entry, folder)
    if res is not None:
        return ModelOutcome(entry, res, "present", res.message)
    final = folder / entry.file
    part = final.with_name(final.name + ".part")
    free = shutil.disk_usage(folder).free
    need = (entry.size_hint or 0) - (part.stat().st_size if part.exists() else 0)
    if need > free:
        return ModelOutcome(entry, None, "failed", f"not enough disk space in {folder} "
                            f"({human(free)} free, about {human(need)} needed)")
    res = None
    for attempt in (1, 2):
        resumed = part.exists() and part.stat().st_size > 0
        say(f"Downloading {entry.file} ({'~' if entry.size is None else ''}{human(entry.size_hint)})"
            + (f", resuming at {human(part.stat().st_size)}" if resumed else ""))
        try:
            download(entry.url, part, retries=retries, retry_wait=retry_wait, timeout=timeout,
                     label=entry.file, progress=progress, expected_size=entry.size_hint)
        except DownloadError as e:
            return ModelOutcome(entry, None, "failed", str(e), offline=e.offline)
        res = _accept(part, final, entry, folder)
        if res.usable:
            return ModelOutcome(entry, res, "downloaded", res.message)
        if not (resumed and attempt == 1):       # a stale resumed part may be the culprit: one clean retry
            break
        say(f"  {entry.file}: the resumed download failed the check ({res.message}); downloading it afresh")
    detail = res.message if res is not None else "?"
    return ModelOutcome(entry, res, "refused", f"downloaded file failed verification: {detail}")


def _find_in(src: Path, file_name: str, max_depth: int = 6) -> Path | None:
    """``src/file_name``, else the first match in sub-folders up to ``max_depth`` levels (e.g. a mirrored
    Detectron2 URL layout ``COCO-InstanceSegmentation/.../138205316/model_final_a3ec72.pkl``)."""
    direct = src / file_name
    if direct.is_file():
        return direct
    base = len(src.parts)
    for dirpath, dirnames, filenames in os.walk(src):
        dirnames.sort()
        if len(Path(dirpath).parts) - base >= max_depth:
            dirnames.clear()
        if file_name in filenames and (Path(dirpath) / file_name).is_file():
            return Path(dirpath) / file_name
    return None


def copy_model(entry: Any, src_dir: Path, folder: Path) -> ModelOutcome:
    """Take ``entry``'s file from an offline folder: verified first, then hard-linked (same file system) or
    copied through ``<file>.part`` and verified again before the atomic rename. A bad file is refused."""
    folder.mkdir(parents=True, exist_ok=True)
    src = _find_in(src_dir, entry.file)
    present = _check_present(entry, folder)
    if present is not None:
        return ModelOutcome(entry, present, "present", present.message)
    if src is None:
        return ModelOutcome(entry, None, "failed", f"not found in {src_dir}")
    res = M.verify_file(src, entry, full=True, recorded=M.load_verified(folder).get(entry.file))
    if not res.usable:
        return ModelOutcome(entry, res, "refused", f"{src} refused: {res.message}")
    final = folder / entry.file
    part = final.with_name(final.name + ".part")
    part.unlink(missing_ok=True)
    try:
        os.link(src, part)
        action = "linked"
        res.path = final
        os.replace(part, final)
        M.record_verified(folder, entry, res)
        _report(entry, res)
    except OSError:
        shutil.copyfile(src, part)
        action = "copied"
        res = _accept(part, final, entry, folder)
        if not res.usable:
            return ModelOutcome(entry, res, "refused", f"copy of {src} failed verification: {res.message}")
    return ModelOutcome(entry, res, action, res.message)


def verify_table(catalog: Sequence[Any], folder: Path) -> int:
    """``--verify``: hash every present file, pin newly verified ones, print a table; 0 or EXIT_CORRUPT."""
    rows = []
    bad = False
    pins = M.load_verified(folder)
    for e in catalog:
        res = M.verify_file(folder / e.file, e, full=True, recorded=pins.get(e.file))
        if res.usable:
            M.record_verified(folder, e, res)
        if res.status == "corrupt" or (res.status == "missing" and e.required):
            bad = True
        detail = res.message if res.status != "missing" else e.url
        rows.append((e.id, e.file, "required" if e.required else "optional", res.status, detail))
    widths = [max(len(r[i]) for r in rows + [("model", "file", "need", "status", "")]) for i in range(4)]
    say(f"Models folder: {folder}")
    say("  ".join(h.ljust(w) for h, w in zip(("model", "file", "need", "status"), widths)) + "  detail")
    for r in rows:
        say("  ".join(c.ljust(w) for c, w in zip(r[:4], widths)) + "  " + r[4])
    if bad:
        missing = [e for e, r in zip(catalog, rows) if r[3] == "missing" and e.required]
        if missing:
            say("")
            _explain_missing(missing, folder)
        if any(r[3] == "corrupt" for r in rows):
            say("Corrupt files: delete them (or run `python3 install.py`, which moves them aside and downloads "
                "them again).")
    return EXIT_CORRUPT if bad else EXIT_OK


def _explain_missing(entries: Sequence[Any], folder: Path, offline: bool = False) -> None:
    why = " (no connection to the download servers?)" if offline else ""
    say(f"Missing model file(s){why}. Put these files into {folder}:")
    for e in entries:
        say(f"  {e.file}  ({'~' if e.size is None else ''}{human(e.size_hint)})  {e.url}")
    say("then check them with:          python3 install.py --verify")
    say("or copy them from a folder:    python3 install.py --models-from /path/to/folder")
    say("(a download that was interrupted resumes when you run `python3 install.py` again)")


def install_models(args: argparse.Namespace, folder: Path, catalog: Sequence[Any]) -> int:
    """Fetch/copy the wanted weights; returns an exit code contribution (0, EXIT_CORRUPT or EXIT_MISSING)."""
    wanted = [e for e in catalog if e.required or args.optional]
    outcomes: list[ModelOutcome] = []
    offline = False
    for e in wanted:
        if args.models_from:
            out = copy_model(e, Path(args.models_from).expanduser(), folder)
        elif offline:                            # do not knock on every server once the network is known down
            present = _check_present(e, folder)
            out = (ModelOutcome(e, present, "present", present.message) if present is not None
                   else ModelOutcome(e, None, "failed", "skipped: offline", offline=True))
        else:
            out = fetch_model(e, folder, retries=args.retries, retry_wait=args.retry_wait, timeout=args.timeout,
                              progress=not args.quiet)
            offline = offline or out.offline
        outcomes.append(out)
        status = out.result.status if out.result is not None else "missing"
        say(f"  {e.id:<15} {status:<12} {out.action:<10} {out.detail}")
    refused = [o for o in outcomes if o.action == "refused"]
    missing = [o.entry for o in outcomes if (o.result is None or not o.result.usable) and o.entry.required]
    for o in refused:
        warn(f"{o.entry.file} was refused: {o.detail}")
    if missing:
        say("")
        _explain_missing(missing, folder, offline=offline or any(o.offline for o in outcomes))
    if refused:
        return EXIT_CORRUPT
    return EXIT_MISSING if missing else EXIT_OK


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


def pip_install(python: Path, reinstall: bool = False, ray: bool = False) -> None:
    """``pip install -e .[test] -c constraints.txt`` into ``python``'s environment (no ``--upgrade``: only what
    is missing or pinned differently changes; the constraints file pins the tested versions within
    pyproject.toml's ranges). Skipped when neither file changed and ``patchcolor`` imports.
    ray: also the ``ray`` extra (Ray Data, for ``colorize --ray``)."""
    rec = read_record(python)
    if not reinstall and rec.get("pyproject_sha256") == _pyproject_hash():
        ok = subprocess.run([str(python), "-c", "import patchcolor" + ("; import ray.data" if ray else "")],
                            check=False, capture_output=True, cwd=str(Path.home()))
        if ok.returncode == 0:
            say("The package is already installed and pyproject.toml is unchanged (--reinstall forces pip).")
            return
    cmd = [str(python), "-m", "pip", "install", "--disable-pip-version-check", "-e",
           f"{ROOT}[test,ray]" if ray else f"{ROOT}[test]"]
    if CONSTRAINTS.is_file():
        cmd += ["-c", str(CONSTRAINTS)]
    say("Installing the package: " + " ".join(cmd))
    proc = subprocess.run(cmd, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"pip failed (exit {proc.returncode}); see its output above")


def backend_command(python: Path) -> list[str]:
    """Command that starts the backend service, for the GIMP plug-in and the install record."""
    script = Path(python).parent / ("patchcolor.exe" if os.name == "nt" else "patchcolor")
    if script.exists():
        return [str(script), "serve"]
    found = shutil.which("patchcolor")
    return [found, "serve"] if found else [str(python), "-m", "patchcolor.cli", "serve"]


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


def _optional_names() -> str:
    """`` (siggraph17, torchvision-v2, ...)``: the registry's models whose file a plain install does not fetch."""
    try:
        reg = M.registry()
    except (OSError, ValueError):                 # a broken catalogue is reported by main(), not by --help
        return ""
    names = [m.name for m in reg.models if not m.weights.required]
    return f" ({', '.join(names)})" if names else ""


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    doc = __doc__ or ""
    p = argparse.ArgumentParser(
        prog="install.py", description="Install Patch Colorization (venv, package, weights, GIMP plug-in).",
        epilog=doc[doc.index("Exit codes:"):], formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("environment")
    g.add_argument("--skip-venv", action="store_true", help="install into this interpreter instead of .venv")
    g.add_argument("--reinstall", action="store_true", help="run pip even if pyproject.toml is unchanged")
    g.add_argument("--ray", action="store_true", help="also install Ray (patchcolor[ray]) for colorize --ray")
    g.add_argument("--models-only", action="store_true", help="only fetch/check the weights (no venv, no pip)")
    m = p.add_argument_group("model weights")
    m.add_argument("--no-models", action="store_true", help="skip the weights (CI)")
    m.add_argument("--optional", action="store_true", help=f"also fetch the optional models{_optional_names()}")
    m.add_argument("--models-from", metavar="DIR", help="copy/link the weights from this offline folder")
    m.add_argument("--models-dir", metavar="DIR", help="weights folder (default: $PATCHCOLOR_MODELS or models/)")
    m.add_argument("--verify", action="store_true", help="check every present weight file and exit")
    m.add_argument("--retries", type=int, default=5, help="download retries per file (default 5)")
    m.add_argument("--retry-wait", type=float, default=1.0, help="first retry wait in s, doubling (default 1)")
    m.add_argument("--timeout", type=float, default=30.0, help="network timeout in s (default 30)")
    m.add_argument("--quiet", action="store_true", help="no progress lines")
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


def resolve_models_dir(args: argparse.Namespace) -> Path:
    if args.models_dir:
        return Path(args.models_dir).expanduser().resolve()
    return M.models_dir()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    folder = resolve_models_dir(args)
    try:
        catalog = list(M.registry().files)
    except (OSError, ValueError, KeyError) as e:
        warn(f"cannot read the model catalogue: {e}")
        return EXIT_ENV
    if args.verify:
        return verify_table(catalog, folder)
    if args.uninstall:
        gcode = EXIT_OK if args.no_gimp else gimp_step(args, None)
        return service_step(venv_python(VENV), "uninstall", args, folder) or gcode

    code = EXIT_OK
    python = Path(sys.executable)
    if not args.models_only:
        try:
            python = Path(sys.executable) if args.skip_venv else ensure_venv(VENV)
            pip_install(python, reinstall=args.reinstall, ray=args.ray)
            rec = write_record(python, folder)
            say(f"Install record: {rec}")
        except RuntimeError as e:
            warn(str(e))
            return EXIT_ENV

    if not args.no_models:
        say(f"Model weights -> {folder}")
        code = install_models(args, folder, catalog)

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
             f"(see above). Exit code {EXIT_MISSING}.")
    elif code == EXIT_CORRUPT:
        warn(f"a model file was refused or is corrupt (see above). Exit code {EXIT_CORRUPT}.")
    return code


if __name__ == "__main__":
    try:
        sys.exit(main())
    except OSError as exc:                        # e.g. a read-only models folder: one sentence, no traceback
        print(f"ERROR: {exc}", file=sys.stderr)
        sys.exit(EXIT_ENV)
    except KeyboardInterrupt:
        print("\nInterrupted. Partial downloads are kept; run the same command again to resume.", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
