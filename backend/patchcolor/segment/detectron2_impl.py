"""The real detectron2 library running ``mask_rcnn_R_101_FPN_3x`` — the paper's own detector — if installed.

It follows PatchColorization's ``DefaultPredictor`` call (config from the model zoo, SCORE/NMS thresholds from
the settings, ``model_final_a3ec72.pkl``, BGR input format, 800/1333 resize of the float64 grey image
with ``F.interpolate``), but runs the model with ``do_postprocess=False`` and finishes with the same
Detectron2 ``detector_postprocess`` maths as :mod:`.r101`, pasting each mask into its own window
instead of an N×H×W full-image bool stack (identical pixels, a fraction of the memory).
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import PatchColorError, WeightsMissing
from ..precision import autocast
from .base import DetectorSettings, Instance
from .r101 import postprocess_detections

CONFIG = "COCO-InstanceSegmentation/mask_rcnn_R_101_FPN_3x.yaml"
NOT_INSTALLED = "detectron2 is not installed; use --detector r101 (default) or install detectron2"


class Detectron2Detector:
    """detectron2's GeneralizedRCNN from the model-zoo config, weights loaded once (weights_path)."""

    name = "detectron2"

    def __init__(self, weights_path: Path, device: torch.device) -> None:
        try:
            import detectron2  # noqa: F401
            from detectron2 import model_zoo
            from detectron2.config import get_cfg
            from detectron2.engine import DefaultPredictor
        except ImportError:
            raise PatchColorError(NOT_INSTALLED) from None
        path = Path(weights_path)
        if not path.is_file():
            raise WeightsMissing(f"The detector weights file {path} is missing; run `patchcolor weights fetch` to download it.")
        cfg = get_cfg()
        cfg.merge_from_file(model_zoo.get_config_file(CONFIG))
        cfg.MODEL.WEIGHTS = str(path)
        cfg.MODEL.DEVICE = str(torch.device(device))
        self.device = torch.device(device)
        # DefaultPredictor builds the model, loads the weights (detectron2's own pickle loader), eval().
        self.predictor: Any = DefaultPredictor(cfg)
        self.predictor.model.requires_grad_(False)
        self._lock = threading.Lock()   # the ROI thresholds are set on the shared model per call

    def detect(self, image: np.ndarray, settings: DetectorSettings) -> list[Instance]:
        """image: (H, W, 3) float RGB in [0, 255] (the paper's grey, R=G=B). Returns instances by descending
        score, boxes in image pixels, masks as bool windows.

        ``settings.min_size`` replaces INPUT.MIN_SIZE_TEST (800; MAX_SIZE_TEST scaled in proportion) through a
        ResizeShortestEdge of its own; ``settings.proposals`` replaces the RPN's POST_NMS_TOPK_TEST for this
        call (restored after it), when the proposal generator has detectron2's ``post_nms_topk`` (else ignored)."""
        p = self.predictor
        # DefaultPredictor.__call__ without its postprocess. Like PatchColorization's code, the array is handed
        # over as is (float64; not flipped to the BGR the config expects — R=G=B for the paper's grey, so order is
        # moot).
        original = np.asarray(image, dtype=np.float64)
        if p.input_format == "RGB":
            original = original[:, :, ::-1]
        height, width = original.shape[:2]
        aug = p.aug
        if settings.min_size is not None:
            from detectron2.data import transforms as T

            short = int(settings.min_size)
            aug = T.ResizeShortestEdge([short, short], int(p.cfg.INPUT.MAX_SIZE_TEST * short
                                                           / p.cfg.INPUT.MIN_SIZE_TEST + 0.5))
        resized = aug.get_transform(original).apply_image(original)
        tensor = torch.as_tensor(resized.astype("float32").transpose(2, 0, 1)).to(self.device)
        box_predictor = p.model.roi_heads.box_predictor
        topk = getattr(p.model.proposal_generator, "post_nms_topk", None)   # {training: bool -> int}
        with self._lock, torch.inference_mode(), autocast(self.device, settings.precision):
            box_predictor.test_score_thresh = settings.score_thresh
            box_predictor.test_nms_thresh = settings.nms_thresh
            box_predictor.test_topk_per_image = settings.detections_per_image
            saved = topk[False] if isinstance(topk, dict) else None
            if settings.proposals is not None and saved is not None:
                topk[False] = int(settings.proposals)
            try:
                (out,) = p.model.inference([{"image": tensor, "height": height, "width": width}],
                                           do_postprocess=False)
            finally:
                if saved is not None:
                    topk[False] = saved
        result = {"boxes": out.pred_boxes.tensor.float(), "scores": out.scores.float(),
                  "labels": out.pred_classes + 1, "masks": out.pred_masks.float(), "image_size": out.image_size}
        with torch.inference_mode():
            return postprocess_detections(result, height, width)
