"""Detectron2 Mask R-CNN R101-FPN 3x (``model_final_a3ec72.pkl``) rebuilt from torchvision parts.

Every port point of reference §4.3 is applied (numbers below refer to it):

1. stride of the first block of layer2/3/4 on the 1x1 ``conv1`` (STRIDE_IN_1X1), layer1 stride 1;
2. the model is fed RGB 0–255; ``conv1`` input channels are flipped BGR->RGB at load time and the
   transform subtracts the RGB-ordered mean [123.675, 116.28, 103.53] with std 1 (option (a), 0–255);
3. ``FrozenBatchNorm2d`` (eps 1e-5) everywhere in the backbone, stats filled 0/1 if absent (folded
   into the convs after loading, see below);
4. ROIAlignV2 poolers (``aligned=True``, ``sampling_ratio=0``, 7 and 14) with Detectron2's level mapper;
5. 81 classes, background at 0 (rows reordered at load time, :mod:`.d2_pickle`);
6. key renaming (:mod:`.d2_pickle`);
7. unrounded cell anchors, sizes 32..512, ratios 0.5/1/2, offset 0, fixed strides 4..64;
8. RPN 1000 pre-NMS per level / 1000 post / NMS 0.7 / min size 0 (NMS ranked by logits as in
   Detectron2); ROI score / NMS / detections-per-image from :class:`DetectorSettings`;
9. Detectron2's ResizeShortestEdge(800, 1333) done outside the model (``F.interpolate`` bilinear,
   ``align_corners=False``, no antialias — what Detectron2 does for a float image such as the paper's),
   the internal GeneralizedRCNNTransform resize is a no-op; padding to 32 with 0 after normalization;
10. Detectron2's mask paste (``grid_sample`` over the float box, >= 0.5) into a per-instance window;
11. class ids 0..79, boxes rescaled to the input image and clipped, descending score.

Speed (CPU, bench/bench_detector.py): after loading, the backbone's FrozenBN is folded into its convs
(same maths, two fewer passes per activation map); on AVX2 CPUs the 3×3 convolutions on large maps run
NNPACK's Winograd in NCHW (:mod:`patchcolor.winograd`: detector 4.0 -> 3.1 s at 1199×800), elsewhere all
convolutions run channels_last (oneDNN) and p2..p5 are converted back to NCHW once for ROIAlign; ROIAlign
(single-threaded in torchvision) is split over threads. Under bf16/fp16 autocast the heads' outputs are cast
back to float32 (forward hooks), so anchors, box decoding, NMS and mask pasting always run in float32.
"""
from __future__ import annotations

import math
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.rpn import RegionProposalNetwork
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import FrozenBatchNorm2d, MultiScaleRoIAlign, boxes as box_ops, roi_align

from ..errors import BadOptions, WeightsCorrupt
from ..precision import autocast
from ..progress import forward_progress
from ..winograd import use_winograd, winograd_enabled
from .base import DetectorSettings, Instance
from .d2_pickle import VERIFY_HINT, convert_to_torchvision, read_d2_pickle

MIN_SIZE_TEST = 800
MAX_SIZE_TEST = 1333
PIXEL_MEAN_RGB = (123.675, 116.28, 103.53)   # Detectron2's BGR mean [103.53, 116.28, 123.675], RGB order
FPN_STRIDES = (4, 8, 16, 32, 64)             # p2..p6
ANCHOR_SIZES = (32, 64, 128, 256, 512)       # one per level
ASPECT_RATIOS = (0.5, 1.0, 2.0)              # h / w
MASK_THRESHOLD = 0.5


