"""Draft previews: PreviewSession.render(draft=True), the detector knobs it uses (DetectorSettings
min_size / proposals) and the ``draft`` field's parsing. The service round trip is in tests/test_service_hints.py."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from patchcolor.errors import BadOptions
from patchcolor.options import make_options
from patchcolor.prepare import SourceImage
from patchcolor.preview import DRAFT_NET_SIZE, DRAFT_OBJECTS, PreviewSession
from patchcolor.segment.base import DetectorSettings
from patchcolor.service.protocol import parse_draft
from patchcolor_client.protocol import ProtocolError

CPU = torch.device("cpu")
# a small exact detector input (the test's R101 runs at 240 instead of 800) keeps the exact renders quick
OBJ = dict(colorizer="siggraph17", net_size=96, detector="r101", max_instances=3, max_side=160)


@pytest.fixture(scope="module")
def pipe(models_dir):
    """A Pipeline of its own whose R101 runs at 240/400 (the session fixture's stays at 800)."""
    from patchcolor.pipeline import Pipeline

    p = Pipeline(models_dir, device="cpu")
    det = p.detector("r101")
    det.min_size, det.max_size = 240, 400
    return p


@pytest.fixture(scope="module")
def src(photo_gray) -> SourceImage:
    return SourceImage(np.asarray(Image.fromarray(photo_gray).resize((300, 200), Image.BICUBIC)))


def hint_map(w: int, h: int) -> SourceImage:
    m = np.zeros((h, w, 4), np.uint8)
    m[h // 2 - 2:h // 2 + 2, w // 2 - 2:w // 2 + 2] = (40, 60, 230, 255)
    return SourceImage(np.ascontiguousarray(m[..., :3]), np.ascontiguousarray(m[..., 3]))


def test_draft_then_exact_is_bit_equal_to_a_fresh_exact_preview(pipe, src):
    opts = make_options("default", **OBJ)
    fresh = PreviewSession(pipe, src, long_side=120).render(opts)
    assert not fresh.draft and fresh.instances >= 1, "the biased random detector should find objects"

    s = PreviewSession(pipe, src, long_side=120)
    d = s.render(opts, draft=True)
    assert d.draft and d.image.shape == (80, 120, 3) and d.image.dtype == np.uint8
    assert 1 <= d.instances <= min(DRAFT_OBJECTS, OBJ["max_instances"]) and d.computed == d.instances + 1
    assert ("draft", OBJ["max_side"]) in s._work and s._work[("draft", OBJ["max_side"])].shape == (80, 120, 3)
    assert all(k[0] == "draft" for k in s._ab) and len(s._found) == 1     # nothing exact computed by the draft
    assert {k[2] for k in s._ab} == {min(OBJ["net_size"], DRAFT_NET_SIZE)}
    again = s.render(make_options("default", **OBJ, saturation=1.4), draft=True)   # draft reused: fuse + finish
    assert again.draft and again.computed == 0

    exact = s.render(opts)
    assert not exact.draft and exact.computed == fresh.computed
    assert np.array_equal(exact.image, fresh.image)                      # the draft's caches did not leak in
    assert np.abs(exact.image.astype(int) - d.image).max() > 0          # and the draft is another picture

    # exact detections and outputs cached: a draft request gets the exact preview (as fast)
    cached = s.render(opts, draft=True)
    assert not cached.draft and cached.computed == 0 and np.array_equal(cached.image, fresh.image)
    sat = s.render(make_options("default", **OBJ, saturation=1.4), draft=True)
    assert not sat.draft and sat.computed == 0
    # a hint would make the exact preview run networks: a draft again, showing the exact preview's objects; only the
    # inputs holding the hint run (at the draft's size), the others are the exact preview's outputs
    assert d.objects != exact.objects                       # the first draft's own detections differ (see report)
    hinted = s.render(opts, hints=hint_map(120, 80), draft=True)
    assert hinted.draft and hinted.hints == 1 and "segment" not in hinted.timings
    assert hinted.objects == exact.objects and 1 <= hinted.computed < exact.instances + 1
    assert any(k[0] == "draft-on-exact" and k[2] == min(OBJ["net_size"], DRAFT_NET_SIZE) for k in s._ab)
    exact_hinted = s.render(opts, hints=hint_map(120, 80))
    assert not exact_hinted.draft and exact_hinted.objects == exact.objects
    assert np.array_equal(exact_hinted.image, PreviewSession(pipe, src, long_side=120).render(
        opts, hints=hint_map(120, 80)).image)              # the draft's outputs did not leak into the exact one


class RelativeBoxes:
    """A stand-in detector whose detections do not depend on the input's scale: fixed boxes in fractions of the
    image, each with its score, handled in R101's order — score order, the top ``detections_per_image``, then
    (``settings.keep``) the paper's small-box filter and the instance cap. Records each call's test size."""

    name = "r101"

    def __init__(self, boxes: list[tuple[float, tuple[float, float, float, float]]]):
        self.boxes = sorted(boxes, key=lambda b: -b[0])
        self.sizes: list[int | None] = []

    def detect(self, image, settings: DetectorSettings):
        from patchcolor.segment import filter_instances
        from patchcolor.segment.base import Instance

        self.sizes.append(settings.min_size)
        h, w = image.shape[:2]
        found = []
        for score, (x0, y0, x1, y1) in self.boxes[:settings.detections_per_image]:
            box = (x0 * w, y0 * h, x1 * w, y1 * h)
            mask = np.ones((max(1, int(box[3]) - int(box[1])), max(1, int(box[2]) - int(box[0]))), bool)
            found.append(Instance(0, score, box, mask, (int(box[0]), int(box[1]))))
        if settings.keep is not None:
            found = filter_instances(found, w, h, *settings.keep)
        return found


def test_first_draft_reports_the_objects_the_exact_preview_will(models_dir, src):
    """Twelve high-scoring specks (under the paper's 0.1 % area filter) and four objects: the exact preview shows the
    four; so must the first draft (its object cap counts objects that pass the filter, as the exact's does)."""
    from patchcolor.pipeline import Pipeline

    specks = [(0.99 - 0.001 * i, (0.05 * i, 0.02, 0.05 * i + 0.01, 0.03)) for i in range(12)]
    objects = [(0.9, (0.1, 0.3, 0.4, 0.9)), (0.8, (0.5, 0.2, 0.7, 0.6)), (0.7, (0.72, 0.5, 0.95, 0.95)),
               (0.6, (0.3, 0.1, 0.5, 0.3))]
    p = Pipeline(models_dir, device="cpu")
    p._models["detector:r101"] = det = RelativeBoxes(specks + objects)
    opts = make_options("default", colorizer="eccv16", net_size=64, max_instances=10)
    s = PreviewSession(p, src, long_side=150)
    d = s.render(opts, draft=True)
    e = s.render(opts)
    assert d.draft and not e.draft and det.sizes[0] is not None and det.sizes[1] is None
    assert e.instances == 4 and d.instances == 4
    for (cd, sd, bd), (ce, se, be) in zip(d.objects, e.objects):
        assert (cd, sd) == (ce, se) and np.allclose(bd, be, atol=1.0)


def test_draft_without_detector_and_with_alpha(pipe, photo_gray):
    rgba = np.dstack([np.repeat(photo_gray[:150, :200, None], 3, axis=2), np.full((150, 200), 200, np.uint8)])
    src = SourceImage(np.ascontiguousarray(rgba[..., :3]), np.ascontiguousarray(rgba[..., 3]))
    s = PreviewSession(pipe, src, long_side=100)
    opts = make_options("default", colorizer="eccv16", detector="none")
    d = s.render(opts, draft=True)
    assert d.draft and d.image.shape == (75, 100, 4) and d.instances == 0 and d.computed == 1
    assert (d.image[..., 3] == 200).all()
    e = s.render(opts, draft=True)            # exact never rendered: still the draft, from the cache
    assert e.draft and e.computed == 0 and np.array_equal(e.image, d.image)
    exact = s.render(opts)
    assert not exact.draft and exact.computed == 1
    assert np.array_equal(exact.image, PreviewSession(pipe, src, long_side=100).render(opts).image)


# -- detector knobs ------------------------------------------------------------------------------------------------

def _observe(det):
    """Hooks that record the detector's network input size and the proposals reaching the box head."""
    seen: dict[str, object] = {}

    def rpn_in(_m, args):
        seen["size"] = tuple(args[0].image_sizes[0])

    def roi_in(_m, args):
        seen["proposals"] = len(args[1][0])

    return seen, [det.model.rpn.register_forward_pre_hook(rpn_in),
                  det.model.roi_heads.register_forward_pre_hook(roi_in)]


def _same(a, b) -> bool:
    return len(a) == len(b) and all(
        x.class_id == y.class_id and x.score == y.score and x.box == y.box and x.mask_origin == y.mask_origin
        and np.array_equal(x.mask, y.mask) for x, y in zip(a, b))


def test_r101_knobs(models_dir, photo_gray):
    from patchcolor.segment.r101 import R101Detector

    det = R101Detector(models_dir / "model_final_a3ec72.pkl", CPU, min_size=240, max_size=400)
    img = np.repeat(np.asarray(Image.fromarray(photo_gray).resize((160, 120)), np.float32)[..., None], 3, axis=2)
    seen, hooks = _observe(det)
    try:
        base = det.detect(img, DetectorSettings())
        assert seen == {"size": (240, 320), "proposals": seen["proposals"]} and seen["proposals"] > 40
        # None knobs = the detector's own values, bit for bit
        assert _same(base, det.detect(img, DetectorSettings(min_size=240, proposals=1000)))
        assert base, "the biased random detector should find objects"
        small = det.detect(img, DetectorSettings(min_size=128, proposals=40))
        assert seen == {"size": (128, 171), "proposals": 40}
        assert det.model.rpn._post_nms_top_n["testing"] == 1000            # restored after the call
        det.detect(img, DetectorSettings(min_size=300))                    # max side scales: 400 * 300 / 240
        assert seen["size"] == (300, 400) and seen["proposals"] > 40
        assert not _same(base, small)
        for bad in (DetectorSettings(min_size=8), DetectorSettings(proposals=0)):
            with pytest.raises(BadOptions):
                det.detect(img, bad)
        assert det.model.rpn._post_nms_top_n["testing"] == 1000
    finally:
        for h in hooks:
            h.remove()


def test_torchvision_v2_knobs(tmp_path):
    from fake_r101 import write_tv_v2_pth
    from patchcolor.segment.tv_v2 import TorchvisionV2Detector

    det = TorchvisionV2Detector(write_tv_v2_pth(tmp_path / "tv.pth", bias_label=18), CPU)
    t = det.model.transform
    t.min_size, t.max_size = (160,), 267
    img = np.full((120, 160, 3), 128, np.float32)
    img[30:90, 40:120] = 60
    seen, hooks = _observe(det)
    try:
        det.detect(img, DetectorSettings())
        assert seen["size"] == (160, 213) and seen["proposals"] > 30
        det.detect(img, DetectorSettings(min_size=96, proposals=30))
        assert seen == {"size": (96, 128), "proposals": 30}
        assert (t.min_size, t.max_size, det.model.rpn._post_nms_top_n["testing"]) == ((160,), 267, 1000)
    finally:
        for h in hooks:
            h.remove()


def test_parse_draft():
    assert parse_draft(None, "r", "j") is False and parse_draft(True, "r", "j") is True
    assert parse_draft(False, "r", "j") is False
    for v in (1, 0, "true", [], {}):
        with pytest.raises(ProtocolError, match="'draft' must be true or false") as e:
            parse_draft(v, "r", "j")
        assert e.value.code == "bad_request" and e.value.job == "j"


def test_client_reads_draft_as_sent_or_false():
    from patchcolor_client.client import _decode_result

    base = {"type": "result", "job": "j", "width": 2, "height": 1, "format": "rgb8", "preview": True}
    assert _decode_result({**base, "draft": True}, [b"\0" * 6]).extra["draft"] is True
    assert _decode_result({**base, "draft": False}, [b"\0" * 6]).extra["draft"] is False
    assert _decode_result(base, [b"\0" * 6]).extra["draft"] is False             # an older server
    assert _decode_result({**base, "draft": "yes"}, [b"\0" * 6]).extra["draft"] is False
    assert "draft" not in _decode_result({**base, "preview": False}, [b"\0" * 6]).extra   # not a preview
