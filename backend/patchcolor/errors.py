"""Errors the user sees as one clear sentence (never a traceback). ``code`` is stable (wire protocol)."""
from __future__ import annotations


class PatchColorError(Exception):
    """``message``: the one sentence the user sees; ``details``: what only the log needs (files, folders, URLs)."""

    code = "error"

    def __init__(self, message: str, details: str = ""):
        super().__init__(message)
        self.message = message
        self.details = details


class WeightsMissing(PatchColorError):
    code = "weights_missing"


class WeightsCorrupt(PatchColorError):
    code = "weights_corrupt"


class ImageUnreadable(PatchColorError):
    code = "image_unreadable"


class ImageTooSmall(ImageUnreadable):
    code = "image_too_small"


class ImageTooLarge(PatchColorError):
    code = "image_too_large"


class DeviceUnavailable(PatchColorError):
    code = "device_unavailable"


class BadOptions(PatchColorError):
    code = "bad_options"


class Cancelled(PatchColorError):
    code = "cancelled"
