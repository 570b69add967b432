"""Step 1 — prepare: keep the original, make the working copy.

The original (read from a file by ``patchcolor.io.load_image``: any of L, LA, RGB, RGBA, P, I;16, 1, CMYK; 8 or
16 bit; EXIF orientation applied; or raw pixels from the wire) is a :class:`SourceImage` holding its colour pixels
and alpha at full resolution and native bit depth. The working copy is the paper's 3-channel image, long side
<= ``max_side`` (PIL BICUBIC, as in the paper).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from .errors import ImageTooLarge, ImageTooSmall, ImageUnreadable

# Raw pixel formats accepted from memory (wire protocol and plug-in): name -> (channels, dtype).
PIXEL_FORMATS: dict[str, tuple[int, np.dtype]] = {
    "gray8": (1, np.dtype(np.uint8)), "gray16": (1, np.dtype("<u2")),
    "graya8": (2, np.dtype(np.uint8)), "graya16": (2, np.dtype("<u2")),
    "rgb8": (3, np.dtype(np.uint8)), "rgb16": (3, np.dtype("<u2")),
    "rgba8": (4, np.dtype(np.uint8)), "rgba16": (4, np.dtype("<u2")),
}


@dataclass
class SourceImage:
    """The user's image, untouched.

    color: (H, W) gray or (H, W, 3) RGB, uint8 or uint16 (sRGB-encoded).
    alpha: (H, W) of the same dtype, or None.
    frames: how many frames (pages) the file holds; only the first is read.
    """

    color: np.ndarray
    alpha: np.ndarray | None = None
    frames: int = 1

    @property
    def height(self) -> int:
        return int(self.color.shape[0])

    @property
    def width(self) -> int:
        return int(self.color.shape[1])

    @property
    def bit_depth(self) -> int:
        return 16 if self.color.dtype == np.uint16 else 8

    @property
    def is_gray(self) -> bool:
        return self.color.ndim == 2

    @property
    def max_value(self) -> int:
        return 65535 if self.bit_depth == 16 else 255

    @classmethod
    def from_buffer(cls, data, width: int, height: int, fmt: str) -> "SourceImage":
        """Wrap raw interleaved pixels (bytes/memoryview, no copy) in format ``fmt`` (see PIXEL_FORMATS)."""
        if fmt not in PIXEL_FORMATS:
            raise ImageUnreadable(f"unknown pixel format {fmt!r} (one of {', '.join(PIXEL_FORMATS)})")
        ch, dt = PIXEL_FORMATS[fmt]
        need = width * height * ch * dt.itemsize
        if width <= 0 or height <= 0 or len(memoryview(data).cast("B")) != need:
            raise ImageUnreadable(f"{fmt} {width}x{height} needs {need} bytes")
        # '<u2' -> native uint16: a no-copy view on little-endian machines, a byte swap elsewhere.
        arr = np.frombuffer(data, dtype=dt).reshape(height, width, ch).astype(dt.newbyteorder("="), copy=False)
        color = arr[..., 0] if ch in (1, 2) else arr[..., :3]
        alpha = arr[..., ch - 1] if ch in (2, 4) else None
        return cls(color, alpha)


#: Smaller images are refused: nothing to colorize, and the networks need some room.
MIN_SIDE = 8


def check_size(width: int, height: int, max_pixels: int) -> None:
    """Refuse images under MIN_SIDE pixels a side (ImageTooSmall) or over ``max_pixels`` (ImageTooLarge), in one
    sentence, before any decoding or network work (the CLI, the service and Ray all pass here)."""
    if min(width, height) < MIN_SIDE:
        raise ImageTooSmall(f"the image is {width}x{height} pixels: too small to colorize "
                            f"(at least {MIN_SIDE}x{MIN_SIDE})")
    if width * height > max_pixels:
        raise ImageTooLarge(
            f"image is {width}x{height} = {width * height / 1e6:.1f} MP, over the limit of {max_pixels / 1e6:.0f} MP "
            "(raise it with --max-pixels)")


def working_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """The paper's resize rule: only if max(W, H) > max_side; W > H -> (max_side, int(max_side*H/W)),
    else (int(max_side*W/H), max_side) (squares take the second branch; int() truncates)."""
    if max(width, height) <= max_side:
        return width, height
    if width > height:
        return max_side, max(1, int(max_side * height / width))
    return max(1, int(max_side * width / height)), max_side


def to_8bit(color: np.ndarray) -> np.ndarray:
    """uint16 -> uint8 with rounding (uint8 passes through)."""
    if color.dtype == np.uint16:
        return ((color.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    return color


def working_copy(src: SourceImage, max_side: int) -> np.ndarray:
    """The paper's prepared image: (h, w, 3) uint8 RGB, long side <= max_side, PIL BICUBIC.

    Resizing happens on the 1-channel image for gray input (same result as the paper's 3 equal channels,
    a third of the work)."""
    w, h = working_size(src.width, src.height, max_side)
    color = to_8bit(src.color)
    if (w, h) != (src.width, src.height):
        color = np.asarray(Image.fromarray(color).resize((w, h), resample=Image.BICUBIC))
    return np.repeat(color[..., None], 3, axis=2) if color.ndim == 2 else color
