"""Re-fuse without kept state: ``Pipeline.run(..., instances=...)`` and the ``colorize`` request's ``instances``
field (the plug-in sends a result's boxes and edited masks back after the backend restarted).

An unedited round trip reproduces the original colours; an edited mask gives what ``refuse`` on the kept job gives.
"""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from patchcolor_client import BackendError, Client
from service_support import start_server
from test_service import make_pixels

from patchcolor.options import make_options
from patchcolor.prepare import SourceImage
from patchcolor.result import InstanceResult
from patchcolor.service import protocol as P

# 80x60 with max_side 64: working copy 64x48, result 80x60 (masks and boxes are scaled); with max_side 128 the
# result is the working size. max_instances keeps the random R101 (which finds ~90 objects) cheap.
SCALED = {"max_side": 64, "detector": "r101", "max_instances": 3, "net_size": 64}
SAME = {**SCALED, "max_side": 128}


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    top = 65535.0 if a.dtype == np.uint16 else 255.0
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(top * top / mse)


@pytest.fixture(scope="module")
def src(photo_gray) -> SourceImage:
    px = make_pixels("gray16", 80, 60, photo_gray, seed=5)
    return SourceImage.from_buffer(px.tobytes(), 80, 60, "gray16")


@pytest.fixture(scope="module")
def first(pipeline, src):
    out = {}
    for name, opts in (("same", SAME), ("scaled", SCALED)):
        res = pipeline.run(src, make_options(**opts))
        assert len(res.instances) >= 2, "the biased random detector should find objects"
        out[name] = res
    return out


def _edit(instances: list[InstanceResult], width: int, height: int) -> list[InstanceResult]:
    """Instance 0 loses its lower half; instance 1 gains a square at the image's top-left corner (outside its
    crop box, so it is colorized again); the rest are unchanged."""
    out = list(instances)
    m0 = instances[0].mask.copy()
    m0[m0.shape[0] // 2:] = False
    out[0] = replace(instances[0], mask=m0)
    full = instances[1].full_mask(width, height) > 0
    full[:10, :10] = True
    ys, xs = np.nonzero(full)
    x0, y0 = int(xs.min()), int(ys.min())
    out[1] = replace(instances[1], mask=full[y0:ys.max() + 1, x0:xs.max() + 1], mask_origin=(x0, y0))
    return out


@pytest.mark.parametrize("kind", ["same", "scaled"])
def test_unedited_instances_reproduce_the_colours(pipeline, src, first, kind):
    opts = make_options(**(SAME if kind == "same" else SCALED))
    res = first[kind]
    again = pipeline.run(src, opts, instances=res.instances)
    # the crop boxes come back from the result boxes exactly, so every network input and output is the same
    assert again.state.inst_boxes == res.state.inst_boxes
    assert all(np.array_equal(a, b) for a, b in zip(again.state.inst_ab, res.state.inst_ab))
    assert [i.box for i in again.instances] == [i.box for i in res.instances]
    assert "segment" in again.timings
    if kind == "same":
        assert np.array_equal(again.image, res.image)
        w, h = res.image.shape[1], res.image.shape[0]
        assert all(np.array_equal(a.full_mask(w, h), b.full_mask(w, h)) for a, b in zip(again.instances, res.instances))
    else:   # masks went to the result size and back: at most a few edge pixels differ
        assert psnr(again.image, res.image) >= 50


@pytest.mark.parametrize("kind", ["same", "scaled"])
def test_edited_instances_equal_refuse_on_the_kept_job(pipeline, src, first, kind):
    opts = make_options(**(SAME if kind == "same" else SCALED))
    res = first[kind]
    w, h = res.image.shape[1], res.image.shape[0]
    edited = _edit(res.instances, w, h)
    kept = pipeline.refuse(src, res.state, [i.full_mask(w, h) for i in edited], opts)
    given = pipeline.run(src, opts, instances=edited)
    assert not np.array_equal(kept.image, res.image), "the edits must change the image"
    assert given.state.inst_boxes[1] == kept.state.inst_boxes[1] != res.state.inst_boxes[1]
    assert given.instances[1].mask_origin == kept.instances[1].mask_origin
    if kind == "same":
        assert np.array_equal(given.image, kept.image)
    else:
        assert psnr(given.image, kept.image) >= 50


def test_empty_and_outside_masks_drop_the_instance(pipeline, src, first):
    opts = make_options(**SAME)
    res = first["same"]
    gone = [replace(res.instances[0], mask=np.zeros_like(res.instances[0].mask)),
            replace(res.instances[1], mask_origin=(500, 500))] + res.instances[2:]
    again = pipeline.run(src, opts, instances=gone)
    assert len(again.instances) == len(res.instances) - 2
    assert again.state.inst_boxes == res.state.inst_boxes[2:]
    none = pipeline.run(src, opts, instances=[])
    assert none.instances == [] and np.array_equal(none.image, pipeline.run(
        src, make_options(**{**SAME, "detector": "none"})).image)
