"""DDColor through the service: a real ``patchcolor serve`` process on a loopback port whose models folder holds
random DDColor-T weights in the model zoo's format (conftest ``ddcolor_models``) next to the other test weights.

``info`` names the DDColor colorizers; a ``colorize`` with ``colorizer: ddcolor-tiny`` (objects found by the random
R101) equals ``Pipeline.run`` in this process; a recompose (wire op ``refuse``) of that job with one mask cleared
and one grown past its crop (so DDColor runs again on the server) equals ``Pipeline.recompose``; the draft and exact
previews equal ``PreviewSession.render``. Each result is also compared with the same job on ECCV16: a colorizer
silently falling back to the default would give those colours instead.
"""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("spandrel_extra_arches")

from patchcolor_client import Client  # noqa: E402
from service_support import colorize_beside, start_server  # noqa: E402
from test_service import _same_instances, make_pixels  # noqa: E402

from patchcolor.options import make_options  # noqa: E402
from patchcolor.prepare import SourceImage  # noqa: E402
from patchcolor.service import protocol as P  # noqa: E402

W, H = 96, 128
# net_size 64: DDColor sees the full image at 128² and the crops at 64² (cheap on 2 CPU cores); max_instances
# keeps the random R101 (which finds ~90 objects otherwise) to two crops.
DD = {"colorizer": "ddcolor-tiny", "net_size": 64, "detector": "r101", "max_instances": 2, "max_side": 128}
ECCV = {**DD, "colorizer": "eccv16"}


@pytest.fixture(scope="module")
def server(tmp_path_factory, ddcolor_models):
    srv = start_server(tmp_path_factory.mktemp("ddsrv"), models_dir=ddcolor_models)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def job(server, pipeline, ddcolor_models, photo_gray):
    """One gray8 96x128 job with ``colorizer: ddcolor-tiny`` on the server and, at the same time, in-process."""
    px = make_pixels("gray8", W, H, photo_gray, seed=21)
    remote, local = colorize_beside(server.endpoint, pipeline, W, H, "gray8", px, DD)
    src = SourceImage.from_buffer(px.tobytes(), W, H, "gray8")
    # the same objects on ECCV16 (instances given: no second detector run)
    eccv = pipeline.run(src, make_options(**ECCV), instances=local.instances)
    return SimpleNamespace(px=px, src=src, remote=remote, local=local, eccv=eccv)


def _image(res) -> np.ndarray:
    return P.image_from_wire(res.pixels, res.width, res.height, res.fmt)


def _far(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of two 8-bit RGB images."""
    return float(np.abs(a.astype(int) - b.astype(int)).mean())


def test_info_lists_the_ddcolor_colorizers(server):
    with Client(server.endpoint, timeout_s=30) as c:
        info = c.info()
    cols = info["colorizers"]
    assert cols["ddcolor-tiny"] == cols["ddcolor"] == "ok"                  # the files conftest wrote
    assert cols["ddcolor-paper"] == cols["ddcolor-artistic"] == "missing"
    labels = {m["name"]: m["label"] for m in info["models"] if m["kind"] == "colorizer"}
    assert "DDColor-T" in labels["ddcolor-tiny"] and "slow on CPU" in labels["ddcolor"]


def test_colorize_with_ddcolor_equals_the_pipeline(job):
    res, local = job.remote, job.local
    assert (res.width, res.height, res.fmt) == (W, H, "rgb8")
    got = _image(res)
    assert got.shape == local.image.shape
    assert np.array_equal(got, local.image), "the server's pixels differ from Pipeline.run's"
    _same_instances(res.instances, local.instances)
    assert len(res.instances) == 2, "the biased random detector should find objects"
    # DDColor's colours, not ECCV16's (random DDColor-T weights give a/b in tens of units, ECCV16's nearly gray)
    off = _far(got, job.eccv.image)
    assert off > 5, off


def test_recompose_of_a_ddcolor_job(server, pipeline, job):
    """Mask 0 cleared (the instance is dropped), mask 1 grown over the whole image (past its crop box: the server
    runs DDColor again on the new crop): the same image and instances as Pipeline.recompose on the kept state."""
    first = job.remote
    masks = [bytearray(i.full_mask(W, H)) for i in first.instances]
    masks[0] = bytearray(W * H)
    masks[1] = bytearray(b"\xff" * (W * H))
    with Client(server.endpoint, timeout_s=120) as c:
        again = c.recompose(first.job_id, masks, token=first.token)
    assert again.job_id != first.job_id and (again.width, again.height) == (W, H)
    assert len(again.instances) == 1
    got = _image(again)
    as_arrays = [np.frombuffer(m, np.uint8).reshape(H, W) for m in masks]
    want = pipeline.recompose(job.src, job.local.state, as_arrays, make_options(**DD))
    assert np.array_equal(got, want.image), "the server's recompose differs from Pipeline.recompose's"
    _same_instances(again.instances, want.instances)
    edit = _far(got, _image(first))
    assert edit > 0.5, edit                                     # the edit shows
    on_eccv = pipeline.recompose(job.src, job.eccv.state, as_arrays, make_options(**ECCV))
    off = _far(got, on_eccv.image)
    assert off > 5, off


def test_preview_draft_and_exact_with_ddcolor(server, pipeline, job):
    from patchcolor.preview import PreviewSession

    with Client(server.endpoint, timeout_s=120) as c:
        draft = c.preview(W, H, "gray8", job.px, DD, long_side=64, draft=True)
        exact = c.preview(W, H, "gray8", job.px, DD, long_side=64)
    assert draft.extra["draft"] is True and exact.extra["draft"] is False
    assert (draft.width, draft.height) == (exact.width, exact.height) == (48, 64)
    assert draft.extra["computed"] >= 1 and exact.extra["computed"] >= 1
    opts = make_options(**DD)
    for res, is_draft in ((draft, True), (exact, False)):
        session = PreviewSession(pipeline, job.src, long_side=64)
        want = session.render(opts, draft=is_draft)
        assert want.draft is is_draft
        got, kind = _image(res), "draft" if is_draft else "exact"
        err = int(np.abs(got.astype(int) - want.image).max())
        assert err <= 1, (kind, err)
        off = _far(got, session.render(make_options(**ECCV), draft=is_draft).image)
        assert off > 5, (kind, off)
