"""torchvision's own Mask R-CNN ResNet-50-FPN v2 (``maskrcnn_resnet50_fpn_v2_coco-73cbd019.pth``).

The model runs exactly as torchvision ships it (its own resize to 800/1333, ImageNet normalization,
91 COCO labels), except the final step: instead of pasting every mask into an (N, 1, H, W)
full-image stack, the 28x28 probabilities are pasted into per-instance windows with the same
float-box ``grid_sample`` paste as :mod:`.r101` (threshold 0.5), and labels are mapped back to the 80
contiguous class ids (detections on the 10 unused COCO ids are dropped).
"""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import torch
from torchvision.models.detection import MaskRCNN, maskrcnn_resnet50_fpn_v2

from ..errors import WeightsCorrupt, WeightsMissing
from ..precision import autocast
from .base import COCO_IDS, DetectorSettings, Instance
from .d2_pickle import VERIFY_HINT
from .r101 import RoiMaskTransform, add_float32_hooks, image_to_tensor, load_frozen, postprocess_detections

# COCO label (0..90) -> contiguous class id 0..79, -1 for background and the 10 unused ids.
LABEL_TO_CLASS = torch.full((91,), -1, dtype=torch.int64)
LABEL_TO_CLASS[list(COCO_IDS)] = torch.arange(len(COCO_IDS))


class TorchvisionV2Detector:
    """``maskrcnn_resnet50_fpn_v2`` with the official COCO weights (weights_path), on ``device``."""

    name = "torchvision-v2"

    def __init__(self, weights_path: Path, device: torch.device) -> None:
        path = Path(weights_path)
        self.device = torch.device(device)
        if not path.is_file():
            raise WeightsMissing(f"The detector weights file {path} is missing; run `patchcolor weights fetch torchvision-v2` to download it.")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise WeightsCorrupt(f"The detector weights file {path.name} cannot be read ({type(e).__name__}); "
                                 f"{VERIFY_HINT}.") from None
        if not isinstance(state, dict):
            raise WeightsCorrupt(f"The detector weights file {path.name} is not a state_dict; {VERIFY_HINT}.")
        with torch.device("meta"):   # no random init: every tensor comes from the file
            model = maskrcnn_resnet50_fpn_v2(weights=None, weights_backbone=None, num_classes=91)
        t = model.transform
        # same resize / normalization as torchvision, but keep 28x28 mask probabilities (pasted per window)
        model.transform = RoiMaskTransform(t.image_mean, t.image_std, resize_inside=True,
                                           min_size=t.min_size[-1], max_size=t.max_size)
        self.model: MaskRCNN = load_frozen(model, state, self.device, f"The detector weights file {path.name}")
        add_float32_hooks(self.model)
        self._lock = threading.Lock()   # the ROI thresholds are set on the shared model per call

    def detect(self, image: np.ndarray, settings: DetectorSettings) -> list[Instance]:
        """image: (H, W, 3) float32 RGB in [0, 255]. Returns instances by descending score, class ids 0..79,
        boxes in image pixels, masks as bool windows (probability >= 0.5).

        Honours both of ``settings``' knobs for this call (restored after it): ``min_size`` replaces the
        transform's 800 short side (its 1333 max side scaled in proportion), ``proposals`` the RPN's post-NMS
        top-N (1000)."""
        heads, rpn, t = self.model.roi_heads, self.model.rpn, self.model.transform
        with torch.inference_mode():
            x = image_to_tensor(image, self.device)
            with self._lock, autocast(self.device, settings.precision):
                heads.score_thresh, heads.nms_thresh = settings.score_thresh, settings.nms_thresh
                heads.detections_per_img = settings.detections_per_image
                saved = t.min_size, t.max_size, rpn._post_nms_top_n["testing"]
                if settings.min_size is not None:
                    t.min_size = (int(settings.min_size),)
                    t.max_size = int(saved[1] * settings.min_size / saved[0][-1] + 0.5)
                if settings.proposals is not None:
                    rpn._post_nms_top_n["testing"] = int(settings.proposals)
                try:
                    (result,) = self.model([x[0] / 255.0])   # torchvision models take RGB in [0, 1]
                finally:
                    t.min_size, t.max_size, rpn._post_nms_top_n["testing"] = saved
            return postprocess_detections(result, x.shape[-2], x.shape[-1], class_ids=LABEL_TO_CLASS)
