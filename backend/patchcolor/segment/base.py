"""The detector interface: what every instance-segmentation backend returns.

A detector takes the *working* image (H×W×3 float32, 0–255, the paper's L-preserving grey)
and returns :class:`Instance` objects in descending score order. Masks are cropped to
their box region — never an N×H×W full-image stack.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol

import numpy as np

# COCO 80-class names in Detectron2's contiguous order (index = class id 0..79).
COCO_CLASSES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
)
# COCO category id of each contiguous class (ids 12, 26, 29, 30, 45, 66, 68, 69, 71, 83 unused).
COCO_IDS: tuple[int, ...] = tuple(i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83))


@dataclass
class Instance:
    """One detected object, in the pixel coordinates of the image given to the detector.

    box:        (x0, y0, x1, y1) float, XYXY, unrounded as the detector produced it.
    mask:       (h, w) bool (or float32 probability in [0, 1]) covering ``mask_origin``
                .. ``mask_origin + (w, h)``; pixels outside that window are not in the mask.
    mask_origin:(x, y) int top-left corner of ``mask`` in image pixels.
    """

    class_id: int
    score: float
    box: tuple[float, float, float, float]
    mask: np.ndarray
    mask_origin: tuple[int, int]

    @property
    def class_name(self) -> str:
        return COCO_CLASSES[self.class_id] if 0 <= self.class_id < len(COCO_CLASSES) else str(self.class_id)

    def binary_mask(self) -> np.ndarray:
        """(h, w) bool mask (probabilities thresholded at >= 0.5, as Detectron2 does)."""
        return self.mask if self.mask.dtype == bool else self.mask >= 0.5


@dataclass(frozen=True)
class DetectorSettings:
    """Test-time thresholds. Defaults are the paper's (PatchColorization sets 0.3 / 0.3)."""

    score_thresh: float = 0.3
    nms_thresh: float = 0.3
    detections_per_image: int = 100
    precision: str = "fp32"   # "fp32" | "bf16" | "fp16": autocast for the network forward only
    #: Test-size override (Detectron2 INPUT.MIN_SIZE_TEST, the input's short side; the max size scales with it,
    #: 1333/800 of it for R101). None: the detector's own (800). Smaller = faster and coarser (drafts).
    min_size: int | None = None
    #: RPN post-NMS top-N override (proposals handed to the box head; Detectron2 POST_NMS_TOPK_TEST).
    #: None: the detector's own (1000). Fewer = faster box head, may miss objects in crowded images.
    proposals: int | None = None
    #: (min_area_frac, max_instances): the paper's small-box filter and the instance cap
    #: (:func:`patchcolor.segment.filter_instances`) applied by the detector itself before its mask head where it
    #: can (R101), so masks are computed only for the detections that will be kept. None: masks for all.
    #: The returned list is then already filtered; applying filter_instances again changes nothing.
    keep: tuple[float, int] | None = None
    #: Called with (fraction 0..1 of the detector's forward done, label of the step starting, e.g. "backbone 12/34")
    #: at the start of each step (backbone blocks, FPN, RPN, box and mask heads: :mod:`patchcolor.progress`); it
    #: may raise (e.g. Cancelled) to stop the forward. Optional per detector.
    progress: Callable[[float, str], None] | None = field(default=None, compare=False)


class Detector(Protocol):
    """An instance segmenter. Implementations load their weights once in ``__init__``."""

    name: str

    def detect(self, image: np.ndarray, settings: DetectorSettings) -> list[Instance]:
        """image: (H, W, 3) float32 in [0, 255], RGB order (R=G=B for the paper's grey input).

        Returns instances sorted by descending score, masks cropped to their box.
        """
        ...
