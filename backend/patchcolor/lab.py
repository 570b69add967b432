"""Step 3 — Lab: L* extraction and Lab -> RGB in float32 with skimage's D65 / 2° numbers.

skimage does the colour science at working resolution. Written here by hand, and tested against skimage:
(a) look-up tables built *with skimage* for gray inputs (a 65536-entry table is exact and ~20× faster than
converting 3 equal channels); (b) the chroma-only gamut mapping, which skimage does not offer (its lab2rgb clips
each channel, which shifts L*); (c) a torch version of Lab -> sRGB for full-resolution output: skimage's
single-threaded numpy passes took 16 s on a 24 MP image on 2 cores, the same formulas as torch element-wise
ops (SIMD, all cores) take a fraction of that (see bench/bench_pipeline.py).
"""
from __future__ import annotations

import warnings
from functools import lru_cache

import numexpr as ne
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

    Same formulas and constants as skimage's lab2xyz (D65 white, negative Z clipped) and rgb_from_xyz. In linear
    RGB, mixing a colour with the gray of the same luminance Y keeps Y (the Y row of skimage's matrix sums to 1),
    so each out-of-gamut pixel is moved toward its gray just far enough to fit in [0, 1]."""
    L = l_star.astype(np.float32, copy=False)
    a, b = ab[..., 0], ab[..., 1]
    wx, wz = XYZ_WHITE[0], XYZ_WHITE[2]
    fy = ne.evaluate("(L + 16) / 116")
    y = ne.evaluate(_FINV.format(t="fy"))
    x = ne.evaluate(_FINV.format(t="(fy + a / 500)") + f" * {wx}")
    z = ne.evaluate(_FINV.format(t="where(fy - b / 200 > 0, fy - b / 200, 0)") + f" * {wz}")
    m = RGB_FROM_XYZ
    xyz = {"x": x, "y": y, "z": z}
    r, g, bl = [ne.evaluate(f"x * {m[i, 0]} + y * {m[i, 1]} + z * {m[i, 2]}", local_dict=xyz) for i in range(3)]
    out = ne.evaluate("(r < 0) | (r > 1) | (g < 0) | (g > 1) | (bl < 0) | (bl > 1)")
    if out.any():                       # usually a few per cent of the pixels: fix only those
        o_y = y[out]
        for c in (r, g, bl):
            c[out] -= o_y               # now the offset from gray
        d = np.stack([r[out], g[out], bl[out]], axis=-1)
        with np.errstate(divide="ignore", invalid="ignore"):
            limit = np.where(d > 0, (1.0 - o_y[:, None]) / d, np.where(d < 0, -o_y[:, None] / d, np.inf))
        s = np.clip(limit.min(axis=-1), 0.0, 1.0)
        for i, c in enumerate((r, g, bl)):
            c[out] = np.clip(o_y + s * d[:, i], 0.0, 1.0)
    rgb = np.empty(L.shape + (3,), np.float32)
    for i, c in enumerate((r, g, bl)):
        rgb[..., i] = srgb_encode(c)
    return rgb


_FINV = "where({t} > 0.2068966, {t} ** 3, ({t} - 16.0 / 116.0) / 7.787)"   # skimage's inverse of CIE f()
XYZ_WHITE = tuple(float(v) for v in colorconv.xyz_tristimulus_values(illuminant="D65", observer="2"))


def srgb_encode(lin: np.ndarray) -> np.ndarray:
    """Linear [0, 1] -> sRGB transfer curve (the piecewise curve skimage's xyz2rgb applies), float32."""
    return ne.evaluate("where(lin > 0.0031308, 1.055 * lin ** (1 / 2.4) - 0.055, 12.92 * lin)").astype(np.float32, copy=False)
