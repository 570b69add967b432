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

import numpy as np
import torch
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


# --- full-resolution fast path (torch, float32) ---------------------------------------------------------------
XYZ_WHITE = tuple(float(v) for v in colorconv.xyz_tristimulus_values(illuminant="D65", observer="2"))


def _finv(t: torch.Tensor) -> torch.Tensor:
    """Inverse of CIE f(), with skimage's constants (0.2068966, 7.787)."""
    return torch.where(t > 0.2068966, t * t * t, (t - 16.0 / 116.0) / 7.787)


@lru_cache(maxsize=2)
def _linear_lut(levels: int) -> torch.Tensor:
    """Linear-light value of each sRGB code value, computed with skimage (Y of the gray ramp)."""
    v = np.linspace(0.0, 1.0, levels, dtype=np.float64)
    return torch.from_numpy(skcolor.rgb2xyz(np.repeat(v[:, None], 3, axis=1)[None])[0, :, 1].astype(np.float32))


def lightness_t(img: np.ndarray) -> torch.Tensor:
    """lightness() as a torch tensor (H, W) float32; RGB via a linearisation table + skimage's Y row."""
    if img.ndim == 2:
        return torch.from_numpy(_gray_l_lut(256 if img.dtype == np.uint8 else 65536))[
            torch.from_numpy(img.astype(np.int64) if img.dtype == np.uint16 else img).long()]
    lut = _linear_lut(256 if img.dtype == np.uint8 else 65536)
    idx = torch.from_numpy(img.astype(np.int32, copy=False)).long()
    lin = lut[idx]
    y = lin @ torch.from_numpy(colorconv.xyz_from_rgb[1].astype(np.float32))
    f = torch.where(y > 0.008856, y.clamp_min(0).pow(1 / 3), 7.787 * y + 16.0 / 116.0)
    return 116.0 * f - 16.0


def lab_to_srgb_keep_l_t(l_star: torch.Tensor, ab: torch.Tensor) -> torch.Tensor:
    """lab_to_rgb_keep_l() in torch: (H, W) L*, (H, W, 2) a/b -> (H, W, 3) sRGB float32 in [0, 1]."""
    fy = (l_star + 16.0) / 116.0
    x = _finv(fy + ab[..., 0] / 500.0) * XYZ_WHITE[0]
    y = _finv(fy) * XYZ_WHITE[1]
    z = _finv((fy - ab[..., 1] / 200.0).clamp_min(0)) * XYZ_WHITE[2]
    lin = torch.stack((x, y, z), dim=-1) @ torch.from_numpy(RGB_FROM_XYZ).T
    d = lin - y[..., None]
    big = torch.tensor(float("inf"))
    limit = torch.where(d > 0, (1.0 - y[..., None]) / d, torch.where(d < 0, -y[..., None] / d, big))
    s = limit.amin(dim=-1, keepdim=True).clamp(0.0, 1.0)
    lin = (y[..., None] + s * d).clamp(0.0, 1.0)
    return torch.where(lin > 0.0031308, 1.055 * lin.pow(1 / 2.4) - 0.055, 12.92 * lin)
