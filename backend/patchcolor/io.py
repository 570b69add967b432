"""Image files in and out: decode any image PIL reads into a :class:`~patchcolor.prepare.SourceImage` at native bit
depth, and write results (8/16-bit PNG or TIFF, mask PNGs) atomically.

* :func:`load_image` -> SourceImage (EXIF orientation applied, first frame; one-sentence errors for damaged
  files, images under prepare.MIN_SIDE a side, and images over ``max_pixels`` — checked from the header, before
  decoding, PIL's decompression-bomb limit following it);
* :func:`save_image`: (H, W) / (H, W, 3|4) uint8 or uint16 -> PNG or TIFF (by the file's extension);
* :func:`write_masks`: one full-size 8-bit mask PNG per instance plus ``instances.json``, as one folder.
"""
from __future__ import annotations

import errno
import json
import threading
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .atomic import atomic_folder, atomic_write
from .errors import ImageTooLarge, ImageUnreadable
from .prepare import SourceImage, check_size

PNG_COMPRESS_LEVEL = 1             # chosen by measurement: bench/bench_batch.py --png-levels


# ------------------------------------------------------------------------------------------------ reading
def load_image(path: str | Path, max_pixels: int = 250_000_000) -> SourceImage:
    """Read an image file into a SourceImage at native bit depth, EXIF orientation applied, first frame
    (``SourceImage.frames`` says how many the file holds).

    Raises ImageUnreadable (not an image, damaged, truncated, under MIN_SIDE a side) or ImageTooLarge (over
    ``max_pixels``, from the header; PIL's bomb limit, which refuses at twice it, follows ``max_pixels``)."""
    path = Path(path)
    try:
        img = _open_with_limit(path, max_pixels)
    except Image.DecompressionBombError as e:
        declared = str(e).split(" exceeds")[0]          # "Image size (N pixels)"
        raise ImageTooLarge(f"{path.name} is over the limit of {max_pixels:,.0f} pixels ({declared}; PIL refuses "
                            "it as a decompression bomb); raise the limit with --max-pixels") from None
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
        except (OSError, ValueError, SyntaxError, MemoryError) as e:
            raise ImageUnreadable(f"cannot decode {path}: {e}") from None
        src.frames = int(getattr(img, "n_frames", 1) or 1)
    return src


_PIL_LIMIT = threading.Lock()


def _open_with_limit(path: Path, max_pixels: float) -> Image.Image:
    """``Image.open`` with PIL's decompression-bomb limit at ``max_pixels`` for this call only: PIL reads the limit
    from a module global while it opens (reads the header), so it is set and restored under a lock and never leaks
    into other code of the process."""
    with _PIL_LIMIT:
        before = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = int(max_pixels)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                return Image.open(path)
        finally:
            Image.MAX_IMAGE_PIXELS = before


def _is_16bit_rgb(img: Image.Image) -> bool:
    """PIL opens 16-bit RGB(A) PNG/TIFF as 8-bit RGB; its tile rawmode still says ';16'."""
    return img.mode in ("RGB", "RGBA") and any(";16" in str(getattr(t, "args", t[3] if len(t) > 3 else ""))
                                               for t in (img.tile or []))


def _load_16bit_rgb(path: Path, img: Image.Image) -> SourceImage:
    import cv2  # PIL has no 16-bit RGB mode; OpenCV keeps the full depth

    exif = img.getexif()
    arr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED | cv2.IMREAD_IGNORE_ORIENTATION)
    if arr is None or arr.dtype != np.uint16:
        img.load()
        return from_pil(ImageOps.exif_transpose(img))
    arr = arr[..., ::-1] if arr.shape[2] == 3 else arr[..., [2, 1, 0, 3]]  # BGR(A) -> RGB(A)
    arr = _apply_orientation(arr, exif.get(0x0112, 1))
    return SourceImage(np.ascontiguousarray(arr[..., :3]),
                       np.ascontiguousarray(arr[..., 3]) if arr.shape[2] == 4 else None)


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


# ------------------------------------------------------------------------------------------------ writing
def save_image(path: Path, image: np.ndarray, compress_level: int = PNG_COMPRESS_LEVEL) -> None:
    """(H, W) / (H, W, 3|4) uint8 -> PNG (or TIFF, by ``path``'s extension) via PIL; uint16 -> 16-bit PNG/TIFF via
    OpenCV (PIL has no RGB16). Atomic (a temporary file renamed into place)."""
    def write(tmp: Path) -> None:
        if image.dtype == np.uint16:
            import cv2

            bgr = image if image.ndim == 2 else image[..., [2, 1, 0, 3][: image.shape[2]]]
            params = [cv2.IMWRITE_PNG_COMPRESSION, compress_level] if path.suffix.lower() == ".png" else []
            if not cv2.imwrite(str(tmp), np.ascontiguousarray(bgr), params):
                raise OSError(errno.EIO, f"could not write {path.name}")
        elif path.suffix.lower() in (".tif", ".tiff"):
            Image.fromarray(image).save(tmp, format="TIFF")
        else:
            Image.fromarray(image).save(tmp, format="PNG", compress_level=compress_level)
    atomic_write(path, write)


def write_masks(folder: Path, result, width: int, height: int, compress_level: int = PNG_COMPRESS_LEVEL) -> None:
    """``result.instances`` -> ``folder``: one (height, width) 8-bit PNG per instance (255 inside), named
    ``NN_class_score.png``, plus instances.json (file, class, score, box in pixels). The folder is replaced whole
    (no stale masks from an earlier attempt)."""
    def write(tmp: Path) -> None:
        meta = []
        for k, inst in enumerate(result.instances):
            name = f"{k:02d}_{inst.class_name.replace(' ', '-').replace('/', '-')}_{round(inst.score * 100)}.png"
            save_image(tmp / name, inst.full_mask(width, height), compress_level)
            meta.append({"file": name, "class": inst.class_name, "score": round(inst.score, 4),
                         "box": [round(v, 2) for v in inst.box]})
        (tmp / "instances.json").write_text(json.dumps(meta, indent=1))
    atomic_folder(folder, write)
