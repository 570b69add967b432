"""Winograd 3×3 convolutions through NNPACK (patchcolor.winograd): which convolutions take it, that they compute
the same convolution to float rounding, the policy, and the detector / colorizers built with and without it."""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fake_colorizers import write_colorizer_pth  # noqa: E402
from fake_r101 import write_r101_pkl  # noqa: E402
from patchcolor import winograd as W  # noqa: E402
from patchcolor.colorizers import load_colorizer, predict_ab  # noqa: E402
from patchcolor.registry import registry  # noqa: E402
from patchcolor.segment.base import DetectorSettings  # noqa: E402
from patchcolor.segment.r101 import R101Detector  # noqa: E402

CPU = torch.device("cpu")
needs_nnpack = pytest.mark.skipif(not W.nnpack_available(), reason="this torch build has no NNPACK")


class CountingNnpack:
    """Stands in for torch._nnpack_spatial_convolution and counts the calls (and their batch sizes)."""

    def __init__(self) -> None:
        self.real = torch._nnpack_spatial_convolution
        self.batches: list[int] = []

    def __call__(self, x, *args):
        self.batches.append(x.shape[0])
        return self.real(x, *args)


@pytest.fixture
def nnpack_calls(monkeypatch) -> CountingNnpack:
    spy = CountingNnpack()
    monkeypatch.setattr(torch, "_nnpack_spatial_convolution", spy)
    return spy


def winograd_conv(cin: int, cout: int, **kw) -> nn.Conv2d:
    torch.manual_seed(0)
    conv = nn.Conv2d(cin, cout, 3, **kw).eval().requires_grad_(False)
    assert W.use_winograd(conv) == 1
    return conv


@needs_nnpack
@pytest.mark.parametrize("n, cin, cout, h, w, padding", [(1, 16, 24, 50, 60, 1), (3, 8, 8, 47, 64, 1),
                                                          (2, 4, 6, 45, 50, 0)])
def test_large_maps_take_nnpack_one_sample_at_a_time_and_match_the_convolution(nnpack_calls, n, cin, cout, h, w,
                                                                                padding):
    conv = winograd_conv(cin, cout, padding=padding)
    x = torch.randn(n, cin, h, w)
    with torch.inference_mode():
        got = conv(x)
        ref = F.conv2d(x.double(), conv.weight.double(), conv.bias.double(), padding=padding)
    assert nnpack_calls.batches == [1] * n
    assert got.shape == ref.shape and got.dtype == torch.float32 and got.is_contiguous()
    scale = ref.abs().max().item()
    assert (got.double() - ref).abs().max().item() < 1e-5 * scale


@needs_nnpack
def test_small_maps_lower_precision_and_channels_last_inputs(nnpack_calls):
    conv = winograd_conv(8, 8, padding=1)
    small = torch.randn(2, 8, 40, 40)                         # 1600 px < MIN_PIXELS: the ordinary convolution
    assert small.shape[2] * small.shape[3] < W.MIN_PIXELS
    with torch.inference_mode():
        torch.testing.assert_close(conv(small), F.conv2d(small, conv.weight, conv.bias, padding=1), rtol=0, atol=0)
        assert nnpack_calls.batches == []
        big = torch.randn(1, 8, 64, 64)
        with torch.autocast("cpu", dtype=torch.bfloat16):     # bf16 autocast: NNPACK is float32-only
            assert conv(big).dtype == torch.bfloat16
        assert nnpack_calls.batches == []
        cl = big.contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(conv(cl), conv(big), rtol=0, atol=0)
    assert nnpack_calls.batches == [1, 1]


@needs_nnpack
def test_a_failing_nnpack_call_falls_back_to_the_ordinary_convolution(monkeypatch, caplog):
    def refuse(*args):
        raise RuntimeError("NNPACK SpatialConvolution_updateOutput failed")

    conv = winograd_conv(4, 4, padding=1)
    monkeypatch.setattr(torch, "_nnpack_spatial_convolution", refuse)
    x = torch.randn(2, 4, 50, 50)
    with caplog.at_level(logging.WARNING, logger="patchcolor"), torch.inference_mode():
        got = conv(x)
    torch.testing.assert_close(got, F.conv2d(x, conv.weight, conv.bias, padding=1), rtol=0, atol=0)
    assert "NNPACK convolution failed" in caplog.text


