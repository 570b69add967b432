"""Recompose without kept state: ``Pipeline.run(..., instances=...)`` and the ``colorize`` request's ``instances``
field (the plug-in sends a result's boxes and edited masks back after the backend restarted).

An unedited round trip reproduces the original colours; an edited mask gives what ``recompose`` on the kept job gives.
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
def test_edited_instances_equal_recompose_on_the_kept_job(pipeline, src, first, kind):
    opts = make_options(**(SAME if kind == "same" else SCALED))
    res = first[kind]
    w, h = res.image.shape[1], res.image.shape[0]
    edited = _edit(res.instances, w, h)
    kept = pipeline.recompose(src, res.state, [i.full_mask(w, h) for i in edited], opts)
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


# ------------------------------------------------------------------------------------------------ the wire
@pytest.fixture(scope="module")
def server(tmp_path_factory, models_dir):
    srv = start_server(tmp_path_factory.mktemp("inst"), "--max-pixels", "100000", models_dir=models_dir)
    yield srv
    srv.stop()


def test_colorize_with_instances_over_the_wire(server, src):
    w, h = src.width, src.height
    px = np.ascontiguousarray(src.color)
    with Client(server.endpoint, timeout_s=120) as c:
        first = c.colorize(w, h, "gray16", px, SAME)
        assert len(first.instances) >= 2
        again = c.colorize(w, h, "gray16", px, SAME, instances=first.instances)
        assert bytes(again.pixels) == bytes(first.pixels), "unedited instances must reproduce the colours"
        assert [(i.box, i.full_mask(w, h)) for i in again.instances] == \
               [(i.box, i.full_mask(w, h)) for i in first.instances]
        # edit instance 0 (lower half cleared): the same as recompose on the job the server kept
        m0 = np.frombuffer(first.instances[0].mask, np.uint8).reshape(first.instances[0].mask_size[::-1]).copy()
        m0[m0.shape[0] // 2:] = 0
        edited = [replace(first.instances[0], mask=m0.tobytes())] + first.instances[1:]
        given = c.colorize(w, h, "gray16", px, SAME, instances=edited)
        kept = c.recompose(first.job_id, [i.full_mask(w, h) for i in edited])
        assert bytes(given.pixels) == bytes(kept.pixels) != bytes(first.pixels)
        assert given.recomposable, "a job with given instances is kept for recompose like any other"
        with pytest.raises(ValueError):
            c.colorize(w, h, "gray16", px, SAME, instances=[replace(first.instances[0], mask=b"x")])


def _request(instances: list, masks: list[bytes], w: int = 8, h: int = 6, opts: dict | None = None) -> list[bytes]:
    header = {"v": 1, "type": "colorize", "id": "r", "job": "j", "width": w, "height": h, "format": "gray8",
              "options": opts or {}, "instances": instances}
    return [json.dumps(header).encode(), bytes(w * h), *masks]


def _inst(**kw) -> dict:
    return {"class_id": 0, "class_name": "person", "score": 0.9, "box": [1.0, 1.0, 4.5, 5.0],
            "mask_origin": [1, 1], "mask_size": [4, 4], **kw}


def test_instances_field_is_validated():
    limits = P.Limits(100_000)
    req = P.parse_request(_request([_inst(), _inst(mask_size=[0, 0])], [bytes(range(16)), b""]), limits)
    assert isinstance(req, P.ColorizeRequest) and len(req.instances) == 2
    assert req.instances[0].mask.shape == (4, 4) and req.instances[0].mask[3, 3] == 15
    assert req.instances[0].box == (1.0, 1.0, 4.5, 5.0) and req.instances[0].mask_origin == (1, 1)
    assert P.parse_request(_request([], []), limits).instances == []
    assert P.parse_request(_request(None, []), limits).instances is None
    # seed preset (working size): a 200x100 image has a 128x64 result with max_side 128
    published = _request([_inst(box=[0, 0, 128, 64], mask_origin=[120, 60], mask_size=[8, 4])], [bytes(32)],
                         200, 100, {"preset": "seed", "max_side": 128})
    assert P.parse_request(published, limits).instances[0].mask_origin == (120, 60)
    bad = [
        _request("x", []), _request([5], [bytes(16)]), _request([_inst()] * 101, [bytes(16)] * 101),
        _request([_inst()], []), _request([_inst()], [bytes(16)] * 2), _request([_inst()], [bytes(15)]),
        _request([_inst(class_id=True)], [bytes(16)]), _request([_inst(class_id=-1)], [bytes(16)]),
        _request([_inst(class_name=None)], [bytes(16)]), _request([_inst(class_name="x" * 65)], [bytes(16)]),
        _request([_inst(score=1.5)], [bytes(16)]), _request([_inst(score="1")], [bytes(16)]),
        _request([_inst(box=[1, 1, 4])], [bytes(16)]), _request([_inst(box=[5, 1, 4, 5])], [bytes(16)]),
        _request([_inst(box=[1, 1, 8.5, 5])], [bytes(16)]), _request([_inst(box=[-1, 1, 4, 5])], [bytes(16)]),
        _request([_inst(box=[1, 1, 4, "5"])], [bytes(16)]),
        _request([_inst(mask_origin=[5, 1])], [bytes(16)]), _request([_inst(mask_origin=[-1, 0])], [bytes(16)]),
        _request([_inst(mask_origin=[1.0, 1])], [bytes(16)]), _request([_inst(mask_size=[4, -4])], [b""]),
        _request([_inst(mask_size=[4, 4, 1])], [bytes(16)]),
        _request([_inst(mask_origin=[0, 0], mask_size=[9, 1])], [bytes(9)]),
        _request([_inst(box=[0, 0, 200, 100], mask_origin=[0, 0], mask_size=[8, 4])], [bytes(32)],
                 200, 100, {"preset": "seed", "max_side": 128}),
    ]
    for i, frames in enumerate(bad):
        with pytest.raises(P.ProtocolError) as ei:
            P.parse_request(frames, limits)
        assert ei.value.code == "bad_request" and (ei.value.req_id, ei.value.job) == ("r", "j"), i
