"""The PatchColorization pipeline, composed from one module per step in the order the pixels flow:

prepare -> segment -> lab -> colorize -> fuse -> finish.

Models are loaded once per :class:`Pipeline` (on first use) and reused for every job.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np
import torch
from PIL import Image

from . import lab
from .colorize import NET_SIZE, load_colorizer, predict_ab
from .errors import Cancelled, DeviceUnavailable
from .finish import finish
from .fuse import FuseItem, fuse
from .models import models_dir as default_models_dir
from .models import weight_path
from .options import Options
from .precision import effective_precision
from .prepare import SourceImage, check_size, working_copy
from .result import FusionState, InstanceResult, Result
from .segment.base import DetectorSettings, Instance

ProgressFn = Callable[[str, float], None]   # (stage name, fraction 0..1 within the stage)
CancelFn = Callable[[], bool]               # True -> stop at the next stage/batch boundary (raises Cancelled)

STAGES = ("prepare", "segment", "colorize", "fuse", "finish")
log = logging.getLogger("patchcolor")


def resolve_device(device: str) -> torch.device:
    """"auto" -> CUDA when available, else CPU. Asking for CUDA without one raises DeviceUnavailable."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceUnavailable("CUDA was asked for (--device cuda) but no CUDA GPU is available; use --device cpu")
    if device != "cpu" and not device.startswith("cuda"):
        raise DeviceUnavailable(f"unknown device {device!r} (auto, cpu, cuda)")
    return torch.device(device)


def crop_box(box: tuple[float, float, float, float], width: int, height: int, context: float,
             square: bool) -> tuple[int, int, int, int]:
    """Integer crop box (x0, y0, x1, y1), exclusive end, inside the image.

    context == 0 and not square: the seed's int32 truncation of the float box.
    Otherwise the box grows by ``context`` × its size on each side and, with ``square``, toward a square
    (as far as the image allows), so the 256×256 stretch distorts the object less and the network sees context.
    """
    x0, y0, x1, y1 = box
    if context == 0 and not square:
        ix0, iy0, ix1, iy1 = int(x0), int(y0), int(x1), int(y1)
    else:
        w, h = x1 - x0, y1 - y0
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        w, h = w * (1 + 2 * context), h * (1 + 2 * context)
        if square:
            w = h = max(w, h)
        w, h = min(w, width), min(h, height)
        ix0 = int(round(min(max(cx - w / 2, 0), width - w)))
        iy0 = int(round(min(max(cy - h / 2, 0), height - h)))
        ix1, iy1 = min(width, ix0 + int(round(w))), min(height, iy0 + int(round(h)))
    ix0, iy0 = max(0, min(ix0, width - 1)), max(0, min(iy0, height - 1))
    return ix0, iy0, max(ix0 + 1, min(ix1, width)), max(iy0 + 1, min(iy1, height))


def net_input(work: np.ndarray, box: tuple[int, int, int, int] | None = None, size: int = NET_SIZE) -> np.ndarray:
    """The seed's network input: (box crop of) the working RGB, PIL BICUBIC stretch to size² (256), skimage L*.
    Returns (size, size) float32 in [0, 100]."""
    img = work if box is None else work[box[1]:box[3], box[0]:box[2]]
    small = np.asarray(Image.fromarray(img).resize((size, size), resample=Image.BICUBIC))
    return lab.lightness(small)


def scale_instance(inst: Instance, sx: float, sy: float, width: int, height: int) -> InstanceResult:
    """A working-resolution instance in output pixels (mask window resized bilinearly, thresholded at 50 %)."""
    x0, y0, x1, y1 = inst.box
    box = (x0 * sx, y0 * sy, x1 * sx, y1 * sy)
    mask = inst.binary_mask()
    mx, my = inst.mask_origin
    if (sx, sy) == (1.0, 1.0):
        return InstanceResult(inst.class_id, inst.class_name, inst.score, box, mask.copy(), (mx, my))
    ox, oy = int(round(mx * sx)), int(round(my * sy))
    ow = max(1, min(width, int(round((mx + mask.shape[1]) * sx))) - ox)
    oh = max(1, min(height, int(round((my + mask.shape[0]) * sy))) - oy)
    big = cv2.resize(mask.astype(np.uint8) * 255, (ow, oh), interpolation=cv2.INTER_LINEAR) >= 128
    return InstanceResult(inst.class_id, inst.class_name, inst.score, box, big, (ox, oy))


