"""Detectron2 R101-FPN port (patchcolor.segment.r101 / d2_pickle), the other detectors and the paper's small-box filter.

Everything runs on CPU with random weights written in the official layouts (tests/fake_r101.py);
images are small and the test resize is shrunk (min_size) to keep the file fast.
"""
from __future__ import annotations

import builtins
import math
import os
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import FrozenBatchNorm2d, roi_align

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fake_r101 import fake_r101_model, r101_key_shapes, write_r101_pkl, write_tv_v2_pth  # noqa: E402
from patchcolor.errors import BadOptions, PatchColorError, WeightsCorrupt, WeightsMissing  # noqa: E402
from patchcolor.registry import registry  # noqa: E402
from patchcolor.segment import filter_instances, load_detector  # noqa: E402
from patchcolor.segment.base import DetectorSettings, Instance  # noqa: E402
from patchcolor.segment.d2_pickle import convert_to_torchvision, read_d2_pickle, tv_to_d2_key  # noqa: E402
from patchcolor.segment.r101 import (D2AnchorGenerator, D2RoIAlign, R101Detector, build_r101_fpn,  # noqa: E402
                                     fold_frozen_bn,
                                     paste_mask_window, postprocess_detections, resize_like_detectron2,
                                     resize_shape)

CPU = torch.device("cpu")
BIAS_CLASS = 16   # "dog"


def tv_shapes() -> dict[str, torch.Size]:
    with torch.device("meta"):
        return {k: v.shape for k, v in build_r101_fpn().state_dict().items()}


@pytest.fixture(scope="module")
def biased_pkl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_r101_pkl(tmp_path_factory.mktemp("r101") / registry().file("r101").file, seed=1, bias_class=BIAS_CLASS)


@pytest.fixture(scope="module")
def detector(biased_pkl: Path) -> R101Detector:
    return R101Detector(biased_pkl, CPU, min_size=240, max_size=400)


