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
from typing import Protocol, Sequence

import cv2
import numpy as np
import torch
from PIL import Image

from . import lab
from .colorizers import NET_SIZE, input_spec, load_colorizer, predict_ab
from .colorizers.inputs import LIGHTNESS, InputSpec
from .device import resolve_device
from .finish import finish
from .hints import Hints, HintTensors, extract_hints
from .fuse import fuse_state
from .models import models_dir as default_models_dir
from .models import weight_path
from .options import Options
from .precision import effective_precision
from .prepare import SourceImage, check_size, working_copy, working_size
from .progress import CancelFn, JobProgress, ProgressFn, StageRates  # noqa: F401 (ProgressFn, CancelFn re-exported)
from .result import FusionState, InstanceResult, Result
from .segment.base import DetectorSettings, Instance


log = logging.getLogger("patchcolor")


class Reuse(Protocol):
    """Work already done on the same image with the same options (a preview session, :mod:`patchcolor.preview`),
    looked up before the detector and before each network input; None = not there, run it. ``opts`` are the
    job's options as run (precision resolved, colorizer switched for hints)."""

    def detections(self, opts: Options) -> list[Instance] | None:
        """The working copy's detections after the paper's filter (as :meth:`_Job.segment` returns them)."""

    def network_ab(self, opts: Options, box: tuple[int, int, int, int] | None, hint_tensors) -> np.ndarray | None:
        """The (2, h, w) float32 a/b the colorizer gave for the full image (box None) or a crop box with these
        hint tensors (None: none)."""


