"""Step 5 — fuse: put each instance's own colours into the full-image a/b map through its mask.

All work happens inside each instance's crop box (box-cropped masks; never an N×H×W stack).

* ``paper`` (the ``seed`` preset): the paper's hard replacement — inside the binary mask the instance a/b
  overwrites, applied in the given order (the paper's descending score: the later, lower-score instance wins
  overlaps). Mask pixels outside the instance's int box keep the earlier value, as PatchColorization's code does.
* ``feather``: alpha ramps from 0 at the mask border (and at the crop-box border, where the instance colours
  end) to 1 at ``feather`` × box diagonal inside, so there is no chroma step; larger instances are applied
  first so smaller ones (usually in front) end up on top.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .options import Options
from .result import FusionState


@dataclass
class FuseItem:
    """mask: (h, w) bool at ``mask_origin`` (x, y); ab: (2, bh, bw) float32 for crop box (x0, y0, x1, y1)."""

    mask: np.ndarray
    mask_origin: tuple[int, int]
    ab: np.ndarray
    box: tuple[int, int, int, int]

    @property
    def area(self) -> int:
        return int(np.count_nonzero(self.mask))


def _overlap(item: FuseItem) -> tuple[tuple[slice, slice], tuple[slice, slice], tuple[slice, slice]] | None:
    """Slices of the intersection of the mask window and the crop box: (image, mask-local, box-local)."""
    mx, my = item.mask_origin
    mh, mw = item.mask.shape
    x0, y0, x1, y1 = item.box
    ix0, iy0, ix1, iy1 = max(mx, x0), max(my, y0), min(mx + mw, x1), min(my + mh, y1)
    if ix0 >= ix1 or iy0 >= iy1:
        return None
    return ((slice(iy0, iy1), slice(ix0, ix1)),
            (slice(iy0 - my, iy1 - my), slice(ix0 - mx, ix1 - mx)),
            (slice(iy0 - y0, iy1 - y0), slice(ix0 - x0, ix1 - x0)))


def feather_alpha(mask: np.ndarray, radius: float) -> np.ndarray:
    """(h, w) float32 alpha in [0, 1]: distance to the nearest outside pixel (the window border counts as
    outside) divided by ``radius``, clipped. radius <= 0 gives the binary mask."""
    if radius <= 0:
        return mask.astype(np.float32)
    padded = cv2.copyMakeBorder(mask.astype(np.uint8), 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    dist = cv2.distanceTransform(padded, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]
    return np.minimum(dist * np.float32(1.0 / radius), np.float32(1.0))


def fuse(full_ab: np.ndarray, items: list[FuseItem], mode: str = "feather", feather: float = 0.02,
         order: str | None = None) -> np.ndarray:
    """full_ab: (2, H, W) float32 a/b of the whole image. Returns a new fused (2, H, W) float32 map.

    order "score": ``items`` are applied as given (the paper's descending score, later wins); "area": largest
    mask first, so the smallest ends on top. None: "score" for ``paper`` mode, "area" for ``feather``."""
    out = full_ab.copy()
    if (order or ("score" if mode == "paper" else "area")) == "area":
        items = sorted(items, key=lambda it: -it.area)
    for item in items:
        sl = _overlap(item)
        if sl is None:
            continue
        img_sl, mask_sl, box_sl = sl
        dst = out[(slice(None),) + img_sl]
        src = item.ab[(slice(None),) + box_sl]
        if mode == "paper":
            m = item.mask[mask_sl]
            dst[:, m] = src[:, m]
        else:
            x0, y0, x1, y1 = item.box
            radius = feather * float(np.hypot(x1 - x0, y1 - y0))
            # alpha over the whole crop box so the box border is a border too, then cut to the overlap
            box_mask = np.zeros((y1 - y0, x1 - x0), bool)
            box_mask[box_sl] = item.mask[mask_sl]
            alpha = feather_alpha(box_mask, radius)[box_sl]
            dst += alpha * (src - dst)
    return out


def fuse_state(state: FusionState, opts: Options) -> np.ndarray:
    """A job's kept colours fused with ``opts``' fusion mode, feather and order: (2, H, W) float32 at working size."""
    items = [FuseItem(i.binary_mask(), i.mask_origin, ab, box)
             for i, ab, box in zip(state.instances, state.inst_ab, state.inst_boxes)]
    return fuse(state.full_ab, items, opts.fusion, opts.feather, opts.order)