def test_only_plain_3x3_convolutions_are_changed():
    model = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 3, stride=2, padding=1),
                          nn.Conv2d(4, 4, 3, padding=2, dilation=2), nn.Conv2d(4, 4, 1),
                          nn.Conv2d(4, 4, 3, padding=1, groups=2),
                          nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"),
                          nn.ConvTranspose2d(4, 4, 3), nn.Conv2d(4, 4, 3, padding="same"))
    keys = list(model.state_dict())
    changed = W.use_winograd(model)
    assert changed == (1 if W.nnpack_available() else 0)
    kinds = [type(m) for m in model]
    assert kinds[0] is (W.WinogradConv2d if changed else nn.Conv2d)
    assert kinds[1:] == [nn.Conv2d] * 5 + [nn.ConvTranspose2d, nn.Conv2d]
    assert list(model.state_dict()) == keys


@pytest.mark.parametrize("env, isa, device, expected", [
    (None, "AVX2", "cpu", True), ("auto", "AVX512", "cpu", False), ("auto", "DEFAULT", "cpu", False),
    ("on", "AVX512", "cpu", True), ("off", "AVX2", "cpu", False), ("auto", "AVX2", "cuda", False),
    ("on", "AVX2", "cuda", False)])
def test_policy(monkeypatch, env, isa, device, expected):
    monkeypatch.setattr(W, "nnpack_available", lambda: True)
    monkeypatch.setattr(W, "_cpu_isa", lambda: isa)
    if env is None:
        monkeypatch.delenv(W.ENV, raising=False)
    else:
        monkeypatch.setenv(W.ENV, env)
    assert W.winograd_enabled(device) is expected


def test_policy_override(monkeypatch):
    monkeypatch.setattr(W, "nnpack_available", lambda: True)
    monkeypatch.setattr(W, "_cpu_isa", lambda: "AVX512")
    monkeypatch.setenv(W.ENV, "off")
    with W.policy_override(True):
        assert W.winograd_enabled("cpu") and not W.winograd_enabled("cuda")
        with W.policy_override(False):
            assert not W.winograd_enabled("cpu")
        assert W.winograd_enabled("cpu")
    assert not W.winograd_enabled("cpu")


def test_policy_without_nnpack_and_a_bad_value(monkeypatch, caplog):
    monkeypatch.setattr(W, "_cpu_isa", lambda: "AVX2")
    monkeypatch.setenv(W.ENV, "fast please")
    monkeypatch.setattr(W, "nnpack_available", lambda: True)
    with caplog.at_level(logging.WARNING, logger="patchcolor"):
        assert W.winograd_enabled("cpu") is True
    assert "not auto, on or off" in caplog.text
    monkeypatch.setattr(W, "nnpack_available", lambda: False)
    monkeypatch.setenv(W.ENV, "on")
    assert W.winograd_enabled("cpu") is False


@needs_nnpack
def test_detector_with_and_without_winograd_finds_the_same_objects(tmp_path, nnpack_calls):
    pkl = write_r101_pkl(tmp_path / registry().file("r101").file, seed=1, bias_class=16)
    wino = R101Detector(pkl, CPU, min_size=240, max_size=400, winograd=True)
    plain = R101Detector(pkl, CPU, min_size=240, max_size=400, winograd=False)
    assert W.uses_winograd(wino.model) and not wino.channels_last
    assert not W.uses_winograd(plain.model) and plain.channels_last
    yy, xx = np.mgrid[0:240, 0:320].astype(np.float32)
    g = 60 + 40 * xx / 320
    g[60:120, 40:160] = 210
    img = np.repeat(g[..., None], 3, axis=2)
    a = wino.detect(img, DetectorSettings())
    assert nnpack_calls.batches, "the Winograd detector did not call NNPACK"
    b = plain.detect(img, DetectorSettings())
    assert len(a) == len(b) > 0
    for i, j in zip(a, b):
        assert i.class_id == j.class_id and abs(i.score - j.score) < 1e-4
        assert np.abs(np.subtract(i.box, j.box)).max() < 0.05
        assert i.mask_origin == j.mask_origin and i.mask.shape == j.mask.shape
        assert (i.mask != j.mask).mean() < 0.01


@needs_nnpack
@pytest.mark.parametrize("name", ["eccv16", "siggraph17"])
def test_colorizers_with_and_without_winograd_agree(tmp_path, nnpack_calls, name):
    pth = write_colorizer_pth(name, tmp_path)
    wino, plain = load_colorizer(name, pth, CPU, winograd=True), load_colorizer(name, pth, CPU, winograd=False)
    rng = np.random.default_rng(0)
    inputs = [rng.uniform(0, 100, (256, 256)).astype(np.float32) for _ in range(2)]
    a = predict_ab(wino, inputs, [(256, 256)] * 2)
    assert nnpack_calls.batches and set(nnpack_calls.batches) == {1}
    b = predict_ab(plain, inputs, [(256, 256)] * 2)
    for x, y in zip(a, b):
        assert np.abs(x - y).max() < 0.05 * max(1.0, np.abs(y).max()) and np.abs(x - y).mean() < 1e-3