# ------------------------------------------------------------------------------------------ resize (9)
def resize_shape(h: int, w: int, short: int = MIN_SIZE_TEST, max_size: int = MAX_SIZE_TEST) -> tuple[int, int]:
    """Detectron2 ``ResizeShortestEdge.get_output_shape``: (new_h, new_w), ``int(x + 0.5)`` rounding.

    e.g. 960x1280 -> (800, 1067)."""
    size = short * 1.0
    scale = size / min(h, w)
    newh, neww = (size, scale * w) if h < w else (scale * h, size)
    if max(newh, neww) > max_size:
        scale = max_size * 1.0 / max(newh, neww)
        newh, neww = newh * scale, neww * scale
    return int(newh + 0.5), int(neww + 0.5)


def resize_like_detectron2(x: Tensor, short: int = MIN_SIZE_TEST, max_size: int = MAX_SIZE_TEST) -> Tensor:
    """(1, 3, H, W) float32 0–255 -> (1, 3, h, w) float32 0–255 as Detectron2's ResizeTransform resizes a
    non-uint8 image: ``F.interpolate`` bilinear, ``align_corners=False``, no antialias."""
    h, w = resize_shape(x.shape[-2], x.shape[-1], short, max_size)
    if (h, w) == tuple(x.shape[-2:]):
        return x   # bilinear at scale 1 with align_corners=False is the identity
    return F.interpolate(x, (h, w), mode="bilinear", align_corners=False)


# ------------------------------------------------------------------------------------ model parts
class D2AnchorGenerator(AnchorGenerator):
    """Detectron2 ``DefaultAnchorGenerator`` (7): unrounded cell anchors, offset 0, strides 4..64.

    torchvision rounds the cell anchors, infers each level's stride as ``padded_size // grid`` (61
    instead of 64 for p6 of an 800-high input) and builds anchors in the feature dtype (bf16 under
    autocast); this subclass fixes all three. Anchors are float32 XYXY, location-major, anchor-minor."""

    def __init__(self) -> None:
        super().__init__(tuple((s,) for s in ANCHOR_SIZES), (ASPECT_RATIOS,) * len(ANCHOR_SIZES))

    def generate_anchors(self, scales: list[int], aspect_ratios: list[float], dtype: torch.dtype = torch.float32,
                         device: torch.device = torch.device("cpu")) -> Tensor:
        """(len(scales) * len(ratios), 4): w = sqrt(size² / r), h = r·w, box (-w/2, -h/2, w/2, h/2) in float64,
        then cast (Detectron2 ``generate_cell_anchors``)."""
        rows = []
        for size in scales:
            for r in aspect_ratios:
                w = math.sqrt(size ** 2.0 / r)
                h = r * w
                rows.append([-w / 2.0, -h / 2.0, w / 2.0, h / 2.0])
        return torch.tensor(rows, dtype=dtype, device=device)

    def forward(self, image_list: ImageList, feature_maps: list[Tensor]) -> list[Tensor]:
        device = feature_maps[0].device
        self.set_cell_anchors(torch.float32, device)
        strides = [[torch.tensor(s, device=device)] * 2 for s in FPN_STRIDES[: len(feature_maps)]]
        anchors = torch.cat(self.grid_anchors([list(f.shape[-2:]) for f in feature_maps], strides))
        return [anchors for _ in image_list.image_sizes]


def roi_align_v2(feature: Tensor, rois: Tensor, output_size: tuple[int, int], spatial_scale: float) -> Tensor:
    """``roi_align(aligned=True, sampling_ratio=0)`` of (R, 5) float32 rois on a (1, C, H, W) feature map.

    torchvision's CPU kernel runs on one thread (it loops over rois without ``parallel_for``) and its
    cost grows with box size (adaptive sampling), so on CPU the rois are split round-robin over
    ``torch.get_num_threads()`` Python threads (the op releases the GIL): ~2x on 2 cores.
    Returns (R, C, *output_size) float32."""
    n = torch.get_num_threads() if feature.device.type == "cpu" else 1
    if n < 2 or len(rois) < 2 * n:
        return roi_align(feature, rois, output_size, spatial_scale, 0, True)
    inference = torch.is_inference_mode_enabled()   # grad modes are thread-local: carry them over

    def part(i: int) -> Tensor:
        with torch.inference_mode(inference), torch.no_grad():
            return roi_align(feature, rois[i::n], output_size, spatial_scale, 0, True)

    out = feature.new_empty((len(rois), feature.shape[1]) + tuple(output_size))
    for i, pooled in enumerate(_pool().map(part, range(n))):
        out[i::n] = pooled
    return out


