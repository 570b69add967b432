"""Step 3 — Lab: L* extraction and Lab -> RGB in float32 with skimage's D65 / 2° numbers.

skimage does the colour science at working resolution. Written here by hand, and tested against skimage:
(a) look-up tables built *with skimage* for code values (a 65536-entry table is exact and ~20× faster than
converting 3 equal channels); (b) the chroma-only gamut mapping, which skimage does not offer (its lab2rgb clips
each channel, which shifts L*); (c) the full-resolution Lab -> sRGB pass as in-place float32 operations on
band-sized buffers (see the section below for why).
"""
from __future__ import annotations

import warnings
from functools import lru_cache

import cv2
import numpy as np
from skimage import color as skcolor
from skimage.color import colorconv

# skimage's XYZ(D65) -> linear sRGB matrix: the same numbers skimage.color.lab2rgb uses.
RGB_FROM_XYZ = colorconv.rgb_from_xyz.astype(np.float32)
XYZ_FROM_RGB = colorconv.xyz_from_rgb.astype(np.float32)
LUMA = np.array([0.2125, 0.7154, 0.0721], np.float32)   # skimage.color.rgb2gray weights (gamma-encoded)


@lru_cache(maxsize=2)
def code_tables(dtype: np.dtype) -> dict[str, np.ndarray]:
    """Per-code-value tables of the gray R=G=B=v for every v of a uint8/uint16 ``dtype`` (levels = 256 or
    65536), (levels,) float32, computed with skimage in float64:

    l    its L* in [0, 100]                   fy   (L* + 16) / 116
    y    its luminance Y in [0, 1]; also the linear-light value of a single channel v (the Y row sums to 1)
    enc  v / (levels − 1), the gamma-encoded value
    """
    v = np.linspace(0.0, 1.0, np.iinfo(dtype).max + 1)
    xyz = skcolor.rgb2xyz(np.repeat(v[:, None], 3, axis=1)[None])[0]
    l_star = skcolor.xyz2lab(xyz[None])[0, :, 0]
    return {"l": l_star.astype(np.float32), "fy": ((l_star + 16.0) / 116.0).astype(np.float32),
            "y": xyz[:, 1].astype(np.float32), "enc": v.astype(np.float32)}


def lightness(img: np.ndarray) -> np.ndarray:
    """L* in [0, 100] as (H, W) float32.

    img: (H, W) gray or (H, W, 3) RGB, uint8 or uint16 (sRGB-encoded).
    """
    if img.ndim == 2:
        return code_tables(img.dtype)["l"][img]
    scale = np.float32(1.0 / (255 if img.dtype == np.uint8 else 65535))
    return skcolor.rgb2lab(img.astype(np.float32) * scale)[..., 0]


def luma(img: np.ndarray) -> np.ndarray:
    """skimage.color.rgb2gray of the sRGB-encoded image, (H, W) float32 in [0, 1] (gray: v / max)."""
    scale = np.float32(1.0 / (255 if img.dtype == np.uint8 else 65535))
    if img.ndim == 2:
        return img.astype(np.float32) * scale
    return (img.astype(np.float32) @ LUMA) * scale


def neutral_gray(l_star: np.ndarray) -> np.ndarray:
    """The paper's detector input: sRGB gray with the same L* (lab2rgb of (L, 0, 0)) × 255, (H, W) float32."""
    lab = np.zeros(l_star.shape + (3,), np.float32)
    lab[..., 0] = l_star
    return skcolor.lab2rgb(lab)[..., 0] * np.float32(255.0)


def lab_to_rgb_clipped(l_star: np.ndarray, ab: np.ndarray) -> np.ndarray:
    """skimage.color.lab2rgb exactly (per-channel clip to [0, 1]): (H, W) L*, (H, W, 2) a/b -> (H, W, 3) float32."""
    with warnings.catch_warnings():   # "negative Z values clipped": expected for saturated blues
        warnings.simplefilter("ignore", UserWarning)
        return skcolor.lab2rgb(np.concatenate([l_star[..., None], ab], axis=-1).astype(np.float32, copy=False))


