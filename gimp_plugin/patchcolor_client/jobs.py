"""Running one plug-in job against the backend: start it if needed, run it under the cancel watchdog, and turn
every failure into one sentence (:class:`PluginError`). Standard library only, no GIMP.

    cfg = PluginConfig.load(path)
    ensure_backend(endpoint, cfg.auto_start(True), cfg, set_text=ui_text, tick=ui_pulse)
    ids = JobIds.new()
    res = run_job(endpoint, cfg, lambda client: client.colorize(..., job_id=ids.job_id, token=ids.token), ids)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, TypeVar

from . import launcher
from . import messages as msg
from . import protocol
from .client import BackendError, BackendUnavailable, Client, ConnectError
from .config import PluginConfig

T = TypeVar("T")


class PluginError(Exception):
    """A failure shown to the user as one sentence (EXECUTION_ERROR); the image has not been changed."""


class CallingError(PluginError):
    """The plug-in was given the wrong thing (CALLING_ERROR): a group, several layers, no layer..."""


@dataclass(frozen=True)
class JobIds:
    """A job's id and secret token, made before the job is sent so the watchdog can cancel it."""

    job_id: str
    token: str

    @classmethod
    def new(cls) -> "JobIds":
        return cls(protocol.new_id(), protocol.new_token())


def backend_message(e: Exception, endpoint: str) -> str:
    """One sentence for a client exception (the backend's full wording goes to the log)."""
    if isinstance(e, ConnectError):
        return msg.NO_CONNECTION.format(endpoint=endpoint, reason=_lower_first(msg.first_sentence(str(e))))
    if isinstance(e, BackendUnavailable):
        msg.log_details(str(e))
        return msg.UNAVAILABLE.format(endpoint=endpoint)
    code = getattr(e, "code", None)
    text = getattr(e, "message", None) or str(e) or e.__class__.__name__
    if text != msg.first_sentence(text) + ".":
        msg.log_details(f"{code or 'error'}: {text}")
    reason = msg.first_sentence(text)
    if code in ("weights_missing", "weights_corrupt"):
        return msg.BACKEND_SAID.format(reason=reason)
    if code == "image_too_large":
        return msg.TOO_LARGE.format(reason=_lower_first(reason))
    return msg.BACKEND_ERROR.format(code=code or "error", reason=_lower_first(reason))


def _lower_first(text: str) -> str:
    """'The x' -> 'the x' (a sentence used as a clause); names and commands keep their case."""
    return text[:1].lower() + text[1:] if text[:1].isupper() and text[1:2].islower() else text


#: a stage's words when the server sends no text of its own
STAGE_TEXT = {"accepted": "Waiting for the colorize backend", "queued": "Waiting in the backend's queue",
              "prepare": "Preparing the image", "segment": "Detecting objects", "detect": "Detecting objects",
              "colorize": "Colorizing", "fuse": "Fusing instance colours", "finish": "Finishing"}


def progress_text(stage: str, text: str | None = None, eta: float | None = None) -> str:
    """The progress bar's text for an event: what runs (the server's text, else the stage's words) and, once the
    server can estimate it, the time left ("Colorizing 2/4\u2026 about 12 s left")."""
    what = text or STAGE_TEXT.get(str(stage), str(stage).replace("_", " ").capitalize())
    line = what.rstrip(".\u2026") + "\u2026"
    if eta is not None and eta >= 0.5:
        left = f"{eta:.0f} s" if eta < 90 else f"{eta / 60:.0f} min"
        line += f" about {left} left"
    return line


def check_result(res: Any, w: int, h: int, fmt: str) -> None:
    """PluginError unless the backend's result ``res`` is ``w`` x ``h`` pixels in wire format ``fmt``."""
    if res.fmt != fmt or res.width != w or res.height != h:
        raise PluginError(msg.BAD_RESULT.format(got=f"{res.width}x{res.height} {res.fmt}", want=f"{w}x{h} {fmt}"))


def ensure_backend(endpoint: str, auto_start: bool, cfg: PluginConfig, set_text: Callable[[str], Any] | None = None,
                   tick: Callable[[], Any] | None = None) -> bool:
    """launcher.ensure_backend with its failures as PluginError (one sentence; the log tail goes to the log)."""
    try:
        return launcher.ensure_backend(endpoint, auto_start, cfg.raw, set_text=set_text, tick=tick)
    except launcher.LaunchError as e:
        raise PluginError(str(e)) from None


def client_for(endpoint: str, cfg: PluginConfig) -> Client:
    """A Client for ``endpoint`` with config.json's timeout and server key (PluginError when it cannot be made)."""
    try:
        return Client(endpoint, timeout_s=cfg.timeout_s, server_public_key=cfg.server_key)
    except BackendUnavailable as e:
        raise PluginError(backend_message(e, endpoint)) from None


def run_job(endpoint: str, cfg: PluginConfig, call: Callable[[Client], T], ids: JobIds | None = None,
            watchdog: Callable[[str, str | None], Any] = launcher.Watchdog) -> T:
    """``call(client)`` (a colorize, recompose or preview) with a watchdog that cancels job ``ids`` if GIMP kills
    the plug-in meanwhile. BackendError / BackendUnavailable become PluginError; JobCancelled passes through."""
    dog = watchdog(endpoint, cfg.server_key) if ids is not None else None
    client = None
    try:
        if dog is not None:
            dog.job(ids.job_id, ids.token)
        client = client_for(endpoint, cfg)
        return call(client)
    except (BackendError, BackendUnavailable) as e:
        raise PluginError(backend_message(e, endpoint)) from None
    finally:
        if client is not None:
            client.close()
        if dog is not None:
            dog.done()


def cancel_job(endpoint: str, cfg: PluginConfig, ids: JobIds, timeout_s: float = 2.0) -> bool:
    """Cancel job ``ids`` now (e.g. the preview of a dialog that is closing). True when the backend took the
    cancel; False when it no longer runs that job or does not answer within ``timeout_s``. Never raises."""
    try:
        with Client(endpoint, timeout_s=timeout_s, server_public_key=cfg.server_key, retries=0) as c:
            c.cancel(ids.job_id, ids.token)
        return True
    except Exception:       # noqa: BLE001 - nothing to cancel, or nobody answers: nothing more to do
        return False
