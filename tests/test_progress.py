"""Progress that never freezes (patchcolor.progress): sub-steps inside the detector and inside each colorizer batch,
the text of what runs, the remaining time, throttling, and cancellation from inside a forward pass.

The clocks are fakes (each reading advances a fixed step), so nothing here depends on the machine's speed: gaps are
counted in convolution / linear layers run between two progress events, not in seconds (bench/bench_progress.py
measures the seconds)."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from patchcolor.errors import Cancelled
from patchcolor.options import make_options
from patchcolor.prepare import SourceImage
from patchcolor.progress import MIN_STEP_S, NetworkSteps, Stage, network_blocks

OPTS = dict(max_instances=3, net_size=64, batch_size=8)


def ticking(step: float = 1.0):
    """A fake clock: every reading is ``step`` later than the one before."""
    counter = itertools.count(1)
    return lambda: next(counter) * step


@pytest.fixture(scope="module")
def pipe(models_dir):
    """A Pipeline of its own (fresh rates, a fake clock) whose R101 runs at 240/400."""
    from patchcolor.pipeline import Pipeline

    p = Pipeline(models_dir, device="cpu")
    det = p.detector("r101")
    det.min_size, det.max_size = 240, 400
    p.clock = ticking()
    return p


@pytest.fixture(scope="module")
def src(photo_gray) -> SourceImage:
    return SourceImage(np.asarray(Image.fromarray(photo_gray).resize((300, 200), Image.BICUBIC)))


def layers_between_events(pipe, src, opts) -> tuple[list[tuple[str, float, str, int]], list]:
    """Run a job; returns its events as (stage, fraction, text, layers run since the previous event) and the
    Result. A layer is one call of a Conv2d / ConvTranspose2d / Linear of the detector or the colorizer."""
    events: list[tuple[str, float, str, int]] = []
    count = [0]

    def layer(*_):
        count[0] += 1

    def progress(stage, fraction):
        events.append((str(stage), fraction, stage.text, count[0]))
        count[0] = 0

    nets = (pipe.detector("r101").model, pipe.colorizer(opts.colorizer))
    hooks = [m.register_forward_hook(layer) for net in nets for m in net.modules()
             if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear))]
    try:
        result = pipe.run(src, opts, progress=progress)
    finally:
        for h in hooks:
            h.remove()
    return events, result


def test_no_progress_gap_spans_more_than_one_residual_block(pipe, src):
    """Every stage of the detector and of each colorizer batch reports its start: between two events at most the
    4 convolutions of a bottleneck (with its shortcut) run — not a whole ResNet stage (69 convolutions in layer3)
    or a whole batch through the colorizer (22)."""
    opts = make_options("default", **OPTS)
    events, result = layers_between_events(pipe, src, opts)
    assert len(result.instances) == 3
    gaps = {stage: max(n for s, _, _, n in events if s == stage) for stage in ("segment", "colorize")}
    assert gaps["segment"] <= 4 and gaps["colorize"] <= 4, gaps
    inside = [e for e in events if e[0] == "segment"]
    assert len(inside) >= 34 + 8 + 2 + 3 + 6          # stem and bottlenecks, FPN, RPN, box head, mask head
    texts = " ".join(t for _, _, t, _ in inside)
    for part in ("backbone 1/34", "backbone 34/34", "feature pyramid", "region proposals", "object boxes",
                 "object masks"):
        assert part in texts
    for stage in ("segment", "colorize"):
        fractions = [f for s, f, _, _ in events if s == stage]
        assert fractions == sorted(fractions) and fractions[-1] == 1.0
    colorize = [e for e in events if e[0] == "colorize"]
    assert colorize[-1][2] == "Colorizing the whole image and 3 objects: 4 of 4 done"
    assert sum(1 for _, f, _, _ in colorize if 0 < f < 1) >= 20    # inside the one batch of 4 inputs


def test_remaining_time_once_one_job_has_been_timed(models_dir, src):
    from patchcolor.pipeline import Pipeline

    fresh = Pipeline(models_dir, device="cpu")
    fresh.clock = ticking()
    opts = make_options("default", detector="none", net_size=64)
    first: list[Stage] = []
    fresh.run(src, opts, progress=lambda s, f: first.append(s))
    # nothing timed yet: no estimate before the last stage (which then goes by its own pace)
    assert first and all(s.eta_s is None for s in first if s != "finish")

    second: list[tuple[Stage, float]] = []
    fresh.run(src, opts, progress=lambda s, f: second.append((s, fresh.clock())))
    etas = [s.eta_s for s, _ in second]
    assert None not in etas
    start, end = second[0][1], second[-1][1]
    # the fake clock ticks once per reading: the first job's ticks predict the second's (same work)
    assert 0.5 * (end - start) <= etas[0] <= 2.0 * (end - start)
    assert etas[-1] <= 1.0 and etas[-1] < etas[0]
    # another colorizer has never been timed: no estimate for a job that needs it
    other: list[Stage] = []
    fresh.run(src, make_options("default", detector="none", net_size=64, colorizer="siggraph17"),
              progress=lambda s, f: other.append(s))
    assert other[0].eta_s is None


def test_cancel_inside_a_colorizer_batch_even_when_steps_are_not_sent(models_dir, src):
    """A clock that never moves: every sub-step is throttled (not sent), yet each block still checks the cancel."""
    from patchcolor.pipeline import Pipeline

    still = Pipeline(models_dir, device="cpu")
    still.clock = lambda: 0.0
    model = still.colorizer("eccv16")
    finished = []
    done_hook = model.register_forward_hook(lambda *_: finished.append(1))
    checks, sent = [0], []

    def cancelled() -> bool:
        if sent and sent[-1][0] == "colorize":
            checks[0] += 1
        return checks[0] > 5           # the 5th block of the first colorizer batch

    try:
        with pytest.raises(Cancelled):
            still.run(src, make_options("default", detector="none", net_size=64), cancelled=cancelled,
                      progress=lambda s, f: sent.append((str(s), f)))
    finally:
        done_hook.remove()
    assert finished == []                          # stopped inside the forward, not after it
    # no sub-step event went out (all within MIN_STEP_S of the colorize stage's start)
    assert [f for s, f in sent if s == "colorize"] == [0.0]
    assert not model._forward_pre_hooks and not model._forward_hooks   # the progress hooks are gone
    assert not any(m._forward_pre_hooks for m in model.modules())


class _Slow(nn.Module):
    """Advances a fake clock by ``cost`` when it runs."""

    def __init__(self, clock: list[float], cost: float):
        super().__init__()
        self.clock, self.cost = clock, cost
        self.lin = nn.Linear(1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.clock[0] += self.cost
        return x


class _Twice(nn.Module):
    def __init__(self, clock: list[float]):
        super().__init__()
        self.a, self.b = _Slow(clock, 1.0), _Slow(clock, 2.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.a(self.b(x)))          # b runs twice: 2 + 1 + 2 time units


def test_shares_follow_the_measured_time_of_each_block():
    now = [0.0]
    net = _Twice(now)
    steps = NetworkSteps(net, [("a", "a"), ("b", "b")], clock=lambda: now[0])
    seen: list[tuple[float, str]] = []
    with steps.report(lambda f, label: seen.append((round(f, 3), label))):
        net(torch.zeros(1))
        first, seen[:] = list(seen), []
        net(torch.zeros(1))
    assert first == [(0.0, "b"), (0.5, "a"), (1.0, "b")]    # equal shares per call before anything was timed
    assert seen == [(0.0, "b"), (0.4, "a"), (0.6, "b")]     # then each call's measured share: 2/5, 1/5, 2/5


def test_network_blocks_split_the_heavy_children():
    from patchcolor.colorizers.eccv16 import ECCVGenerator

    blocks = dict(network_blocks(ECCVGenerator()))
    assert "model1" in blocks and "model4" not in blocks and "model4.0" in blocks    # 5.9 M of 32 M parameters
    assert all(sum(p.numel() for p in m.parameters()) * 24 <= 32e6 or not list(m.children())
               for m in blocks.values())


def test_stage_names_carry_text_and_eta_to_the_service_event():
    from patchcolor.service.protocol import progress_header

    s = Stage("segment", "Detecting objects: backbone 3/34", 12.34)
    assert s == "segment" and str(s) == "segment" and isinstance(s, str)
    h = progress_header("r", "j", s, 0.25, 0.1, 3, s.text, s.eta_s)
    assert (h["stage"], h["text"], h["eta"]) == ("segment", "Detecting objects: backbone 3/34", 12.3)
    assert "text" not in progress_header("r", "j", "segment", 0.25, 0.1) and Stage("fuse").text
    assert MIN_STEP_S <= 0.5