# --- full-resolution keep-L conversion on flat float32 planes -------------------------------------------------
#
# skimage's lab2rgb runs single-threaded float64-capable passes that allocate a new full-size array per step
# (16 s for 24 MP here), and numexpr/numpy `**` and `where` are scalar loops (0.3–0.4 s per 24 M values each).
# So the full-resolution path is written as a short list of in-place float32 operations (OpenCV's SIMD
# log/exp/LUT/min/max, numpy's vectorised arithmetic) on band-sized buffers that stay in cache and are reused,
# with every piecewise curve written branch-free. Every number comes from skimage (tables are built with it),
# and the tests compare the result with skimage.

F_KNEE = 0.2068966          # skimage: f⁻¹(t) = t³ above this, (t − 16/116) / 7.787 below
Y_KNEE = 0.008856           # skimage: f(Y) = Y^(1/3) above this, 7.787·Y + 16/116 below
SRGB_KNEE = 0.0031308       # skimage: 1.055·v^(1/2.4) − 0.055 above this, 12.92·v below
XYZ_WHITE = tuple(float(v) for v in colorconv.xyz_tristimulus_values(illuminant="D65", observer="2"))


class Scratch:
    """Named float32 buffers of one band, reused from band to band (one Scratch per worker thread)."""

    def __init__(self) -> None:
        self._bufs: dict[str, np.ndarray] = {}

    def __call__(self, name: str, n: int, channels: int = 1) -> np.ndarray:
        """A (n,) or (n, channels) float32 buffer; its contents are whatever the last user left."""
        size = n * channels
        buf = self._bufs.get(name)
        if buf is None or buf.size < size:
            buf = self._bufs[name] = np.empty(size, np.float32)
        return buf[:size].reshape((n, channels) if channels > 1 else (n,))


def lookup(codes: np.ndarray, table: np.ndarray, out: np.ndarray) -> np.ndarray:
    """out[...] = table[codes]: codes (n,) or (n, 3) uint8 (OpenCV's LUT) or uint16 (numpy take), out float32."""
    if codes.dtype == np.uint8:
        shape = (codes.shape[0], 1) + codes.shape[1:]        # OpenCV: rows × 1 column × channels
        cv2.LUT(codes.reshape(shape), table, out.reshape(shape))
    else:
        np.take(table, codes, out=out)
    return out


def fy_y_from_codes(codes: np.ndarray, scratch: Scratch) -> tuple[np.ndarray, np.ndarray]:
    """(L* + 16)/116 and luminance Y of sRGB pixels: codes (n,) gray or (n, 3) RGB, uint8/uint16 -> 2 × (n,) float32."""
    t = code_tables(codes.dtype)
    n = codes.shape[0]
    fy, y = scratch("fy", n), scratch("y", n)
    if codes.ndim == 1:
        return lookup(codes, t["fy"], fy), lookup(codes, t["y"], y)
    lin = lookup(codes, t["y"], scratch("rgb3", n, 3))
    cv2.transform(lin.reshape(n, 1, 3), XYZ_FROM_RGB[1:2], y.reshape(n, 1))
    # f(Y), branch-free: Y^(1/3) above the knee, the line below (the two meet there to < 1e-6)
    u = cv2.max(y, Y_KNEE, scratch("u", n))
    cv2.pow(u, 1.0 / 3.0, fy)
    np.subtract(y, u, out=u)
    return cv2.scaleAdd(u, 7.787, fy, fy).reshape(n), y


def luma_from_codes(codes: np.ndarray, scratch: Scratch) -> np.ndarray:
    """skimage.color.rgb2gray of sRGB pixels (gamma-encoded luma in [0, 1]): codes (n,) or (n, 3) -> (n,) float32."""
    t = code_tables(codes.dtype)
    n = codes.shape[0]
    out = scratch("luma", n)
    if codes.ndim == 1:
        return lookup(codes, t["enc"], out)
    enc = lookup(codes, t["enc"], scratch("rgb3", n, 3))
    return cv2.transform(enc.reshape(n, 1, 3), LUMA[None], out.reshape(n, 1)).reshape(n)