def grey_image(w: int = 320, h: int = 240) -> np.ndarray:
    """(h, w, 3) float32 0–255, R=G=B: a bright rectangle and a disc on a darker ramp."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    g = 60 + 40 * xx / w
    g[h // 4: h // 2, w // 8: w // 2] = 210
    g[(xx - 0.7 * w) ** 2 + (yy - 0.6 * h) ** 2 < (0.15 * h) ** 2] = 160
    return np.repeat(g[..., None], 3, axis=2)


# ------------------------------------------------------------------------------- restricted unpickler
class _Evil:
    def __init__(self, fn, arg):
        self.fn, self.arg = fn, arg

    def __reduce__(self):
        return self.fn, (self.arg,)


@pytest.mark.parametrize("how", ["os.system", "builtins.exec", "eval-in-array-slot"])
def test_unpickler_refuses_code(tmp_path: Path, how: str) -> None:
    marker = tmp_path / "pwned"
    if how == "os.system":
        evil = _Evil(os.system, f"touch {marker}")
    else:
        evil = _Evil(builtins.exec, f"open({str(marker)!r}, 'w').close()")
    payload = {"model": {"a": np.zeros(3, np.float32)}, "__author__": evil}
    if how == "eval-in-array-slot":
        payload = {"model": {"backbone.bottom_up.stem.conv1.weight": evil}}
    path = tmp_path / "model_final_a3ec72.pkl"
    path.write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(WeightsCorrupt, match="patchcolor weights fetch"):
        read_d2_pickle(path)
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_unpickler_reads_model_zoo_format(tmp_path: Path, protocol: int) -> None:
    model = {"backbone.fpn_lateral2.weight": np.arange(12, dtype=np.float32).reshape(3, 4, 1, 1),
             "proposal_generator.anchor_generator.cell_anchors.0": np.ones((3, 4), np.float32),
             "x.num": np.arange(3, dtype=np.int64)}
    path = tmp_path / "m.pkl"
    path.write_bytes(pickle.dumps({"model": model, "__author__": "Detectron2 Model Zoo"}, protocol=protocol))
    got = read_d2_pickle(path)
    assert got.keys() == model.keys()
    for k in model:
        np.testing.assert_array_equal(got[k], model[k])
        assert got[k].dtype == model[k].dtype


def test_unpickler_missing_and_garbage(tmp_path: Path) -> None:
    with pytest.raises(WeightsMissing):
        read_d2_pickle(tmp_path / "nope.pkl")
    (tmp_path / "g.pkl").write_bytes(b"PK\x03\x04 not a pickle at all")
    with pytest.raises(WeightsCorrupt, match="patchcolor weights fetch"):
        read_d2_pickle(tmp_path / "g.pkl")
    (tmp_path / "s.pkl").write_bytes(pickle.dumps({"blobs": {}}))
    with pytest.raises(WeightsCorrupt, match="'model'"):
        read_d2_pickle(tmp_path / "s.pkl")
    with pytest.raises(WeightsMissing):
        R101Detector(tmp_path / "nope.pkl", CPU)


# ------------------------------------------------------------------------------------------ key mapping
def test_every_official_key_is_used_and_fake_matches_reference_layout() -> None:
    shapes = r101_key_shapes()
    assert len([k for k in shapes if "cell_anchors" not in k]) == 562
    assert sum(int(np.prod(s)) for s in shapes.values()) == 63_493_808 + 5 * 12   # 63.49 M floats (§4.2)
    used = {tv_to_d2_key(k) for k in tv_shapes()}
    unused = set(shapes) - used
    assert unused == {f"proposal_generator.anchor_generator.cell_anchors.{i}" for i in range(5)}
    assert used <= set(shapes)


def test_planted_weights_land_at_the_right_place(tmp_path: Path) -> None:
    m = fake_r101_model(seed=3)
    plant = {
        ("backbone.bottom_up.res4.7.conv2.weight", (3, 5, 1, 2)): ("backbone.body.layer3.7.conv2.weight", (3, 5, 1, 2)),
        ("backbone.bottom_up.res3.0.shortcut.norm.bias", (17,)): ("backbone.body.layer2.0.downsample.1.bias", (17,)),
        ("backbone.bottom_up.res2.2.conv3.norm.running_var", (4,)): ("backbone.body.layer1.2.bn3.running_var", (4,)),
        ("backbone.bottom_up.stem.conv1.norm.running_mean", (9,)): ("backbone.body.bn1.running_mean", (9,)),
        ("backbone.fpn_lateral3.weight", (7, 11, 0, 0)): ("backbone.fpn.inner_blocks.1.0.weight", (7, 11, 0, 0)),
        ("backbone.fpn_output5.bias", (9,)): ("backbone.fpn.layer_blocks.3.0.bias", (9,)),
        ("proposal_generator.rpn_head.conv.weight", (1, 2, 0, 1)): ("rpn.head.conv.0.0.weight", (1, 2, 0, 1)),
        ("proposal_generator.rpn_head.objectness_logits.bias", (2,)): ("rpn.head.cls_logits.bias", (2,)),
        ("proposal_generator.rpn_head.anchor_deltas.weight", (10, 3, 0, 0)): ("rpn.head.bbox_pred.weight", (10, 3, 0, 0)),
        ("roi_heads.box_head.fc1.weight", (5, 12543)): ("roi_heads.box_head.fc6.weight", (5, 12543)),
        ("roi_heads.box_head.fc2.bias", (1023,)): ("roi_heads.box_head.fc7.bias", (1023,)),
        ("roi_heads.mask_head.mask_fcn3.weight", (4, 4, 2, 2)): ("roi_heads.mask_head.2.0.weight", (4, 4, 2, 2)),
        ("roi_heads.mask_head.deconv.weight", (8, 9, 1, 0)): ("roi_heads.mask_predictor.conv5_mask.weight", (8, 9, 1, 0)),
    }
    for n, ((k, idx), _) in enumerate(plant.items()):
        m[k][idx] = 1000.0 + n
    cls_w, cls_b = m["roi_heads.box_predictor.cls_score.weight"], m["roi_heads.box_predictor.cls_score.bias"]
    cls_w[80], cls_b[80] = 80.5, -80.5          # background (last in Detectron2)
    cls_w[5], cls_b[5] = 5.5, 5.25              # class 5 "bus"
    bw, bb = m["roi_heads.box_predictor.bbox_pred.weight"], m["roi_heads.box_predictor.bbox_pred.bias"]
    bw[4 * 7: 4 * 7 + 4, 0], bb[4 * 7: 4 * 7 + 4] = [70, 71, 72, 73], [-70, -71, -72, -73]   # class 7
    mw, mb = m["roi_heads.mask_head.predictor.weight"], m["roi_heads.mask_head.predictor.bias"]
    mw[7], mb[7] = 0.7, 0.75
    c1 = m["backbone.bottom_up.stem.conv1.weight"]
    c1[:, 0], c1[:, 1], c1[:, 2] = 1.0, 2.0, 3.0    # B, G, R input channels
    det = R101Detector(write_r101_pkl(tmp_path / "p.pkl", model=m), CPU, fold_bn=False, channels_last=False)
    sd = det.model.state_dict()

    for n, ((_, _), (tk, tidx)) in enumerate(plant.items()):
        assert sd[tk][tidx] == 1000.0 + n, tk
    w, b = sd["roi_heads.box_predictor.cls_score.weight"], sd["roi_heads.box_predictor.cls_score.bias"]
    assert w.shape == (81, 1024) and torch.all(w[0] == 80.5) and b[0] == -80.5 and torch.all(w[6] == 5.5) and b[6] == 5.25
    torch.testing.assert_close(w[1:6], torch.from_numpy(cls_w[0:5]))
    bw2, bb2 = sd["roi_heads.box_predictor.bbox_pred.weight"], sd["roi_heads.box_predictor.bbox_pred.bias"]
    assert bw2.shape == (324, 1024) and torch.all(bw2[:4] == 0) and torch.all(bb2[:4] == 0)
    assert bw2[4 * 8: 4 * 8 + 4, 0].tolist() == [70, 71, 72, 73] and bb2[4 * 8: 4 * 8 + 4].tolist() == [-70, -71, -72, -73]
    mw2, mb2 = sd["roi_heads.mask_predictor.mask_fcn_logits.weight"], sd["roi_heads.mask_predictor.mask_fcn_logits.bias"]
    assert mw2.shape == (81, 256, 1, 1) and torch.all(mw2[0] == 0) and mb2[0] == 0
    assert torch.all(mw2[8] == 0.7) and mb2[8] == 0.75
    c = sd["backbone.body.conv1.weight"]   # RGB order now: R, G, B
    assert torch.all(c[:, 0] == 3.0) and torch.all(c[:, 1] == 2.0) and torch.all(c[:, 2] == 1.0)
    assert det.model.transform.image_mean == [123.675, 116.28, 103.53] and det.model.transform.image_std == [1.0] * 3


def test_conversion_fills_frozen_bn_stats_and_reports_bad_keys() -> None:
    m = fake_r101_model(seed=0)
    target = tv_shapes()
    no_stats = {k: v for k, v in m.items() if not k.endswith(("running_mean", "running_var"))}
    sd = convert_to_torchvision(no_stats, target)
    assert torch.all(sd["backbone.body.layer3.5.bn2.running_mean"] == 0)
    assert torch.all(sd["backbone.body.layer3.5.bn2.running_var"] == 1)
    assert all(v.dtype == torch.float32 and v.is_contiguous() for v in sd.values())

    missing = dict(m)
    del missing["backbone.bottom_up.res4.22.conv3.weight"]
    with pytest.raises(WeightsCorrupt, match=r"res4\.22\.conv3\.weight.*patchcolor weights fetch"):
        convert_to_torchvision(missing, target)
    wrong = dict(m)
    wrong["roi_heads.box_predictor.bbox_pred.weight"] = np.zeros((324, 1024), np.float32)   # torchvision layout
    with pytest.raises(WeightsCorrupt, match=r"bbox_pred\.weight.*\[324, 1024\].*\[320, 1024\]"):
        convert_to_torchvision(wrong, target)


# ---------------------------------------------------------------------------------------- structure
def test_backbone_strides_and_frozen_bn() -> None:
    with torch.device("meta"):
        model = build_r101_fpn()
    body = model.backbone.body
    assert body.layer1[0].conv1.stride == (1, 1) and body.layer1[0].conv2.stride == (1, 1)
    for layer in (body.layer2, body.layer3, body.layer4):
        assert layer[0].conv1.stride == (2, 2) and layer[0].conv2.stride == (1, 1)
        assert layer[0].downsample[0].stride == (2, 2)
        assert all(blk.conv1.stride == (1, 1) and blk.conv2.stride == (1, 1) for blk in list(layer)[1:])
    assert [len(body.layer1), len(body.layer2), len(body.layer3), len(body.layer4)] == [3, 4, 23, 3]
    norms = [m for m in body.modules() if "Norm" in type(m).__name__]
    assert len(norms) == 104 and all(isinstance(m, FrozenBatchNorm2d) and m.eps == 1e-5 for m in norms)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert model.rpn._pre_nms_top_n["testing"] == 1000 and model.rpn._post_nms_top_n["testing"] == 1000
    assert model.rpn.nms_thresh == 0.7 and model.rpn.score_thresh == 0.0


def test_bn_folding_keeps_the_features(biased_pkl: Path) -> None:
    det = R101Detector(biased_pkl, CPU, fold_bn=False, channels_last=False)
    backbone = det.model.backbone
    x = torch.from_numpy(grey_image(96, 64)).permute(2, 0, 1)[None] - torch.tensor([123.675, 116.28, 103.53])[:, None, None]
    with torch.inference_mode():
        a = backbone(x)
        assert fold_frozen_bn(backbone.body) == 104
        assert not any(isinstance(m, FrozenBatchNorm2d) for m in backbone.body.modules())
        b = backbone(x)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-4 * float(a[k].abs().max()))


def test_anchors_unrounded_location_major_fixed_strides() -> None:
    gen = D2AnchorGenerator()
    h, w = math.sqrt(32 * 32 * 0.5), math.sqrt(32 * 32 / 0.5)   # ratio 0.5 = h / w
    cell = torch.tensor([[-w / 2, -h / 2, w / 2, h / 2], [-16, -16, 16, 16], [-h / 2, -w / 2, h / 2, w / 2]])
    torch.testing.assert_close(gen.cell_anchors[0], cell)
    assert abs(w / 2 - 22.627) < 1e-3 and abs(h / 2 - 11.314) < 1e-3
    # 800 x 1088 padded input: p2..p6 = 200x272 ... 13x17 (torchvision would infer a p6 stride of 800 // 13 = 61)
    sizes = [(200, 272), (100, 136), (50, 68), (25, 34), (13, 17)]
    feats = [torch.zeros(1, 1, *s) for s in sizes]
    (anchors,) = gen(ImageList(torch.zeros(1, 3, 800, 1088), [(800, 1067)]), feats)
    assert anchors.dtype == torch.float32 and anchors.shape == (3 * sum(a * b for a, b in sizes), 4)
    torch.testing.assert_close(anchors[:3], cell)
    torch.testing.assert_close(anchors[3:6], cell + torch.tensor([4.0, 0, 4.0, 0]))              # next x location
    torch.testing.assert_close(anchors[3 * 272: 3 * 272 + 3], cell + torch.tensor([0, 4.0, 0, 4.0]))   # next row
    p6 = anchors[-3 * 13 * 17:]
    torch.testing.assert_close(p6[3 * 17: 3 * 17 + 3], gen.cell_anchors[4] + torch.tensor([0, 64.0, 0, 64.0]))
    torch.testing.assert_close(p6[-3:], gen.cell_anchors[4] + torch.tensor([16 * 64.0, 12 * 64.0] * 2))


def test_poolers_are_roialign_v2_with_detectron2_levels() -> None:
    with torch.device("meta"):
        model = build_r101_fpn()
    box_pool, mask_pool = model.roi_heads.box_roi_pool, model.roi_heads.mask_roi_pool
    assert isinstance(box_pool, D2RoIAlign) and isinstance(mask_pool, D2RoIAlign)
    assert box_pool.output_size == (7, 7) and mask_pool.output_size == (14, 14)
    assert box_pool.sampling_ratio == 0 and mask_pool.sampling_ratio == 0
    # p2..p5 of a 256 x 512 input; level k holds the ramp x + 1000 k (feature-pixel x coordinate)
    feats = {str(k): (torch.arange(512 // 2 ** (k + 2), dtype=torch.float32) + 1000 * k).expand(1, 2, 256 // 2 ** (k + 2), -1)
             .contiguous() for k in range(4)}
    side = [10.0, 111.9, 112.0, 223.9, 224.0, 447.9, 448.0, 1000.0]
    boxes = torch.tensor([[1.3, 2.0, 1.3 + s, 2.0 + 1.0] for s in side])
    boxes[:, 3] = boxes[:, 1] + torch.tensor(side)   # square boxes: sqrt(area) = side
    out = box_pool(feats, [boxes], [(256, 512)])
    level = (out[:, 0, 0, 0] // 1000).long().tolist()
    assert level == [0, 0, 1, 1, 2, 2, 3, 3]          # floor(4 + log2(side / 224 + 1e-8)) clamped to 2..5, minus 2
    # aligned=True: first bin centre at x0 * scale - 0.5 + bin / 2 (a ramp samples its own coordinate)
    x0, s = 1.3, 10.0
    expected = x0 / 4 - 0.5 + (s / 4) / 7 / 2
    assert abs(float(out[0, 0, 0, 0]) - expected) < 1e-4
    ref = roi_align(feats["0"], torch.cat([torch.zeros(1, 1), boxes[:1]], 1), 7, 0.25, 0, aligned=True)
    torch.testing.assert_close(out[:1], ref)
    assert not torch.allclose(out[:1], roi_align(feats["0"], torch.cat([torch.zeros(1, 1), boxes[:1]], 1), 7, 0.25, 0))


def test_rpn_ranks_by_logits_and_drops_empty_boxes() -> None:
    with torch.device("meta"):
        model = build_r101_fpn()
    rpn = model.rpn.eval()
    # two overlapping boxes whose sigmoid is 1.0 in float32 (a tie): the larger logit (second) must win
    props = torch.tensor([[[10.0, 10, 50, 50], [11, 10, 51, 50], [5, 5, 5, 30], [60, 60, 90, 80]]])
    logits = torch.tensor([[20.0, 20.5, 30.0, -3.0]])
    assert torch.sigmoid(logits[0, 0]) == torch.sigmoid(logits[0, 1])
    boxes, scores = rpn.filter_proposals(props, logits, [(100, 100)], [4])
    assert boxes[0].tolist() == [[11, 10, 51, 50], [60, 60, 90, 80]] and scores[0].tolist() == [20.5, -3.0]


def test_internal_transform_normalizes_and_pads_but_does_not_resize() -> None:
    with torch.device("meta"):
        model = build_r101_fpn()
    img = torch.full((3, 100, 150), 200.0)
    batch, _ = model.transform([img])
    assert batch.image_sizes == [(100, 150)] and batch.tensors.shape == (1, 3, 128, 160)
    torch.testing.assert_close(batch.tensors[0, :, 0, 0], torch.tensor([200 - 123.675, 200 - 116.28, 200 - 103.53]))
    assert torch.all(batch.tensors[..., 100:, :] == 0) and torch.all(batch.tensors[..., 150:] == 0)


def test_resize_rule() -> None:
    assert resize_shape(960, 1280) == (800, 1067)
    assert resize_shape(1280, 960) == (1067, 800)
    assert resize_shape(240, 320) == (800, 1067)
    assert resize_shape(100, 2000) == (67, 1333)          # long side capped at 1333
    assert resize_shape(800, 800) == (800, 800)
    x = torch.rand(1, 3, 30, 40) * 255
    torch.testing.assert_close(resize_like_detectron2(x, 24, 100),
                               F.interpolate(x, (24, 32), mode="bilinear", align_corners=False), rtol=0, atol=0)
    assert resize_like_detectron2(x, 30, 100) is x


# ---------------------------------------------------------------------------------------- mask paste
def _paste_full_image_reference(prob: torch.Tensor, box: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Detectron2 ``_do_paste_mask`` with skip_empty=False (the GPU path): the whole image at once."""
    x0, y0, x1, y1 = box.view(4, 1)
    img_y = (torch.arange(0, h, dtype=torch.float32) + 0.5 - y0) / (y1 - y0) * 2 - 1
    img_x = (torch.arange(0, w, dtype=torch.float32) + 0.5 - x0) / (x1 - x0) * 2 - 1
    grid = torch.stack([img_x[None, :].expand(h, w), img_y[:, None].expand(h, w)], dim=2)[None]
    return F.grid_sample(prob[None, None], grid, align_corners=False)[0, 0] >= 0.5


