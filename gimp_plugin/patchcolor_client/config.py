"""The plug-in's ``config.json`` (written by gimp_install.py next to the plug-in) and the endpoint rules built on it.
Standard library only.

Keys: ``backend_command`` (list), ``endpoint``, ``log_file``, ``auto_start`` (false: never start a backend),
``server_public_key``, ``timeout_s`` (silence allowed during a job, default 30), ``ping_timeout_s`` (2),
``remote_ping_timeout_s`` (5), ``start_timeout_s`` (180), ``autostart_command``. The launcher reads the same dict.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Callable

from .protocol import DEFAULT_ENDPOINT

CONFIG_NAME = "config.json"

#: ping(endpoint, timeout_s) -> bool
PingFn = Callable[[str, float], bool]


@dataclass(frozen=True)
class PluginConfig:
    """config.json as read at the start of each run (so an edit there counts at once)."""

    raw: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "PluginConfig":
        """The file at ``path``; an empty config when it is missing or not a JSON object."""
        try:
            with open(path, encoding="utf-8") as f:
                cfg = json.load(f)
        except (OSError, ValueError):
            return cls({})
        return cls(cfg if isinstance(cfg, dict) else {})

    @property
    def server_key(self) -> str | None:
        """The CURVE public key of a remote backend, or None."""
        return self.raw.get("server_public_key") or None

    @property
    def timeout_s(self) -> float:
        return float(self.raw.get("timeout_s", 30.0))

    @property
    def ping_timeout_s(self) -> float:
        return float(self.raw.get("ping_timeout_s", 2.0))

    def endpoint(self, typed: str | None = "", stored: str | None = None) -> str:
        """The endpoint typed in the dialog, else the one a result was made with (recompose), else config.json's,
        else the default."""
        return (typed or "").strip() or stored or self.raw.get("endpoint") or DEFAULT_ENDPOINT

    def auto_start(self, wanted: bool) -> bool:
        """Whether a missing local backend may be started: the dialog's switch, unless config.json says never."""
        return bool(wanted) and self.raw.get("auto_start", True) is not False

    def with_device(self, device: str | None) -> "PluginConfig":
        """This config with ``--device DEVICE`` on the recorded backend command (what a backend the plug-in starts
        runs on), unless the command names a device already or ``device`` is None."""
        cmd = [str(c) for c in (self.raw.get("backend_command") or [])]
        if not device or not cmd or any(c == "--device" or c.startswith("--device=") for c in cmd):
            return self
        return PluginConfig({**self.raw, "backend_command": cmd + ["--device", str(device)]})

    def recompose_endpoint(self, typed: str | None, stored: str | None, ping: PingFn) -> str:
        """Recompose: the endpoint typed, else the one that made the result while it answers (it may still hold the
        job), else the current one from config.json (the backend may have moved, e.g. to a login service's
        port). ``ping`` raises nothing for a reachable or unreachable endpoint (False), see launcher.default_ping."""
        endpoint = self.endpoint(typed, stored)
        current = self.endpoint("")
        if (typed or "").strip() or endpoint == current:
            return endpoint
        try:
            if ping(endpoint, self.ping_timeout_s):
                return endpoint
        except Exception:       # noqa: BLE001 - a malformed stored endpoint: use the current one
            pass
        return current
