"""Preview: the pipeline's result on a small proxy of the image, fast enough to refresh in a dialog.

A :class:`PreviewSession` holds one image. The networks see exactly what a full run sees (the working copy,
its detections, the same crops, the hints mapped the same way), so a preview is the final result at proxy
size (long side ``PREVIEW_SIDE`` = 384 by default, the wire's; its lightness from an area-downscaled copy of the
original). Everything a refresh does not change is reused:

    working copy     per max_side                                          (drafts: per ("draft", max_side))
    detections       per detector settings (detector, thresholds, max_instances, max_side, precision)
                                                                 (drafts: ("draft", DRAFT_* knobs, settings))
    network a/b      per ("exact" | "draft", colorizer, net size, precision, max_side, crop box, digest of its
                     hint tensors), least recently used first out beyond ``cache_bytes``

so a saturation / feather / fusion / preset-finish change runs fuse + finish only, and a hint change runs only
the inputs whose hint tensors changed (the full image and the crops holding the changed hints).

A **draft** (``render(..., draft=True)`` while the exact preview would still run the detector or a network) is
the dialog's fast first look. Before the exact detections exist, it is the same pipeline on the proxy itself
instead of the working copy — the detector at a reduced test size with fewer RPN proposals, at most DRAFT_OBJECTS
objects, the colorizer at a reduced network size (constants below). Once the exact detections exist (after the
first exact preview), a draft shows exactly the exact preview's objects: the exact working copy, detections and
crops, each network output the exact preview has cached for these hints reused, only the others run at the draft's
network size (so after a hint change only the inputs holding the changed hints run, small). Draft network outputs
are cached under keys of their own, never mixed with the exact ones, so an exact render afterwards is bit-equal to
one in a fresh session. Once the exact preview needs no detector and no network run (its detections and network
outputs cached), a draft request renders the exact preview (as fast).
"""
from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field, replace

import cv2
import numpy as np

from patchcolor_client.protocol import PREVIEW_SIDE

from .finish import finish
from .fuse import fuse_state
from .hints import Hints, HintTensors
from .options import Options
from .pipeline import CancelFn, Pipeline, ProgressFn, _Job, crop_box
from .prepare import SourceImage, to_8bit, working_copy, working_size
from .result import FusionState
from .segment.base import Instance

# Draft parameters of the first look (no exact detections yet), picked by measurement (R101 + SIGGRAPH17, proxy
# 384x256 of a 6000x4000 layer, 2-core CPU; seconds per part of a first draft, see bench/bench_preview.py):
#: detector input short side (exact: Detectron2's 800 on the <= 1280 working copy; the max side scales with it,
#: 1333/800). The detector's smallest anchor is 32 px at its input, so objects much smaller than ~32/side of the
#: image's short side are missed (800: 4 %, 384: 8 %, 256: 12.5 %). Detector time, one run under load 4-5:
#: 256: 0.6 s, 320: 1.2 s, 384: 1.5 s, 512: 2.6 s, 800: 5.8 s (bench_preview.py --draft-sides). With random test
#: weights no side shows the exact preview's objects (0 of 4 from 256 to 800: random detections agree only on the
#: same input, and the proxy is blurrier than the working copy), so the fastest is kept.
DRAFT_DETECTOR_SIDE = 256
#: RPN post-NMS proposals (exact: 1000): box head ~0.3 s at 300 (1000: ~0.9 s, 100: ~0.1 s but more misses)
DRAFT_PROPOSALS = 300
#: at most this many objects (after the paper's small-box filter, as the exact keeps them; the options'
#: max_instances when smaller): the mask head, the mask paste and the colorizer run once per object
#: (~0.03 + 0.12 s each)
DRAFT_OBJECTS = 10
#: colorizer input side (exact: the options' net_size, 256 by default; the smaller one is used). SIGGRAPH17 for
#: 5 inputs: 64: ~0.6 s, 96: ~1.3 s, 128: ~2.9 s, 256: ~11 s; a/b is coarser (8x8 at the network's bottleneck)
DRAFT_NET_SIZE = 64