@pytest.mark.parametrize("box", [(3.3, 5.7, 20.2, 17.9), (0.0, 0.0, 31.6, 23.2), (25.4, 1.2, 32.0, 24.0),
                                 (10.1, 10.2, 10.9, 11.0), (7.5, 2.5, 8.5, 22.5)])
def test_mask_paste_window_equals_full_image_grid_sample(box: tuple[float, ...]) -> None:
    g = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
    prob = (torch.sigmoid((xx - 13.5) / 3) * torch.sigmoid((yy - 9) / 2) + 0.3 * torch.rand(28, 28, generator=g)).clamp(0, 1)
    h, w = 24, 32
    b = torch.tensor(box, dtype=torch.float32)
    ref = _paste_full_image_reference(prob, b, h, w)
    mask, (x0, y0) = paste_mask_window(prob, b, h, w)
    assert mask.dtype == bool and x0 >= 0 and y0 >= 0 and x0 + mask.shape[1] <= w and y0 + mask.shape[0] <= h
    full = np.zeros((h, w), bool)
    full[y0: y0 + mask.shape[0], x0: x0 + mask.shape[1]] = mask
    np.testing.assert_array_equal(full, ref.numpy())


def test_postprocess_scales_clips_and_drops_empty() -> None:
    result = {"image_size": (50, 100), "scores": torch.tensor([0.9, 0.8, 0.7]), "labels": torch.tensor([1, 5, 80]),
              "boxes": torch.tensor([[10.0, 5, 60, 45], [99.5, 10, 100, 20], [20, 20, 20, 30]]),
              "masks": torch.ones(3, 1, 28, 28)}
    out = postprocess_detections(result, 100, 199)
    assert len(out) == 2 and [i.class_id for i in out] == [0, 4]        # the zero-width box is dropped
    assert out[0].box == pytest.approx((19.9, 10.0, 119.4, 90.0), rel=1e-6)
    assert out[1].box[2] == 199.0                                          # clipped to the image
    # probability 1 everywhere: bilinear with zero padding ramps to 0 over the half mask-pixel around the box
    m, (ox, oy) = out[0].mask, out[0].mask_origin
    cy, cx = np.mgrid[oy: oy + m.shape[0], ox: ox + m.shape[1]] + 0.5

    def weight(c: np.ndarray, lo: float, hi: float) -> np.ndarray:
        i = ((c - lo) / (hi - lo) * 2 * 28 - 1) / 2      # continuous mask index (align_corners=False)
        return np.clip(np.minimum(i + 1, 28 - i), 0, 1)

    np.testing.assert_array_equal(m, weight(cx, 19.9, 119.4) * weight(cy, 10, 90) >= 0.5)
    assert m[1:-1, 2:-2].sum() > 0.95 * m[1:-1, 2:-2].size


