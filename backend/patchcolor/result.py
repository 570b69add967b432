"""What one colorize job returns: used by the CLI, the service and (through the wire) the plug-in."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from .hints import Hints
from .options import Options
from .prepare import SourceImage
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
    """Everything recomposing needs without re-running the networks (working resolution).

    work_size: (W, H) of the working copy the networks saw.
    full_ab:   (2, H, W) float32 Lab a/b of the full image (before fusion).
    inst_ab:   per instance, (2, h, w) float32 a/b of its crop box ``inst_boxes[i]``.
    inst_boxes:per instance, (x0, y0, x1, y1) int crop box in working pixels (exclusive end).
    instances: the detections at working resolution (their masks are what was fused).
    hints:     the job's colour-hint points (None: automatic), kept so a recompose colorizes with them too.
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
    """What one colorize job returns.

    image:     (H, W, 3) RGB or (H, W, 4) RGBA, uint8 or uint16 (the input's bit depth).
    instances: the objects found (output pixels), in fusion order.
    state:     what :meth:`recompose` needs to fuse again with edited masks, without the detector.
    timings:   seconds per stage.
    source, options, pipeline: the job's input, options as run and the :class:`~patchcolor.pipeline.Pipeline`
               that ran it (set by the pipeline; None for a result that came over the wire). The pipeline is not
               pickled with the result.
    """

    image: np.ndarray
    instances: list[InstanceResult]
    state: FusionState
    timings: dict[str, float] = field(default_factory=dict)
    source: SourceImage | None = field(default=None, repr=False, compare=False)
    options: Options | None = field(default=None, repr=False, compare=False)
    pipeline: Any = field(default=None, repr=False, compare=False)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "pipeline": None}

    @property
    def hint_count(self) -> int:
        """Painted blobs the colorizer followed (0: automatic)."""
        return len(self.state.hints) if self.state.hints is not None else 0

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of :attr:`image`."""
        return int(self.image.shape[1]), int(self.image.shape[0])

    def masks(self) -> list[np.ndarray]:
        """One (H, W) uint8 mask per instance, 255 inside the object (what :meth:`recompose` takes back)."""
        return [inst.full_mask(*self.size) for inst in self.instances]

    def to_pil(self) -> Image.Image:
        """The image as a PIL ``RGB``/``RGBA`` image; 16-bit results are rounded to 8 bits (PIL has no 16-bit
        RGB mode: use :meth:`save` to keep 16 bits)."""
        image = self.image
        if image.dtype == np.uint16:
            image = ((image.astype(np.uint32) + 128) // 257).astype(np.uint8)
        return Image.fromarray(image)

    def save(self, path: str | Path, masks: bool = False) -> Path:
        """Write the image to ``path`` (PNG, or TIFF by extension; 16-bit results stay 16-bit), atomically. With
        ``masks``, also ``<stem>_masks/``: one mask PNG per object and ``instances.json`` (as the CLI's
        ``--masks``). Returns ``path``."""
        from .io import save_image, write_masks

        path = Path(path)
        save_image(path, self.image)
        if masks:
            write_masks(path.with_name(path.stem + "_masks"), self, *self.size)
        return path

    def recompose(self, masks: Sequence[np.ndarray]) -> "Result":
        """Fuse the colours again through edited ``masks`` (each (H, W) bool/uint8 at the image's size, nonzero =
        inside; all-zero removes the object), without running the detector; only an object whose mask left its
        crop box is colorized again. See :meth:`patchcolor.pipeline.Pipeline.recompose`."""
        if self.pipeline is None or self.source is None or self.options is None:
            raise ValueError("this result carries no pipeline to recompose it with (it came over the wire or "
                             "from a pickle); call Pipeline.recompose with the source, state and options")
        return self.pipeline.recompose(self.source, self.state, masks, self.options)
