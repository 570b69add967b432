"""Steps 3 and 6: Lab numbers equal skimage's; output lightness equals the input's; the paper's post-process."""
from __future__ import annotations

import numpy as np
import pytest
from skimage import color

from patchcolor import lab
from patchcolor.finish import desaturation_weight, finish
from patchcolor.options import make_options

RNG = np.random.default_rng(3)


def test_lightness_equals_skimage():
    rgb = RNG.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    np.testing.assert_allclose(lab.lightness(rgb), color.rgb2lab(rgb)[..., 0], atol=1e-3)
    g16 = RNG.integers(0, 65536, (40, 50), dtype=np.uint16)
    ref = color.rgb2lab(np.stack([g16 / 65535.0] * 3, -1))[..., 0]
    np.testing.assert_allclose(lab.lightness(g16), ref, atol=1e-3)
    assert lab.lightness(rgb).dtype == np.float32 and lab.lightness(g16).dtype == np.float32


def test_neutral_gray_is_identity_for_gray():
    g = np.arange(256, dtype=np.uint8).reshape(16, 16)
    np.testing.assert_allclose(lab.neutral_gray(lab.lightness(g)), g, atol=0.01)


@pytest.mark.parametrize("dtype,gray,alpha", [(np.uint8, True, False), (np.uint16, True, True),
                                              (np.uint8, False, True), (np.uint16, False, False)])
def test_default_finish_keeps_lightness_alpha_and_depth(dtype, gray, alpha):
    top = np.iinfo(dtype).max
    shape = (48, 64) if gray else (48, 64, 3)
    src = RNG.integers(0, top + 1, shape, dtype=dtype)
    a = RNG.integers(0, top + 1, (48, 64), dtype=dtype) if alpha else None
    ab = RNG.uniform(-90, 90, (2, 12, 16)).astype(np.float32)   # strong, often out-of-gamut colours
    opts = make_options("default", saturation=1.5)
    out = finish(src, a, ab, opts, np.dtype(dtype))
    assert out.dtype == dtype and out.shape == (48, 64, 4 if alpha else 3)
    if alpha:
        np.testing.assert_array_equal(out[..., 3], a)
    l_in = color.rgb2lab((np.stack([src] * 3, -1) if gray else src) / top)[..., 0]
    l_out = color.rgb2lab(out[..., :3] / top)[..., 0]
    tol = 0.6 if dtype == np.uint8 else 0.01      # one 8-bit code value moves L* by at most ~0.5
    assert np.abs(l_out - l_in).max() < tol
    assert np.abs(out[..., 0].astype(int) - out[..., 2]).mean() > 2   # and it is in colour


def _paper_postprocess_reference(rgb_u8: np.ndarray, ab_hw2: np.ndarray) -> np.ndarray:
    """PatchColorization's util.postprocess + desaturate + img_as_ubyte, written out with skimage in float64."""
    from skimage.util import img_as_ubyte

    l_star = color.rgb2lab(rgb_u8)[..., :1]
    rgb = color.lab2rgb(np.concatenate([l_star, ab_hw2.astype(np.float64)], axis=2))
    y = color.rgb2gray(rgb_u8)
    hsv = color.rgb2hsv(rgb)
    hsv[..., 1] *= -2.5 * y ** 2 + 2.5 * y + 0.375
    return img_as_ubyte(color.hsv2rgb(hsv))


def test_paper_finish_matches_the_published_postprocess():
    rgb = RNG.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    ab = RNG.uniform(-60, 60, (2, 40, 60)).astype(np.float32)
    out = finish(rgb, None, ab, make_options("seed"), np.dtype(np.uint8))
    ref = _paper_postprocess_reference(rgb, ab.transpose(1, 2, 0))
    assert np.abs(out.astype(int) - ref).max() <= 1          # float32 vs the published float64
    assert np.mean(out != ref) < 0.01


def test_desaturation_weight_values():
    y = np.array([0, 0.25, 0.5, 0.75, 1], np.float32)
    np.testing.assert_allclose(desaturation_weight(y), [0.375, 0.84375, 1.0, 0.84375, 0.375], atol=1e-6)


def _lab2rgb_unclipped(lab_img: np.ndarray) -> np.ndarray:
    """skimage's own Lab -> linear RGB without its final clip (float64), to tell in-gamut colours apart."""
    import warnings

    from skimage.color import colorconv
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return color.lab2xyz(lab_img) @ colorconv.rgb_from_xyz.T


