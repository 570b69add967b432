"""Step 6 — finish: original L* + upsampled a/b -> RGB, saturation, alpha, the input's bit depth.

Works in horizontal bands of ~256 K pixels (reused float32 buffers that stay in cache, whatever the image size)
spread over the CPU cores (OpenCV and numpy release the GIL inside their array loops).

* paper (``finish="paper"``, the ``seed`` preset): L* of the pixels, skimage ``lab2rgb`` (per-channel clip),
  then the paper's desaturation in HSV (OpenCV's float32 HSV: PatchColorization's skimage formulas): S ← S · w(Y),
  w(Y) = −2.5Y² + 2.5Y + 0.375, Y = rgb2gray of the input.
* keep-l (default): L* of the *original* pixels at full resolution; the same w(Y) (if enabled) and the user's
  ``saturation`` gain scale the a/b chroma, and out-of-gamut colours lose chroma instead of lightness
  (lab.srgb_keep_l), so the output's L* equals the input's to rounding.
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np

from . import lab
from .options import Options

BAND_PIXELS = 1 << 18   # ~256 K pixels per band: ~14 float32 planes of 1 MB per worker, inside the L3 cache


def desaturation_weight(y: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """The paper's 'smoother' parabola w(Y) = −2.5Y² + 2.5Y + 0.375 (0.375 at black/white, 1 at mid-gray).

    y: float32 luma in [0, 1]; ``out`` (same shape, may be ``y`` itself) receives the result."""
    out = np.multiply(y, np.float32(-2.5), out=out)
    np.add(out, np.float32(2.5), out=out)
    np.multiply(out, y, out=out)
    return np.add(out, np.float32(0.375), out=out)


def upsample_ab(ab: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """(2, h, w) -> two (height, width) float32 planes a, b; bilinear with half-pixel centres (= align_corners=False)."""
    if ab.shape[1:] == (height, width):
        return np.ascontiguousarray(ab[0]), np.ascontiguousarray(ab[1])
    return tuple(cv2.resize(np.ascontiguousarray(p), (width, height), interpolation=cv2.INTER_LINEAR) for p in ab)


def quantize(rgb: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """float [0, 1] -> uint8/uint16 with rounding (skimage.img_as_ubyte's rule)."""
    top = np.float32(65535.0 if dtype == np.uint16 else 255.0)
    return np.clip(np.rint(rgb * top), 0, top).astype(dtype)


def _quantize_into(plane: np.ndarray, dst: np.ndarray) -> None:
    """plane (n,) float32 in [0, 1] (overwritten) -> dst (n,) uint8/uint16 view, rounded half to even."""
    np.multiply(plane, np.float32(np.iinfo(dst.dtype).max), out=plane)
    np.rint(plane, out=plane)
    np.copyto(dst, plane, casting="unsafe")


def _band_paper(codes: np.ndarray, a: np.ndarray, b: np.ndarray, dst: np.ndarray, opts: Options,
               scratch: lab.Scratch) -> None:
    color = codes.reshape(1, *codes.shape)
    rgb = lab.lab_to_rgb_clipped(lab.lightness(color), np.stack([a, b], axis=-1)[None])
    gain = np.float32(opts.saturation)
    if opts.paper_desaturate or gain != 1:
        # OpenCV's float32 HSV is skimage's rgb2hsv / hsv2rgb (PatchColorization's) with H in degrees; ~50x faster
        # (S differs by < 3e-5, which moves an 8-bit code in < 1 % of pixels, as float32 vs float64 already does)
        hsv = cv2.cvtColor(np.ascontiguousarray(rgb, dtype=np.float32), cv2.COLOR_RGB2HSV)
        w = desaturation_weight(lab.luma(color)) if opts.paper_desaturate else np.float32(1)
        hsv[..., 1] = np.minimum(hsv[..., 1] * (w * gain), 1)
        rgb = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    dst[:, :3] = quantize(rgb[0], dst.dtype)


def _band_keep_l(codes: np.ndarray, a: np.ndarray, b: np.ndarray, dst: np.ndarray, opts: Options,
                 scratch: lab.Scratch) -> None:
    n = codes.shape[0]
    fy, y = lab.fy_y_from_codes(codes, scratch)
    gain = np.float32(opts.saturation)
    if opts.paper_desaturate:
        w = desaturation_weight(lab.luma_from_codes(codes, scratch), out=scratch("w", n))
        if gain != 1:
            np.multiply(w, gain, out=w)
        a, b = np.multiply(a, w, out=scratch("a", n)), np.multiply(b, w, out=scratch("b", n))
    elif gain != 1:
        a, b = np.multiply(a, gain, out=scratch("a", n)), np.multiply(b, gain, out=scratch("b", n))
    for i, plane in enumerate(lab.srgb_keep_l(fy, y, a, b, scratch)):
        _quantize_into(plane, dst[:, i])


def finish(color: np.ndarray, alpha: np.ndarray | None, ab: np.ndarray, opts: Options,
           out_dtype: np.dtype, progress=None) -> np.ndarray:
    """Assemble the output image.

    color: (H, W) or (H, W, 3) uint8/uint16 — the pixels whose L* is kept (original or working copy).
    alpha: (H, W) of the output's dtype, or None.
    ab:    (2, h, w) float32 fused a/b at working resolution (upsampled here to H × W).
    Returns (H, W, 3) or (H, W, 4) of ``out_dtype``.
    """
    height, width = color.shape[:2]
    a_full, b_full = upsample_ab(ab, width, height)
    channels = 3 if alpha is None else 4
    out = np.empty((height, width, channels), out_dtype)
    if alpha is not None:
        out[..., 3] = alpha
    band = max(1, BAND_PIXELS // max(1, width))
    starts = list(range(0, height, band))
    body = _band_paper if opts.finish == "paper" else _band_keep_l
    local = threading.local()

    def work(y0: int) -> None:
        rows = slice(y0, min(height, y0 + band))
        n = (rows.stop - rows.start) * width
        if not hasattr(local, "scratch"):
            local.scratch = lab.Scratch()        # one set of band buffers per worker thread
        codes = np.ascontiguousarray(color[rows]).reshape((n,) + color.shape[2:])
        body(codes, a_full[rows].reshape(n), b_full[rows].reshape(n), out[rows].reshape(n, channels), opts,
             local.scratch)

    pool = ThreadPoolExecutor(max_workers=min(len(starts), os.cpu_count() or 1))
    try:
        step = max(1, len(starts) // 50)
        for i, _ in enumerate(pool.map(work, starts)):
            if progress is not None and ((i + 1) % step == 0 or i + 1 == len(starts)):
                progress((i + 1) / len(starts))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return out
