"""A colorize of an image the dialog previewed reuses the preview's detections and network outputs
(pipeline.Reuse, implemented by PreviewSession): the result is the same as a fresh run, with fewer networks run.
In process (Pipeline + PreviewSession) and through the service (a preview, then a colorize of the same image)."""
from __future__ import annotations

import numpy as np
import pytest

from patchcolor_client import Client, HintMap
from service_support import start_server
from test_service import make_pixels

from patchcolor.options import make_options
from patchcolor.prepare import SourceImage
from patchcolor.preview import PreviewSession

W, H = 120, 90
OBJ = {"colorizer": "siggraph17", "net_size": 64, "detector": "r101", "max_instances": 2, "max_side": 120}


class Counted:
    """Counts the detector's and the colorizer's calls on a pipeline (restored on exit)."""

    def __init__(self, pipe, opts) -> None:
        self.pipe, self.opts = pipe, opts
        self.detects = self.rows = 0

    def __enter__(self) -> "Counted":
        self.det = self.pipe.detector(self.opts.detector)
        self.net = self.pipe.colorizer(self.opts.colorizer)
        self._detect = self.det.detect

        def detect(*a, **k):
            self.detects += 1
            return self._detect(*a, **k)

        self.det.detect = detect
        self._hook = self.net.register_forward_hook(lambda m, a, out: setattr(self, "rows", self.rows + out.shape[0]))
        return self

    def __exit__(self, *exc) -> None:
        del self.det.detect
        self._hook.remove()


def _hints(w: int, h: int, x: int, colour=(40, 60, 230)) -> SourceImage:
    m = np.zeros((h, w, 4), np.uint8)
    m[h // 2 - 3:h // 2 + 3, x - 3:x + 3] = (*colour, 255)
    return SourceImage(m[..., :3].copy(), m[..., 3].copy())


def _same(a, b) -> None:
    diff = [float(np.abs(x - y).max()) for x, y in zip([a.state.full_ab, *a.state.inst_ab],
                                                       [b.state.full_ab, *b.state.inst_ab])]
    assert np.array_equal(a.image, b.image), (diff, a.state.inst_boxes, b.state.inst_boxes)
    assert [(i.class_id, i.box) for i in a.instances] == [(i.class_id, i.box) for i in b.instances]
    assert all(np.array_equal(x.mask, y.mask) for x, y in zip(a.instances, b.instances))


@pytest.mark.parametrize("with_hints", [False, True])
def test_run_after_a_preview_reuses_its_work_and_gives_the_same_result(pipeline, photo_gray, with_hints):
    src = SourceImage(make_pixels("gray8", W, H, photo_gray, seed=5).reshape(H, W))
    opts = make_options(**OBJ)
    hints = _hints(W, H, W // 3) if with_hints else None
    fresh = pipeline.run(src, opts, hints=hints)
    session = PreviewSession(pipeline, src)
    assert session.detections(opts) is None          # nothing computed yet
    pv = session.render(opts, hints=hints)
    assert not pv.draft and pv.instances == len(fresh.instances) >= 1
    with Counted(pipeline, opts) as c:
        again = pipeline.run(src, opts, hints=hints, reuse=session)
    assert c.detects == 0 and c.rows == 0, "the detector and every network input came from the preview"
    _same(again, fresh)
    # a hint the preview did not see: the detector is reused, only the inputs whose hint tensors changed run
    moved = _hints(W, H, 2 * W // 3, (230, 40, 40))
    with Counted(pipeline, opts) as c:
        other = pipeline.run(src, opts, hints=moved, reuse=session)
    assert c.detects == 0 and 1 <= c.rows <= 1 + len(fresh.instances)
    # the re-run inputs go through the network in a smaller batch than in a fresh run: float rounding differs
    # (~1e-4 in a/b), so the image may differ by one level here and there
    ref = pipeline.run(src, opts, hints=moved)
    assert [i.box for i in other.instances] == [i.box for i in ref.instances]
    assert np.abs(other.image.astype(int) - ref.image.astype(int)).max() <= 1
    # other options: another detection key, so the detector runs again
    with Counted(pipeline, opts) as c:
        pipeline.run(src, make_options(**{**OBJ, "max_instances": 1}), reuse=session)
    assert c.detects == 1


def test_service_colorize_after_preview_reuses_it(tmp_path, models_dir, pipeline, photo_gray):
    pixels = make_pixels("gray8", W, H, photo_gray, seed=6)
    hm = np.zeros((H, W, 4), np.uint8)
    hm[40:46, 30:36] = (40, 60, 230, 255)
    srv = start_server(tmp_path, models_dir=models_dir)
    try:
        with Client(srv.endpoint, timeout_s=120) as c:
            c.preview(W, H, "gray8", pixels, OBJ, hints=HintMap(W, H, "rgba8", hm))
            res = c.colorize(W, H, "gray8", pixels, OBJ, hints=HintMap(W, H, "rgba8", hm))
        log = srv.log()
    finally:
        srv.stop()
    assert "reusing the preview's" in log and "network output for" in log
    src = SourceImage.from_buffer(pixels.tobytes(), W, H, "gray8")
    local = pipeline.run(src, make_options(**OBJ), hints=SourceImage(hm[..., :3].copy(), hm[..., 3].copy()))
    got = np.frombuffer(res.pixels, np.uint8).reshape(res.height, res.width, -1)
    assert np.abs(got.astype(int) - local.image.astype(int)).max() <= 1
