"""Steps 3 and 6: Lab numbers equal skimage's; output lightness equals the input's; the seed's post-process."""
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


def _seed_postprocess_reference(rgb_u8: np.ndarray, ab_hw2: np.ndarray) -> np.ndarray:
    """The seed's util.postprocess + desaturate + img_as_ubyte, written out with skimage in float64."""
    from skimage.util import img_as_ubyte

    l_star = color.rgb2lab(rgb_u8)[..., :1]
    rgb = color.lab2rgb(np.concatenate([l_star, ab_hw2.astype(np.float64)], axis=2))
    y = color.rgb2gray(rgb_u8)
    hsv = color.rgb2hsv(rgb)
    hsv[..., 1] *= -2.5 * y ** 2 + 2.5 * y + 0.375
    return img_as_ubyte(color.hsv2rgb(hsv))


def test_seed_finish_matches_the_seed_postprocess():
    rgb = RNG.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    ab = RNG.uniform(-60, 60, (2, 40, 60)).astype(np.float32)
    out = finish(rgb, None, ab, make_options("seed"), np.dtype(np.uint8))
    ref = _seed_postprocess_reference(rgb, ab.transpose(1, 2, 0))
    assert np.abs(out.astype(int) - ref).max() <= 1          # float32 vs the seed's float64
    assert np.mean(out != ref) < 0.01


def test_desaturation_weight_values():
    y = np.array([0, 0.25, 0.5, 0.75, 1], np.float32)
    np.testing.assert_allclose(desaturation_weight(y), [0.375, 0.84375, 1.0, 0.84375, 0.375], atol=1e-6)
