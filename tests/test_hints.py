"""Colour hints: hint map -> blobs -> network hint inputs (geometry, colours, spread), and the pipeline, recompose
and preview with hints on a planted "hint-echo" SIGGRAPH17 whose output at a hinted pixel follows the hint."""
from __future__ import annotations

import logging

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from skimage import color

from fake_colorizers import FILE_NAMES, random_state_dict, write_colorizer_pth
from patchcolor.colorizers import load_colorizer, predict_ab
from patchcolor.errors import BadOptions
from patchcolor.hints import DEFAULT_SPREAD, extract_hints
from patchcolor.options import make_options
from patchcolor.pipeline import Pipeline
from patchcolor.prepare import SourceImage
from patchcolor.preview import PreviewSession
from patchcolor.segment.base import Instance

RED, BLUE = (220, 40, 40), (40, 60, 230)


def _lab_ab(rgb) -> np.ndarray:
    return color.rgb2lab(np.array([[rgb]], np.uint8))[0, 0, 1:]


def _rgba_map(w: int, h: int, dabs: list[tuple[int, int, int, int, tuple, int]]) -> SourceImage:
    """Transparent map with rectangles (x0, y0, x1, y1, rgb, alpha) painted in order."""
    m = np.zeros((h, w, 4), np.uint8)
    for x0, y0, x1, y1, rgb, a in dabs:
        m[y0:y1, x0:x1] = (*rgb, a)
    return SourceImage(np.ascontiguousarray(m[..., :3]), np.ascontiguousarray(m[..., 3]))


# -- the hint map -> blobs -> points ---------------------------------------------------------------------------

def test_each_blob_gets_its_mean_lab_colour_weighted_by_alpha():
    hm = _rgba_map(60, 40, [(5, 5, 10, 10, RED, 255), (30, 20, 34, 24, BLUE, 255), (34, 20, 38, 24, RED, 85)])
    h = extract_hints(hm, (60, 40), (60, 40))
    assert len(h) == 2
    np.testing.assert_allclose(h.ab[0], _lab_ab(RED), atol=1e-3)
    blue_red = (16 * _lab_ab(BLUE) * 1.0 + 16 * _lab_ab(RED) * (85 / 255)) / (16 + 16 * 85 / 255)
    np.testing.assert_allclose(h.ab[1], blue_red, atol=1e-3)       # one touching blob, alpha-weighted mean
    assert len(h.xy) == 25 + 32 and set(h.blob.tolist()) == {0, 1}


def test_painted_conventions_rgb_gray_and_gray_alpha():
    gray = np.full((30, 40), 120, np.uint8)
    rgb = np.repeat(gray[..., None], 3, axis=2)
    rgb[10:14, 20:24] = BLUE                                      # a gray photo with a colour dab: one hint
    h = extract_hints(SourceImage(rgb), (40, 30), (40, 30))
    assert len(h) == 1 and len(h.xy) == 16
    np.testing.assert_allclose(h.ab[0], _lab_ab(BLUE), atol=1e-3)
    assert len(extract_hints(SourceImage(gray), (40, 30), (40, 30))) == 0      # gray without alpha: nothing
    alpha = np.zeros_like(gray)
    alpha[3:6, 3:6] = 255
    neutral = extract_hints(SourceImage(gray, alpha), (40, 30), (40, 30))
    assert len(neutral) == 1 and not neutral.ab.any()
    assert len(extract_hints(_rgba_map(40, 30, []), (40, 30), (40, 30))) == 0


def test_hint_map_must_have_the_photos_shape():
    with pytest.raises(BadOptions, match="hint image is 50x50 but the photo is 60x40"):
        extract_hints(_rgba_map(50, 50, []), (60, 40), (60, 40))
    half = extract_hints(_rgba_map(30, 20, [(10, 10, 11, 11, RED, 255)]), (60, 40), (60, 40))   # a scaled copy
    assert sorted(map(tuple, half.xy.tolist())) == [(20, 20), (20, 21), (21, 20), (21, 21)]  # cells under it