# -------------------------------------------------------------------------------------------- end to end
def test_end_to_end_biased_random_r101(detector: R101Detector) -> None:
    img = grey_image(320, 240)
    found = detector.detect(img, DetectorSettings())
    assert len(found) >= 1
    scores = [i.score for i in found]
    assert scores == sorted(scores, reverse=True) and all(0.3 < s <= 1 for s in scores)
    assert all(0 <= i.class_id < 80 for i in found) and {i.class_id for i in found} == {BIAS_CLASS}
    assert any(i.mask.any() and not i.mask.all() for i in found)
    for i in found:
        x0, y0, x1, y1 = i.box
        assert 0 <= x0 < x1 <= 320 and 0 <= y0 < y1 <= 240
        assert i.mask.dtype == bool and i.mask.ndim == 2
        ox, oy = i.mask_origin
        assert 0 <= ox and 0 <= oy and ox + i.mask.shape[1] <= 320 and oy + i.mask.shape[0] <= 240
        ys, xs = np.nonzero(i.mask)     # a pixel is in the mask only if its centre is inside the float box
        assert np.all(xs + ox + 0.5 >= x0) and np.all(xs + ox + 0.5 <= x1)
        assert np.all(ys + oy + 0.5 >= y0) and np.all(ys + oy + 0.5 <= y1)
    fewer = detector.detect(img, DetectorSettings(score_thresh=0.3, nms_thresh=0.3, detections_per_image=5))
    assert len(fewer) == 5 and [i.score for i in fewer] == scores[:5]
    kept = filter_instances(found, 320, 240, 0.001, 100)
    assert kept == [i for i in found if (int(i.box[2]) - int(i.box[0])) * (int(i.box[3]) - int(i.box[1])) > 76.8]