_POOL: ThreadPoolExecutor | None = None


def _pool() -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max(1, torch.get_num_threads()), thread_name_prefix="roi_align")
    return _POOL


def nchw(x: Tensor) -> Tensor:
    """Contiguous (N, C, H, W) copy of a channels_last tensor (roi_align needs NCHW). For N=1 the copy is
    done as a 2-D (HW, C) -> (C, HW) transpose, which PyTorch blocks for cache use: ~1.7x faster than
    ``.contiguous()`` on a 256x200x272 map here."""
    if x.is_contiguous():
        return x
    n, c, h, w = x.shape
    if n == 1 and x.is_contiguous(memory_format=torch.channels_last):
        return x.permute(0, 2, 3, 1).reshape(h * w, c).t().contiguous().view(1, c, h, w)
    return x.contiguous()


class D2RoIAlign(MultiScaleRoIAlign):
    """Detectron2 ``ROIPooler`` with ``ROIAlignV2`` (4) over p2..p5.

    torchvision's MultiScaleRoIAlign has no ``aligned`` switch and a slightly different level mapper,
    hence this forward. Level = clamp(floor(4 + log2(sqrt(area) / 224 + 1e-8)), 2, 5); scale 1/stride.
    Returns (R, 256, S, S) with S = ``output_size``, in the features' dtype."""

    def __init__(self, output_size: int) -> None:
        super().__init__(["0", "1", "2", "3"], output_size, sampling_ratio=0)

    def forward(self, x: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]) -> Tensor:
        feats = [x[k] for k in self.featmap_names]
        rois = torch.cat([torch.cat([torch.full_like(b[:, :1], i), b], dim=1) for i, b in enumerate(boxes)])
        size = torch.sqrt(box_ops.box_area(rois[:, 1:]))
        level = torch.floor(4 + torch.log2(size / 224 + 1e-8)).clamp(2, 5).to(torch.int64) - 2
        out = feats[0].new_zeros((len(rois), feats[0].shape[1]) + self.output_size)
        for i, f in enumerate(feats):
            idx = torch.nonzero(level == i).squeeze(1)
            # float32 sampling even under autocast (coordinates and bilinear weights stay exact)
            pooled = roi_align_v2(nchw(f).float(), rois[idx], self.output_size, 1.0 / FPN_STRIDES[i])
            out.index_put_((idx,), pooled.to(out.dtype))
        return out


class D2RPN(RegionProposalNetwork):
    """RPN inference as Detectron2's ``find_top_rpn_proposals`` (8): top-k logits per level, drop
    non-finite, clip, drop empty boxes (torchvision drops sides < 1e-3), NMS per level ranked by the
    logits (torchvision ranks sigmoid(logit), which saturates to ties in float32), keep post-NMS top-k."""

    def filter_proposals(self, proposals: Tensor, objectness: Tensor, image_shapes: list[tuple[int, int]],
                         num_anchors_per_level: list[int]) -> tuple[list[Tensor], list[Tensor]]:
        n, device = proposals.shape[0], proposals.device
        objectness = objectness.detach().reshape(n, -1)
        levels = torch.repeat_interleave(torch.arange(len(num_anchors_per_level), device=device),
                                         torch.tensor(num_anchors_per_level, device=device))
        top = self._get_top_n_idx(objectness, num_anchors_per_level)
        out_boxes, out_scores = [], []
        for i, shape in enumerate(image_shapes):
            boxes, scores, lvl = proposals[i, top[i]], objectness[i, top[i]], levels[top[i]]
            ok = torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores)
            boxes, scores, lvl = box_ops.clip_boxes_to_image(boxes[ok], shape), scores[ok], lvl[ok]
            ok = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
            boxes, scores, lvl = boxes[ok], scores[ok], lvl[ok]
            keep = box_ops.batched_nms(boxes, scores, lvl, self.nms_thresh)[: self.post_nms_top_n()]
            out_boxes.append(boxes[keep])
            out_scores.append(scores[keep])
        return out_boxes, out_scores


