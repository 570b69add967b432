"""Errors the user sees as one clear sentence (never a traceback). ``code`` is stable (wire protocol)."""
from __future__ import annotations


class PatchColorError(Exception):
    code = "error"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


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