@pytest.mark.parametrize("frac, cap", [(0.001, 4), (0.05, 3), (0.001, 0)])
def test_mask_head_runs_only_on_kept_detections(detector: R101Detector, frac: float, cap: int) -> None:
    """settings.keep: the same instances, order and masks as filtering the full list afterwards, and the mask
    head sees only the kept boxes (the ROIs counted at the mask predictor)."""
    img = grey_image(320, 240)
    seen: list[int] = []
    hook = detector.model.roi_heads.mask_predictor.register_forward_hook(lambda m, a, out: seen.append(out.shape[0]))
    try:
        full = detector.detect(img, DetectorSettings())
        kept = detector.detect(img, DetectorSettings(keep=(frac, cap)))
    finally:
        hook.remove()
    want = filter_instances(full, 320, 240, frac, cap)
    assert len(full) > max(cap, 1) and len(want) == min(cap, len(want))
    assert [(i.class_id, i.score, i.box, i.mask_origin) for i in kept] == \
        [(i.class_id, i.score, i.box, i.mask_origin) for i in want]
    assert all(np.array_equal(a.mask, b.mask) for a, b in zip(kept, want))
    assert seen[0] == len(full) and sum(seen[1:]) == len(want)
    assert filter_instances(kept, 320, 240, frac, cap) == kept           # the pipeline's own filter: no change
    assert "postprocess_detections" not in vars(detector.model.roi_heads)  # the per-call filter is removed


