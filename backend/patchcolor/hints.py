"""Colour hints: a painted hint map becomes SIGGRAPH17's user points (its ``input_B`` a/b and ``mask_B``).

The data flow, in order:

1. hint map (RGB(A) at the image's size, or any size with the image's aspect ratio) -> painted pixels;
2. painted pixels -> blobs (8-connected components, OpenCV), each with its mean Lab a/b (skimage's D65 / 2°
   numbers, the same as ``lab.py``), weighted by alpha;
3. blobs -> hint points: the working-resolution pixels each blob covers (:class:`Hints`);
4. for each network input (the full image, or a crop box stretched to n × n): a/b (2, n, n) in raw Lab units
   and mask (1, n, n) in {0, 1}, every covered network pixel drawn as a (2·spread + 1)² square
   (:meth:`Hints.net_input`).

What counts as painted:

* with alpha: alpha > 0 (a GIMP hint layer: transparent means "no hint"), the colour weighted by alpha;
* RGB without alpha: every pixel that is not gray (R = G = B means "not painted"), so a copy of the gray photo
  with colour dabs painted on it is a hint map;
* gray without alpha: nothing (no colour can be painted); gray + alpha gives neutral hints (a = b = 0).

Touching strokes of different colours form one blob with their mean colour: paint separate dabs.

Conventions from the references:

* mask in {0, 1}, not centred, a/b in raw Lab units (the network divides by 110): the Caffe-converted SIGGRAPH17
  checkpoint (shared/reference/seed-and-models.md §2.7; ideepcolor's Caffe path feeds ``mask * 110`` next to raw
  a/b, the PyTorch conversion folds the 110 into the first convolution).
* spread: ideepcolor (junyanz/interactive-deep-colorization, ``ui/ui_control.py`` ``PointEdit.updateInput``)
  draws each user point as a filled ``cv2.rectangle`` from (x − w, y − w) to (x + w, y + w) on the 256² network
  input, w = int(brushWidth / scale), and ``ui/gui_draw.py`` starts with brushWidth = 2·scale (the mouse wheel
  goes up to 4.05·scale): w = 2 by default (a 5 × 5 square), at most 4 (9 × 9, colorization-pytorch's largest
  training patch).

Memory: the map is read in row bands; what is kept is the blob table and one point per covered working pixel
(never a full-resolution float array, never a per-blob image stack).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
from skimage import color as skcolor

from .errors import BadOptions
from .prepare import SourceImage

DEFAULT_SPREAD = 2      # ideepcolor's default point: a 5 × 5 square on the 256² input (see the module docstring)
MAX_SPREAD = 4          # ideepcolor's largest brush: 9 × 9
BAND_PIXELS = 1 << 20   # hint-map pixels converted to Lab per band

HintTensors = tuple[np.ndarray, np.ndarray]   # (a/b (2, n, n) raw Lab, mask (1, n, n) {0, 1}), float32


@dataclass(frozen=True)
class Hints:
    """Hint points on the working grid.

    work_size: (W, H) of the working copy the points are on.
    xy:        (N, 2) int32 (x, y) working pixel of each point.
    blob:      (N,) int32 index of each point's blob in ``ab``; where blobs meet, the higher index is drawn.
    ab:        (B, 2) float32 Lab a/b of each blob.
    spread:    half-width w of the (2w + 1)² square each covered network pixel becomes (0..4).
    """

    work_size: tuple[int, int]
    xy: np.ndarray
    blob: np.ndarray
    ab: np.ndarray
    spread: int = DEFAULT_SPREAD

    def __len__(self) -> int:
        return len(self.ab)

    @property
    def nbytes(self) -> int:
        return int(self.xy.nbytes + self.blob.nbytes + self.ab.nbytes)

    def _inside(self, box: tuple[int, int, int, int]) -> np.ndarray:
        x0, y0, x1, y1 = box
        x, y = self.xy[:, 0], self.xy[:, 1]
        return (x >= x0) & (x < x1) & (y >= y0) & (y < y1)

    def touches(self, box: tuple[int, int, int, int]) -> bool:
        """True when a point lies in ``box`` (x0, y0, x1, y1), working pixels, exclusive end."""
        return bool(self._inside(box).any())

    def net_input(self, box: tuple[int, int, int, int] | None, n: int) -> HintTensors | None:
        """The network's hint inputs for ``box`` (None: the whole image) stretched to n × n, as the L* input is.

        Returns (a/b (2, n, n) float32 raw Lab, 0 where there is no hint; mask (1, n, n) float32 in {0, 1}),
        or None when no point lies in the box. A network pixel is covered when the working pixel under its
        centre is (upscaling) or when the centre of a covered working pixel falls in it (downscaling, so a
        one-pixel dab never vanishes); each covered pixel then grows into a (2·spread + 1)² square.
        """
        if box is None:
            box = (0, 0, *self.work_size)
        sel = self._inside(box)
        if not sel.any():
            return None
        x0, y0, x1, y1 = box
        xy, ids = self.xy[sel], self.blob[sel] + 1
        ox, oy = int(xy[:, 0].min()), int(xy[:, 1].min())
        canvas = np.zeros((int(xy[:, 1].max()) - oy + 1, int(xy[:, 0].max()) - ox + 1), np.int32)
        np.maximum.at(canvas, (xy[:, 1] - oy, xy[:, 0] - ox), ids)
        small, (sx, sy) = resample_labels(canvas, (ox - x0, oy - y0), (x1 - x0, y1 - y0), (n, n))
        labels = np.zeros((n, n), np.float32)       # float32: cv2.dilate's max filter; exact below 2**24 blobs
        labels[sy:sy + small.shape[0], sx:sx + small.shape[1]] = small
        k = 2 * self.spread + 1
        labels = cv2.dilate(labels, np.ones((k, k), np.uint8))
        table = np.concatenate([np.zeros((1, 2), np.float32), self.ab])
        ab = np.ascontiguousarray(table[labels.astype(np.intp)].transpose(2, 0, 1))
        return ab, (labels > 0).astype(np.float32)[None]


def _axis_map(lo: int, count: int, src_n: int, dst_n: int) -> tuple[int, np.ndarray, bool]:
    """Nearest mapping of source indices [lo, lo + count) of an axis of length src_n onto one of length dst_n
    (pixel centres aligned, as a stretch of the whole axis).

    Returns (dst_lo, index, down). down (dst_n <= src_n): index[i] is the destination pixel (from dst_lo) whose
    area holds the centre of source pixel lo + i. Up: index[j] is the source pixel (from lo) under the centre of
    destination pixel dst_lo + j.
    """
    r = dst_n / src_n
    if dst_n <= src_n:
        d = np.minimum(np.floor((np.arange(lo, lo + count) + 0.5) * r).astype(np.intp), dst_n - 1)
        return int(d[0]), d - d[0], True
    d0, d1 = max(0, math.ceil(lo * r - 0.5)), min(dst_n, math.ceil((lo + count) * r - 0.5))
    s = np.floor((np.arange(d0, d1) + 0.5) / r).astype(np.intp) - lo
    return d0, np.clip(s, 0, count - 1), False


def _map_axis(a: np.ndarray, index: np.ndarray, down: bool, axis: int) -> np.ndarray:
    if not down:
        return np.take(a, index, axis=axis)
    starts = np.flatnonzero(np.diff(index, prepend=-1))   # consecutive source pixels of one destination pixel
    return np.maximum.reduceat(a, starts, axis=axis)


def resample_labels(canvas: np.ndarray, origin: tuple[int, int], src_size: tuple[int, int],
                    dst_size: tuple[int, int]) -> tuple[np.ndarray, tuple[int, int]]:
    """Stretch a label window from a (W, H) = src_size grid to a dst_size grid, keeping the largest label where
    several source pixels meet in one destination pixel (so small blobs survive downscaling).

    canvas: (h, w) int labels (0 = none) covering source pixels origin .. origin + (w, h).
    Returns (labels, origin) of the destination window. Neither OpenCV's nor PIL's resize does a max-reduce
    of labels or keeps a sub-window aligned with the whole-image stretch, hence by hand.
    """
    x_lo, xi, x_down = _axis_map(origin[0], canvas.shape[1], src_size[0], dst_size[0])
    y_lo, yi, y_down = _axis_map(origin[1], canvas.shape[0], src_size[1], dst_size[1])
    return _map_axis(_map_axis(canvas, yi, y_down, 0), xi, x_down, 1), (x_lo, y_lo)


def painted_mask(hint_map: SourceImage) -> np.ndarray | None:
    """(H, W) bool, True where the hint map is painted (see the module docstring); None if nothing can be."""
    if hint_map.alpha is not None:
        return hint_map.alpha > 0
    c = hint_map.color
    if c.ndim == 2:
        return None
    return (c[..., 0] != c[..., 1]) | (c[..., 1] != c[..., 2])


def check_hint_size(hint_map: SourceImage, width: int, height: int) -> None:
    """BadOptions unless the hint map is the image's size or a uniform scaling of it (within one hint pixel)."""
    hw, hh = hint_map.width, hint_map.height
    if (hw, hh) != (width, height) and abs(hw / width - hh / height) * min(width, height) > 1:
        raise BadOptions(f"the hint image is {hw}x{hh} but the photo is {width}x{height}: paint the hints on an "
                         "image of the photo's size")


