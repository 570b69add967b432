"""Step 6 — finish: original L* + upsampled a/b -> RGB, saturation, alpha, the input's bit depth.

Works in horizontal bands (bounded float32 temporaries whatever the image size) spread over the CPU cores
(numpy and skimage release the GIL inside their array loops).

* seed (``full_resolution=False``): L* of the working copy, skimage ``lab2rgb`` (per-channel clip), then the
  seed's desaturation in HSV: S ← S · w(Y), w(Y) = −2.5Y² + 2.5Y + 0.375, Y = rgb2gray of the input.
* default: L* of the *original* pixels at full resolution; the same w(Y) (if enabled) and the user's
  ``saturation`` gain scale the a/b chroma, and out-of-gamut colours lose chroma instead of lightness, so the
  output's L* equals the input's to rounding.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
from skimage import color as skcolor

from . import lab
from .options import Options

BAND_PIXELS = 1 << 20   # ~1 MP per band: ~40 MB of float32 temporaries per worker


def desaturation_weight(y: np.ndarray) -> np.ndarray:
    """The seed's 'smoother' parabola w(Y) = −2.5Y² + 2.5Y + 0.375 (0.375 at black/white, 1 at mid-gray)."""
    return (np.float32(-2.5) * y + np.float32(2.5)) * y + np.float32(0.375)


def upsample_ab(ab: np.ndarray, width: int, height: int) -> np.ndarray:
    """(2, h, w) -> (height, width, 2) float32, bilinear with half-pixel centres (= align_corners=False)."""
    hwc = np.ascontiguousarray(ab.transpose(1, 2, 0))
    if hwc.shape[:2] == (height, width):
        return hwc
    return cv2.resize(hwc, (width, height), interpolation=cv2.INTER_LINEAR)


def quantize(rgb: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """float [0, 1] -> uint8/uint16 with rounding (skimage.img_as_ubyte's rule)."""
    top = np.float32(65535.0 if dtype == np.uint16 else 255.0)
    return np.clip(np.rint(rgb * top), 0, top).astype(dtype)


def _band_seed(color: np.ndarray, ab: np.ndarray, opts: Options) -> np.ndarray:
    rgb = lab.lab_to_rgb_clipped(lab.lightness(color), ab)
    gain = np.float32(opts.saturation)
    if opts.seed_desaturate or gain != 1:
        hsv = skcolor.rgb2hsv(rgb)
        w = desaturation_weight(lab.luma(color)) if opts.seed_desaturate else np.float32(1)
        hsv[..., 1] = np.minimum(hsv[..., 1] * (w * gain), 1)
        rgb = skcolor.hsv2rgb(hsv)
    return rgb


def _band_default(color: np.ndarray, ab: np.ndarray, opts: Options) -> np.ndarray:
    scale = np.float32(opts.saturation)
    if opts.seed_desaturate:
        scale = desaturation_weight(lab.luma(color))[..., None] * scale
    if not (np.isscalar(scale) and scale == 1):
        ab = ab * scale
    return lab.lab_to_rgb_keep_l(lab.lightness(color), ab)


def finish(color: np.ndarray, alpha: np.ndarray | None, ab: np.ndarray, opts: Options,
           out_dtype: np.dtype, progress=None) -> np.ndarray:
    """Assemble the output image.

    color: (H, W) or (H, W, 3) uint8/uint16 — the pixels whose L* is kept (original or working copy).
    alpha: (H, W) of the output's dtype, or None.
    ab:    (2, h, w) float32 fused a/b at working resolution (upsampled here to H × W).
    Returns (H, W, 3) or (H, W, 4) of ``out_dtype``.
    """
    height, width = color.shape[:2]
    ab_full = upsample_ab(ab, width, height)
    out = np.empty((height, width, 3 if alpha is None else 4), out_dtype)
    if alpha is not None:
        out[..., 3] = alpha
    band = max(1, BAND_PIXELS // max(1, width))
    starts = list(range(0, height, band))
    body = _band_seed if opts.finish == "seed" else _band_default

    def work(y0: int) -> None:
        rows = slice(y0, min(height, y0 + band))
        out[rows, :, :3] = quantize(body(color[rows], ab_full[rows], opts), out_dtype)

    with ThreadPoolExecutor(max_workers=min(len(starts), os.cpu_count() or 1)) as pool:
        for i, _ in enumerate(pool.map(work, starts)):
            if progress is not None:
                progress((i + 1) / len(starts))
    return out
