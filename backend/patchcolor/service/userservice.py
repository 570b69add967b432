"""``patchcolor service install|uninstall|status``: the backend as a per-user service started at login.

Why: a GIMP that runs in a sandbox (Flatpak, Snap, a macOS app bundle, the chroot of the tests) cannot start the
project's venv, so the plug-in's auto-start fails there. A login service runs ``patchcolor serve`` outside any
sandbox; it binds a loopback endpoint only (no keys needed, nothing reachable from the network) and loads the
models lazily, on the first job, so an idle service costs about 150 MB and no start-up time at login.

* Linux: a systemd user unit ``~/.config/systemd/user/patchcolor.service`` (``systemctl --user enable --now``).
* macOS: a LaunchAgent ``~/Library/LaunchAgents/org.patchcolor.serve.plist`` (``launchctl bootstrap gui/UID``).
* Windows: ``patchcolor-serve.vbs`` in the user's Startup folder (runs ``pythonw -m patchcolor.cli serve`` with
  no console window at each login; started at once with ``wscript``).

Where the service manager is not running (a container, WSL without systemd, this project's CI), ``install`` still
writes the file, says exactly what it would run, and how to start the backend by hand.
"""
from __future__ import annotations

import argparse
import os
import platform
import plistlib
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

UNIT_NAME = "patchcolor.service"
AGENT_LABEL = "org.patchcolor.serve"
STARTUP_NAME = "patchcolor-serve.vbs"
DEFAULT_ENDPOINT = "tcp://127.0.0.1:5555"

Runner = Callable[[Sequence[str]], "subprocess.CompletedProcess[str] | None"]


@dataclass
class ServicePlan:
    """What ``install`` writes and runs. ``kind``: "systemd" | "launchd" | "windows"."""

    kind: str
    path: Path
    content: str
    command: list[str]                                        # the backend command the service runs
    start: list[list[str]] = field(default_factory=list)      # run after writing the file (manager running)
    stop: list[list[str]] = field(default_factory=list)       # run before removing it
    state: list[str] = field(default_factory=list)            # prints the manager's view of the service


@dataclass
class Report:
    ok: bool
    messages: list[str]


def _quote(cmd: Sequence[str], system: str) -> str:
    return subprocess.list2cmdline(list(cmd)) if system == "Windows" else shlex.join(cmd)


def backend_command(endpoint: str, models_dir: str | None = None, python: str | None = None,
                    system: str | None = None) -> list[str]:
    """``python -m patchcolor.cli serve --endpoint E [--models DIR]`` (pythonw on Windows: no console)."""
    system = system or platform.system()
    py = python or sys.executable
    if system == "Windows":
        w = Path(py).with_name("pythonw.exe")       # no console window at login
        py = str(w) if w.exists() else py
    cmd = [py, "-m", "patchcolor.cli", "serve", "--endpoint", endpoint]
    if models_dir:
        cmd += ["--models", str(models_dir)]
    return cmd


def check_endpoint(endpoint: str) -> None:
    """A login service binds loopback only: ValueError (one sentence) for anything else."""
    from patchcolor_client.endpoint import is_loopback

    if not is_loopback(endpoint):
        raise ValueError(f"{endpoint!r} is not a loopback endpoint; the login service only listens on this "
                         "computer (e.g. tcp://127.0.0.1:5555). For a network server run `patchcolor serve "
                         "--curve-keys DIR` yourself.")