@pytest.mark.parametrize("seed", range(3))
def test_downscaling_never_loses_a_one_pixel_dab(seed):
    rng = np.random.default_rng(seed)
    dabs = [(int(x), int(y), int(x) + 1, int(y) + 1, RED, 255)
            for x, y in zip(rng.integers(0, 1600, 12), rng.integers(0, 1200, 12))]
    h = extract_hints(_rgba_map(1600, 1200, dabs), (1600, 1200), (200, 150))
    cells = {(x * 200 // 1600, y * 150 // 1200) for x, y, *_ in dabs}       # the cell holding each dab's centre
    assert set(map(tuple, h.xy.tolist())) == cells
    ab, mask = h.net_input(None, 64)
    assert mask.sum() >= 25 and mask.shape == (1, 64, 64) and ab.shape == (2, 64, 64)


def _square(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask[0])
    return int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())


@pytest.mark.parametrize("spread", [0, DEFAULT_SPREAD, 4])
def test_full_image_point_is_a_square_of_the_reference_size(spread):
    hm = _rgba_map(600, 400, [(301, 201, 302, 202, BLUE, 255)])
    h = extract_hints(hm, (600, 400), (300, 200), spread)
    assert h.xy.tolist() == [[150, 100]]
    ab, mask = h.net_input(None, 64)
    u, v = int((150 + 0.5) * 64 / 300), int((100 + 0.5) * 64 / 200)     # the net pixel holding the point
    assert _square(mask) == (u - spread, v - spread, u + spread, v + spread)
    assert mask.sum() == (2 * spread + 1) ** 2 and set(np.unique(mask)) == {0.0, 1.0}
    np.testing.assert_allclose(ab[:, mask[0] > 0].T, np.tile(_lab_ab(BLUE), ((2 * spread + 1) ** 2, 1)), atol=1e-3)
    assert not ab[:, mask[0] == 0].any()


def test_crop_maps_hints_through_the_crop_and_its_stretch():
    hm = _rgba_map(300, 200, [(150, 100, 151, 101, RED, 255), (10, 10, 12, 12, BLUE, 255)])
    h = extract_hints(hm, (300, 200), (300, 200))
    box = (140, 95, 160, 105)                           # 20 x 10 working pixels stretched to 64 x 64
    ab, mask = h.net_input(box, 64)
    # net pixels whose centre falls in working pixel 150 / 100 of the box, then grown by the spread
    us = [u for u in range(64) if int((u + 0.5) * 20 / 64) + 140 == 150]
    vs = [v for v in range(64) if int((v + 0.5) * 10 / 64) + 95 == 100]
    s = DEFAULT_SPREAD
    assert _square(mask) == (us[0] - s, vs[0] - s, us[-1] + s, vs[-1] + s)
    np.testing.assert_allclose(ab[:, vs[0], us[0]], _lab_ab(RED), atol=1e-3)   # the blue dab is outside the box
    assert h.touches(box) and not h.touches((200, 0, 300, 50)) and h.net_input((200, 0, 300, 50), 64) is None


# -- the hint path against the reference implementation's numerics ------------------------------------------------

def reference_siggraph17(sd: dict[str, torch.Tensor], input_a: torch.Tensor, input_b: torch.Tensor | None = None,
                         mask_b: torch.Tensor | None = None) -> torch.Tensor:
    """richzhang/colorization ``SIGGRAPHGenerator.forward`` written out functionally from the reference doc
    (shared/reference/seed-and-models.md §2.4, §2.7) on a raw state_dict, independently of the project's module:
    input [(L − 50)/100, a/110, b/110, mask as is], defaults input_B = 0 and mask_B = 0, output tanh × 110."""
    def conv(x, k, stride=1, pad=1, dil=1):
        return F.conv2d(x, sd[k + ".weight"], sd[k + ".bias"], stride, pad, dil)

    def up(x, k):
        return F.conv_transpose2d(x, sd[k + ".weight"], sd[k + ".bias"], 2, 1)

    def bn(x, k):
        return F.batch_norm(x, sd[k + ".running_mean"], sd[k + ".running_var"], sd[k + ".weight"],
                            sd[k + ".bias"], False, 0.0, 1e-5)

    def block(x, m, n_conv, dil=1):
        for i in range(n_conv):
            x = F.relu(conv(x, f"{m}.{2 * i}", pad=dil, dil=dil))
        return bn(x, f"{m}.{2 * n_conv}")

    if input_b is None:
        input_b = torch.cat((input_a * 0, input_a * 0), dim=1)
    if mask_b is None:
        mask_b = input_a * 0
    x = torch.cat(((input_a - 50.0) / 100.0, input_b / 110.0, mask_b), dim=1)
    conv1_2 = block(x, "model1", 2)
    conv2_2 = block(conv1_2[:, :, ::2, ::2], "model2", 2)
    conv3_3 = block(conv2_2[:, :, ::2, ::2], "model3", 3)
    x = block(conv3_3[:, :, ::2, ::2], "model4", 3)
    x = block(block(x, "model5", 3, dil=2), "model6", 3, dil=2)
    x = block(x, "model7", 3)
    x = up(x, "model8up.0") + conv(conv3_3, "model3short8.0")
    x = bn(F.relu(conv(F.relu(conv(F.relu(x), "model8.1")), "model8.3")), "model8.5")
    x = up(x, "model9up.0") + conv(conv2_2, "model2short9.0")
    x = bn(F.relu(conv(F.relu(x), "model9.1")), "model9.3")
    x = up(x, "model10up.0") + conv(conv1_2, "model1short10.0")
    x = F.leaky_relu(conv(F.relu(x), "model10.1"), 0.2)
    return torch.tanh(F.conv2d(x, sd["model_out.0.weight"], sd["model_out.0.bias"])) * 110.0


def ideepcolor_points(points: list[tuple[int, int, tuple]], n: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """The reference UI's hint inputs (ideepcolor ``PointEdit.updateInput``): each (x, y, rgb) user point a
    filled cv2.rectangle (x − w, y − w)..(x + w, y + w) of its a/b on a zero map, and of 1 on the mask."""
    ab, mask = np.zeros((n, n, 2), np.float32), np.zeros((n, n), np.float32)
    for x, y, rgb in points:
        cv2.rectangle(ab, (x - w, y - w), (x + w, y + w), tuple(float(v) for v in _lab_ab(rgb)), -1)
        cv2.rectangle(mask, (x - w, y - w), (x + w, y + w), 1.0, -1)
    return ab.transpose(2, 0, 1).copy(), mask[None]


@pytest.fixture(scope="module")
def sig_weights() -> dict[str, torch.Tensor]:
    return random_state_dict("siggraph17", seed=11)


@pytest.fixture(scope="module")
def sig_model(sig_weights, tmp_path_factory):
    folder = tmp_path_factory.mktemp("sig-models")
    torch.save(sig_weights, folder / FILE_NAMES["siggraph17"])
    return load_colorizer("siggraph17", folder / FILE_NAMES["siggraph17"], torch.device("cpu"))


def test_hint_path_matches_the_reference_forward_on_identical_weights(sig_weights, sig_model):
    n, spread = 64, DEFAULT_SPREAD
    rng = np.random.default_rng(5)
    work = rng.integers(0, 256, (n, n), dtype=np.uint8)
    pts = [(10, 12, RED), (40, 50, BLUE), (61, 3, (30, 160, 60))]       # one clipped by the border
    hm = _rgba_map(n, n, [(x, y, x + 1, y + 1, rgb, 255) for x, y, rgb in pts])
    ours = extract_hints(hm, (n, n), (n, n), spread).net_input(None, n)
    ref_ab, ref_mask = ideepcolor_points(pts, n, spread)
    np.testing.assert_array_equal(ours[1], ref_mask)                    # the reference's hint layout, exactly
    np.testing.assert_allclose(ours[0], ref_ab, atol=1e-3)
    l_in = np.stack([work.astype(np.float32) * (100 / 255), rng.uniform(0, 100, (n, n)).astype(np.float32)])
    got = predict_ab(sig_model, list(l_in), [(n, n), (40, 24)], hints=[ours, None], batch_size=2)
    with torch.inference_mode():
        la = torch.from_numpy(l_in[:, None])
        ref_hinted = reference_siggraph17(sig_weights, la[:1], torch.from_numpy(ref_ab)[None],
                                          torch.from_numpy(ref_mask)[None])
        ref_auto = reference_siggraph17(sig_weights, la[1:])
        ref_auto = F.interpolate(ref_auto, size=(40, 24), mode="bilinear", align_corners=False)
        unhinted = reference_siggraph17(sig_weights, la[:1])
    np.testing.assert_allclose(got[0], ref_hinted[0].numpy(), atol=2e-3)     # a/b units (±110)
    np.testing.assert_allclose(got[1], ref_auto[0].numpy(), atol=2e-3)       # the hint-less input of a mixed batch
    assert (ref_hinted - unhinted).abs().max().item() > 1                     # the hints do matter here


def test_no_hints_runs_exactly_the_automatic_forward(sig_model):
    rng = np.random.default_rng(6)
    l_in = [rng.uniform(0, 100, (64, 64)).astype(np.float32) for _ in range(2)]
    auto = predict_ab(sig_model, l_in, [(64, 64)] * 2)
    for hints in (None, [None, None]):
        for a, b in zip(auto, predict_ab(sig_model, l_in, [(64, 64)] * 2, hints=hints)):
            np.testing.assert_array_equal(a, b)
    with torch.inference_mode():                         # the reference's zero defaults are automatic mode
        x = torch.from_numpy(np.stack(l_in)[:, None])
        zeros = torch.zeros(2, 1, 64, 64)
        np.testing.assert_allclose(sig_model(x, torch.cat([zeros, zeros], 1), zeros).numpy(),
                                   np.stack(auto), atol=1e-4)


def test_hints_need_siggraph17(tmp_path):
    eccv = load_colorizer("eccv16", write_colorizer_pth("eccv16", tmp_path), torch.device("cpu"))
    hint = (np.zeros((2, 64, 64), np.float32), np.zeros((1, 64, 64), np.float32))
    with pytest.raises(ValueError, match="siggraph17"):
        predict_ab(eccv, [np.zeros((64, 64), np.float32)], [(64, 64)], hints=[hint])


@pytest.mark.parametrize("spread", [0, 4])
def test_spread_option_changes_the_square_the_network_sees(spread):
    hm = _rgba_map(64, 64, [(30, 30, 31, 31, RED, 255)])
    mask = extract_hints(hm, (64, 64), (64, 64), spread).net_input(None, 64)[1]
    np.testing.assert_array_equal(mask, ideepcolor_points([(30, 30, RED)], 64, spread)[1])
    assert make_options("default").hint_spread == DEFAULT_SPREAD == 2
    with pytest.raises(ValueError, match="hint_spread"):
        make_options("default", hint_spread=5)


# -- the pipeline on a planted SIGGRAPH17 ----------------------------------------------------------------------

def echo_siggraph17(seed: int = 7) -> dict[str, torch.Tensor]:
    """Random SIGGRAPH17 weights (official keys) plus 4 channels that carry the hint a/b straight to the output:
    conv1 makes relu(±a/110), relu(±b/110) at the same pixel, identity 3x3 centre taps pass them through model1,
    model1short10 and model10 (the deep path never sees them and adds nothing to them), and model_out adds
    (c0 − c1, c2 − c3) to its random a/b logits. So a hinted pixel's output moves toward the hint (tanh is
    monotonic) and every other pixel's output is exactly the automatic one."""
    sd = random_state_dict("siggraph17", seed)
    e = slice(0, 4)

    def identity(name: str) -> None:
        w = sd[name + ".weight"]
        w[e] = 0
        w[4:, e] = 0
        for i in range(4):
            w[i, i, 1, 1] = 1
        sd[name + ".bias"][e] = 0

    w = sd["model1.0.weight"]
    w[e], w[4:, 1:] = 0, 0                              # other channels never see the hints
    for ch, (src, sign) in enumerate([(1, 1), (1, -1), (2, 1), (2, -1)]):
        w[ch, src, 1, 1] = sign
    sd["model1.0.bias"][e] = 0
    identity("model1.2")
    for k, v in (("weight", 1.0), ("bias", 0.0), ("running_mean", 0.0), ("running_var", 1.0)):
        sd[f"model1.4.{k}"][e] = v
    sd["model2.0.weight"][:, e] = 0
    identity("model1short10.0")
    sd["model10up.0.weight"][:, e] = 0
    sd["model10up.0.bias"][e] = 0
    identity("model10.1")
    out = sd["model_out.0.weight"]
    out[:, e] = 0
    out[0, 0, 0, 0], out[0, 1, 0, 0], out[1, 2, 0, 0], out[1, 3, 0, 0] = 1, -1, 1, -1
    return sd


class FixedDetector:
    """Stands in for the detector: two objects with elliptic masks (the real detector is tested elsewhere)."""

    BOXES = [(8.0, 10.0, 52.0, 70.0), (70.0, 20.0, 122.0, 84.0)]

    def detect(self, image, settings):
        out = []
        for i, (x0, y0, x1, y1) in enumerate(self.BOXES):
            h, w = int(y1 - y0), int(x1 - x0)
            yy, xx = np.mgrid[:h, :w]
            mask = ((xx - w / 2) / (w / 2)) ** 2 + ((yy - h / 2) / (h / 2)) ** 2 <= 1
            out.append(Instance(0, 0.9 - 0.1 * i, (x0, y0, x1, y1), mask, (int(x0), int(y0))))
        return out


@pytest.fixture(scope="module")
def echo_pipe(tmp_path_factory):
    folder = tmp_path_factory.mktemp("echo-models")
    torch.save(echo_siggraph17(), folder / FILE_NAMES["siggraph17"])
    write_colorizer_pth("eccv16", folder, seed=1)
    pipe = Pipeline(folder, device="cpu")
    pipe._models["detector:r101"] = FixedDetector()   # what Pipeline.detector() returns once loaded
    return pipe


@pytest.fixture(scope="module")
def src(photo_gray) -> SourceImage:
    return SourceImage(np.asarray(Image.fromarray(photo_gray).resize((128, 96), Image.BICUBIC)))


SIG = dict(colorizer="siggraph17", net_size=64, context=0.0)
# with context 0 the crop boxes are the boxes grown toward square: (0, 10, 60, 70) and (64, 20, 128, 84)
HINT_IN_BOX1 = (28, 36, 32, 40, BLUE, 255)
HINT_OUTSIDE = (56, 4, 66, 10, RED, 255)


@pytest.fixture(scope="module")
def plain(echo_pipe, src):
    return echo_pipe.run(src, make_options("default", **SIG))


def _ab(image: np.ndarray) -> np.ndarray:
    return color.rgb2lab(image[..., :3])[..., 1:]


def test_the_echo_network_follows_hints_and_matches_automatic_elsewhere(echo_pipe):
    model = echo_pipe.colorizer("siggraph17")
    l = torch.rand(1, 1, 64, 64) * 100
    hint_ab, mask = torch.zeros(1, 2, 64, 64), torch.zeros(1, 1, 64, 64)
    hint_ab[0, :, 30, 40] = torch.tensor([60.0, -80.0])
    mask[0, 0, 30, 40] = 1
    with torch.inference_mode():
        auto, hinted = model(l), model(l, hint_ab, mask)
    moved = (hinted - auto)[0, :, 30, 40]
    assert moved[0] > 20 and moved[1] < -20
    keep = torch.ones(64, 64, dtype=torch.bool)
    keep[30, 40] = False
    # equal elsewhere up to float rounding: Winograd convolutions (patchcolor.winograd) transform 6×6 tiles, so the
    # hinted pixel's tile neighbours are rounded differently (exact equality holds with plain convolutions)
    assert (hinted[0][:, keep] - auto[0][:, keep]).abs().max() < 1e-3


def test_hinted_pixels_move_toward_the_hint_in_the_full_image_and_the_crop(echo_pipe, src, plain):
    res = echo_pipe.run(src, make_options("default", **SIG), hints=_rgba_map(128, 96, [HINT_IN_BOX1]))
    assert res.hint_count == 1 and res.state.inst_boxes == [(0, 10, 60, 70), (64, 20, 128, 84)]
    moved = (_ab(res.image) - _ab(plain.image))[36:40, 28:32].mean(axis=(0, 1))
    hint = _lab_ab(BLUE)
    assert moved @ hint / np.linalg.norm(hint) > 10        # toward the hint by more than 10 Lab units
    full_moved = res.state.full_ab - plain.state.full_ab   # the full image's own a/b, before fusion
    assert full_moved[:, 36:40, 28:32].mean(axis=(1, 2)) @ hint > 0
    near = np.zeros((96, 128), bool)
    near[20:56, 12:48] = True
    assert not full_moved[:, ~near].any()
    # the hint lies in crop 0 only: its a/b moved there, crop 1's a/b is bit-for-bit the automatic one
    x0, y0 = res.state.inst_boxes[0][:2]
    crop_moved = (res.state.inst_ab[0] - plain.state.inst_ab[0])[:, 36 - y0:40 - y0, 28 - x0:32 - x0].mean(axis=(1, 2))
    assert crop_moved @ hint > 0
    np.testing.assert_array_equal(res.state.inst_ab[1], plain.state.inst_ab[1])
    np.testing.assert_array_equal(res.image[~near], plain.image[~near])   # away from the hint and its spread


def test_hints_outside_every_box_change_only_the_full_image_ab(echo_pipe, src, plain):
    res = echo_pipe.run(src, make_options("default", **SIG), hints=_rgba_map(128, 96, [HINT_OUTSIDE]))
    for got, want in zip(res.state.inst_ab, plain.state.inst_ab):
        np.testing.assert_array_equal(got, want)
    assert not np.array_equal(res.state.full_ab, plain.state.full_ab)


def test_no_hints_is_bit_equal_to_automatic(echo_pipe, src, plain):
    for hints in (None, _rgba_map(128, 96, [])):
        res = echo_pipe.run(src, make_options("default", **SIG), hints=hints)
        np.testing.assert_array_equal(res.image, plain.image)
        assert res.hint_count == 0 and res.state.hints is None


def test_hints_switch_to_siggraph17_and_say_so_once(tmp_path, src, caplog):
    torch.save(echo_siggraph17(), tmp_path / FILE_NAMES["siggraph17"])
    pipe = Pipeline(tmp_path, device="cpu")             # no eccv16 file: asking for it must not load it
    opts = make_options("default", **dict(SIG, colorizer="eccv16"), detector="none")
    hints = _rgba_map(128, 96, [HINT_IN_BOX1])
    with caplog.at_level(logging.WARNING, logger="patchcolor"):
        first = pipe.run(src, opts, hints=hints)
        pipe.run(src, opts, hints=hints)
    said = [r for r in caplog.records if "siggraph17" in r.getMessage()]
    assert len(said) == 1 and "eccv16" in said[0].getMessage()
    same = pipe.run(src, make_options("default", **SIG, detector="none"), hints=hints)
    np.testing.assert_array_equal(first.image, same.image)


def test_recompose_recolorizes_a_grown_instance_with_the_jobs_hints(echo_pipe, src, plain):
    opts = make_options("default", **SIG)
    res = echo_pipe.run(src, opts, hints=_rgba_map(128, 96, [HINT_IN_BOX1]))
    masks = [i.full_mask(128, 96) for i in res.instances]
    masks[0][60:92, 4:60] = 255                          # grow object 0 beyond its crop box: colorized again
    again = echo_pipe.recompose(src, res.state, masks, opts)
    auto = echo_pipe.recompose(src, plain.state, masks, opts)
    assert again.state.hints is res.state.hints and again.state.inst_boxes[0] != res.state.inst_boxes[0]
    x0, y0 = again.state.inst_boxes[0][:2]
    moved = (again.state.inst_ab[0] - auto.state.inst_ab[0])[:, 36 - y0:40 - y0, 28 - x0:32 - x0].mean(axis=(1, 2))
    assert moved @ _lab_ab(BLUE) > 0


# -- the preview ---------------------------------------------------------------------------------------------------

def test_preview_at_full_size_is_the_run_and_refreshes_recompute_only_what_changed(echo_pipe, src, plain):
    session = PreviewSession(echo_pipe, src, long_side=128)     # proxy = the image itself: exactly the run
    opts = make_options("default", **SIG)
    first = session.render(opts)
    assert first.computed == 3 and first.instances == 2 and first.hints == 0
    np.testing.assert_array_equal(first.image, plain.image)
    assert session.render(make_options("default", **SIG, saturation=1.5, feather=0.1)).computed == 0
    hints = _rgba_map(128, 96, [HINT_IN_BOX1])
    hinted = session.render(opts, hints=hints)
    assert hinted.computed == 2 and hinted.hints == 1          # the full image and the crop with the hint
    run = echo_pipe.run(src, opts, hints=hints)
    assert np.abs(hinted.image.astype(int) - run.image).max() <= 1     # same colours (batching may round apart)
    assert session.render(opts, hints=_rgba_map(128, 96, [HINT_OUTSIDE])).computed == 1   # full image only
    assert session.render(opts).computed == 0                           # back to cached automatic colours


def test_preview_proxy_is_small_and_follows_the_run(echo_pipe, src, plain):
    session = PreviewSession(echo_pipe, src, long_side=64)
    pv = session.render(make_options("default", **SIG))
    assert pv.image.shape == (48, 64, 3) and pv.image.dtype == np.uint8
    small = np.asarray(Image.fromarray(plain.image).resize((64, 48), Image.BOX))
    assert np.abs(pv.image.astype(int) - small).mean() < 2


# -- hint images on the command line ------------------------------------------------------------------------------

def _save(path, arr) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def test_hint_files_one_file_or_same_named_in_a_folder(tmp_path):
    from patchcolor.hint_files import HintFiles

    ins, hints = tmp_path / "in", tmp_path / "hints"
    dab = np.zeros((20, 30, 4), np.uint8)
    dab[5:8, 5:8] = (*RED, 255)
    for name in ("a.jpg", "b.png", "c.png"):
        _save(ins / name, np.full((20, 30, 3), 128, np.uint8))
    _save(hints / "a.png", dab)                           # same stem, PNG
    _save(hints / "b.png", dab)                           # same file name
    files = HintFiles.from_arg(hints, [ins], 3)
    assert files.path_for(ins / "a.jpg") == hints / "a.png" and files.path_for(ins / "b.png") == hints / "b.png"
    assert files.path_for(ins / "c.png") is None and files.load(ins / "c.png", 10**8) is None
    hm = files.load(ins / "a.jpg", 10**8)
    assert hm.alpha is not None and len(extract_hints(hm, (30, 20), (30, 20))) == 1
    one = HintFiles.from_arg(hints / "a.png", [ins / "a.jpg"], 1)
    assert one.path_for(ins / "a.jpg") == hints / "a.png"
    assert not HintFiles.from_arg(None, [ins], 3)
    with pytest.raises(BadOptions, match="one hint image but there are 3 inputs"):
        HintFiles.from_arg(hints / "a.png", [ins], 3)
    with pytest.raises(BadOptions, match="is an input folder"):
        HintFiles.from_arg(ins, [ins], 3)
    with pytest.raises(BadOptions, match="no such file or folder"):
        HintFiles.from_arg(tmp_path / "nope.png", [ins], 1)
    (hints / "b.png").write_bytes(b"not an image")
    from patchcolor.errors import ImageUnreadable
    with pytest.raises(ImageUnreadable, match="hint image"):
        files.load(ins / "b.png", 10**8)


def test_cli_hints_file_and_folder(tmp_path, models_dir, pipeline, photo_gray, caplog, capsys):
    from patchcolor.cli import main

    ins, hints, out = tmp_path / "in", tmp_path / "hints", tmp_path / "out"
    photo = np.asarray(Image.fromarray(photo_gray).resize((64, 48), Image.BICUBIC))
    _save(ins / "a.png", photo)
    _save(ins / "b.jpg", photo)
    dab = np.zeros((48, 64, 4), np.uint8)
    dab[20:26, 30:36] = (*BLUE, 255)
    _save(hints / "a.png", dab)                     # b has no hint image: colorized without hints
    base = ["--models", str(models_dir), "--detector", "none", "--device", "cpu", "--colorizer", "eccv16"]
    with caplog.at_level(logging.INFO, logger="patchcolor"):
        assert main(["colorize", str(ins), "-o", str(out), "--hints", str(hints), *base]) == 0
    said = [r.getMessage() for r in caplog.records if "siggraph17" in r.getMessage()]
    assert len(said) == 1 and "eccv16" in said[0]                   # hints force siggraph17, said once
    assert any("no hint image for b.jpg" in r.getMessage() for r in caplog.records)
    got_a = np.asarray(Image.open(out / "a.png"))
    got_b = np.asarray(Image.open(out / "b.png"))
    opts = make_options("default", detector="none")
    want_a = pipeline.run(SourceImage(photo), opts, hints=SourceImage(dab[..., :3].copy(), dab[..., 3].copy()))
    np.testing.assert_array_equal(got_a, want_a.image)              # = Pipeline.run with the hint map
    np.testing.assert_array_equal(got_b, pipeline.run(SourceImage(np.asarray(Image.open(ins / "b.jpg"))),
                                                      opts).image)  # eccv16, automatic
    one = tmp_path / "one"
    assert main(["colorize", str(ins / "a.png"), "-o", str(one), "--hints", str(hints / "a.png"),
                 "--hint-spread", "0", *base]) == 0
    spread0 = pipeline.run(SourceImage(photo), make_options("default", detector="none", hint_spread=0),
                           hints=SourceImage(dab[..., :3].copy(), dab[..., 3].copy()))
    np.testing.assert_array_equal(np.asarray(Image.open(one / "a.png")), spread0.image)
    assert not np.array_equal(spread0.image, want_a.image)
    capsys.readouterr()
    assert main(["colorize", str(ins), "-o", str(tmp_path / "x"), "--hints", str(hints / "a.png"), *base]) == 1
    assert "one hint image but there are 2 inputs" in capsys.readouterr().err
    _save(hints / "c.png", np.zeros((10, 10, 4), np.uint8))
    _save(ins / "c.png", photo)
    assert main(["colorize", str(ins / "c.png"), "-o", str(tmp_path / "y"), "--hints", str(hints), *base]) == 1
    assert "hint image is 10x10 but the photo is 64x48" in capsys.readouterr().err


@pytest.mark.parametrize("seed", range(4))
def test_plugin_blob_count_matches_the_backends(seed):
    """patchcolor_client.hintmap.count_blobs (stdlib, run in GIMP for "N hints found") = the backend's blobs."""
    from patchcolor_client.hintmap import count_blobs, is_hint_layer_name

    rng = np.random.default_rng(seed)
    alpha = np.zeros((120, 170), np.uint8)
    for _ in range(25):
        x, y, w, h = rng.integers(0, 170), rng.integers(0, 120), rng.integers(1, 9), rng.integers(1, 9)
        alpha[y:y + h, x:x + w] = rng.integers(1, 256)
    alpha[60, 60], alpha[61, 61] = 255, 255            # diagonal neighbours: one blob
    n_cv = cv2.connectedComponents((alpha > 0).view(np.uint8), connectivity=8)[0] - 1
    assert count_blobs(alpha.tobytes(), 170, 120) == n_cv
    hm = SourceImage(np.full((120, 170, 3), (200, 30, 30), np.uint8), alpha)
    assert len(extract_hints(hm, (170, 120), (170, 120))) == n_cv
    assert count_blobs(bytes(170 * 120), 170, 120) == 0
    assert is_hint_layer_name("Colour hints") and is_hint_layer_name("color HINTS #2")
    assert not is_hint_layer_name("Colour hints old") and not is_hint_layer_name("Background")