def _finv_into(t: np.ndarray, u: np.ndarray, c: np.ndarray) -> np.ndarray:
    """t <- skimage's f⁻¹(t) in place, branch-free: u = max(t, knee); u³ + (t − u)/7.787 (branches meet to 5e-8)."""
    cv2.max(t, F_KNEE, u)
    np.multiply(u, u, out=c)
    np.multiply(c, u, out=c)
    np.subtract(t, u, out=t)
    return cv2.scaleAdd(t, 1.0 / 7.787, c, t)


def srgb_keep_l(fy: np.ndarray, y: np.ndarray, a: np.ndarray, b: np.ndarray,
                scratch: Scratch) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lab -> sRGB keeping L*: out-of-gamut colours lose chroma toward the gray of the same Y, never lightness.

    fy = (L* + 16)/116 and y = Y (the luminance of L*), a, b: (n,) float32. Returns three (n,) float32 planes
    (R, G, B) in [0, 1], sRGB-encoded; they live in ``scratch`` until its next use.
    Same constants as skimage's lab2xyz (D65, negative Z clipped) and xyz2rgb. In linear RGB, mixing a colour
    with the gray of the same Y keeps Y (the Y row of skimage's matrix sums to 1, all weights positive), so
    with mx/mn the largest/smallest channel the largest factor that fits in [0, 1] is
    s = min(1, (1 − Y)/(mx − Y), Y/(Y − mn)), and every channel becomes Y + s·(c − Y).
    """
    n = fy.shape[0]
    u, c = scratch("u", n), scratch("c", n)
    x = _finv_into(cv2.scaleAdd(a, 1.0 / 500.0, fy, scratch("x", n)).reshape(n), u, c)
    z = cv2.scaleAdd(b, -1.0 / 200.0, fy, scratch("z", n)).reshape(n)
    z = _finv_into(cv2.max(z, 0.0, z).reshape(n), u, c)
    m = RGB_FROM_XYZ * np.array([XYZ_WHITE[0], 1.0, XYZ_WHITE[2]], np.float32)   # x, z relative to white
    rgb = []
    for i in range(3):
        ch = cv2.addWeighted(x, float(m[i, 0]), y, float(m[i, 1]), 0.0, scratch(f"rgb{i}", n))
        rgb.append(cv2.scaleAdd(z, float(m[i, 2]), ch, ch).reshape(n))
    r, g, bl = rgb
    hi, lo = cv2.max(cv2.max(r, g, u), bl, u).reshape(n), cv2.min(cv2.min(r, g, c), bl, c).reshape(n)
    if hi.max() > 1.0 or lo.min() < 0.0:                    # some colour is out of gamut: map it
        s, t = scratch("s", n), scratch("t", n)
        np.subtract(hi, y, out=hi)
        np.subtract(1.0, y, out=s)
        np.divide(s, cv2.max(hi, 1e-12, hi).reshape(n), out=s)           # (1 − Y) / (mx − Y)
        np.subtract(y, lo, out=lo)
        np.divide(y, cv2.max(lo, 1e-12, lo).reshape(n), out=t)           # Y / (Y − mn)
        cv2.min(s, t, s)
        cv2.min(s, 1.0, s)
        for ch in rgb:
            np.subtract(ch, y, out=ch)
            np.multiply(ch, s, out=ch)
            np.add(ch, y, out=ch)
    for ch in rgb:                                          # clip rounding, then the sRGB curve, branch-free:
        np.clip(ch, 0.0, 1.0, out=ch)                       # u = max(v, knee); 1.055·u^(1/2.4) − 0.055 + 12.92·(v − u)
        cv2.max(ch, SRGB_KNEE, u)
        np.subtract(ch, u, out=ch)
        cv2.log(u, u)
        np.multiply(u, 1.0 / 2.4, out=u)
        cv2.exp(u, u)
        np.multiply(u, 1.055, out=u)
        np.subtract(u, 0.055, out=u)
        cv2.scaleAdd(ch, 12.92, u, ch)
        np.clip(ch, 0.0, 1.0, out=ch)                       # the branches meet to 3e-8: keep exactly in [0, 1]
    return r, g, bl