def test_autocast_keeps_postprocessing_float32(detector: R101Detector) -> None:
    """bf16 forward (emulated and slow on CPUs without AVX512-BF16, so few proposals here)."""
    img = grey_image(160, 120)
    post = detector.model.rpn._post_nms_top_n
    old = post["testing"]
    post["testing"] = 40
    try:
        with torch.inference_mode():
            x = resize_like_detectron2(torch.from_numpy(img).permute(2, 0, 1)[None], 64, 100)
            raw = detector.forward_raw(x, DetectorSettings(precision="bf16"))
    finally:
        post["testing"] = old
    boxes = raw["boxes"]
    assert len(boxes) > 0 and torch.isfinite(boxes).all()
    assert boxes.dtype == raw["scores"].dtype == raw["masks"].dtype == torch.float32
    assert (boxes != boxes.bfloat16().float()).any()     # decoded in float32, not on the bf16 grid
    with pytest.raises(BadOptions):
        detector.detect(img, DetectorSettings(precision="int8"))


# --------------------------------------------------------------------------------- paper's filter, registry
def _inst(box: tuple[float, float, float, float], score: float = 0.9) -> Instance:
    return Instance(class_id=0, score=score, box=box, mask=np.ones((2, 2), bool), mask_origin=(0, 0))


