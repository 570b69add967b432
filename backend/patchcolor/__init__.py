"""Patch Colorization: instance-aware colorization of black-and-white photos.

The Python front door (names load on first use, so ``import patchcolor.registry`` stays light)::

    from patchcolor import colorize
    result = colorize("old.jpg")                 # path, PIL image or ndarray; options as keywords
    result.save("old_color.png", masks=True)

``colorize``, ``as_source`` (:mod:`patchcolor.api`), ``Pipeline`` (:mod:`patchcolor.pipeline`), ``Options``,
``make_options``, ``USER_OPTIONS`` (:mod:`patchcolor.options`), ``Result`` (:mod:`patchcolor.result`),
``SourceImage`` (:mod:`patchcolor.prepare`), ``load_image``, ``save_image`` (:mod:`patchcolor.io`) and the error
classes of :mod:`patchcolor.errors`.
"""
from __future__ import annotations

import importlib
from typing import Any

from . import device as _device  # noqa: F401 - on macOS, sets PYTORCH_ENABLE_MPS_FALLBACK before torch loads

__version__ = "0.1.0"

_EXPORTS = {
    "colorize": "api", "as_source": "api", "Pipeline": "pipeline", "Options": "options",
    "make_options": "options", "USER_OPTIONS": "options", "Result": "result", "SourceImage": "prepare",
    "load_image": "io", "save_image": "io", "PatchColorError": "errors", "BadOptions": "errors",
    "WeightsMissing": "errors", "WeightsCorrupt": "errors", "ImageUnreadable": "errors",
    "ImageTooLarge": "errors", "ImageTooSmall": "errors", "Cancelled": "errors",
}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'patchcolor' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