class RoiMaskTransform(GeneralizedRCNNTransform):
    """GeneralizedRCNNTransform that normalizes and pads to 32 (value 0) but, with ``resize_inside=False``,
    does not resize (9); ``postprocess`` leaves boxes in the network-input frame, keeps ``masks`` as the
    (N, 1, 28, 28) probabilities and records that frame as ``result["image_size"] = (h, w)`` so
    :func:`postprocess_detections` can rescale and paste them Detectron2's way."""

    def __init__(self, image_mean: list[float], image_std: list[float], resize_inside: bool = False,
                 min_size: int = MIN_SIZE_TEST, max_size: int = MAX_SIZE_TEST) -> None:
        super().__init__(min_size, max_size, image_mean, image_std)
        self.resize_inside = resize_inside

    def resize(self, image: Tensor, target: dict[str, Tensor] | None = None
               ) -> tuple[Tensor, dict[str, Tensor] | None]:
        return super().resize(image, target) if self.resize_inside else (image, target)

    def postprocess(self, result: list[dict[str, Any]], image_shapes: list[tuple[int, int]],
                    original_image_sizes: list[tuple[int, int]]) -> list[dict[str, Any]]:
        for r, shape in zip(result, image_shapes):
            r["image_size"] = (int(shape[0]), int(shape[1]))
        return result


def outputs_to_float32(module: nn.Module, args: Any, output: Any) -> Any:
    """Forward hook for the heads: bf16/fp16 outputs -> float32 (nested tuples/lists), so box decoding,
    NMS and mask pasting always run in float32 under autocast. No-op for float32 outputs."""
    if isinstance(output, Tensor):
        return output.float()
    if isinstance(output, (tuple, list)):
        return type(output)(outputs_to_float32(module, args, o) for o in output)
    return output


def add_float32_hooks(model: MaskRCNN) -> None:
    """Register :func:`outputs_to_float32` on the RPN head, box predictor and mask predictor."""
    for m in (model.rpn.head, model.roi_heads.box_predictor, model.roi_heads.mask_predictor):
        m.register_forward_hook(outputs_to_float32)


