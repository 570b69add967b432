"""Fake weight files with the official layouts, for tests and benchmarks (no download needed).

``write_r101_pkl`` writes a Detectron2 model-zoo pickle (``{"model": {key: float32 ndarray},
"__author__": "Detectron2 Model Zoo"}``) whose keys and shapes are enumerated here directly from
reference §4.2 — independently of :mod:`patchcolor.segment.d2_pickle` — including the FrozenBN
running stats and the ``cell_anchors`` extras. ``write_tv_v2_pth`` writes a torchvision
``maskrcnn_resnet50_fpn_v2`` state_dict.
"""
from __future__ import annotations

import math
import pickle
from pathlib import Path

import numpy as np

R101_BLOCKS = {2: 3, 3: 4, 4: 23, 5: 3}          # res2..res5
BOTTLENECK = {2: 64, 3: 128, 4: 256, 5: 512}


def r101_key_shapes() -> dict[str, tuple[int, ...]]:
    """Every tensor of ``model_final_a3ec72.pkl`` (reference §4.2): 562 weights + 5 cell anchors."""
    shapes: dict[str, tuple[int, ...]] = {}

    def conv_norm(prefix: str, shape: tuple[int, ...]) -> None:
        shapes[prefix + ".weight"] = shape
        for b in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{prefix}.norm.{b}"] = (shape[0],)

    bu = "backbone.bottom_up"
    conv_norm(f"{bu}.stem.conv1", (64, 3, 7, 7))
    in_ch = 64
    for stage, n in R101_BLOCKS.items():
        b = BOTTLENECK[stage]
        out = 4 * b
        for i in range(n):
            cin = in_ch if i == 0 else out
            conv_norm(f"{bu}.res{stage}.{i}.conv1", (b, cin, 1, 1))
            conv_norm(f"{bu}.res{stage}.{i}.conv2", (b, b, 3, 3))
            conv_norm(f"{bu}.res{stage}.{i}.conv3", (out, b, 1, 1))
            if i == 0:
                conv_norm(f"{bu}.res{stage}.{i}.shortcut", (out, cin, 1, 1))
        in_ch = out
    for lvl, c in zip((2, 3, 4, 5), (256, 512, 1024, 2048)):
        shapes[f"backbone.fpn_lateral{lvl}.weight"], shapes[f"backbone.fpn_lateral{lvl}.bias"] = (256, c, 1, 1), (256,)
        shapes[f"backbone.fpn_output{lvl}.weight"], shapes[f"backbone.fpn_output{lvl}.bias"] = (256, 256, 3, 3), (256,)
    rpn = "proposal_generator.rpn_head"
    shapes.update({f"{rpn}.conv.weight": (256, 256, 3, 3), f"{rpn}.conv.bias": (256,),
                   f"{rpn}.objectness_logits.weight": (3, 256, 1, 1), f"{rpn}.objectness_logits.bias": (3,),
                   f"{rpn}.anchor_deltas.weight": (12, 256, 1, 1), f"{rpn}.anchor_deltas.bias": (12,)})
    shapes.update({"roi_heads.box_head.fc1.weight": (1024, 12544), "roi_heads.box_head.fc1.bias": (1024,),
                   "roi_heads.box_head.fc2.weight": (1024, 1024), "roi_heads.box_head.fc2.bias": (1024,),
                   "roi_heads.box_predictor.cls_score.weight": (81, 1024), "roi_heads.box_predictor.cls_score.bias": (81,),
                   "roi_heads.box_predictor.bbox_pred.weight": (320, 1024), "roi_heads.box_predictor.bbox_pred.bias": (320,)})
    for k in range(1, 5):
        shapes[f"roi_heads.mask_head.mask_fcn{k}.weight"] = (256, 256, 3, 3)
        shapes[f"roi_heads.mask_head.mask_fcn{k}.bias"] = (256,)
    shapes.update({"roi_heads.mask_head.deconv.weight": (256, 256, 2, 2), "roi_heads.mask_head.deconv.bias": (256,),
                   "roi_heads.mask_head.predictor.weight": (80, 256, 1, 1), "roi_heads.mask_head.predictor.bias": (80,)})
    for i in range(5):
        shapes[f"proposal_generator.anchor_generator.cell_anchors.{i}"] = (3, 4)
    return shapes


