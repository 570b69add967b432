"""Step 5: fusion rules — outside every mask nothing changes; the overlap rule of each mode; no seam."""
from __future__ import annotations

import numpy as np

from patchcolor.fuse import FuseItem, feather_alpha, fuse

H, W = 60, 80


def _item(x0, y0, x1, y1, value, mask=None):
    """An instance whose crop box is (x0, y0, x1, y1) and whose a/b is constant ``value``."""
    m = np.ones((y1 - y0, x1 - x0), bool) if mask is None else mask
    ab = np.full((2, y1 - y0, x1 - x0), value, np.float32)
    return FuseItem(m, (x0, y0), ab, (x0, y0, x1, y1))


def _full():
    rng = np.random.default_rng(1)
    return rng.uniform(-20, 20, (2, H, W)).astype(np.float32)


def _outside(items):
    inside = np.zeros((H, W), bool)
    for it in items:
        x, y = it.mask_origin
        inside[y:y + it.mask.shape[0], x:x + it.mask.shape[1]] |= it.mask
    return ~inside


def test_paper_mode_hard_replace_and_later_wins():
    full = _full()
    a, b = _item(10, 10, 40, 40, 50.0), _item(30, 30, 60, 50, -50.0)
    out = fuse(full, [a, b], "paper")
    assert np.all(out[:, 12, 12] == 50) and np.all(out[:, 45, 55] == -50)
    assert np.all(out[:, 35, 35] == -50)             # overlap: the later (lower score) instance wins
    assert np.all(fuse(full, [b, a], "paper")[:, 35, 35] == 50)
    assert np.all(fuse(full, [b, a], "paper", order="area")[:, 35, 35] == -50)  # a is larger: goes first
    outside = _outside([a, b])
    np.testing.assert_array_equal(out[:, outside], full[:, outside])
    assert full is not out and not np.shares_memory(full, out)


def test_paper_mode_mask_outside_int_box_keeps_previous():
    full = _full()
    mask = np.ones((12, 12), bool)      # mask window 1 px larger than the int box on the right/bottom
    it = FuseItem(mask, (10, 10), np.full((2, 11, 11), 9.0, np.float32), (10, 10, 21, 21))
    out = fuse(full, [it], "paper")
    assert np.all(out[:, 20, 20] == 9)
    np.testing.assert_array_equal(out[:, 21, 10:22], full[:, 21, 10:22])


def test_feather_smaller_on_top_and_outside_untouched():
    full = np.zeros((2, H, W), np.float32)
    big, small = _item(0, 0, 80, 60, 40.0), _item(30, 20, 50, 40, -40.0)
    assert fuse(full, [small, big], "feather", 0.05, order="score")[0, 30, 40] > 39   # as given: big on top
    for order in ([big, small], [small, big]):
        out = fuse(full, order, "feather", feather=0.05)
        assert out[0, 30, 40] < -39       # the small instance's centre shows its own colour
        assert out[0, 50, 10] > 39        # the big one elsewhere (well inside)
    mask = np.zeros((30, 40), bool)
    mask[5:25, 5:35] = True
    it = _item(20, 10, 60, 40, 30.0, mask)
    out = fuse(_full(), [it], "feather", 0.05)
    outside = _outside([it])
    np.testing.assert_array_equal(out[:, outside], _full()[:, outside])


def test_feather_has_no_chroma_step_at_the_border():
    full = np.zeros((2, H, W), np.float32)
    mask = np.zeros((40, 60), bool)
    mask[5:35, 5:55] = True
    it = _item(10, 10, 70, 50, 60.0, mask)
    hard = fuse(full, [it], "paper")[0]
    soft = fuse(full, [it], "feather", feather=0.05)[0]
    assert np.abs(np.diff(hard, axis=1)).max() == 60          # the paper's seam
    assert np.abs(np.diff(soft, axis=1)).max() < 60 / 3      # a ramp instead
    assert soft[30, 40] == 60                                 # interior reaches the instance colour


def test_feather_alpha_ramp():
    m = np.zeros((21, 21), bool)
    m[1:20, 1:20] = True
    a = feather_alpha(m, 4.0)
    assert a[0, 0] == 0 and a[10, 10] == 1 and 0 < a[1, 10] < a[3, 10] < 1
    np.testing.assert_array_equal(feather_alpha(m, 0), m.astype(np.float32))
