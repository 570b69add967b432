"""The whole pipeline on random official-format weights (biased detector so objects appear)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage import color

from patchcolor.errors import Cancelled, DeviceUnavailable, ImageTooLarge
from patchcolor.options import make_options
from patchcolor import pipeline as pipeline_module
from patchcolor.pipeline import Pipeline, crop_box
from patchcolor.prepare import SourceImage

FAST = dict(net_size=128)


def _l(img: np.ndarray) -> np.ndarray:
    top = 65535.0 if img.dtype == np.uint16 else 255.0
    rgb = np.stack([img] * 3, -1) if img.ndim == 2 else img[..., :3]
    return color.rgb2lab(rgb / top)[..., 0]


def _union(result, width, height) -> np.ndarray:
    inside = np.zeros((height, width), bool)
    for inst in result.instances:
        inside |= inst.full_mask(width, height) > 0
    return inside


@pytest.fixture(scope="module")
def runs(pipeline, photo_gray):
    src = SourceImage(photo_gray)
    opts = make_options("default", **FAST)
    events: list[tuple[str, float]] = []
    with_objects = pipeline.run(src, opts, progress=lambda s, f: events.append((s, f)))
    plain = pipeline.run(src, make_options("default", detector="none", **FAST))
    return src, opts, with_objects, plain, events


def test_objects_are_found_and_described(runs):
    src, _, res, _, _ = runs
    assert 1 <= len(res.instances) <= 100
    scores = [i.score for i in res.instances]
    assert scores == sorted(scores, reverse=True) and min(scores) >= 0.3
    for inst in res.instances:
        assert inst.class_name == "person" and inst.mask.dtype == bool and inst.mask.any()
        x, y = inst.mask_origin
        assert 0 <= x and 0 <= y and x + inst.mask.shape[1] <= src.width and y + inst.mask.shape[0] <= src.height
        x0, y0, x1, y1 = (int(v) for v in inst.box)      # the paper's small-box filter on int32-truncated boxes
        assert (x1 - x0) * (y1 - y0) > 0.001 * src.width * src.height


def test_output_lightness_equals_input(runs):
    src, _, res, _, _ = runs
    assert res.image.shape == (512, 512, 3) and res.image.dtype == np.uint8
    assert np.abs(_l(res.image) - _l(src.color)).max() < 0.6


def test_outside_every_mask_keeps_the_full_image_colour(runs):
    src, _, res, plain, _ = runs
    outside = ~_union(res, src.width, src.height)
    assert outside.any() and not outside.all()
    np.testing.assert_array_equal(res.image[outside], plain.image[outside])
    assert np.any(res.image[~outside] != plain.image[~outside])     # the instances did change something


def test_progress_covers_every_stage_in_order(runs):
    *_, events = runs
    stages = [s for s, _ in events]
    firsts = [stages.index(s) for s in ("prepare", "segment", "colorize", "fuse", "finish")]
    assert firsts == sorted(firsts)
    assert all(0.0 <= f <= 1.0 for _, f in events)


def test_recompose_unchanged_masks_reproduce_and_a_cleared_mask_changes_only_its_pixels(pipeline, runs):
    src, opts, res, plain, _ = runs
    w, h = src.width, src.height
    masks = [i.full_mask(w, h) for i in res.instances]
    same = pipeline.recompose(src, res.state, masks, opts)
    np.testing.assert_array_equal(same.image, res.image)
    k = len(masks) - 1
    masks[k] = np.zeros_like(masks[k])
    edited = pipeline.recompose(src, res.state, masks, opts)
    assert len(edited.instances) == len(res.instances) - 1
    only_k = (res.instances[k].full_mask(w, h) > 0) & ~_union(edited, w, h)
    changed = np.any(edited.image != res.image, axis=2)
    assert not np.any(changed & ~(res.instances[k].full_mask(w, h) > 0))     # nothing outside instance k
    np.testing.assert_array_equal(edited.image[only_k], plain.image[only_k])  # back to the full-image colour


def test_recompose_grown_mask_recolorizes_only_that_instance(pipeline, runs, monkeypatch):
    src, opts, res, _, _ = runs
    w, h = src.width, src.height
    assert len(res.instances) >= 2, "the biased detector found too few objects for this test"
    assert res.state.inst_boxes[0][:2] != (0, 0), "instance 0's crop box already starts at the corner"
    masks = [i.full_mask(w, h) for i in res.instances]
    masks[0][:] = 0
    masks[0][0:40, 0:40] = 255        # a new region, outside the kept crop box
    calls: list[list[tuple[int, int]]] = []
    real = pipeline_module.predict_ab

    def spy(model, inputs, sizes, *args, **kwargs):
        calls.append(list(sizes))
        return real(model, inputs, sizes, *args, **kwargs)

    monkeypatch.setattr(pipeline_module, "predict_ab", spy)
    edited = pipeline.recompose(src, res.state, masks, opts)
    x0, y0, x1, y1 = box = edited.state.inst_boxes[0]
    assert edited.instances[0].mask_origin == (0, 0) and (x0, y0) == (0, 0) and x1 >= 40 and y1 >= 40
    assert calls == [[(y1 - y0, x1 - x0)]], calls          # one network input: instance 0 on its new box only
    assert box != res.state.inst_boxes[0]
    for i in range(1, len(res.instances)):                 # the others keep their boxes and colours as they were
        assert edited.state.inst_boxes[i] == res.state.inst_boxes[i]
        assert edited.state.inst_ab[i] is res.state.inst_ab[i]
    assert edited.state.full_ab is res.state.full_ab
    assert np.any(edited.image[:40, :40] != res.image[:40, :40]), "the grown region's pixels did not change"


def test_seed_preset_works_at_1280_default_at_full_resolution(pipeline):
    g = (np.add.outer(np.arange(1200), np.arange(1600)) % 256).astype(np.uint8)
    src = SourceImage(g)
    published = pipeline.run(src, make_options("seed", detector="none", **FAST))
    assert published.image.shape == (960, 1280, 3)
    full = pipeline.run(src, make_options("default", detector="none", **FAST))
    assert full.image.shape == (1200, 1600, 3)
    assert np.abs(_l(full.image) - _l(g)).max() < 0.6


def test_16bit_rgba_in_16bit_rgba_out(pipeline):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 65536, (96, 128, 3), dtype=np.uint16)
    alpha = rng.integers(0, 65536, (96, 128), dtype=np.uint16)
    res = pipeline.run(SourceImage(rgb, alpha), make_options("default", detector="none", **FAST))
    assert res.image.dtype == np.uint16 and res.image.shape == (96, 128, 4)
    np.testing.assert_array_equal(res.image[..., 3], alpha)
    assert np.abs(_l(res.image) - _l(rgb)).max() < 0.01


def test_detector_reports_sub_stage_progress(runs):
    *_, events = runs
    inside = [f for s, f in events if s == "segment" and 0.0 < f < 1.0]
    assert len(inside) >= 6 and inside == sorted(inside)      # backbone levels, FPN, RPN, heads, in order


def test_cancel_stops_inside_the_detector(pipeline, photo_gray):
    seen: list[float] = []
    with pytest.raises(Cancelled):
        pipeline.run(SourceImage(photo_gray), make_options("default", **FAST),
                     progress=lambda s, f: seen.append(f) if s == "segment" else None,
                     cancelled=lambda: any(0.0 < f < 0.5 for f in seen))
    assert max(seen) < 0.5          # stopped after an early backbone level, not at the end of the forward


def test_cancel_stops_at_a_stage_boundary(pipeline, photo_gray):
    seen = []
    with pytest.raises(Cancelled):
        pipeline.run(SourceImage(photo_gray), make_options("default", detector="none", **FAST),
                     progress=lambda s, f: seen.append(s), cancelled=lambda: "colorize" in seen)
    assert "fuse" not in seen and "finish" not in seen


def test_limits_and_devices(models_dir):
    small = Pipeline(models_dir, device="cpu", max_pixels=100)
    with pytest.raises(ImageTooLarge):
        small.run(SourceImage(np.zeros((20, 20), np.uint8)), make_options("default"))
    from patchcolor.errors import ImageTooSmall
    for shape in ((1, 1), (1, 1, 3), (7, 300)):      # the service and Ray reach the pipeline without batch.read_item
        with pytest.raises(ImageTooSmall, match="too small to colorize") as e:
            small.run(SourceImage(np.zeros(shape, np.uint8)), make_options("default"))
        assert e.value.code == "image_too_small"
    import torch
    if not torch.cuda.is_available():
        with pytest.raises(DeviceUnavailable, match="CUDA GPU was asked for"):
            Pipeline(models_dir, device="cuda")


def test_bf16_runs_and_stays_close(pipeline, photo_gray, monkeypatch):
    import patchcolor.precision as prec
    monkeypatch.setattr(prec, "_cpu_native", lambda p: True)   # run autocast bf16 even where it is emulated
    opts = make_options("default", detector="none", net_size=64)
    a = pipeline.run(SourceImage(photo_gray[:128, :128]), opts).image.astype(float)
    b = pipeline.run(SourceImage(photo_gray[:128, :128]), make_options(
        "default", detector="none", net_size=64, precision="bf16")).image.astype(float)
    mse = np.mean((a - b) ** 2)
    assert mse > 0                                             # bf16 really ran: not the fp32 image itself
    assert 10 * np.log10(255 ** 2 / mse) > 30                  # ... and stays close to it


def test_bf16_without_native_kernels_runs_fp32_and_says_so(models_dir, photo_gray, monkeypatch, caplog):
    import patchcolor.precision as prec
    monkeypatch.setattr(prec, "_cpu_native", lambda p: False)
    pipe = Pipeline(models_dir, device="cpu")
    src = SourceImage(photo_gray[:96, :96])
    opts = make_options("default", detector="none", net_size=64)
    with caplog.at_level("WARNING", logger="patchcolor"):
        a = pipe.run(src, opts).image
        b = pipe.run(src, make_options("default", detector="none", net_size=64, precision="bf16")).image
        pipe.run(src, make_options("default", detector="none", net_size=64, precision="bf16"))
    np.testing.assert_array_equal(a, b)
    said = [r.getMessage() for r in caplog.records if "bf16" in r.getMessage()]
    assert len(said) == 1 and "running fp32" in said[0]       # once per pipeline, not per job
    assert prec.effective_precision(torch.device("cpu"), "fp16")[0] == "fp32"
    monkeypatch.setattr(prec, "_cpu_native", lambda p: p == "bf16")
    assert prec.effective_precision(torch.device("cpu"), "fp16") == ("bf16", "this CPU has no native fp16 kernels: running bf16")
    assert prec.effective_precision(torch.device("cpu"), "bf16") == ("bf16", None)


def test_crop_box_rules():
    assert crop_box((10.7, 5.2, 50.9, 40.99), 100, 80, 0.0, False) == (10, 5, 50, 40)   # the paper's truncation
    x0, y0, x1, y1 = crop_box((40, 10, 60, 70), 100, 80, 0.1, True)
    assert (x1 - x0) == (y1 - y0) == 72 and x0 <= 40 and x1 >= 60 and 0 <= y0 and y1 <= 80