def test_filter_instances_is_the_papers_small_box_filter() -> None:
    # 100 x 100 image, frac 0.01 -> keep when truncated-box area > 100 (strictly)
    a = _inst((0.0, 0.0, 10.0, 10.0), 0.95)        # area 100: not kept (strictly greater)
    b = _inst((0.0, 0.0, 10.9, 10.99), 0.9)        # truncates to 10 x 10: not kept
    c = _inst((0.0, 0.0, 11.0, 10.0), 0.8)         # 110: kept
    d = _inst((0.5, 0.5, 10.7, 11.2), 0.7)         # (0, 0, 10, 11): 110, kept
    e = _inst((3.9, 3.9, 14.99, 14.99), 0.6)       # (3, 3, 14, 14): 121, kept
    f = _inst((50.0, 50.0, 99.0, 99.0), 0.5)       # kept
    assert filter_instances([a, b, c, d, e, f], 100, 100, 0.01, 100) == [c, d, e, f]
    assert filter_instances([a, b, c, d, e, f], 100, 100, 0.01, 2) == [c, d]
    assert filter_instances([f, c], 100, 100, 0.01, 100) == [f, c]      # order kept
    assert filter_instances([a], 100, 100, 0.0099, 100) == [a]          # 100 > 99
    assert filter_instances([c], 1280, 960, 0.001, 100) == []           # 110 <= 1228.8
    assert filter_instances([c, d], 100, 100, 0.01, 0) == []