def test_keep_l_equals_skimage_in_gamut_and_keeps_l_outside():
    l_star = RNG.uniform(0, 100, (60, 80)).astype(np.float32)
    ab = RNG.uniform(-60, 60, (60, 80, 2)).astype(np.float32)
    lab_img = np.concatenate([l_star[..., None], ab], -1).astype(np.float64)
    lin = _lab2rgb_unclipped(lab_img)
    inside = ((lin >= 0) & (lin <= 1)).all(-1)
    assert 0.2 < inside.mean() < 0.9                    # both kinds of pixel are present
    fy = ((l_star.astype(np.float64) + 16) / 116).astype(np.float32).ravel()
    y = color.lab2xyz(np.stack([l_star, 0 * l_star, 0 * l_star], -1).astype(np.float64))[..., 1]
    planes = lab.srgb_keep_l(fy, y.astype(np.float32).ravel(), np.ascontiguousarray(ab[..., 0]).ravel(),
                             np.ascontiguousarray(ab[..., 1]).ravel(), lab.Scratch())
    got = np.stack(planes, -1).reshape(60, 80, 3)
    assert got.dtype == np.float32 and got.shape == (60, 80, 3)
    assert got.min() >= 0 and got.max() <= 1
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        ref = color.lab2rgb(lab_img)
    assert np.abs(got - ref)[inside].max() < 1e-5       # in gamut: skimage's numbers
    back = color.rgb2lab(got.astype(np.float64))
    assert np.abs(back[..., 0] - l_star).max() < 1e-3   # out of gamut: L* kept ...
    hue_in = np.arctan2(ab[..., 1], ab[..., 0])
    hue_out = np.arctan2(back[..., 2], back[..., 1])
    chroma_out = np.hypot(back[..., 1], back[..., 2])
    moved = ~inside & (chroma_out > 5)
    dh = np.angle(np.exp(1j * (hue_out - hue_in)))[moved]
    assert np.median(np.abs(dh)) < 0.2                  # ... and hue roughly (mixing with gray is linear in RGB)
    assert (chroma_out[~inside] <= np.hypot(ab[..., 0], ab[..., 1])[~inside] + 1e-3).all()   # chroma only drops


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("gray", [True, False])
def test_code_tables_equal_skimage(dtype, gray):
    top = np.iinfo(dtype).max
    codes = RNG.integers(0, top + 1, (4000,) if gray else (4000, 3), dtype=dtype)
    rgb = (np.repeat(codes[:, None], 3, 1) if gray else codes) / top
    scratch = lab.Scratch()
    fy, y = lab.fy_y_from_codes(codes, scratch)
    np.testing.assert_allclose(fy * 116 - 16, color.rgb2lab(rgb[None])[0, :, 0], atol=1e-4)
    np.testing.assert_allclose(y, color.rgb2xyz(rgb[None])[0, :, 1], atol=1e-6)
    np.testing.assert_allclose(lab.luma_from_codes(codes, scratch), color.rgb2gray(rgb[None])[0], atol=1e-6)


@pytest.mark.parametrize("gray", [True, False])
def test_keep_l_finish_equals_a_skimage_reference(gray):
    """Up-sampling, the paper's w(Y), the gain and quantisation, against the same steps written with skimage."""
    h, w = 50, 70
    src = RNG.integers(30, 226, (h, w) if gray else (h, w, 3), dtype=np.uint8)
    ab = RNG.uniform(-8, 8, (2, h, w)).astype(np.float32)          # mild: in gamut, no mapping involved
    out = finish(src, None, ab, make_options("default", saturation=1.3), np.dtype(np.uint8))
    rgb = (np.stack([src] * 3, -1) if gray else src) / 255.0
    wy = -2.5 * color.rgb2gray(rgb) ** 2 + 2.5 * color.rgb2gray(rgb) + 0.375
    lab_img = np.concatenate([color.rgb2lab(rgb)[..., :1], ab.transpose(1, 2, 0) * (wy * 1.3)[..., None]], -1)
    lin = _lab2rgb_unclipped(lab_img)
    assert ((lin >= 0) & (lin <= 1)).all()
    ref = np.clip(np.rint(color.lab2rgb(lab_img) * 255), 0, 255)
    assert np.abs(out.astype(int) - ref).max() <= 1 and np.mean(out != ref) < 0.01


@pytest.mark.parametrize("preset", ["default", "seed"])
def test_finish_is_the_same_in_one_band_or_many(monkeypatch, preset):
    import patchcolor.finish as fin
    rgba = RNG.integers(0, 65536, (37, 29, 4), dtype=np.uint16)
    ab = RNG.uniform(-70, 70, (2, 9, 7)).astype(np.float32)
    opts = make_options(preset)
    color_view = rgba[..., :3]                                        # not contiguous, as the service sends it
    one = finish(color_view, rgba[..., 3], ab, opts, np.dtype(np.uint16))
    monkeypatch.setattr(fin, "BAND_PIXELS", 29 * 3)                    # 13 bands, the last one short
    many = finish(color_view, rgba[..., 3], ab, opts, np.dtype(np.uint16))
    np.testing.assert_array_equal(one, many)
