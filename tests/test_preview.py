"""Preview sessions (service/preview_cache.py) and the wire side of hints/previews (service/protocol.py), without a
socket.

The service round trips (hints frame on colorize, the preview op) are in tests/test_service_hints.py."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from patchcolor.options import make_options
from patchcolor.prepare import SourceImage
from patchcolor.preview import PreviewSession, make_proxy
from patchcolor.service.preview_cache import PreviewSessions, image_digest, run_preview
from patchcolor.service.protocol import (
    MAX_PREVIEW_SIDE, PREVIEW_SIDE, parse_hints, parse_long_side, preview_message,
)
from patchcolor_client.protocol import ProtocolError

FAST = dict(colorizer="siggraph17", net_size=64, detector="none")


@pytest.fixture(scope="module")
def gray(photo_gray) -> np.ndarray:
    return np.asarray(Image.fromarray(photo_gray).resize((200, 150), Image.BICUBIC))


def _hint_frame(w: int, h: int) -> tuple[bytes, SourceImage]:
    m = np.zeros((h, w, 4), np.uint8)
    m[h // 2:h // 2 + 3, w // 2:w // 2 + 3] = (40, 60, 230, 255)
    return m.tobytes(), SourceImage(np.ascontiguousarray(m[..., :3]), np.ascontiguousarray(m[..., 3]))


# -- header validation -------------------------------------------------------------------------------------------

def test_hints_header_is_checked_like_the_image_frame():
    meta = parse_hints({"width": 200, "height": 150, "format": "rgba8"}, 200, 150, 10**6, "r", "j")
    assert meta.nbytes == 200 * 150 * 4
    assert parse_hints(None, 200, 150, 10**6, "r", "j") is None
    assert parse_hints({"width": 100, "height": 75, "format": "rgb16"}, 200, 150, 10**6, "r", "j").nbytes == 100 * 75 * 6
    bad = [
        ([1, 2], "must be an object"),
        ({"width": 200, "height": 150, "format": "rgba8", "x": 1}, "must be an object"),
        ({"width": 200, "height": 150, "format": "gray8"}, "gray without alpha"),
        ({"width": 200, "height": 150, "format": "jpeg"}, "'format' must be one of"),
        ({"width": 200.0, "height": 150, "format": "rgba8"}, "positive integers"),
        ({"width": True, "height": 150, "format": "rgba8"}, "positive integers"),
        ({"width": 0, "height": 150, "format": "rgba8"}, "positive integers"),
        ({"width": 150, "height": 150, "format": "rgba8"}, "the hint map is 150x150 but the image is 200x150"),
    ]
    for obj, msg in bad:
        with pytest.raises(ProtocolError, match=msg) as e:
            parse_hints(obj, 200, 150, 10**6, "r", "j")
        assert e.value.code == "bad_request" and e.value.job == "j"
    with pytest.raises(ProtocolError, match="over this server's limit") as e:
        parse_hints({"width": 2000, "height": 1500, "format": "rgba8"}, 2000, 1500, 10**6, "r", "j")
    assert e.value.code == "image_too_large"


def test_long_side():
    assert parse_long_side(None, "r", "j") == PREVIEW_SIDE == 384
    assert parse_long_side(MAX_PREVIEW_SIDE, "r", "j") == MAX_PREVIEW_SIDE
    for v in (63, 1025, 384.0, "384", True):
        with pytest.raises(ProtocolError, match="long_side"):
            parse_long_side(v, "r", "j")


# -- sessions ------------------------------------------------------------------------------------------------------

def test_proxy_long_side_and_area_downscale(gray):
    p = make_proxy(SourceImage(gray), 100)
    assert (p.width, p.height) == (100, 75) and p.color.dtype == np.uint8
    want = np.asarray(Image.fromarray(gray).resize((100, 75), Image.BOX)).astype(int)
    assert np.abs(p.color.astype(int) - want).max() <= 1          # INTER_AREA at an exact 2x = a box filter
    big = make_proxy(SourceImage((gray.astype(np.uint16) * 257)), 1000)
    assert (big.width, big.height) == (200, 150) and big.color.dtype == np.uint8


def test_session_without_source_needs_the_image_each_time(pipeline, gray):
    src = SourceImage(gray)
    s = PreviewSession(pipeline, src, long_side=100, keep_source=False)
    assert s.src is None
    with pytest.raises(ValueError, match="pass src"):
        s.render(make_options("default", **FAST))
    with pytest.raises(ValueError, match="the session's is 200x150"):
        s.render(make_options("default", **FAST), src=SourceImage(gray[:100]))
    pv = s.render(make_options("default", **FAST), src=src)
    assert pv.image.shape == (75, 100, 3) and pv.computed == 1 and pv.instances == 0


def test_wire_sessions_are_found_by_image_digest_and_bounded(pipeline, gray):
    sessions = PreviewSessions()
    frame = gray.tobytes()
    opts = make_options("default", **FAST)
    first = run_preview(sessions, pipeline, frame, 200, 150, "gray8", opts, None, 100)
    again = run_preview(sessions, pipeline, bytes(frame), 200, 150, "gray8", make_options("default", **FAST,
                        saturation=1.5), None, 100)
    assert first.computed == 1 and again.computed == 0 and len(sessions) == 1     # same pixels: same session
    hint_bytes, hint_src = _hint_frame(200, 150)
    hinted = run_preview(sessions, pipeline, frame, 200, 150, "gray8", opts, hint_src, 100)
    assert hinted.hints == 1 and hinted.computed == 1
    assert np.abs(hinted.image.astype(int) - first.image).max() > 0
    other = gray.copy()
    other[0, 0] ^= 1
    assert image_digest(other.tobytes(), 200, 150, "gray8") != image_digest(frame, 200, 150, "gray8")
    run_preview(sessions, pipeline, other.tobytes(), 200, 150, "gray8", opts, None, 100)
    assert len(sessions) == 2
    sessions.max_bytes = 0                                        # over budget: all but the newest go
    sessions.trim()
    assert len(sessions) == 1
    header, frames = preview_message("r1", "j1", hinted, 3)
    assert header["preview"] is True and header["type"] == "result" and header["format"] == "rgb8"
    assert (header["width"], header["height"]) == (100, 75) and header["hints"] == 1 and header["instances"] == []
    assert len(frames) == 1 and frames[0].nbytes == 100 * 75 * 3