def test_registry_errors(tmp_path: Path) -> None:
    with pytest.raises(WeightsMissing, match="weights fetch"):
        load_detector("r101", tmp_path, CPU)
    with pytest.raises(WeightsMissing):
        load_detector("torchvision-v2", tmp_path, CPU)
    with pytest.raises(BadOptions):
        load_detector("yolo", tmp_path, CPU)


def test_detectron2_backend_without_detectron2(tmp_path: Path) -> None:
    try:
        import detectron2  # noqa: F401
        pytest.skip("detectron2 is installed")
    except ImportError:
        pass
    from patchcolor.segment.detectron2_impl import Detectron2Detector

    with pytest.raises(PatchColorError, match=r"detectron2 is not installed; use --detector r101 \(default\) or install detectron2"):
        Detectron2Detector(tmp_path / "model_final_a3ec72.pkl", CPU)
    with pytest.raises(PatchColorError, match=r"needs the detectron2 package, which is not installed; use --detector r101"):
        load_detector("detectron2", tmp_path, CPU)


# -------------------------------------------------------------------------------------- torchvision v2
def test_torchvision_v2_detector(tmp_path: Path) -> None:
    from patchcolor.segment.tv_v2 import LABEL_TO_CLASS, TorchvisionV2Detector

    assert LABEL_TO_CLASS[18] == 16 and LABEL_TO_CLASS[90] == 79 and LABEL_TO_CLASS[12] == -1 and LABEL_TO_CLASS[0] == -1
    path = write_tv_v2_pth(tmp_path / registry().file("torchvision-v2").file, bias_label=18)   # COCO 18 = dog = class 16
    det = load_detector("torchvision-v2", tmp_path, CPU)
    assert isinstance(det, TorchvisionV2Detector) and det.name == "torchvision-v2"
    det.model.transform.min_size, det.model.transform.max_size = (160,), 267   # small test resize ...
    det.model.rpn._post_nms_top_n["testing"] = 50                             # ... and few proposals
    img = grey_image(160, 120)
    found = det.detect(img, DetectorSettings(detections_per_image=20))
    assert 1 <= len(found) <= 20 and {i.class_id for i in found} == {16}
    assert [i.score for i in found] == sorted((i.score for i in found), reverse=True)
    for i in found:
        ox, oy = i.mask_origin
        assert i.mask.dtype == bool and ox + i.mask.shape[1] <= 160 and oy + i.mask.shape[0] <= 120
        assert 0 <= i.box[0] < i.box[2] <= 160 and 0 <= i.box[1] < i.box[3] <= 120

    sd = torch.load(path, weights_only=True)
    del sd["roi_heads.mask_predictor.mask_fcn_logits.bias"]
    torch.save(sd, path)
    with pytest.raises(WeightsCorrupt, match="mask_fcn_logits.bias"):
        TorchvisionV2Detector(path, CPU)
    marker = tmp_path / "pwned"
    path.write_bytes(pickle.dumps(_Evil(os.system, f"touch {marker}"), protocol=2))
    with pytest.raises(WeightsCorrupt):
        TorchvisionV2Detector(path, CPU)
    assert not marker.exists()