def plan(endpoint: str = DEFAULT_ENDPOINT, models_dir: str | None = None, log_file: str | None = None, *,
         system: str | None = None, home: Path | None = None, env: dict[str, str] | None = None,
         python: str | None = None) -> ServicePlan:
    """The file and commands for this platform (nothing is written)."""
    check_endpoint(endpoint)
    system = system or platform.system()
    env = dict(os.environ if env is None else env)
    home = Path(home) if home else Path.home()
    cmd = backend_command(endpoint, models_dir, python, system)
    if system == "Darwin":
        path = home / "Library" / "LaunchAgents" / f"{AGENT_LABEL}.plist"
        doc: dict[str, Any] = {"Label": AGENT_LABEL, "ProgramArguments": cmd, "RunAtLoad": True,
                               "KeepAlive": {"SuccessfulExit": False}, "ProcessType": "Background",
                               "WorkingDirectory": str(home)}
        if log_file:
            doc["StandardOutPath"] = doc["StandardErrorPath"] = str(log_file)
        if models_dir:
            doc["EnvironmentVariables"] = {"PATCHCOLOR_MODELS": str(models_dir)}
        uid = os.getuid() if hasattr(os, "getuid") else 501
        return ServicePlan("launchd", path, plistlib.dumps(doc).decode("utf-8"), cmd,
                           start=[["launchctl", "bootstrap", f"gui/{uid}", str(path)]],
                           stop=[["launchctl", "bootout", f"gui/{uid}/{AGENT_LABEL}"]],
                           state=[["launchctl", "print", f"gui/{uid}/{AGENT_LABEL}"]])
    if system == "Windows":
        appdata = env.get("APPDATA") or str(home / "AppData" / "Roaming")
        path = Path(appdata) / "Microsoft" / "Windows" / "Start Menu" / "Programs" / "Startup" / STARTUP_NAME
        line = subprocess.list2cmdline(cmd)
        if log_file:
            line = f'cmd /c "{line} >> {subprocess.list2cmdline([str(log_file)])} 2>&1"'
        vbs = ("' Patch Colorization backend for the GIMP plug-in (patchcolor service install)\r\n"
               f'CreateObject("WScript.Shell").Run "{line.replace(chr(34), chr(34) * 2)}", 0, False\r\n')
        return ServicePlan("windows", path, vbs, cmd, start=[["wscript", str(path)]],
                           stop=[["powershell", "-NoProfile", "-Command",
                                  "Get-CimInstance Win32_Process | Where-Object { $_.CommandLine -like "
                                  "'*patchcolor.cli serve*' } | ForEach-Object { Stop-Process -Id $_.ProcessId }"]])
    config = Path(env.get("XDG_CONFIG_HOME") or home / ".config")
    path = config / "systemd" / "user" / UNIT_NAME
    lines = ["[Unit]", "Description=Patch Colorization backend for the GIMP plug-in (patchcolor serve)",
             "Documentation=file://" + str(Path(__file__).resolve().parents[3] / "README.md"), "",
             "[Service]", "Type=simple", f"ExecStart={_systemd_quote(cmd)}", "Restart=on-failure", "RestartSec=5",
             "WorkingDirectory=%h"]
    if models_dir:
        lines.append(f"Environment=PATCHCOLOR_MODELS={_systemd_quote([str(models_dir)])}")
    if log_file:
        lines += [f"StandardOutput=append:{log_file}", f"StandardError=append:{log_file}"]
    lines += ["", "[Install]", "WantedBy=default.target", ""]
    return ServicePlan("systemd", path, "\n".join(lines), cmd,
                       start=[["systemctl", "--user", "daemon-reload"],
                              ["systemctl", "--user", "enable", "--now", UNIT_NAME]],
                       stop=[["systemctl", "--user", "disable", "--now", UNIT_NAME]],
                       state=[["systemctl", "--user", "is-active", UNIT_NAME]])


def _systemd_quote(cmd: Sequence[str]) -> str:
    """systemd's ExecStart quoting: double quotes, backslash escapes; % doubled (specifier escape)."""
    out = []
    for a in cmd:
        a = a.replace("%", "%%")
        out.append(a if a and all(c.isalnum() or c in "/._-:=+,@" for c in a)
                   else '"' + a.replace("\\", "\\\\").replace('"', '\\"') + '"')
    return " ".join(out)


def manager_running(kind: str, env: dict[str, str] | None = None, run: Runner | None = None) -> bool:
    """Is the service manager usable now? systemd: a user instance answers; launchd/Windows: always."""
    if kind != "systemd":
        return True
    if not shutil.which("systemctl"):
        return False
    run = run or _run
    r = run(["systemctl", "--user", "is-system-running"])
    # "running"/"degraded"/"starting" all mean a user manager answers; "offline" or a bus error do not
    return r is not None and r.stdout.strip() in ("running", "degraded", "starting", "initializing")


