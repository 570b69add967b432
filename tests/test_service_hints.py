"""Colour hints and previews through the service: the optional hints frame on ``colorize`` (validated like the
image frame, kept by recompose) and the ``preview`` op (proxy result, sessions reused between requests).

One server process for the module (random official-format weights); colours are compared with the in-process
pipeline on the same weights."""
from __future__ import annotations

import json

import numpy as np
import pytest

from patchcolor_client import BackendError, Client, HintMap
from service_support import start_server
from test_service import make_pixels

from patchcolor.options import make_options
from patchcolor.prepare import SourceImage
from patchcolor.service import protocol as P

W, H = 96, 72
OPTS = {"colorizer": "siggraph17", "net_size": 64, "detector": "none"}
# with objects (biased random R101): the hint lies in the image, maybe in some crops
OBJ = {"colorizer": "siggraph17", "net_size": 64, "detector": "r101", "max_instances": 2, "max_side": 96}


@pytest.fixture(scope="module")
def server(tmp_path_factory, models_dir):
    srv = start_server(tmp_path_factory.mktemp("srv"), models_dir=models_dir)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def pixels(photo_gray) -> np.ndarray:
    return make_pixels("gray8", W, H, photo_gray, seed=3)


def hint_rgba(w: int = W, h: int = H) -> np.ndarray:
    m = np.zeros((h, w, 4), np.uint8)
    m[h // 2 - 3:h // 2 + 3, w // 3 - 3:w // 3 + 3] = (40, 60, 230, 255)
    return m


def _image(res) -> np.ndarray:
    return np.frombuffer(res.pixels, np.uint8).reshape(res.height, res.width, -1)


def test_colorize_with_hints_matches_the_pipeline_and_recompose_keeps_them(server, pipeline, pixels):
    hm = hint_rgba()
    with Client(server.endpoint, timeout_s=60) as c:
        plain = c.colorize(W, H, "gray8", pixels, OPTS)
        hinted = c.colorize(W, H, "gray8", pixels, OPTS, hints=HintMap(W, H, "rgba8", hm))
        assert hinted.extra.get("hints") == 1 and plain.extra.get("hints", 0) == 0
        a, b = _image(plain).astype(int), _image(hinted).astype(int)
        assert np.abs(a - b).max() > 0
        src = SourceImage.from_buffer(pixels.tobytes(), W, H, "gray8")
        local = pipeline.run(src, make_options(**OPTS), hints=SourceImage(hm[..., :3].copy(), hm[..., 3].copy()))
        assert np.abs(local.image.astype(int) - b).max() <= 1
        with_obj = c.colorize(W, H, "gray8", pixels, OBJ, hints=HintMap(W, H, "rgba8", hm))
        assert with_obj.instances, "the biased random detector should find objects"
        masks = [i.full_mask(with_obj.width, with_obj.height) for i in with_obj.instances]
        masks[0] = bytearray(b"\xff" * (with_obj.width * with_obj.height))   # grows past its crop: re-colorized
        again = c.recompose(with_obj.job_id, masks)
    res = pipeline.run(src, make_options(**OBJ), hints=SourceImage(hm[..., :3].copy(), hm[..., 3].copy()))
    want = pipeline.recompose(src, res.state, [np.frombuffer(m, np.uint8).reshape(H, W) for m in masks],
                           make_options(**OBJ))
    assert res.state.hints is not None
    assert np.abs(want.image.astype(int) - _image(again)).max() <= 1


def test_a_bad_hints_frame_is_refused_with_one_sentence(server, pixels):
    import zmq

    hm = hint_rgba()
    ctx = zmq.Context.instance()
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(server.endpoint)
    try:
        def ask(header: dict, *frames) -> dict:
            base = {"v": P.PROTOCOL_VERSION, "type": "colorize", "id": "r1", "job": "j1", "width": W, "height": H,
                    "format": "gray8", "options": OPTS}
            s.send_multipart([json.dumps({**base, **header}).encode(), pixels.tobytes(), *frames])
            assert s.poll(30000), "no reply"
            return json.loads(s.recv_multipart()[0])

        r = ask({"hints": {"width": W, "height": H, "format": "rgba8"}}, hm.tobytes()[:-4])
        assert r["type"] == "error" and r["code"] == "bad_request" and "hint" in r["message"]
        r = ask({"hints": {"width": W, "height": H + 20, "format": "rgba8"}}, hm.tobytes())
        assert r["type"] == "error" and "the hint map is" in r["message"]
        r = ask({"hints": {"width": W, "height": H, "format": "rgba8"}})                 # frame missing
        assert r["type"] == "error" and r["code"] == "bad_request"
        r = ask({"v": 2, "hints": {"width": W, "height": H, "format": "rgba8"}}, hm.tobytes())
        assert r["type"] == "error" and "need protocol 3" in r["message"] and r["v"] == 2
    finally:
        s.close()
    with Client(server.endpoint, timeout_s=30) as c:
        assert c.ping() >= 0                                                          # still alive


def test_preview_op_reuses_the_session_and_follows_hints(server, pipeline, pixels):
    hm = hint_rgba()
    with Client(server.endpoint, timeout_s=60) as c:
        first = c.preview(W, H, "gray8", pixels, OPTS, long_side=64)
        assert (first.width, first.height) == (64, 48) and first.fmt == "rgb8"
        assert first.extra["preview"] is True and first.instances == [] and not first.recomposable
        again = c.preview(W, H, "gray8", pixels, {**OPTS, "saturation": 1.5}, long_side=64)
        assert again.extra["computed"] == 0                                    # networks not run again
        hinted = c.preview(W, H, "gray8", pixels, OPTS, long_side=64, hints=HintMap(W, H, "rgba8", hm))
        assert hinted.extra["hints"] == 1 and hinted.extra["computed"] == 1
        assert np.abs(_image(hinted).astype(int) - _image(first)).max() > 0
        with pytest.raises(BackendError) as e:
            c.recompose(first.job_id, [])
        assert e.value.code == "unknown_job"
        with pytest.raises(BackendError) as e:
            c.preview(W, H, "gray8", pixels, OPTS, long_side=5000)
        assert e.value.code == "bad_request" and "long_side" in e.value.message
    from patchcolor.preview import PreviewSession
    local = PreviewSession(pipeline, SourceImage.from_buffer(pixels.tobytes(), W, H, "gray8"), long_side=64)
    assert np.abs(local.render(make_options(**OPTS)).image.astype(int) - _image(first)).max() <= 1


def test_cli_remote_with_hints(server, pipeline, pixels, tmp_path):
    from PIL import Image

    from patchcolor.cli import main

    Image.fromarray(pixels[..., 0]).save(tmp_path / "p.png")
    Image.fromarray(hint_rgba()).save(tmp_path / "h.png")
    assert main(["colorize", str(tmp_path / "p.png"), "-o", str(tmp_path / "out"), "--remote", server.endpoint,
                 "--hints", str(tmp_path / "h.png"), "--detector", "none"]) == 0
    got = np.asarray(Image.open(tmp_path / "out" / "p.png"))
    hm = hint_rgba()
    want = pipeline.run(SourceImage(pixels[..., 0].copy()), make_options(detector="none"),
                        hints=SourceImage(hm[..., :3].copy(), hm[..., 3].copy()))
    assert np.abs(got.astype(int) - want.image).max() <= 1


def test_preview_draft_round_trip(server, pixels):
    import zmq

    hm = hint_rgba()
    with Client(server.endpoint, timeout_s=60) as c:
        d = c.preview(W, H, "gray8", pixels, {**OPTS, "saturation": 1.2}, long_side=80, draft=True)
        assert d.extra["draft"] is True and (d.width, d.height) == (80, 60) and d.extra["computed"] == 1
        exact = c.preview(W, H, "gray8", pixels, {**OPTS, "saturation": 1.2}, long_side=80)
        assert exact.extra["draft"] is False and exact.extra["computed"] == 1
        assert np.abs(_image(exact).astype(int) - _image(d)).max() > 0
        cached = c.preview(W, H, "gray8", pixels, {**OPTS, "saturation": 1.3}, long_side=80, draft=True)
        assert cached.extra["draft"] is False and cached.extra["computed"] == 0     # exact cached: exact
        hinted = c.preview(W, H, "gray8", pixels, OPTS, long_side=80, draft=True, hints=HintMap(W, H, "rgba8", hm))
        assert hinted.extra["draft"] is True and hinted.extra["hints"] == 1
        plain = c.colorize(W, H, "gray8", pixels, OPTS)
        assert "draft" not in plain.extra

    ctx = zmq.Context.instance()
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(server.endpoint)
    try:
        for bad in ("yes", 1, None):
            header = {"v": P.PROTOCOL_VERSION, "type": "preview", "id": "r9", "job": "j9", "width": W, "height": H,
                      "format": "gray8", "options": OPTS, "draft": bad}
            s.send_multipart([json.dumps(header).encode(), pixels.tobytes()])
            assert s.poll(30000), "no reply"
            r = json.loads(s.recv_multipart()[0])
            if bad is None:        # null = absent: an ordinary (exact) preview
                while r["type"] != "result":
                    assert r["type"] in ("accepted", "progress"), r
                    assert s.poll(30000), "no result"
                    r = json.loads(s.recv_multipart()[0])
                assert r["draft"] is False and r["preview"] is True
            else:
                assert r["type"] == "error" and r["code"] == "bad_request" and "'draft'" in r["message"]
    finally:
        s.close()