def crop_box(box: tuple[float, float, float, float], width: int, height: int, context: float,
             square: bool) -> tuple[int, int, int, int]:
    """Integer crop box (x0, y0, x1, y1), exclusive end, inside the image.

    context == 0 and not square: the paper's int32 truncation of the float box.
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


def net_input(work: np.ndarray, box: tuple[int, int, int, int] | None = None, size: int = NET_SIZE,
              spec: InputSpec = LIGHTNESS) -> np.ndarray:
    """A colorizer's network input for (the box crop of) the working RGB, as its ``spec`` prepares it at the side
    it gives for ``size`` (the options' net_size). LIGHTNESS (ECCV16, SIGGRAPH17): the paper's PIL BICUBIC stretch
    to size² and skimage L*, (1, size, size) float32 in [0, 100]; see :mod:`patchcolor.colorizers.inputs`."""
    return spec.make(work, box, size)


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
    device:     "auto" | "cpu" | "cuda" | "cuda:N" | "mps" (:mod:`patchcolor.device`; DeviceUnavailable if the
                device asked for is absent).
    max_pixels: inputs with more pixels raise ImageTooLarge.
    colorizer_weights: {colorizer name: weight file or model folder} read instead of the registry's file in
                models_dir (e.g. a DDColor Hugging Face folder, ``--colorizer-weights``).
    """

    def __init__(self, models_dir: Path | None = None, device: str = "auto", max_pixels: int = 250_000_000,
                 colorizer_weights: dict[str, Path] | None = None):
        self.models_dir = Path(models_dir) if models_dir else default_models_dir()
        self.colorizer_weights = {k: Path(v) for k, v in (colorizer_weights or {}).items()}
        self.device = resolve_device(device)
        self.max_pixels = max_pixels
        self._models: dict[str, object] = {}
        self._lock = threading.Lock()
        self._precision_said: set[str] = set()
        self._hint_switch_said = False
        #: each stage's seconds per unit of work in the last finished job (the remaining-time estimate)
        self.rates = StageRates()
        #: the clock progress events and the remaining-time estimate read
        self.clock = time.perf_counter

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
                path = self.colorizer_weights.get(name) or weight_path(name, self.models_dir)
                self._models[name] = load_colorizer(name, path, self.device)
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
            cancelled: CancelFn | None = None, instances: Sequence[InstanceResult] | None = None,
            hints: SourceImage | None = None, reuse: Reuse | None = None) -> Result:
        """Colorize ``src``. Returns the colorized image (input's bit depth, alpha kept) and the instances.

        instances: use these instead of running the detector (a recompose when the earlier job's state is gone):
        an earlier Result's instances in output pixels, masks possibly edited (bool/uint8, nonzero = inside,
        cropped at ``mask_origin``). Each crop box comes from ``box`` as for a detected box, unless the mask
        reaches outside it (then from the mask's bounds, as in :meth:`recompose`); empty masks drop the instance.
        hints: a colour-hint map (see hints.py; the image's size): SIGGRAPH17 follows the painted colours on the
        full image and in every crop that contains some; a map with hints runs siggraph17 whatever was asked.
        reuse: detections and network outputs already computed for this image (a preview session): the
        detector and each network input run only when ``reuse`` does not have them (same result, less time).
        """
        job = _Job(self, src, opts, progress, cancelled)
        work = job.prepare()
        points = job.hints(hints, work)
        if instances is None:
            found = reuse.detections(job.opts) if reuse is not None else None
            if found is None:
                found = job.segment(work)
            else:
                job.events.work("segment", 0)
                log.info("reusing the preview's %d detection(s)", len(found))
            boxes = [crop_box(i.box, work.shape[1], work.shape[0], opts.context, opts.square_crops) for i in found]
        else:
            found, boxes = job.given(work, instances)
        full_ab, inst_ab, computed = job.colorize(work, boxes, points, reuse)
        if reuse is not None and computed <= len(inst_ab):
            log.info("reusing the preview's network output for %d of %d input(s)", len(inst_ab) + 1 - computed,
                     len(inst_ab) + 1)
        state = FusionState((work.shape[1], work.shape[0]), full_ab, inst_ab, boxes, found, points)
        return job.fuse_and_finish(work, state)

    def recompose(self, src: SourceImage, state: FusionState, masks: Sequence[np.ndarray], opts: Options,
                  progress: ProgressFn | None = None, cancelled: CancelFn | None = None) -> Result:
        """Fuse again with edited masks, without re-running the detector.

        masks[i]: (H, W) bool/uint8 (nonzero = inside) at output resolution for instance i of the earlier result;
        all-zero removes the instance. Unchanged masks reuse the fused working-resolution mask exactly; an
        instance whose edited mask reaches outside its kept crop box is re-colorized on a new box (only those),
        with the job's colour hints.
        """
        if len(masks) != len(state.instances):
            raise ValueError(f"{len(masks)} masks for {len(state.instances)} instances")
        job = _Job(self, src, opts, progress, cancelled)
        work = job.prepare()
        job.use_hints(state.hints)
        ww, wh = state.work_size
        if (work.shape[1], work.shape[0]) != (ww, wh):
            raise ValueError("the image does not match the job it recomposes (working size differs)")
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
            fitted = job.fit_mask(edited, (0, 0), inst.class_id, inst.score, None, box)
            if fitted is None:
                continue    # cleared mask: the instance is removed
            new, new_box = fitted
            if new_box != box:      # the mask left its crop box: colorize it again on the new one
                redo.append(len(kept))
            kept.append(new), boxes.append(new_box), abs_.append(ab)
        job.events.work("segment", 0)
        job.events.work("colorize", len(redo), job.colorizer_kind())
        if redo:
            job.stage("colorize", 0.0)
            n, spec = job.opts.net_size, input_spec(job.opts.colorizer)
            new_ab = predict_ab(job.load_colorizer(), [net_input(work, boxes[i], n, spec) for i in redo],
                                [(boxes[i][3] - boxes[i][1], boxes[i][2] - boxes[i][0]) for i in redo],
                                job.opts.precision, opts.batch_size,
                                on_batch=lambda done, total: job.colorize_progress(done, total, f"{total} objects"),
                                hints=[job.hint_input(state.hints, boxes[i]) for i in redo])
            for i, ab in zip(redo, new_ab):
                abs_[i] = ab
        new_state = FusionState(state.work_size, state.full_ab, abs_, boxes, kept, state.hints)
        return job.fuse_and_finish(work, new_state)


