"""The front door for Python users: one call from a photo to a colorized :class:`~patchcolor.result.Result`.

    from patchcolor import colorize
    result = colorize("grandparents.jpg", saturation=1.1)
    result.save("grandparents_color.png", masks=True)
    edited = result.masks(); edited[0][:] = 0           # drop the first object
    result.recompose(edited).to_pil().show()

The models are loaded once per (weights folder, device) and kept for the next call, as the CLI and the service do.
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Union

import numpy as np
from PIL import Image

from .io import from_pil, load_image
from .options import USER_OPTIONS, Options, make_options
from .pipeline import Pipeline, ProgressFn
from .prepare import SourceImage, check_size
from .result import Result

#: What :func:`colorize` accepts as a photo (or a hint map).
ImageLike = Union[str, Path, Image.Image, np.ndarray, SourceImage]

_pipelines: dict[tuple[str, str], Pipeline] = {}
_pipelines_lock = threading.Lock()


def pipeline(models_dir: str | Path | None = None, device: str = "auto") -> Pipeline:
    """The shared :class:`Pipeline` for this weights folder (None: ``$PATCHCOLOR_MODELS`` or the default) and
    device (``auto`` | ``cpu`` | ``cuda`` | ``mps``), created on first use."""
    key = (str(models_dir or ""), device)
    with _pipelines_lock:
        if key not in _pipelines:
            _pipelines[key] = Pipeline(Path(models_dir) if models_dir else None, device=device)
        return _pipelines[key]


def as_source(image: ImageLike, max_pixels: int = 250_000_000) -> SourceImage:
    """A photo as the pipeline's :class:`SourceImage`, untouched (no copy of arrays).

    image: a file path (any format PIL reads); a PIL image (any mode); an ndarray (H, W) gray, (H, W, 3) RGB or
    (H, W, 4) RGBA of uint8 or uint16; or a SourceImage. Raises ImageUnreadable / ImageTooSmall / ImageTooLarge
    (one sentence) and TypeError for anything else.
    """
    if isinstance(image, SourceImage):
        src = image
    elif isinstance(image, (str, Path)):
        return load_image(image, max_pixels)
    elif isinstance(image, Image.Image):
        src = from_pil(image)
    elif isinstance(image, np.ndarray):
        if image.dtype not in (np.uint8, np.uint16) or not (
                image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (3, 4))):
            raise TypeError(f"an image array must be (H, W), (H, W, 3) or (H, W, 4) uint8/uint16, not "
                            f"{image.shape} {image.dtype}")
        src = SourceImage(image) if image.ndim == 2 or image.shape[2] == 3 else \
            SourceImage(image[..., :3], image[..., 3])
    else:
        raise TypeError(f"cannot colorize a {type(image).__name__}: give a path, a PIL image or an ndarray")
    check_size(src.width, src.height, max_pixels)
    return src


def colorize(image: ImageLike, *, preset: str = "default", hints: ImageLike | None = None,
             options: Options | None = None, models_dir: str | Path | None = None, device: str = "auto",
             progress: ProgressFn | None = None, **user_options: Any) -> Result:
    """Colorize one photo and return its :class:`Result` (image, objects, masks; ``save``, ``to_pil``,
    ``recompose``).

    image:   see :func:`as_source`; colour photos are colorized from their lightness.
    preset:  ``default`` (full resolution, feathered fusion) or ``seed`` (the method as published).
    hints:   a colour-hint image at the photo's size (painted dabs, transparent/gray = none); switches to the
             siggraph17 colorizer.
    user_options: the user-facing options of :data:`patchcolor.options.USER_OPTIONS` (``colorizer``,
             ``detector``, ``saturation``, ``feather``, ``score_thresh``, ``max_instances``, ``precision``,
             ``hint_spread``, ``max_side``), applied over the preset. Internal knobs go in ``options`` (a complete
             :class:`Options`, which then replaces ``preset`` and ``user_options``).
    Raises ValueError (one sentence) for unknown or out-of-range options, WeightsMissing / WeightsCorrupt when a
    weight file is not usable.
    """
    if options is not None and user_options:
        raise ValueError("give either options=Options(...) or keyword options, not both")
    internal = sorted(set(user_options) - set(USER_OPTIONS))
    if internal:
        raise ValueError(f"{', '.join(internal)}: not a user option ({', '.join(USER_OPTIONS)}); pass "
                         "options=Options(...) for internal knobs")
    opts = options if options is not None else make_options(preset, **user_options)
    pipe = pipeline(models_dir, device)
    src = as_source(image, pipe.max_pixels)
    hint_src = None if hints is None else as_source(hints, pipe.max_pixels)
    return pipe.run(src, opts, progress=progress, hints=hint_src)