def blob_colours(hint_map: SourceImage, labels: np.ndarray, origin: tuple[int, int], count: int) -> np.ndarray:
    """(count, 2) float32 mean Lab a/b of each blob, alpha-weighted; labels (h, w) int32 (1..count, 0 = none)
    cover the hint map from ``origin``. Converted to Lab in row bands (bounded memory)."""
    if hint_map.is_gray:
        return np.zeros((count, 2), np.float32)         # gray + alpha: neutral hints
    ox, oy = origin
    h, w = labels.shape
    top = np.float32(1.0 / hint_map.max_value)
    sums, weights = np.zeros((2, count + 1)), np.zeros(count + 1)
    band = max(1, BAND_PIXELS // w)
    for r0 in range(0, h, band):
        lab_band = labels[r0:r0 + band]
        sel = lab_band > 0
        if not sel.any():
            continue
        rows = slice(oy + r0, oy + r0 + lab_band.shape[0])
        cols = slice(ox, ox + w)
        rgb = hint_map.color[rows, cols][sel].astype(np.float32) * top
        ab = skcolor.rgb2lab(rgb[:, None, :])[:, 0, 1:]
        ids = lab_band[sel]
        wt = (np.ones(len(ids), np.float32) if hint_map.alpha is None
              else hint_map.alpha[rows, cols][sel].astype(np.float32) * top)
        weights += np.bincount(ids, wt, count + 1)
        for i in range(2):
            sums[i] += np.bincount(ids, wt * ab[:, i], count + 1)
    return (sums[:, 1:] / np.maximum(weights[1:], 1e-12)).T.astype(np.float32)


def extract_hints(hint_map: SourceImage, image_size: tuple[int, int], work_size: tuple[int, int],
                  spread: int = DEFAULT_SPREAD) -> Hints:
    """Painted blobs of ``hint_map`` as hint points on the working grid.

    hint_map:   the user's hint image (see the module docstring), the image's size or a scaled copy.
    image_size: (W, H) of the photo; work_size: (W, H) of its working copy (what the networks see).
    Raises BadOptions when the hint map's shape does not fit the photo. An unpainted map gives 0 blobs.
    """
    check_hint_size(hint_map, *image_size)
    empty = Hints(work_size, np.zeros((0, 2), np.int32), np.zeros(0, np.int32), np.zeros((0, 2), np.float32), spread)
    painted = painted_mask(hint_map)
    if painted is None:
        return empty
    rows, cols = np.flatnonzero(painted.any(axis=1)), np.flatnonzero(painted.any(axis=0))
    if len(rows) == 0:
        return empty
    y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    count, labels = cv2.connectedComponents(painted[y0:y1, x0:x1].view(np.uint8), connectivity=8, ltype=cv2.CV_32S)
    ab = blob_colours(hint_map, labels, (x0, y0), count - 1)
    on_work, (wx, wy) = resample_labels(labels, (x0, y0), (hint_map.width, hint_map.height), work_size)
    ys, xs = np.nonzero(on_work)
    xy = np.stack([xs + wx, ys + wy], axis=1).astype(np.int32)
    return Hints(work_size, xy, (on_work[ys, xs] - 1).astype(np.int32), ab, spread)