def _pooled_features_nchw(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    """Forward pre-hook on ``roi_heads``: hand it p2..p5 as contiguous NCHW once, instead of roi_align
    converting the channels_last maps inside each of its 8 calls (2 poolers x 4 levels)."""
    features, *rest = args
    return ({k: nchw(v) if k in ("0", "1", "2", "3") else v for k, v in features.items()}, *rest)


def fold_frozen_bn(body: nn.Module) -> int:
    """Fold every FrozenBatchNorm2d of the ResNet ``body`` into the bias-free conv before it (inference
    speed-up: the BN's separate multiply and add passes over each activation map disappear).

    conv.weight <- W · s, conv.bias <- b - m · s with s = w / sqrt(v + eps) (FrozenBN's own formula);
    the BN becomes ``nn.Identity``. Returns the number of folded pairs (104 for R101)."""
    pairs: list[tuple[nn.Module, str, str]] = [(body, "conv1", "bn1")]
    for m in body.modules():
        pairs += [(m, f"conv{k}", f"bn{k}") for k in (1, 2, 3) if m is not body and hasattr(m, f"bn{k}")]
        if isinstance(getattr(m, "downsample", None), nn.Sequential):
            pairs.append((m.downsample, "0", "1"))
    folded = 0
    for parent, cname, bname in pairs:
        conv, bn = getattr(parent, cname), getattr(parent, bname)
        if not isinstance(bn, FrozenBatchNorm2d) or not isinstance(conv, nn.Conv2d) or conv.bias is not None:
            continue
        scale = bn.weight * (bn.running_var + bn.eps).rsqrt()
        conv.weight = nn.Parameter(conv.weight * scale[:, None, None, None], requires_grad=False)
        conv.bias = nn.Parameter(bn.bias - bn.running_mean * scale, requires_grad=False)
        setattr(parent, bname, nn.Identity())
        folded += 1
    return folded


def progress_blocks() -> list[tuple[str, str]]:
    """(sub-module, label) of each step of the R101-FPN forward whose start is reported (:mod:`patchcolor.progress`):
    the stem and each of the 33 bottlenecks, each FPN convolution, the RPN head on each level and its proposal
    filtering, the box head and the mask head's four convolutions. At 800x1199 (~270 GMAC) a bottleneck is ~1.5 %
    of the forward; the largest steps are single 3x3 convolutions on p2, the FPN's output and the RPN head's
    (~13 % each, bench/bench_progress.py measures the seconds)."""
    blocks = [("transform", "backbone 0/34"), ("backbone.body.conv1", "backbone 1/34")]
    names = [f"backbone.body.layer{i + 1}.{j}" for i, n in enumerate((3, 4, 23, 3)) for j in range(n)]
    blocks += [(name, f"backbone {k}/34") for k, name in enumerate(names, 2)]
    blocks += [(f"backbone.fpn.{kind}.{i}", "feature pyramid") for i in range(4) for kind in ("inner_blocks",
                                                                                            "layer_blocks")]
    blocks += [("rpn.head.conv", "region proposals"), ("rpn.anchor_generator", "region proposals")]
    blocks += [(f"roi_heads.{name}", "object boxes") for name in ("box_roi_pool", "box_head", "box_predictor")]
    blocks += [(f"roi_heads.{name}", "object masks") for name in ("mask_roi_pool", "mask_head.0", "mask_head.1",
                                                                  "mask_head.2", "mask_head.3", "mask_predictor")]
    return blocks


def build_r101_fpn(num_classes: int = 81) -> MaskRCNN:
    """The Detectron2 R101-FPN Mask R-CNN as a torchvision ``MaskRCNN`` (random weights; no download).

    Input: list of one (3, h, w) float32 RGB 0–255 tensor already resized; output: list of one dict with
    ``boxes`` (N, 4) in that frame, ``labels`` (N,) 1..80, ``scores`` (N,), ``masks`` (N, 1, 28, 28) in [0, 1]
    and ``image_size``."""
    backbone = resnet_fpn_backbone(backbone_name="resnet101", weights=None, trainable_layers=0)  # FrozenBN 1e-5
    body = backbone.body
    for layer in (body.layer2, body.layer3, body.layer4):   # (1) STRIDE_IN_1X1
        layer[0].conv1.stride, layer[0].conv2.stride = (2, 2), (1, 1)
    anchors = D2AnchorGenerator()
    model = MaskRCNN(backbone, num_classes=num_classes, rpn_anchor_generator=anchors,
                     box_roi_pool=D2RoIAlign(7), mask_roi_pool=D2RoIAlign(14),
                     rpn_pre_nms_top_n_test=1000, rpn_post_nms_top_n_test=1000, rpn_nms_thresh=0.7,
                     rpn_score_thresh=0.0, box_score_thresh=0.05, box_nms_thresh=0.5, box_detections_per_img=100)
    old = model.rpn
    model.rpn = D2RPN(anchors, old.head, 0.7, 0.3, 256, 0.5, old._pre_nms_top_n, old._post_nms_top_n,
                      old.nms_thresh, old.score_thresh)
    model.transform = RoiMaskTransform(list(PIXEL_MEAN_RGB), [1.0, 1.0, 1.0])
    return model


# ------------------------------------------------------------------------------------- post-processing
def paste_mask_window(prob: Tensor, box: Tensor, img_h: int, img_w: int, threshold: float = MASK_THRESHOLD
                      ) -> tuple[np.ndarray, tuple[int, int]]:
    """Detectron2 ``_do_paste_mask`` for one mask, restricted to its window (10).

    prob: (M, M) float32 probabilities in [0, 1]; box: (4,) float32 XYXY in image pixels.
    Returns ((h, w) bool mask = prob >= threshold, (x0, y0) window origin). The window is Detectron2's
    CPU ``skip_empty`` window [floor(x0) - 1, ceil(x1) + 1) clipped to the image, outside of which the
    sampled value is 0; each pixel is the same ``grid_sample`` (bilinear, zero padding,
    align_corners=False) of the same float32 grid coordinate as Detectron2's full-image paste."""
    x0_int = int(max(math.floor(float(box[0])) - 1, 0))
    y0_int = int(max(math.floor(float(box[1])) - 1, 0))
    x1_int = int(min(math.ceil(float(box[2])) + 1, img_w))
    y1_int = int(min(math.ceil(float(box[3])) + 1, img_h))
    x0, y0, x1, y1 = box.float().unbind()
    img_y = torch.arange(y0_int, y1_int, device=prob.device, dtype=torch.float32) + 0.5
    img_x = torch.arange(x0_int, x1_int, device=prob.device, dtype=torch.float32) + 0.5
    img_y = (img_y - y0) / (y1 - y0) * 2 - 1
    img_x = (img_x - x0) / (x1 - x0) * 2 - 1
    h, w = img_y.numel(), img_x.numel()
    grid = torch.stack([img_x[None, :].expand(h, w), img_y[:, None].expand(h, w)], dim=2)[None]
    pasted = F.grid_sample(prob.float()[None, None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return (pasted[0, 0] >= threshold).cpu().numpy(), (x0_int, y0_int)


def postprocess_detections(result: dict[str, Any], out_h: int, out_w: int, class_ids: Tensor | None = None,
                           threshold: float = MASK_THRESHOLD) -> list[Instance]:
    """Detectron2 ``detector_postprocess`` (11): scale boxes from ``result["image_size"]`` to (out_h, out_w),
    clip, drop empty boxes, paste each mask into its window.

    result: ``boxes`` (N, 4) float32, ``scores`` (N,), ``labels`` (N,) 1..K, ``masks`` (N, 1, M, M) in [0, 1].
    class_ids: optional (K + 1,) int64 lookup label -> class id (< 0 drops); default ``label - 1``."""
    in_h, in_w = result["image_size"]
    boxes = result["boxes"].float().clone()
    boxes[:, 0::2] *= out_w / in_w
    boxes[:, 1::2] *= out_h / in_h
    boxes = box_ops.clip_boxes_to_image(boxes, (out_h, out_w))
    labels = result["labels"]
    cls = labels - 1 if class_ids is None else class_ids.to(labels.device)[labels]
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1]) & (cls >= 0)
    probs = result["masks"][:, 0].float()
    instances = []
    for i in torch.nonzero(keep).squeeze(1).tolist():
        mask, origin = paste_mask_window(probs[i], boxes[i], out_h, out_w, threshold)
        instances.append(Instance(class_id=int(cls[i]), score=float(result["scores"][i]),
                                  box=tuple(float(v) for v in boxes[i]), mask=mask, mask_origin=origin))
    return instances


def _kept_detections(heads: nn.Module, keep: tuple[float, int], out_size: tuple[int, int]) -> Callable[..., Any]:
    """The ROI heads' ``postprocess_detections`` followed by the paper's small-box filter and the instance cap
    (``keep`` = (min_area_frac, max_instances)), so that torchvision's RoIHeads runs the mask head (4 convs and a
    deconvolution per detection, ~1.2 GFLOP each) only on detections the pipeline keeps: with 100 detections and
    4 kept that is ~115 GFLOP (~18 % of the detector) not spent. Boxes are mapped to ``out_size`` exactly as
    :func:`postprocess_detections` maps them and tested exactly as ``filter_instances`` tests them (empty boxes
    and dropped classes do not take a place), so the kept detections, their order and their masks are those the
    unfiltered run would have kept."""
    from . import filter_instances   # the one definition of the paper's filter

    base = type(heads).postprocess_detections.__get__(heads)
    out_h, out_w = out_size
    frac, cap = keep

    def run(class_logits: Tensor, box_regression: Tensor, proposals: list[Tensor],
            image_shapes: list[tuple[int, int]]) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        all_boxes, all_scores, all_labels = base(class_logits, box_regression, proposals, image_shapes)
        out: tuple[list[Tensor], list[Tensor], list[Tensor]] = ([], [], [])
        for boxes, scores, labels, (in_h, in_w) in zip(all_boxes, all_scores, all_labels, image_shapes):
            mapped = boxes.float().clone()
            mapped[:, 0::2] *= out_w / in_w
            mapped[:, 1::2] *= out_h / in_h
            mapped = box_ops.clip_boxes_to_image(mapped, (out_h, out_w))
            valid = ((mapped[:, 2] > mapped[:, 0]) & (mapped[:, 3] > mapped[:, 1]) & (labels >= 1)).tolist()
            probe = [Instance(0, 0.0, tuple(float(v) for v in b), np.zeros((0, 0), bool), (0, 0)) for b in mapped]
            passed = {id(i) for i in filter_instances([p for p, ok in zip(probe, valid) if ok], out_w, out_h,
                                                      frac, cap)}
            idx = torch.tensor([k for k, p in enumerate(probe) if id(p) in passed], dtype=torch.long,
                               device=boxes.device)
            for dst, src in zip(out, (boxes, scores, labels)):
                dst.append(src[idx])
        return out

    return run


def image_to_tensor(image: np.ndarray, device: torch.device) -> Tensor:
    """(H, W, 3) 0–255 image -> (1, 3, H, W) float32 tensor on ``device``."""
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] != 3 or img.shape[0] < 1 or img.shape[1] < 1:
        raise BadOptions(f"The detector needs an (H, W, 3) image, got shape {img.shape}.")
    t = torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32)).to(device)
    return t.permute(2, 0, 1)[None]