class _Job:
    """One run: holds the per-job inputs and reports progress (stage boundaries, sub-steps inside the detector and
    each colorizer batch, :mod:`patchcolor.progress`); every progress call is a cancellation point."""

    def __init__(self, pipe: Pipeline, src: SourceImage, opts: Options, progress: ProgressFn | None,
                 cancelled: CancelFn | None):
        self.pipe, self.src = pipe, src
        self.opts = replace(opts, precision=pipe.precision(opts.precision))
        self.timings: dict[str, float] = {}
        self._t = time.perf_counter()
        check_size(src.width, src.height, pipe.max_pixels)
        self.events = JobProgress(progress, cancelled, pipe.rates, pipe.clock)
        out_w, out_h = ((src.width, src.height) if self.opts.full_resolution
                        else working_size(src.width, src.height, self.opts.max_side))
        detects = self.opts.detector != "none" and self.opts.max_instances > 0
        # pixel-bound stages count megapixels, at least 1 (below that their time is mostly fixed costs)
        self.events.work("prepare", max(1.0, src.width * src.height / 1e6))
        self.events.work("segment", 1 if detects else 0, (self.opts.detector, None, None))
        self.events.work("colorize", None, self.colorizer_kind())
        self.events.work("fuse", max(1.0, out_w * out_h / 1e6))
        self.events.work("finish", max(1.0, out_w * out_h / 1e6))

    def stage(self, name: str, fraction: float, text: str | None = None) -> None:
        """A progress event (always sent); raises Cancelled when the job was cancelled."""
        self.events.stage(name, fraction, text)

    def step(self, name: str, fraction: float, text: str | None = None) -> None:
        """A sub-step event (not sent when the last event is very recent); raises Cancelled when cancelled."""
        self.events.step(name, fraction, text)

    def colorizer_kind(self) -> tuple:
        """What one network input's time depends on (for the remaining-time estimate)."""
        return self.opts.colorizer, self.opts.net_size, self.opts.precision

    def load_colorizer(self) -> torch.nn.Module:
        """The job's colorizer (loaded on first use: said, and not counted in the colorize rate)."""
        if self.opts.colorizer in self.pipe._models:
            return self.pipe.colorizer(self.opts.colorizer)
        self.stage("colorize", 0.0, "Loading the colorizer")
        t = self.pipe.clock()
        model = self.pipe.colorizer(self.opts.colorizer)
        self.events.exclude(self.pipe.clock() - t)
        return model

    def colorize_progress(self, done: float, total: int, what: str) -> None:
        """predict_ab's ``on_batch``: ``done`` of ``total`` network inputs (fractional inside a batch's forward)."""
        text = f"Colorizing {what}: {int(done)} of {total} done"
        if isinstance(done, int):
            self.stage("colorize", done / total, text)
        else:
            self.step("colorize", done / total, text)

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

    def segment(self, work: np.ndarray, min_size: int | None = None, proposals: int | None = None,
                detections: int = 100, max_instances: int | None = None) -> list[Instance]:
        """Detected instances on ``work``; min_size / proposals / detections: DetectorSettings' knobs (None: the
        detector's; detections: per image before the area filter, 100 as in the paper); max_instances: the cap after
        the area filter (None: the options')."""
        self.stage("segment", 0.0)
        if self.opts.detector == "none" or self.opts.max_instances == 0:
            return []
        from .segment import filter_instances

        cap = self.opts.max_instances if max_instances is None else min(max_instances, self.opts.max_instances)
        self.events.work("segment", 1, (self.opts.detector, min_size, proposals))
        if "detector:" + self.opts.detector not in self.pipe._models:
            self.stage("segment", 0.0, "Loading the detector")
            t = self.pipe.clock()
            det = self.pipe.detector(self.opts.detector)
            self.events.exclude(self.pipe.clock() - t)
            self.stage("segment", 0.0, "Detecting objects")
        else:
            det = self.pipe.detector(self.opts.detector)
        gray = lab.neutral_gray(lab.lightness(work[..., 0] if self.src.is_gray else work))
        settings = DetectorSettings(self.opts.score_thresh, self.opts.nms_thresh, detections, self.opts.precision,
                                    min_size=min_size, proposals=proposals,
                                    keep=(self.opts.min_area_frac, cap),
                                    progress=lambda f, what: self.step("segment", 0.99 * f,
                                                                       f"Detecting objects: {what}" if what else None))
        found = det.detect(np.repeat(gray[..., None], 3, axis=2), settings)
        kept = filter_instances(found, work.shape[1], work.shape[0], self.opts.min_area_frac, cap)
        self._lap("segment")
        self.stage("segment", 1.0)
        return kept

    def given(self, work: np.ndarray, instances: Sequence[InstanceResult]
              ) -> tuple[list[Instance], list[tuple[int, int, int, int]]]:
        """Caller-supplied instances (output pixels) -> working-resolution instances and their crop boxes,
        in the given order; instances whose mask is empty are dropped."""
        self.events.work("segment", 0)
        self.stage("segment", 0.0, "Reading the given masks")
        wh, ww = work.shape[:2]
        out_w, out_h = self.out_size
        sx, sy = out_w / ww, out_h / wh
        kept, boxes = [], []
        for g in instances:
            # fl(fl(x * s) / s) * s == fl(x * s): the result box maps back to the detected one (or to a
            # neighbouring float with the very same result box)
            box = (g.box[0] / sx, g.box[1] / sy, g.box[2] / sx, g.box[3] / sy)
            crop = crop_box(box, ww, wh, self.opts.context, self.opts.square_crops)
            fitted = self.fit_mask(np.asarray(g.mask), g.mask_origin, g.class_id, g.score, box, crop)
            if fitted is not None:
                kept.append(fitted[0]), boxes.append(fitted[1])
        self._lap("segment")
        self.stage("segment", 1.0)
        return kept, boxes

    def fit_mask(self, mask: np.ndarray, origin: tuple[int, int], class_id: int, score: float,
                 box: tuple[float, float, float, float] | None, crop: tuple[int, int, int, int]
                 ) -> tuple[Instance, tuple[int, int, int, int]] | None:
        """An instance from a mask given in output pixels: (working-resolution instance, crop box), None if empty.

        mask: (h, w) bool/uint8 (nonzero = inside) whose top-left pixel is ``origin`` in the output image.
        The mask goes to working resolution (INTER_AREA, >= 50 %) and is trimmed to its bounds. The instance's
        box is ``box`` (working pixels) or, when None, the mask's bounds. ``crop`` is kept while the mask fits
        inside it; otherwise the crop box is made from the mask's bounds as for a detected box (the caller must
        colorize that instance again).
        """
        wh, ww = self._work_size[1], self._work_size[0]
        out_w, out_h = self.out_size
        ox, oy = origin
        mask = mask.astype(bool, copy=False)
        if (out_w, out_h) != (ww, wh):
            # INTER_AREA needs the whole output grid to map pixels exactly as a full-size mask would (recompose)
            canvas = np.zeros((out_h, out_w), np.float32)
            x0, y0 = max(0, ox), max(0, oy)
            x1, y1 = min(out_w, ox + mask.shape[1]), min(out_h, oy + mask.shape[0])
            if x1 > x0 and y1 > y0:
                canvas[y0:y1, x0:x1] = mask[y0 - oy:y1 - oy, x0 - ox:x1 - ox]
            mask, ox, oy = cv2.resize(canvas, (ww, wh), interpolation=cv2.INTER_AREA) >= 0.5, 0, 0
        ys, xs = np.nonzero(mask)
        if len(xs) == 0:
            return None
        bx0, by0, bx1, by1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
        mx0, my0 = max(0, ox + bx0), max(0, oy + by0)
        mx1, my1 = min(ww, ox + bx1), min(wh, oy + by1)
        if mx1 <= mx0 or my1 <= my0:
            return None     # entirely outside the image
        bounds = (float(mx0), float(my0), float(mx1), float(my1))
        if not (crop[0] <= mx0 and crop[1] <= my0 and mx1 <= crop[2] and my1 <= crop[3]):
            box, crop = bounds, crop_box(bounds, ww, wh, self.opts.context, self.opts.square_crops)
        inst = Instance(class_id, score, bounds if box is None else box,
                        mask[my0 - oy:my1 - oy, mx0 - ox:mx1 - ox].copy(), (mx0, my0))
        return inst, crop

    def hints(self, hint_map: SourceImage | None, work: np.ndarray) -> Hints | None:
        """The hint map's points on the working grid (None without hints or when nothing is painted)."""
        if hint_map is None:
            return None
        points = extract_hints(hint_map, (self.src.width, self.src.height), (work.shape[1], work.shape[0]),
                               self.opts.hint_spread)
        if not len(points):
            log.info("the hint image has no painted pixels: colorizing without hints")
            return None
        self.use_hints(points)
        return points

    def use_hints(self, points: Hints | None) -> None:
        """Hints need SIGGRAPH17: switch to it (said once per Pipeline when another colorizer was asked for)."""
        if points is None or self.opts.colorizer == "siggraph17":
            return
        if not self.pipe._hint_switch_said:
            self.pipe._hint_switch_said = True
            log.warning("colour hints need the siggraph17 colorizer: using it instead of %s", self.opts.colorizer)
        self.opts = replace(self.opts, colorizer="siggraph17")

    def hint_input(self, points: Hints | None, box: tuple[int, int, int, int] | None):
        """The network's hint tensors for ``box`` (None: the full image), or None when it holds no hint."""
        return None if points is None else points.net_input(box, self.opts.net_size)

    def colorize(self, work: np.ndarray, boxes: list[tuple[int, int, int, int]], points: Hints | None = None,
                 reuse: Reuse | None = None, hints: list[HintTensors | None] | None = None):
        """Full image + every crop through the colorizer in batches, each with the hints inside it (inputs that
        ``reuse`` already has are not run). ``hints``: the hint tensors of the full image and each crop when the
        caller has them already (:meth:`hint_input` of each). Returns ((2,h,w), [(2,bh,bw)...], inputs run)."""
        self.stage("colorize", 0.0)
        targets: list[tuple[int, int, int, int] | None] = [None, *boxes]
        if hints is None:
            hints = [self.hint_input(points, b) for b in targets]
        abs_ = [reuse.network_ab(self.opts, b, h) if reuse is not None else None for b, h in zip(targets, hints)]
        todo = [i for i, ab in enumerate(abs_) if ab is None]
        self.events.work("colorize", len(todo), self.colorizer_kind())
        if todo:
            model = self.load_colorizer()
            n, spec = self.opts.net_size, input_spec(self.opts.colorizer)
            objects = f"{len(todo) - (todo[0] == 0)} objects"
            what = ("the whole image" if todo == [0] else f"the whole image and {objects}" if todo[0] == 0
                    else objects)
            new = predict_ab(model, [net_input(work, targets[i], n, spec) for i in todo],
                             [work.shape[:2] if targets[i] is None else
                              (targets[i][3] - targets[i][1], targets[i][2] - targets[i][0]) for i in todo],
                             self.opts.precision, self.opts.batch_size,
                             on_batch=lambda done, total: self.colorize_progress(done, total, what),
                             hints=None if points is None else [hints[i] for i in todo])
            for i, ab in zip(todo, new):
                abs_[i] = ab
        self._lap("colorize")
        return abs_[0], abs_[1:], len(todo)

    def fuse_and_finish(self, work: np.ndarray, state: FusionState) -> Result:
        opts, src = self.opts, self.src
        self.stage("fuse", 0.0)
        fused = fuse_state(state, opts)
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
        self.events.finished()
        return Result(image, results, state, dict(self.timings), source=src, options=opts, pipeline=self.pipe)


def _resize_plane(plane: np.ndarray, width: int, height: int) -> np.ndarray:
    if plane.shape[:2] == (height, width):
        return plane
    return np.asarray(Image.fromarray(plane).resize((width, height), resample=Image.BICUBIC))
