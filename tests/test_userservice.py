"""``patchcolor service`` / ``install.py --autostart``: the backend as a login service (systemd user unit,
LaunchAgent, Windows Startup entry). This machine runs no systemd user instance: ``install`` writes the unit, says
what it would run, and the tests check the file; with a fake manager they check the commands."""
from __future__ import annotations

import os
import plistlib
import subprocess
import sys

import pytest

from patchcolor.service import userservice as U



class FakeManager:
    """Records commands; answers like a running systemd user instance."""

    def __init__(self, fail: str | None = None):
        self.calls: list[list[str]] = []
        self.fail = fail

    def __call__(self, cmd):
        self.calls.append(list(cmd))
        code = 1 if self.fail and self.fail in cmd else 0
        out = "running\n" if cmd[-1] == "is-system-running" else "active\n"
        return subprocess.CompletedProcess(cmd, code, out, "boom" if code else "")


def test_systemd_unit_written_and_started_where_systemd_runs(tmp_path):
    p = U.plan("tcp://127.0.0.1:5599", "/m dir/models", str(tmp_path / "log.txt"), system="Linux", home=tmp_path,
               env={}, python="/venv/bin/python")
    assert p.path == tmp_path / ".config/systemd/user/patchcolor.service"
    fake = FakeManager()
    rep = U.install(p, run=fake)
    assert rep.ok, rep.messages
    text = p.path.read_text()
    assert ("ExecStart=/venv/bin/python -m patchcolor.cli serve --endpoint tcp://127.0.0.1:5599 --models "
            '"/m dir/models"') in text
    assert "Restart=on-failure" in text and "WantedBy=default.target" in text
    assert f"StandardOutput=append:{tmp_path / 'log.txt'}" in text
    assert ["systemctl", "--user", "enable", "--now", "patchcolor.service"] in fake.calls
    assert any("started" in m for m in rep.messages)
    rep = U.uninstall(p, run=fake)
    assert not p.path.exists() and ["systemctl", "--user", "disable", "--now", "patchcolor.service"] in fake.calls
    assert U.install(p, run=FakeManager(fail="enable")).ok is False


def test_without_a_running_manager_it_writes_the_file_and_says_what_it_would_do(tmp_path):
    p = U.plan(system="Linux", home=tmp_path, env={"XDG_CONFIG_HOME": str(tmp_path / "cfg")})
    rep = U.install(p, running=False)
    assert rep.ok and p.path == tmp_path / "cfg/systemd/user/patchcolor.service" and p.path.exists()
    said = " ".join(rep.messages)
    assert "not running here" in said and "systemctl --user enable --now patchcolor.service" in said
    assert "serve --endpoint tcp://127.0.0.1:5555" in said          # the manual command
    assert U.uninstall(p, running=False).ok and not p.path.exists()
    assert "No login service" in U.uninstall(p, running=False).messages[0]


def test_launch_agent_and_windows_startup_entry(tmp_path):
    mac = U.plan("tcp://127.0.0.1:5555", None, "/tmp/pc.log", system="Darwin", home=tmp_path, python="/v/python")
    doc = plistlib.loads(mac.content.encode())
    assert mac.path == tmp_path / "Library/LaunchAgents/org.patchcolor.serve.plist"
    assert doc["ProgramArguments"] == ["/v/python", "-m", "patchcolor.cli", "serve", "--endpoint",
                                       "tcp://127.0.0.1:5555"]
    assert doc["RunAtLoad"] is True and doc["StandardErrorPath"] == "/tmp/pc.log"
    assert mac.start[0][:2] == ["launchctl", "bootstrap"]
    win = U.plan(system="Windows", home=tmp_path, env={"APPDATA": str(tmp_path / "AppData")},
                 python=r"C:\pc\.venv\Scripts\python.exe")
    assert win.path == tmp_path / "AppData/Microsoft/Windows/Start Menu/Programs/Startup/patchcolor-serve.vbs"
    assert 'WScript.Shell").Run' in win.content and ", 0, False" in win.content     # hidden window
    assert "-m patchcolor.cli serve --endpoint tcp://127.0.0.1:5555" in win.content


def test_only_loopback_endpoints(tmp_path):
    for bad in ("tcp://0.0.0.0:5555", "tcp://*:5555", "tcp://127.example.com:5555", "tcp://192.168.1.2:1"):
        with pytest.raises(ValueError, match="not a loopback endpoint"):
            U.plan(bad, system="Linux", home=tmp_path)


def test_cli_install_status_uninstall(tmp_path):
    env = {**os.environ, "HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / "cfg"),
           "PATH": "/nonexistent"}          # no systemctl: the "not running" path, as on this machine
    py = [sys.executable, "-m", "patchcolor.cli", "service"]
    r = subprocess.run(py + ["install", "--endpoint", "tcp://127.0.0.1:5598"], capture_output=True, text=True,
                       env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    unit = tmp_path / "cfg/systemd/user/patchcolor.service"
    assert unit.exists() and "--endpoint tcp://127.0.0.1:5598" in unit.read_text()
    assert "Wrote" in r.stdout and "not running here" in r.stdout
    r = subprocess.run(py + ["status", "--endpoint", "tcp://127.0.0.1:5598"], capture_output=True, text=True,
                       env=env, timeout=120)
    assert "installed" in r.stdout and "nothing answers" in r.stdout and r.returncode == 1
    r = subprocess.run(py + ["install", "--endpoint", "tcp://0.0.0.0:1"], capture_output=True, text=True, env=env,
                       timeout=120)
    assert r.returncode == 2 and "not a loopback endpoint" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run(py + ["uninstall"], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0 and not unit.exists()