def _cell_anchors(size: int) -> np.ndarray:
    rows = []
    for r in (0.5, 1.0, 2.0):
        w = math.sqrt(size * size / r)
        h = r * w
        rows.append([-w / 2, -h / 2, w / 2, h / 2])
    return np.asarray(rows, np.float32)


def fake_r101_model(seed: int = 0, bias_class: int | None = None, bias: float = 8.0) -> dict[str, np.ndarray]:
    """Random float32 weights with the official keys/shapes; activations stay O(1) on 0–255 input.

    He-init convs; FrozenBN weight ~1 (0.2 on each block's last norm and 0.02 on the stem, so the
    residual stream neither explodes nor vanishes), bias ~0, running mean 0 / var 1.
    bias_class k: cls_score favours class k (bias +``bias``, background row -``bias``); bbox and RPN
    deltas ~0 (boxes ~ anchors); mask logits spatially varied around 0 (some pixels >= 0.5, some not)."""
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for k, shape in r101_key_shapes().items():
        if k.endswith("norm.running_mean"):
            a = np.zeros(shape, np.float32)
        elif k.endswith("norm.running_var"):
            a = np.ones(shape, np.float32)
        elif k.endswith("norm.weight"):
            scale = 0.02 if ".stem." in k else 0.2 if ".conv3." in k else 1.0
            a = (scale * (1.0 + 0.1 * rng.standard_normal(shape))).astype(np.float32)
        elif k.endswith("norm.bias"):
            a = (0.05 * rng.standard_normal(shape)).astype(np.float32)
        elif k.endswith(".bias"):
            a = np.zeros(shape, np.float32)
        elif "cell_anchors" in k:
            a = _cell_anchors(32 * 2 ** int(k.rsplit(".", 1)[1]))
        else:
            fan_in = int(np.prod(shape[1:])) if "deconv" not in k else shape[0]
            a = (rng.standard_normal(shape, dtype=np.float32) * np.float32(math.sqrt(2.0 / fan_in)))
        out[k] = a
    small = {"roi_heads.box_predictor.cls_score.weight": 0.001, "roi_heads.box_predictor.bbox_pred.weight": 1e-4,
             "proposal_generator.rpn_head.anchor_deltas.weight": 1e-4,
             "proposal_generator.rpn_head.objectness_logits.weight": 0.05,
             "roi_heads.mask_head.predictor.weight": 0.01}
    for k, std in small.items():
        out[k] = (std * rng.standard_normal(out[k].shape)).astype(np.float32)
    if bias_class is not None:
        out["roi_heads.box_predictor.cls_score.bias"][bias_class] = bias
        out["roi_heads.box_predictor.cls_score.bias"][80] = -bias
        out["roi_heads.mask_head.predictor.bias"][bias_class] = 0.5
    return out


def write_r101_pkl(path: Path, seed: int = 0, bias_class: int | None = None, bias: float = 8.0,
                   model: dict[str, np.ndarray] | None = None, protocol: int = 3) -> Path:
    """Write a fake ``model_final_a3ec72.pkl`` (``model`` given: write that dict instead).

    protocol 3 (Python 3's default of the model zoo's era) stores arrays with numpy ``_reconstruct``;
    protocol 2 adds ``_codecs.encode`` for the bytes (about 10x slower to read)."""
    path = Path(path)
    data = {"model": fake_r101_model(seed, bias_class, bias) if model is None else model,
            "__author__": "Detectron2 Model Zoo"}
    with open(path, "wb") as f:
        pickle.dump(data, f, protocol=protocol)
    return path


def write_tv_v2_pth(path: Path, seed: int = 0, bias_label: int | None = None, bias: float = 8.0) -> Path:
    """Write a random ``maskrcnn_resnet50_fpn_v2`` (91 COCO labels) state_dict with ``torch.save``.

    bias_label (COCO id 1..90): its cls_score row gets +``bias`` and background -``bias``."""
    import torch
    from torchvision.models.detection import maskrcnn_resnet50_fpn_v2

    torch.manual_seed(seed)
    model = maskrcnn_resnet50_fpn_v2(weights=None, weights_backbone=None, num_classes=91)
    sd = model.state_dict()
    if bias_label is not None:
        b = sd["roi_heads.box_predictor.cls_score.bias"]
        b.zero_()
        b[bias_label], b[0] = bias, -bias
        sd["roi_heads.box_predictor.cls_score.weight"].mul_(0.01)
        sd["roi_heads.box_predictor.bbox_pred.weight"].mul_(0.01)
    torch.save(sd, Path(path))
    return Path(path)