@dataclass
class Preview:
    """image: (h, w, 3) RGB or (h, w, 4) RGBA uint8 at proxy size.
    computed: network inputs run for this refresh (0: fuse + finish only).
    objects: the objects shown, (class name, score, box (x0, y0, x1, y1) in proxy pixels), in detection order."""

    image: np.ndarray
    instances: int
    hints: int
    computed: int
    timings: dict[str, float] = field(default_factory=dict)
    draft: bool = False     # True: a draft was rendered (see the module docstring), False: the exact preview
    objects: list[tuple[str, float, tuple[float, float, float, float]]] = field(default_factory=list)


def make_proxy(src: SourceImage, long_side: int = PREVIEW_SIDE) -> SourceImage:
    """8-bit copy of ``src`` with long side <= long_side (the paper's size rule), OpenCV INTER_AREA."""
    w, h = working_size(src.width, src.height, long_side)

    def small(plane: np.ndarray) -> np.ndarray:
        if plane.shape[:2] != (h, w):
            plane = cv2.resize(plane, (w, h), interpolation=cv2.INTER_AREA)
        return to_8bit(plane)

    return SourceImage(small(src.color), None if src.alpha is None else small(src.alpha))


def _digest(tensors: HintTensors | None) -> bytes | None:
    if tensors is None:
        return None
    h = hashlib.blake2b(digest_size=16)
    for t in tensors:
        h.update(np.ascontiguousarray(t).data)
    return h.digest()


@dataclass
class _Plan:
    """What a render works on (exact or draft). work: (h, w, 3) uint8 working copy; found: its detections; points:
    the hints on its grid (None: no hints); boxes: the crops; tensors / keys: the network's hint tensors and the
    network-output cache keys of the full image then each crop."""

    work: np.ndarray
    found: list[Instance]
    points: Hints | None
    boxes: list[tuple[int, int, int, int]]
    tensors: list[HintTensors | None]
    keys: list[tuple]


def _lap(timings: dict[str, float], name: str, since: float) -> float:
    """timings[name] += now - since; returns now."""
    now = time.perf_counter()
    timings[name] = timings.get(name, 0.0) + now - since
    return now


@dataclass
class _CacheReuse:
    """A session's network-output cache as :class:`~patchcolor.pipeline.Reuse` for one of its own renders (the
    caller holds the session lock): ``keys`` maps each target (None: the full image, or a crop box) to the cache
    key the render's plan computed for it (same options and hint tensors as the colorize step sees)."""

    ab: OrderedDict
    keys: dict

    def detections(self, opts: Options) -> list[Instance] | None:
        return None

    def network_ab(self, opts: Options, box, hint_tensors) -> np.ndarray | None:
        return self.ab.get(self.keys[box])


