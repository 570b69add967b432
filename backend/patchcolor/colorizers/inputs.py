"""What each colorizer network is fed: its input preparation and input size.

The pipeline crops the working copy (the full image, or one object's box) and hands the crop to the network's
:class:`InputSpec`, which makes the network input at the side the spec gives for it:

* ``LIGHTNESS`` (ECCV16, SIGGRAPH17; the paper's): PIL BICUBIC stretch of the uint8 crop to n², skimage L*
  -> (1, n, n) float32 in [0, 100]. Full image and crops at ``net_size`` (256).
* ``GRAY_RGB`` (DDColor; the authors' ``ColorizationPipeline.process``): crop / 255 as float32, OpenCV bilinear
  resize to n², OpenCV float32 Lab L, Lab (L, 0, 0) back to RGB with OpenCV -> (3, n, n) float32 in [0, 1].
  Full image at 2 × ``net_size`` (512, the authors' input), crops at ``net_size`` (256), each a multiple of 32.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import cv2
import numpy as np
from PIL import Image

from .. import lab


def lightness_input(rgb: np.ndarray, n: int) -> np.ndarray:
    """The paper's network input: (h, w, 3) uint8 RGB -> PIL BICUBIC stretch to n×n -> skimage L*.
    Returns (1, n, n) float32 in [0, 100]."""
    small = np.asarray(Image.fromarray(rgb).resize((n, n), resample=Image.BICUBIC))
    return lab.lightness(small)[None]


def gray_rgb_input(rgb: np.ndarray, n: int) -> np.ndarray:
    """DDColor's network input, step for step as the authors' inference pipeline (OpenCV, float32):
    (h, w, 3) uint8 RGB -> /255 -> cv2.resize to n×n (bilinear) -> Lab L -> Lab (L, 0, 0) -> RGB.
    Returns (3, n, n) float32 in [0, 1] (three equal-ish channels: the gray of the crop's lightness)."""
    img = (rgb / 255.0).astype(np.float32)
    img = cv2.resize(img, (n, n))
    l_star = cv2.cvtColor(img, cv2.COLOR_RGB2Lab)[:, :, :1]
    gray_lab = np.concatenate((l_star, np.zeros_like(l_star), np.zeros_like(l_star)), axis=-1)
    return np.ascontiguousarray(cv2.cvtColor(gray_lab, cv2.COLOR_LAB2RGB).transpose(2, 0, 1))


@dataclass(frozen=True)
class InputSpec:
    """How one network wants its input.

    prepare:    (h, w, 3) uint8 RGB crop, side n -> (channels, n, n) float32 network input;
    full_scale: the full image's side is ``full_scale`` × the options' ``net_size`` (crops: ``net_size``);
    multiple:   sides are rounded up to a multiple of this (the network's total stride).
    """

    name: str
    prepare: Callable[[np.ndarray, int], np.ndarray]
    channels: int
    full_scale: int = 1
    multiple: int = 8

    def side(self, net_size: int, full: bool) -> int:
        """Input side for the full image (``full``) or a crop, from the options' ``net_size``."""
        n = net_size * (self.full_scale if full else 1)
        return -(-n // self.multiple) * self.multiple

    def make(self, work: np.ndarray, box: tuple[int, int, int, int] | None, net_size: int) -> np.ndarray:
        """The network input for ``box`` (x0, y0, x1, y1; None: the full image) of the (h, w, 3) uint8 ``work``."""
        img = work if box is None else work[box[1]:box[3], box[0]:box[2]]
        return self.prepare(img, self.side(net_size, box is None))


LIGHTNESS = InputSpec("lightness", lightness_input, channels=1)
GRAY_RGB = InputSpec("gray-rgb", gray_rgb_input, channels=3, full_scale=2, multiple=32)