def _run(cmd: Sequence[str]) -> "subprocess.CompletedProcess[str] | None":
    try:
        return subprocess.run(list(cmd), capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None


def install(p: ServicePlan, run: Runner | None = None, running: bool | None = None) -> Report:
    """Write the file; register and start it where the manager runs, else say what would have been run."""
    run = run or _run
    p.path.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.path.with_name(p.path.name + ".tmp")
    tmp.write_text(p.content, encoding="utf-8")
    os.replace(tmp, p.path)
    msgs = [f"Wrote {p.path} ({p.kind}); it runs: {_quote(p.command, 'Windows' if p.kind == 'windows' else '')}"]
    if running is None:
        running = manager_running(p.kind, run=run)
    if not running:
        msgs.append(f"The {p.kind} user service manager is not running here, so nothing was started. Where it runs, "
                    "this is what `install` does: " + "; ".join(shlex.join(c) for c in p.start) + ". Until then "
                    f"start the backend by hand: {_quote(p.command, '')}")
        return Report(True, msgs)
    for c in p.start:
        r = run(c)
        if r is None or r.returncode != 0:
            err = (r.stderr or r.stdout).strip()[-300:] if r is not None else "could not run it"
            msgs.append(f"`{shlex.join(c)}` failed: {err}")
            return Report(False, msgs)
    msgs.append("Registered and started: the backend now starts at every login (models load on the first job).")
    return Report(True, msgs)


def uninstall(p: ServicePlan, run: Runner | None = None, running: bool | None = None) -> Report:
    """Stop and unregister the service (where the manager runs), then remove its file."""
    run = run or _run
    if running is None:
        running = manager_running(p.kind, run=run)
    if not p.path.exists():
        return Report(True, [f"No login service to remove ({p.path} does not exist)."])
    if running:
        for c in p.stop:
            run(c)          # "not loaded"/"not running" is fine: the file goes in any case
    p.path.unlink()
    if p.kind == "systemd" and running:
        run(["systemctl", "--user", "daemon-reload"])
    return Report(True, [f"Removed the login service {p.path}."])


def status(p: ServicePlan, endpoint: str, run: Runner | None = None) -> Report:
    """Is it installed, what does the manager say, does the endpoint answer?"""
    run = run or _run
    msgs = [f"{p.path}: {'installed' if p.path.exists() else 'not installed'} ({p.kind})"]
    if p.state and manager_running(p.kind, run=run):
        r = run(p.state[0])
        if r is not None:
            msgs.append(f"{shlex.join(p.state[0])}: {(r.stdout or r.stderr).strip().splitlines()[0:1] or ['?']}")
    answers = _ping(endpoint)
    msgs.append(f"{endpoint}: {'a backend answers' if answers else 'nothing answers'}")
    return Report(answers, msgs)


def _ping(endpoint: str, timeout_s: float = 2.0) -> bool:
    from patchcolor_client import BackendUnavailable, Client

    try:
        with Client(endpoint, timeout_s=timeout_s, retries=0) as c:
            c.ping(timeout_s)
            return True
    except BackendUnavailable:
        return False


# ---------------------------------------------------------------------------------------------------- CLI
def add_service_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``service`` (``func`` = :func:`cmd_service`)."""
    p = subparsers.add_parser(
        "service", help="run the backend as a login service (for GIMP in a sandbox: Flatpak, Snap, macOS)",
        description="Register `patchcolor serve` as a per-user service started at login: a systemd user unit "
                    "(Linux), a LaunchAgent (macOS), a Startup-folder entry (Windows). It listens on a loopback "
                    "endpoint only and loads the models on the first job.")
    p.add_argument("action", choices=("install", "uninstall", "status"))
    p.add_argument("--endpoint", default=DEFAULT_ENDPOINT, help=f"loopback endpoint (default {DEFAULT_ENDPOINT})")
    p.add_argument("--models", metavar="DIR", help="weights folder (default: $PATCHCOLOR_MODELS or models/)")
    p.add_argument("--log", metavar="FILE", help="append the backend's log to this file")
    p.add_argument("--dry-run", action="store_true", help="print the file and commands, change nothing")
    p.set_defaults(func=cmd_service)
    return p


def cmd_service(args: argparse.Namespace) -> int:
    models = args.models or os.environ.get("PATCHCOLOR_MODELS")
    try:
        p = plan(args.endpoint, str(Path(models).expanduser().resolve()) if models else None,
                 str(Path(args.log).expanduser().resolve()) if args.log else None)
    except ValueError as e:
        print(f"patchcolor service: {e}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(f"# {p.path}\n{p.content}\n# then: " + "; ".join(shlex.join(c) for c in p.start))
        return 0
    try:
        rep = {"install": install, "uninstall": uninstall}[args.action](p) if args.action != "status" \
            else status(p, args.endpoint)
    except OSError as e:
        print(f"patchcolor service: {e.strerror or e}: {e.filename or p.path}", file=sys.stderr)
        return 1
    for line in rep.messages:
        print(line)
    return 0 if rep.ok else 1