class PreviewSession:
    """One image's previews. ``render`` may be called from several threads (one at a time runs)."""

    def __init__(self, pipe: Pipeline, src: SourceImage, long_side: int = PREVIEW_SIDE,
                 cache_bytes: int = 256 << 20, keep_source: bool = True):
        """keep_source=False: the session does not hold ``src`` (a service request's frame); every
        :meth:`render` is then given the same image again (``src=``)."""
        self.pipe = pipe
        self.src: SourceImage | None = src if keep_source else None
        self.size = (src.width, src.height)
        self.proxy = make_proxy(src, long_side)
        self.cache_bytes = cache_bytes
        self._work: dict[int, np.ndarray] = {}
        self._found: dict[tuple, list[Instance]] = {}
        self._ab: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def nbytes(self) -> int:
        return int(self.proxy.color.nbytes + (self.proxy.alpha.nbytes if self.proxy.alpha is not None else 0)
                   + sum(w.nbytes for w in self._work.values()) + sum(a.nbytes for a in self._ab.values())
                   + sum(i.mask.nbytes for f in self._found.values() for i in f))

    def render(self, opts: Options, hints: SourceImage | None = None, progress: ProgressFn | None = None,
               cancelled: CancelFn | None = None, src: SourceImage | None = None, draft: bool = False) -> Preview:
        """The result of ``pipe.run(src, opts, hints=hints)`` at proxy size, 8-bit.

        hints: a colour-hint map at the image's size or any scaled copy (the proxy's size is enough for a
        preview and fastest; a full run maps the full-size map, so crops may then differ by a working pixel).
        src:   the session's image again (needed when it was made with keep_source=False).
        draft: a draft is acceptable: rendered unless the exact preview needs neither the detector nor a
               network (its detections and network outputs for these options and hints are cached; it is then as
               fast). ``Preview.draft`` says which one was rendered. Once the exact detections are cached, a draft
               shows the exact preview's objects (see the module docstring).
        """
        src = src if src is not None else self.src
        if src is None:
            raise ValueError("this preview session keeps no image: pass src")
        if (src.width, src.height) != self.size:
            raise ValueError(f"the image is {src.width}x{src.height}, the session's is {self.size[0]}x{self.size[1]}")
        with self._lock:
            t0 = time.perf_counter()
            job = _Job(self.pipe, src, opts, progress, cancelled)
            for stage in ("fuse", "finish"):     # on the working copy and the proxy (<= ~1.6 MP), not the image
                job.events.work(stage, 1.0)
            timings: dict[str, float] = {}
            exact = None
            if not draft or self._detection_key(job.opts) in self._found:
                exact = self._plan(job, hints, draft=False, timings=timings)
                # a draft is still fine when the exact preview would have to run networks (a hint or option change)
                draft = draft and any(k not in self._ab for k in exact.keys)
            if draft:
                job.opts = replace(job.opts, net_size=min(job.opts.net_size, DRAFT_NET_SIZE))
                plan = (self._plan(job, hints, draft=True, timings=timings) if exact is None
                        else self._on_exact(job, exact))
            else:
                assert exact is not None
                plan = exact
            work, found, points, boxes = plan.work, plan.found, plan.points, plan.boxes
            t = time.perf_counter()
            full_ab, inst_ab, computed = self._colorize(job, plan)
            t = _lap(timings, "colorize", t)
            job.stage("fuse", 0.0)
            o = job.opts
            fused = fuse_state(FusionState((work.shape[1], work.shape[0]), full_ab, inst_ab, boxes, found), o)
            t = _lap(timings, "fuse", t)
            job.stage("finish", 0.0)
            image = finish(self.proxy.color, self.proxy.alpha, fused, o, np.dtype(np.uint8))
            _lap(timings, "finish", t)
            timings["total"] = time.perf_counter() - t0
            sx, sy = self.proxy.width / work.shape[1], self.proxy.height / work.shape[0]
            objects = [(i.class_name, i.score, (i.box[0] * sx, i.box[1] * sy, i.box[2] * sx, i.box[3] * sy))
                       for i in found]
            return Preview(image, len(found), len(points) if points is not None else 0, computed, timings, draft,
                           objects)

    def _plan(self, job: _Job, hints: SourceImage | None, draft: bool, timings: dict[str, float]) -> _Plan:
        """Working copy, detections, hint points, crop boxes, network-output cache keys and hint tensors of the
        exact preview or of the draft (each cached under its own keys). Adds prepare / segment / hints timings."""
        o = job.opts
        if draft:
            work = self._work.get(("draft", o.max_side))
            if work is None:                               # the proxy is the draft's working copy
                job.stage("prepare", 0.0)
                t = time.perf_counter()
                work = self._work[("draft", o.max_side)] = working_copy(self.proxy, o.max_side)
                _lap(timings, "prepare", t)
        else:
            work = self._work.get(o.max_side)
            if work is None:
                work = self._work[o.max_side] = job.prepare()
        found = self._detections(job, work, draft)
        timings.update({k: timings.get(k, 0.0) + v for k, v in job.timings.items()})   # prepare / segment
        job.timings.clear()
        t = time.perf_counter()
        points = job.hints(hints, work)                    # switches job.opts to siggraph17 when there are hints
        o = job.opts
        _lap(timings, "hints", t)
        boxes = [crop_box(i.box, work.shape[1], work.shape[0], o.context, o.square_crops) for i in found]
        targets: list[tuple[int, int, int, int] | None] = [None, *boxes]
        tensors = [job.hint_input(points, b) for b in targets]
        kind = "draft" if draft else "exact"               # the draft's boxes are on another working copy
        keys = [self._ab_key(kind, o, b, t) for b, t in zip(targets, tensors)]
        return _Plan(work, found, points, boxes, tensors, keys)

    def _on_exact(self, job: _Job, exact: _Plan) -> _Plan:
        """The draft on the exact preview's plan: its working copy, objects and crops; each input's exact network
        output when cached, else the draft's (``job.opts`` has the draft's network size)."""
        targets: list[tuple[int, int, int, int] | None] = [None, *exact.boxes]
        tensors = [job.hint_input(exact.points, b) for b in targets]
        keys = [k if k in self._ab else self._ab_key("draft-on-exact", job.opts, b, t)
                for k, b, t in zip(exact.keys, targets, tensors)]
        return replace(exact, tensors=tensors, keys=keys)

    @staticmethod
    def _ab_key(kind: str, o: Options, box: tuple[int, int, int, int] | None, tensors: HintTensors | None) -> tuple:
        """What one network output depends on ("exact" / "draft" / "draft-on-exact", job options, crop box, hint
        tensors)."""
        return kind, o.colorizer, o.net_size, o.precision, o.max_side, box, _digest(tensors)

    @staticmethod
    def _detection_key(o: Options) -> tuple:
        """What the exact detections depend on (job options, precision resolved)."""
        return (o.detector, o.score_thresh, o.nms_thresh, o.min_area_frac, o.max_instances, o.max_side, o.precision)

    def _detections(self, job: _Job, work: np.ndarray, draft: bool = False) -> list[Instance]:
        key = self._detection_key(job.opts)
        if draft:        # the draft's detections: their own key (another working copy, other detector knobs)
            key = ("draft", DRAFT_DETECTOR_SIDE, DRAFT_PROPOSALS, DRAFT_OBJECTS, *key)
        if key not in self._found:
            self._found[key] = (job.segment(work, DRAFT_DETECTOR_SIDE, DRAFT_PROPOSALS, max_instances=DRAFT_OBJECTS)
                                if draft else job.segment(work))
        return self._found[key]

    def _colorize(self, job: _Job, plan: _Plan) -> tuple[np.ndarray, list[np.ndarray], int]:
        """Network a/b for the full image and each box: the pipeline's colorize step with this session's cache as
        what it may reuse (only inputs whose key is not cached run); the new outputs are cached."""
        reuse = _CacheReuse(self._ab, dict(zip([None, *plan.boxes], plan.keys)))
        full_ab, inst_ab, computed = job.colorize(plan.work, plan.boxes, plan.points, reuse, plan.tensors)
        for k, ab in zip(plan.keys, [full_ab, *inst_ab]):
            self._ab[k] = ab
            self._ab.move_to_end(k)
        self._evict(keep=set(plan.keys))
        return full_ab, inst_ab, computed

    def _evict(self, keep: set) -> None:
        total = sum(a.nbytes for a in self._ab.values())
        for k in list(self._ab):
            if total <= self.cache_bytes:
                break
            if k not in keep:
                total -= self._ab.pop(k).nbytes

    # -- what a full run of the same image may reuse (pipeline.Reuse) -------------------------------------------
    def detections(self, opts: Options) -> list[Instance] | None:
        """The exact preview's detections for these options (as run: precision resolved), None if not computed."""
        with self._lock:
            return self._found.get(self._detection_key(opts))

    def network_ab(self, opts: Options, box: tuple[int, int, int, int] | None,
                   hint_tensors: HintTensors | None) -> np.ndarray | None:
        """The exact preview's network a/b for the full image (box None) or a crop, None if not computed."""
        with self._lock:
            return self._ab.get(self._ab_key("exact", opts, box, hint_tensors))