class Pipeline:
    """Loads each model once (on first use) and runs jobs.

    models_dir: folder with the weight files (default: $PATCHCOLOR_MODELS or the repo's ``models/``).
    device:     "auto" | "cpu" | "cuda" (DeviceUnavailable if cuda is asked for and absent).
    max_pixels: inputs with more pixels raise ImageTooLarge.
    """

    def __init__(self, models_dir: Path | None = None, device: str = "auto", max_pixels: int = 250_000_000):
        self.models_dir = Path(models_dir) if models_dir else default_models_dir()
        self.device = resolve_device(device)
        self.max_pixels = max_pixels
        self._models: dict[str, object] = {}
        self._lock = threading.Lock()
        self._precision_said: set[str] = set()

    def precision(self, requested: str) -> str:
        """The precision that runs on this device for ``requested``; the first fallback of each kind is logged."""
        effective, why = effective_precision(self.device, requested)
        if why and requested not in self._precision_said:
            self._precision_said.add(requested)
            log.warning("--precision %s: %s", requested, why)
        return effective

    # -- models ------------------------------------------------------------------------------------------
    def colorizer(self, name: str) -> torch.nn.Module:
        with self._lock:
            if name not in self._models:
                self._models[name] = load_colorizer(name, weight_path(name, self.models_dir), self.device)
            return self._models[name]  # type: ignore[return-value]

    def detector(self, name: str):
        from .segment import load_detector

        key = "detector:" + name
        with self._lock:
            if key not in self._models:
                self._models[key] = load_detector(name, self.models_dir, self.device)
            return self._models[key]

    # -- jobs --------------------------------------------------------------------------------------------
    def run(self, src: SourceImage, opts: Options, progress: ProgressFn | None = None,
            cancelled: CancelFn | None = None) -> Result:
        """Colorize ``src``. Returns the colorized image (input's bit depth, alpha kept) and the instances."""
        job = _Job(self, src, opts, progress, cancelled)
        work = job.prepare()
        instances = job.segment(work)
        boxes = [crop_box(i.box, work.shape[1], work.shape[0], opts.context, opts.square_crops) for i in instances]
        full_ab, inst_ab = job.colorize(work, boxes)
        state = FusionState((work.shape[1], work.shape[0]), full_ab, inst_ab, boxes, instances)
        return job.fuse_and_finish(work, state)

    def refuse(self, src: SourceImage, state: FusionState, masks: Sequence[np.ndarray], opts: Options,
               progress: ProgressFn | None = None, cancelled: CancelFn | None = None) -> Result:
        """Re-fuse with edited masks, without re-running the detector.

        masks[i]: (H, W) bool/uint8 (nonzero = inside) at output resolution for instance i of the earlier result;
        all-zero removes the instance. Unchanged masks reuse the fused working-resolution mask exactly; an
        instance whose edited mask reaches outside its kept crop box is re-colorized on a new box (only those).
        """
        if len(masks) != len(state.instances):
            raise ValueError(f"{len(masks)} masks for {len(state.instances)} instances")
        job = _Job(self, src, opts, progress, cancelled)
        work = job.prepare()
        ww, wh = state.work_size
        if (work.shape[1], work.shape[0]) != (ww, wh):
            raise ValueError("the image does not match the job it re-fuses (working size differs)")
        out_w, out_h = job.out_size
        sx, sy = out_w / ww, out_h / wh
        kept, boxes, abs_, redo = [], [], [], []
        for inst, box, ab, edited in zip(state.instances, state.inst_boxes, state.inst_ab, masks):
            edited = np.asarray(edited).astype(bool, copy=False)
            if edited.shape != (out_h, out_w):
                raise ValueError(f"mask is {edited.shape[1]}x{edited.shape[0]}, expected {out_w}x{out_h}")
            if np.array_equal(edited, scale_instance(inst, sx, sy, out_w, out_h).full_mask(out_w, out_h) > 0):
                kept.append(inst), boxes.append(box), abs_.append(ab)
                continue
            small = edited if (sx, sy) == (1.0, 1.0) else cv2.resize(
                edited.astype(np.float32), (ww, wh), interpolation=cv2.INTER_AREA) >= 0.5
            ys, xs = np.nonzero(small)
            if len(xs) == 0:
                continue    # cleared mask: the instance is removed
            mx0, my0, mx1, my1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
            new = Instance(inst.class_id, inst.score, (float(mx0), float(my0), float(mx1), float(my1)),
                           small[my0:my1, mx0:mx1].copy(), (mx0, my0))
            inside = box[0] <= mx0 and box[1] <= my0 and mx1 <= box[2] and my1 <= box[3]
            if not inside:
                box = crop_box(new.box, ww, wh, opts.context, opts.square_crops)
                redo.append(len(kept))
            kept.append(new), boxes.append(box), abs_.append(ab)
        if redo:
            job.stage("colorize", 0.0)
            new_ab = predict_ab(self.colorizer(opts.colorizer), [net_input(work, boxes[i], opts.net_size) for i in redo],
                                [(boxes[i][3] - boxes[i][1], boxes[i][2] - boxes[i][0]) for i in redo],
                                job.opts.precision, opts.batch_size)
            for i, ab in zip(redo, new_ab):
                abs_[i] = ab
        new_state = FusionState(state.work_size, state.full_ab, abs_, boxes, kept)
        return job.fuse_and_finish(work, new_state)


