"""Instance segmentation: detector loading (names from :mod:`patchcolor.registry`) and the paper's small-box filter.

``load_detector(name, models_dir, device)`` builds one of the registry's detectors
  * ``r101``           – Detectron2's R101-FPN 3x checkpoint on torchvision (default, :mod:`.r101`),
  * ``torchvision-v2`` – torchvision's Mask R-CNN R50-FPN v2 (:mod:`.tv_v2`),
  * ``detectron2``     – the same R101 checkpoint on the real detectron2 library, if installed.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..errors import PatchColorError, WeightsCorrupt, WeightsMissing
from ..registry import corrupt_error, missing_error, registry
from .base import COCO_CLASSES, COCO_IDS, Detector, DetectorSettings, Instance

__all__ = ["COCO_CLASSES", "COCO_IDS", "Detector", "DetectorSettings", "Instance", "filter_instances",
           "load_detector"]


def load_detector(name: str, models_dir: Path, device: torch.device) -> Detector:
    """Build detector ``name`` (the registry's builder) with its weights from ``models_dir`` (loaded once, eval,
    no grad).

    Raises BadOptions (unknown name), the registry's WeightsMissing / WeightsCorrupt (file, folder and the exact
    install command, whatever the builder said), PatchColorError (detectron2 not installed)."""
    reg = registry()
    spec = reg.model(name, "detector")
    if spec.requires and importlib.util.find_spec(spec.requires) is None:
        fallback = next(m.name for m in reg.models if m.kind == "detector" and not m.optional)
        raise PatchColorError(f"The {name} detector needs the {spec.requires} package, which is not installed; "
                              f"use --detector {fallback} (the default) or install {spec.requires}.")
    path = Path(models_dir) / spec.weights.file
    if not path.is_file():
        raise missing_error(name, path.parent)
    try:
        return spec.build_target()(path, torch.device(device))
    except WeightsMissing:
        raise missing_error(name, path.parent) from None
    except WeightsCorrupt as e:
        raise corrupt_error(name, path, e.message) from None


def filter_instances(instances: Sequence[Instance], width: int, height: int, min_area_frac: float,
                     max_instances: int) -> list[Instance]:
    """PatchColorization's ``segnificat_bboexes_indices``: keep instance i when its box, cast to int32 by truncation,
    has (x1 - x0) * (y1 - y0) > width * height * min_area_frac (strictly greater); order is kept, then
    the list is cut to ``max_instances``."""
    limit = width * height * min_area_frac
    kept = []
    for inst in instances:
        x0, y0, x1, y1 = (int(v) for v in np.asarray(inst.box, dtype=np.float32).astype(np.int32))
        if (x1 - x0) * (y1 - y0) > limit:
            kept.append(inst)
    return kept[: max(0, max_instances)]
