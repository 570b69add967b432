"""Instance segmentation: the detector registry and the seed's small-box filter.

``load_detector(name, models_dir, device)`` builds one of
  * ``r101``           – Detectron2's R101-FPN 3x checkpoint on torchvision (default, :mod:`.r101`),
  * ``torchvision-v2`` – torchvision's Mask R-CNN R50-FPN v2 (:mod:`.tv_v2`),
  * ``detectron2``     – the same R101 checkpoint on the real detectron2 library, if installed.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..errors import BadOptions
from .base import COCO_CLASSES, COCO_IDS, Detector, DetectorSettings, Instance

#: detector name -> weight file name inside the models folder
WEIGHT_FILES: dict[str, str] = {
    "r101": "model_final_a3ec72.pkl",
    "torchvision-v2": "maskrcnn_resnet50_fpn_v2_coco-73cbd019.pth",
    "detectron2": "model_final_a3ec72.pkl",
}

__all__ = ["COCO_CLASSES", "COCO_IDS", "Detector", "DetectorSettings", "Instance", "WEIGHT_FILES",
           "filter_instances", "load_detector"]


def load_detector(name: str, models_dir: Path, device: torch.device) -> Detector:
    """Build detector ``name`` with its weights from ``models_dir`` (loaded once, eval, no grad).

    Raises BadOptions (unknown name), WeightsMissing / WeightsCorrupt (weight file), PatchColorError
    (detectron2 not installed)."""
    if name not in WEIGHT_FILES:
        raise BadOptions(f"Unknown detector {name!r}; choose one of {', '.join(WEIGHT_FILES)}.")
    path = Path(models_dir) / WEIGHT_FILES[name]
    device = torch.device(device)
    if name == "r101":
        from .r101 import R101Detector
        return R101Detector(path, device)
    if name == "torchvision-v2":
        from .tv_v2 import TorchvisionV2Detector
        return TorchvisionV2Detector(path, device)
    from .detectron2_impl import Detectron2Detector
    return Detectron2Detector(path, device)


def filter_instances(instances: Sequence[Instance], width: int, height: int, min_area_frac: float,
                     max_instances: int) -> list[Instance]:
    """The seed's ``segnificat_bboexes_indices``: keep instance i when its box, cast to int32 by truncation,
    has (x1 - x0) * (y1 - y0) > width * height * min_area_frac (strictly greater); order is kept, then
    the list is cut to ``max_instances``."""
    limit = width * height * min_area_frac
    kept = []
    for inst in instances:
        x0, y0, x1, y1 = (int(v) for v in np.asarray(inst.box, dtype=np.float32).astype(np.int32))
        if (x1 - x0) * (y1 - y0) > limit:
            kept.append(inst)
    return kept[: max(0, max_instances)]