def load_frozen(model: nn.Module, state: dict[str, Tensor], device: torch.device, source: str) -> nn.Module:
    """Strict ``load_state_dict(assign=True)`` into a meta-built model, then eval / no grad / ``device``."""
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as e:   # "Error(s) in loading state_dict ...:\n\tMissing key(s) ...: "a", "b", ..."
        detail = " ".join(line.strip() for line in str(e).splitlines()[1:])
        detail = detail if len(detail) < 300 else detail[:300] + " ..."
        raise WeightsCorrupt(f"{source} does not fit the model ({detail}); {VERIFY_HINT}.") from None
    model.eval().requires_grad_(False)
    return model.to(device)


# ------------------------------------------------------------------------------------------ detector
class R101Detector:
    """Mask R-CNN R101-FPN 3x from the Detectron2 model zoo on torchvision (no detectron2 needed).

    weights_path: ``model_final_a3ec72.pkl``; device: where the network runs.
    min_size / max_size: Detectron2's MIN/MAX_SIZE_TEST (800 / 1333; smaller only for tests/benchmarks).
    channels_last: NHWC convolutions (default: on CPU without Winograd; faster with oneDNN, bench_detector.py).
    fold_bn: fold the backbone's FrozenBN into its convs after loading (same maths, fewer passes).
    winograd: 3×3 convolutions through NNPACK's Winograd (:mod:`patchcolor.winograd`; None = its policy for
    ``device``: on for AVX2 CPUs). Implies NCHW unless ``channels_last`` is given."""

    name = "r101"

    def __init__(self, weights_path: Path, device: torch.device, *, min_size: int = MIN_SIZE_TEST,
                 max_size: int = MAX_SIZE_TEST, channels_last: bool | None = None, fold_bn: bool = True,
                 winograd: bool | None = None) -> None:
        self.device = torch.device(device)
        self.min_size, self.max_size = min_size, max_size
        self._lock = threading.Lock()   # the ROI thresholds are set on the shared model per call
        d2 = read_d2_pickle(Path(weights_path))
        with torch.device("meta"):   # no random init: every tensor comes from the checkpoint
            model = build_r101_fpn()
        state = convert_to_torchvision(d2, {k: v.shape for k, v in model.state_dict().items()},
                                       f"The detector weights file {Path(weights_path).name}")
        del d2
        self.model: MaskRCNN = load_frozen(model, state, self.device, f"The detector weights file {Path(weights_path).name}")
        if fold_bn:
            fold_frozen_bn(self.model.backbone.body)
        want = winograd_enabled(self.device) if winograd is None else winograd
        self.winograd = bool(want and use_winograd(self.model))     # False where torch has no NNPACK
        if channels_last is None:
            channels_last = self.device.type == "cpu" and not self.winograd
        self.channels_last = channels_last
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
            self.model.roi_heads.register_forward_pre_hook(_pooled_features_nchw)
        add_float32_hooks(self.model)

    def test_size(self, settings: DetectorSettings) -> tuple[int, int]:
        """(short side, max side) of the network input: the detector's own, or ``settings.min_size`` with the
        max side scaled in proportion (800/1333 -> e.g. 320/533)."""
        if settings.min_size is None:
            return self.min_size, self.max_size
        if type(settings.min_size) is not int or settings.min_size < 32:
            raise BadOptions(f"The detector's test size must be an integer >= 32, got {settings.min_size!r}.")
        return settings.min_size, int(self.max_size * settings.min_size / self.min_size + 0.5)

    def forward_raw(self, x: Tensor, settings: DetectorSettings, out_size: tuple[int, int] | None = None
                    ) -> dict[str, Any]:
        """Network + RPN/ROI inference on an already resized (1, 3, h, w) float32 RGB 0–255 tensor.

        Returns the raw result dict (boxes in the (h, w) frame, 28x28 mask probabilities).
        ``settings.proposals`` overrides the RPN's post-NMS top-N for this call (restored after it).
        ``settings.keep`` with ``out_size`` = (H, W) of the image the boxes are reported in: the mask head runs
        only on the detections that filter (see :func:`_kept_detections`)."""
        heads, rpn = self.model.roi_heads, self.model.rpn
        if settings.proposals is not None and (type(settings.proposals) is not int or settings.proposals < 1):
            raise BadOptions(f"The detector's proposal count must be a positive integer, got {settings.proposals!r}.")
        with self._lock, autocast(self.device, settings.precision), \
                forward_progress(self.model, settings.progress, progress_blocks()):
            heads.score_thresh, heads.nms_thresh = settings.score_thresh, settings.nms_thresh
            heads.detections_per_img = settings.detections_per_image
            post = rpn._post_nms_top_n["testing"]
            if settings.proposals is not None:
                rpn._post_nms_top_n["testing"] = settings.proposals
            if settings.keep is not None and out_size is not None:
                heads.postprocess_detections = _kept_detections(heads, settings.keep, out_size)
            try:
                (result,) = self.model([x[0]])
            finally:
                rpn._post_nms_top_n["testing"] = post
                heads.__dict__.pop("postprocess_detections", None)
        return result

    def detect(self, image: np.ndarray, settings: DetectorSettings) -> list[Instance]:
        """image: (H, W, 3) float32 RGB in [0, 255] (R=G=B for the paper's grey).

        Returns instances in descending score order, boxes in image pixels, masks as bool windows."""
        with torch.inference_mode():
            x = image_to_tensor(image, self.device)
            h, w = x.shape[-2:]
            result = self.forward_raw(resize_like_detectron2(x, *self.test_size(settings)), settings, (int(h), int(w)))
            return postprocess_detections(result, int(h), int(w))
