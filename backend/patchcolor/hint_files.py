"""Colour-hint images on the command line: ``patchcolor colorize IN... -o OUT --hints HINTS.png | FOLDER``.

* ``--hints FILE``: the hint image of the one input being colorized (refused when there are several inputs);
* ``--hints FOLDER``: for each input, the hint image with the same file name in FOLDER, else the one with the
  same name before the extension (``photo.jpg`` -> ``photo.png``; PNG first, since hints need alpha or colour
  dabs kept exactly); inputs without one are colorized without hints.

A hint image is an RGB(A) image at the photo's size (see hints.py for what counts as painted). With hints the
pipeline runs SIGGRAPH17 whatever ``--colorizer`` says (it says so once). ``--hint-spread`` sets how far each
hint spreads on the network's 256² input (the reference UI's default 2 = a 5 × 5 square).
"""
from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from .errors import BadOptions, ImageUnreadable
from .hints import DEFAULT_SPREAD, MAX_SPREAD
from .options import Options
from .io import load_image
from .prepare import SourceImage

log = logging.getLogger("patchcolor")

# tried in this order after the exact file name
HINT_SUFFIXES = (".png", ".tif", ".tiff", ".webp", ".bmp", ".jpg", ".jpeg")


def add_hint_arguments(p: argparse.ArgumentParser) -> None:
    """Add --hints and --hint-spread to the ``colorize`` sub-command."""
    p.add_argument("--hints", type=Path, metavar="HINTS",
                   help="colour hints: an image at the photo's size with a few colours painted on it (transparent "
                        "or gray = no hint), or a folder of hint images named like the inputs; uses siggraph17")
    p.add_argument("--hint-spread", type=int, choices=range(0, MAX_SPREAD + 1), metavar=f"0..{MAX_SPREAD}",
                   help=f"how far each hint spreads, in network pixels (default {DEFAULT_SPREAD}: 5x5 on 256x256)")


@dataclass(frozen=True)
class HintFiles:
    """Where each input's hint image is: ``file`` for a single input, or same-named files in ``folder``."""

    file: Path | None = None
    folder: Path | None = None

    @classmethod
    def from_arg(cls, hints: Path | None, inputs: list[Path], n_images: int) -> "HintFiles":
        """Check --hints against the inputs (``n_images`` image files in all). Raises BadOptions."""
        if hints is None:
            return cls()
        if hints.is_dir():
            hd = hints.resolve()
            if any(Path(i).is_dir() and Path(i).resolve() == hd for i in inputs):
                raise BadOptions(f"the hint folder {hints} is an input folder: put the hint images in a folder "
                                 "of their own")
            return cls(folder=hints)
        if not hints.is_file():
            raise BadOptions(f"--hints {hints}: no such file or folder")
        if n_images > 1:
            raise BadOptions(f"--hints {hints.name} is one hint image but there are {n_images} inputs: give a "
                             "folder of hint images named like the inputs")
        return cls(file=hints)

    def path_for(self, src: Path) -> Path | None:
        """The hint image of input ``src``, or None."""
        if self.file is not None:
            return self.file
        if self.folder is None:
            return None
        same = self.folder / src.name
        if same.is_file():
            return same
        for suffix in HINT_SUFFIXES:
            p = self.folder / (src.stem + suffix)
            if p.is_file():
                return p
        return None

    def load(self, src: Path, max_pixels: int) -> SourceImage | None:
        """The decoded hint image of ``src`` (None when it has none). Raises ImageUnreadable naming the file."""
        path = self.path_for(src)
        if path is None:
            if self.folder is not None:
                log.info("no hint image for %s in %s: colorizing it without hints", src.name, self.folder)
            return None
        try:
            return load_image(path, max_pixels)
        except ImageUnreadable as e:
            raise ImageUnreadable(f"hint image: {e.message}") from None

    def __bool__(self) -> bool:
        return self.file is not None or self.folder is not None


def hint_options(opts: Options, args: argparse.Namespace) -> Options:
    """``opts`` with --hint-spread applied."""
    spread = getattr(args, "hint_spread", None)
    return opts if spread is None else replace(opts, hint_spread=spread)


def hint_runner(args: argparse.Namespace, n_images: int) -> Callable[[Path], dict]:
    """For cli.py: input path -> keyword arguments for the run callable ({} or {"hints": SourceImage})."""
    files = HintFiles.from_arg(getattr(args, "hints", None), list(args.inputs), n_images)
    max_pixels = int(getattr(args, "max_pixels", 250e6))

    def kwargs(src: Path) -> dict:
        hm = files.load(Path(src), max_pixels) if files else None
        return {} if hm is None else {"hints": hm}
    return kwargs
