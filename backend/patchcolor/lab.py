"""Step 3 — Lab: L* extraction and Lab -> RGB in float32 with skimage's D65 / 2° numbers.

skimage does the colour science; what is written here is only (a) look-up tables built *with skimage* for
gray inputs (a 65536-entry table is exact and ~20× faster than converting 3 equal channels) and (b) the
chroma-only gamut mapping, which skimage does not offer (its lab2rgb clips each channel, which shifts L*).
"""
from __future__ import annotations

import warnings
from functools import lru_cache

import numpy as np
from skimage import color as skcolor
from skimage.color import colorconv

# skimage's XYZ(D65) -> linear sRGB matrix: the same numbers skimage.color.lab2rgb uses.
RGB_FROM_XYZ = colorconv.rgb_from_xyz.astype(np.float32)
LUMA = np.array([0.2125, 0.7154, 0.0721], np.float32)   # skimage.color.rgb2gray weights (gamma-encoded)


@lru_cache(maxsize=2)
def _gray_l_lut(levels: int) -> np.ndarray:
    """L* of the gray R=G=B=v for every code value v in [0, levels): (levels,) float32, via skimage."""
    v = np.linspace(0.0, 1.0, levels, dtype=np.float32)
    return skcolor.rgb2lab(np.repeat(v[:, None], 3, axis=1)[None])[0, :, 0].astype(np.float32)


def lightness(img: np.ndarray) -> np.ndarray:
    """L* in [0, 100] as (H, W) float32.

    img: (H, W) gray or (H, W, 3) RGB, uint8 or uint16 (sRGB-encoded).
    """
    if img.ndim == 2:
        return _gray_l_lut(256 if img.dtype == np.uint8 else 65536)[img]
    scale = np.float32(1.0 / (255 if img.dtype == np.uint8 else 65535))
    return skcolor.rgb2lab(img.astype(np.float32) * scale)[..., 0]


def luma(img: np.ndarray) -> np.ndarray:
    """skimage.color.rgb2gray of the sRGB-encoded image, (H, W) float32 in [0, 1] (gray: v / max)."""
    scale = np.float32(1.0 / (255 if img.dtype == np.uint8 else 65535))
    if img.ndim == 2:
        return img.astype(np.float32) * scale
    return (img.astype(np.float32) @ LUMA) * scale


def neutral_gray(l_star: np.ndarray) -> np.ndarray:
    """The seed's detector input: sRGB gray with the same L* (lab2rgb of (L, 0, 0)) × 255, (H, W) float32."""
    lab = np.zeros(l_star.shape + (3,), np.float32)
    lab[..., 0] = l_star
    return skcolor.lab2rgb(lab)[..., 0] * np.float32(255.0)


def lab_to_rgb_clipped(l_star: np.ndarray, ab: np.ndarray) -> np.ndarray:
    """skimage.color.lab2rgb exactly (per-channel clip to [0, 1]): (H, W) L*, (H, W, 2) a/b -> (H, W, 3) float32."""
    with warnings.catch_warnings():   # "negative Z values clipped": expected for saturated blues
        warnings.simplefilter("ignore", UserWarning)
        return skcolor.lab2rgb(np.concatenate([l_star[..., None], ab], axis=-1).astype(np.float32, copy=False))


def lab_to_rgb_keep_l(l_star: np.ndarray, ab: np.ndarray) -> np.ndarray:
    """Lab -> sRGB (H, W, 3) float32 in [0, 1] keeping L* exactly: out-of-gamut colours lose chroma, not lightness.

    In linear RGB, mixing a colour with the gray of the same luminance Y keeps Y (the Y row of skimage's matrix
    sums to 1), so each out-of-gamut pixel is moved toward its gray just far enough to fit in [0, 1]."""
    lab = np.concatenate([l_star[..., None], ab], axis=-1).astype(np.float32, copy=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        xyz = skcolor.lab2xyz(lab)
    lin = xyz @ RGB_FROM_XYZ.T
    y = xyz[..., 1:2]
    del xyz
    d = lin - y
    with np.errstate(divide="ignore", invalid="ignore"):
        limit = np.where(d > 0, (1.0 - y) / d, np.where(d < 0, (0.0 - y) / d, np.inf))
    s = np.clip(np.min(limit, axis=-1, keepdims=True), 0.0, 1.0).astype(np.float32)
    lin = np.clip(y + s * d, 0.0, 1.0)
    return srgb_encode(lin)


def srgb_encode(lin: np.ndarray) -> np.ndarray:
    """Linear -> sRGB transfer curve (the same piecewise curve skimage's xyz2rgb applies), float32."""
    out = np.where(lin > 0.0031308, 1.055 * np.power(lin, 1 / 2.4, dtype=np.float32) - 0.055, 12.92 * lin)
    return out.astype(np.float32, copy=False)
