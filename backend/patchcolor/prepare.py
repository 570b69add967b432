"""Step 1 — prepare: read any image PIL can open, keep the original, make the working copy.

The original (any of L, LA, RGB, RGBA, P, I;16, 1, CMYK; 8 or 16 bit; EXIF orientation applied) becomes a
:class:`SourceImage` holding its colour pixels and alpha at full resolution and native bit depth. The working
copy is the seed's 3-channel image, long side <= ``max_side`` (PIL BICUBIC, as the seed).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

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


def _is_16bit_rgb(img: Image.Image) -> bool:
    """PIL opens 16-bit RGB(A) PNG/TIFF as 8-bit RGB; its tile rawmode still says ';16'."""
    return img.mode in ("RGB", "RGBA") and any(";16" in str(getattr(t, "args", t[3] if len(t) > 3 else ""))
                                               for t in (img.tile or []))


def load_image(path: str | Path, max_pixels: int = 250_000_000) -> SourceImage:
    """Read an image file into a SourceImage at native bit depth, EXIF orientation applied.

    Raises ImageUnreadable (not an image / damaged) or ImageTooLarge (over ``max_pixels``) before decoding.
    """
    path = Path(path)
    try:
        img = Image.open(path)
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise ImageUnreadable(f"cannot read {path}: {e}") from None
    with img:
        check_size(img.width, img.height, max_pixels)
        try:
            if _is_16bit_rgb(img):
                src = _load_16bit_rgb(path, img)
            else:
                img.load()
                src = from_pil(ImageOps.exif_transpose(img))
        except (OSError, ValueError, SyntaxError) as e:
            raise ImageUnreadable(f"cannot decode {path}: {e}") from None
        src.frames = int(getattr(img, "n_frames", 1) or 1)
    return src


def _load_16bit_rgb(path: Path, img: Image.Image) -> SourceImage:
    import cv2  # PIL has no 16-bit RGB mode; OpenCV keeps the full depth

    exif = img.getexif()
    arr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED | cv2.IMREAD_IGNORE_ORIENTATION)
    if arr is None or arr.dtype != np.uint16:
        img.load()
        return from_pil(ImageOps.exif_transpose(img))
    arr = arr[..., ::-1] if arr.shape[2] == 3 else arr[..., [2, 1, 0, 3]]  # BGR(A) -> RGB(A)
    arr = _apply_orientation(arr, exif.get(0x0112, 1))
    return SourceImage(np.ascontiguousarray(arr[..., :3]), np.ascontiguousarray(arr[..., 3]) if arr.shape[2] == 4 else None)


def _apply_orientation(arr: np.ndarray, orientation: int) -> np.ndarray:
    """EXIF orientation 1..8 applied to an (H, W, ...) array, the same transforms PIL's exif_transpose uses."""
    ops = {2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
           5: lambda a: a.swapaxes(0, 1), 6: lambda a: a.swapaxes(0, 1)[:, ::-1],
           7: lambda a: a.swapaxes(0, 1)[::-1, ::-1], 8: lambda a: a.swapaxes(0, 1)[::-1]}
    return ops[orientation](arr) if orientation in ops else arr


def from_pil(img: Image.Image) -> SourceImage:
    """Any PIL mode -> SourceImage (gray stays 1-channel; 16-bit gray stays uint16)."""
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img)
        if arr.dtype != np.uint16:   # mode "I" (32-bit): assume 16-bit data, clip
            arr = np.clip(arr, 0, 65535).astype(np.uint16)
        return SourceImage(np.ascontiguousarray(arr.astype(np.uint16, copy=False)))
    if mode == "F":
        arr = np.asarray(img, np.float32)
        scale = 65535.0 if arr.max(initial=0) <= 1.0 else 1.0
        return SourceImage(np.clip(arr * scale, 0, 65535).round().astype(np.uint16))
    if mode in ("1", "L"):
        return SourceImage(np.asarray(img.convert("L")))
    if mode == "LA" or mode == "La":
        a = np.asarray(img.convert("LA"))
        return SourceImage(np.ascontiguousarray(a[..., 0]), np.ascontiguousarray(a[..., 1]))
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        mode = img.mode
    if mode in ("RGBA", "RGBa", "PA"):
        a = np.asarray(img.convert("RGBA"))
        return SourceImage(np.ascontiguousarray(a[..., :3]), np.ascontiguousarray(a[..., 3]))
    return SourceImage(np.asarray(img.convert("RGB")))   # RGB, CMYK, YCbCr, LAB, HSV ...


def working_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """The seed's resize rule: only if max(W, H) > max_side; W > H -> (max_side, int(max_side*H/W)),
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
    """The seed's prepared image: (h, w, 3) uint8 RGB, long side <= max_side, PIL BICUBIC.

    Resizing happens on the 1-channel image for gray input (same result as the seed's 3 equal channels,
    a third of the work)."""
    w, h = working_size(src.width, src.height, max_side)
    color = to_8bit(src.color)
    if (w, h) != (src.width, src.height):
        color = np.asarray(Image.fromarray(color).resize((w, h), resample=Image.BICUBIC))
    return np.repeat(color[..., None], 3, axis=2) if color.ndim == 2 else color
