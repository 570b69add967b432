"""What one colorize job returns: used by the CLI, the service and (through the wire) the plug-in."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .hints import Hints
from .segment.base import Instance


@dataclass
class InstanceResult:
    """A detected object in *output* pixel coordinates.

    box:         (x0, y0, x1, y1) float XYXY in output pixels.
    mask:        (h, w) bool, True inside the object; covers ``mask_origin`` .. ``mask_origin + (w, h)``.
    mask_origin: (x, y) int top-left corner of ``mask`` in output pixels.
    """

    class_id: int
    class_name: str
    score: float
    box: tuple[float, float, float, float]
    mask: np.ndarray
    mask_origin: tuple[int, int]

    def full_mask(self, width: int, height: int) -> np.ndarray:
        """(height, width) uint8 mask image, 255 inside the object, 0 elsewhere."""
        out = np.zeros((height, width), np.uint8)
        x, y = self.mask_origin
        h, w = self.mask.shape
        out[y:y + h, x:x + w][self.mask] = 255
        return out


@dataclass
class FusionState:
    """Everything re-fusing needs without re-running the networks (working resolution).

    work_size: (W, H) of the working copy the networks saw.
    full_ab:   (2, H, W) float32 Lab a/b of the full image (before fusion).
    inst_ab:   per instance, (2, h, w) float32 a/b of its crop box ``inst_boxes[i]``.
    inst_boxes:per instance, (x0, y0, x1, y1) int crop box in working pixels (exclusive end).
    instances: the detections at working resolution (their masks are what was fused).
    hints:     the job's colour-hint points (None: automatic), kept so a re-fuse colorizes with them too.
    """

    work_size: tuple[int, int]
    full_ab: np.ndarray
    inst_ab: list[np.ndarray]
    inst_boxes: list[tuple[int, int, int, int]]
    instances: list[Instance]
    hints: Hints | None = None

    @property
    def nbytes(self) -> int:
        return int(self.full_ab.nbytes + sum(a.nbytes for a in self.inst_ab)
                   + sum(i.mask.nbytes for i in self.instances) + (self.hints.nbytes if self.hints else 0))


@dataclass
class Result:
    """image: (H, W, 3) RGB or (H, W, 4) RGBA, uint8 or uint16 (the input's bit depth)."""

    image: np.ndarray
    instances: list[InstanceResult]
    state: FusionState
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def hint_count(self) -> int:
        """Painted blobs the colorizer followed (0: automatic)."""
        return len(self.state.hints) if self.state.hints is not None else 0