class _Job:
    """One run: holds the per-job inputs and reports progress/cancellation at stage boundaries."""

    def __init__(self, pipe: Pipeline, src: SourceImage, opts: Options, progress: ProgressFn | None,
                 cancelled: CancelFn | None):
        self.pipe, self.src = pipe, src
        self.opts = replace(opts, precision=pipe.precision(opts.precision))
        self._progress, self._cancelled = progress, cancelled
        self.timings: dict[str, float] = {}
        self._t = time.perf_counter()
        check_size(src.width, src.height, pipe.max_pixels)

    def stage(self, name: str, fraction: float) -> None:
        if self._cancelled is not None and self._cancelled():
            raise Cancelled("the job was cancelled")
        if self._progress is not None:
            self._progress(name, fraction)

    def _lap(self, name: str) -> None:
        now = time.perf_counter()
        self.timings[name] = self.timings.get(name, 0.0) + now - self._t
        self._t = now

    @property
    def out_size(self) -> tuple[int, int]:
        return (self.src.width, self.src.height) if self.opts.full_resolution else self._work_size

    def prepare(self) -> np.ndarray:
        """(h, w, 3) uint8 working copy, long side <= max_side."""
        self.stage("prepare", 0.0)
        work = working_copy(self.src, self.opts.max_side)
        self._work_size = (work.shape[1], work.shape[0])
        self._lap("prepare")
        return work

    def segment(self, work: np.ndarray) -> list[Instance]:
        self.stage("segment", 0.0)
        if self.opts.detector == "none" or self.opts.max_instances == 0:
            return []
        from .segment import filter_instances

        det = self.pipe.detector(self.opts.detector)
        gray = lab.neutral_gray(lab.lightness(work[..., 0] if self.src.is_gray else work))
        settings = DetectorSettings(self.opts.score_thresh, self.opts.nms_thresh, 100, self.opts.precision)
        found = det.detect(np.repeat(gray[..., None], 3, axis=2), settings)
        kept = filter_instances(found, work.shape[1], work.shape[0], self.opts.min_area_frac, self.opts.max_instances)
        self._lap("segment")
        self.stage("segment", 1.0)
        return kept

    def colorize(self, work: np.ndarray, boxes: list[tuple[int, int, int, int]]):
        """Full image + every crop through the colorizer in batches. Returns ((2,h,w), [(2,bh,bw)...])."""
        self.stage("colorize", 0.0)
        model = self.pipe.colorizer(self.opts.colorizer)
        n = self.opts.net_size
        inputs = [net_input(work, None, n)] + [net_input(work, b, n) for b in boxes]
        sizes = [work.shape[:2]] + [(b[3] - b[1], b[2] - b[0]) for b in boxes]
        abs_ = predict_ab(model, inputs, sizes, self.opts.precision, self.opts.batch_size,
                          on_batch=lambda done, total: self.stage("colorize", done / total))
        self._lap("colorize")
        return abs_[0], abs_[1:]

    def fuse_and_finish(self, work: np.ndarray, state: FusionState) -> Result:
        opts, src = self.opts, self.src
        self.stage("fuse", 0.0)
        items = [FuseItem(i.binary_mask(), i.mask_origin, ab, box)
                 for i, ab, box in zip(state.instances, state.inst_ab, state.inst_boxes)]
        fused = fuse(state.full_ab, items, opts.fusion, opts.feather, opts.order)
        self._lap("fuse")
        self.stage("finish", 0.0)
        out_w, out_h = self.out_size
        if opts.full_resolution:
            color, alpha = src.color, src.alpha
        else:
            color = work[..., 0] if src.is_gray else work
            alpha = None if src.alpha is None else _resize_plane(src.alpha, out_w, out_h)
            if src.bit_depth == 16 and alpha is not None:
                alpha = alpha.astype(np.uint16)
        image = finish(color, alpha, fused, opts, np.dtype(np.uint16 if src.bit_depth == 16 else np.uint8),
                       progress=lambda f: self.stage("finish", f))
        ww, wh = state.work_size
        sx, sy = out_w / ww, out_h / wh
        results = [scale_instance(i, sx, sy, out_w, out_h) for i in state.instances]
        self._lap("finish")
        return Result(image, results, state, dict(self.timings))


def _resize_plane(plane: np.ndarray, width: int, height: int) -> np.ndarray:
    if plane.shape[:2] == (height, width):
        return plane
    return np.asarray(Image.fromarray(plane).resize((width, height), resample=Image.BICUBIC))
