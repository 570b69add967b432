"""What a Colorize (Patch) result keeps in the image, and the mask arithmetic of recomposing it. Standard library only.

The result is a layer group tagged with the parasite ``colorize-patch`` whose JSON is a :class:`GroupMeta`
(it survives an XCF save and reopen). Its layers carry small parasites that recompose finds them by (never names or
positions, so renaming or moving layers inside the group is fine)::

    Colorize (Patch)      group          PARASITE_GROUP       GroupMeta
      Masks               group          PARASITE_MASKS       {"uid"}
        person 97%        mask layer     PARASITE_MASK        {"index": i, "uid"}: white = object
      Colorized           result layer   PARASITE_COLORIZED   {"uid"}
    <photo layer>                        PARASITE_SOURCE      {"uid": newest run, "uids": [every run]}

Recompose (Re-fuse Masks) sends the edited masks either to the backend's kept job (instant; ``job_index`` maps
each stored instance to its place in that job, None for one the job dropped) or, when the backend lost it,
colorizes the photo layer again with the stored boxes and the edited masks (:meth:`GroupMeta.instances_for`).
"""
from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

from .client import WireInstance

PARASITE_GROUP = "colorize-patch"
PARASITE_COLORIZED = "colorize-patch-colorized"
PARASITE_MASKS = "colorize-patch-masks"
PARASITE_MASK = "colorize-patch-mask"
PARASITE_SOURCE = "colorize-patch-source"
META_VERSION = 2

GROUP_NAME = "Colorize (Patch)"
MASKS_NAME = "Masks"
COLORIZED_NAME = "Colorized"

#: gray8 value -> 0/255: at least 50 % gray is inside (soft brush edges do not grow the object)
_BINARY = bytes(255 if v >= 128 else 0 for v in range(256))


def run_suffix(run: int) -> str:
    """'' for an image's first result, ', run N' after it (GIMP wants layer names unique in an image: without
    this a second run would read "Masks #1", "person 97% #1")."""
    return "" if run <= 1 else f", run {run}"


def instance_layer_name(class_name: str, score: float, run: int = 1) -> str:
    """'person 97%' (first run), 'person 97%, run 2' (second)."""
    return f"{class_name} {int(float(score) * 100 + 0.5)}%{run_suffix(run)}"


@dataclass(frozen=True)
class InstanceRecord:
    """A detected object as stored: COCO class, detector score (0..1), box (x0, y0, x1, y1) in layer pixels."""

    class_id: int
    class_name: str
    score: float
    box: tuple[float, float, float, float]


@dataclass
class GroupMeta:
    """The ``colorize-patch`` parasite of a result group.

    uid:        this result's id (the mask and Colorized layers and the photo layer point at it);
    job_id/token: the backend's job and its secret (instant recompose while the backend keeps it);
    endpoint:   the backend that made it; width/height/format: the photo layer as sent (wire format, e.g.
                "gray8"); result_format: the Colorized layer's; origin: the photo layer's offsets then;
    options:    the backend options used; instances: one record per mask layer index; job_index: see module;
    hints:      colour hints used (recompose then reads the hint layer again); run: 1 for the image's first result.
    """

    job_id: str
    endpoint: str
    width: int
    height: int
    format: str
    result_format: str
    origin: tuple[int, int]
    options: dict[str, Any]
    instances: list[InstanceRecord]
    job_index: list[int | None]
    token: str = ""
    hints: int = 0
    run: int = 1
    uid: str = field(default_factory=lambda: uuid.uuid4().hex)
    version: int = META_VERSION

    @classmethod
    def from_result(cls, res: Any, endpoint: str, fmt: str, origin: tuple[int, int], options: dict[str, Any],
                    hints: int, run: int) -> "GroupMeta":
        """The metadata of a fresh client ColorizeResult ``res`` for a photo layer sent in wire format ``fmt``."""
        recs = [InstanceRecord(i.class_id, i.class_name, float(i.score), tuple(float(v) for v in i.box))
                for i in res.instances]
        return cls(res.job_id, endpoint, res.width, res.height, fmt, res.fmt, (int(origin[0]), int(origin[1])),
                   dict(options), recs, list(range(len(recs))), getattr(res, "token", "") or "", int(hints), run)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["origin"] = list(self.origin)
        d["instances"] = [{**asdict(r), "box": list(r.box)} for r in self.instances]
        return d

    @classmethod
    def from_json(cls, obj: Any) -> "GroupMeta | None":
        """The stored JSON object -> GroupMeta, or None when it is missing or damaged."""
        if not isinstance(obj, dict):
            return None
        try:
            recs = [InstanceRecord(int(i.get("class_id", 0)), str(i.get("class_name", "object")),
                                   float(i.get("score", 1.0)), tuple(float(v) for v in i["box"]))
                    for i in obj["instances"]]
            if any(len(r.box) != 4 for r in recs):
                return None
            n = len(recs)
            index = obj.get("job_index") or list(range(n))
            index = [None if j is None else int(j) for j in index]
            if len(index) != n:
                return None
            fmt = str(obj["format"])
            return cls(job_id=str(obj.get("job_id") or ""), endpoint=str(obj.get("endpoint") or ""),
                       width=int(obj["width"]), height=int(obj["height"]), format=fmt,
                       result_format=str(obj.get("result_format") or ""),
                       origin=tuple(int(v) for v in (obj.get("origin") or (0, 0)))[:2],
                       options=dict(obj.get("options") or {}), instances=recs, job_index=index,
                       token=str(obj.get("token") or ""), hints=int(obj.get("hints") or 0),
                       run=int(obj.get("run") or 1), uid=str(obj.get("uid") or ""),
                       version=int(obj.get("version") or META_VERSION))
        except (KeyError, TypeError, ValueError):
            return None

    # ---- recompose --------------------------------------------------------------------------------------------
    def kept_job_masks(self, masks: Sequence[bytes]) -> list[bytes] | None:
        """The edited masks (one per stored instance) in the kept job's order, or None when that job cannot
        express them (an instance it dropped was painted back, or it lacks one)."""
        njob = max([j for j in self.job_index if j is not None], default=-1) + 1
        job_masks: list[bytes | None] = [None] * njob
        for m, j in zip(masks, self.job_index):
            if j is None:
                if any(m):
                    return None
            else:
                job_masks[j] = m
        if any(m is None for m in job_masks):
            return None
        return job_masks      # type: ignore[return-value]

    def instances_for(self, masks: Sequence[bytes]) -> tuple[list[WireInstance], list[int | None]]:
        """Colorizing again with the stored boxes and the edited masks (``width`` x ``height`` 0/255 frames):
        (instances to send, the new job index: None for an emptied mask)."""
        instances: list[WireInstance] = []
        index: list[int | None] = []
        for m, rec in zip(masks, self.instances):
            cropped = crop_mask(m, self.width, self.height)
            if cropped is None:
                index.append(None)
                continue
            origin, size, data = cropped
            index.append(len(instances))
            instances.append(WireInstance(rec.class_id, rec.class_name, rec.score, rec.box, origin, size, data))
        return instances, index

    def after_recolorize(self, res: Any, endpoint: str, index: list[int | None]) -> None:
        """Point at the job a re-colorize made, so the next recompose is instant again."""
        self.job_id, self.token, self.endpoint, self.job_index = res.job_id, getattr(res, "token", "") or "", \
            endpoint, index


def binarize(frame: bytes) -> bytes:
    """A gray8 mask -> 0/255 (>= 128 is inside)."""
    return bytes(frame).translate(_BINARY)


def merge_masks(a: bytes | None, b: bytes) -> bytes:
    """Two frames of the same mask (a duplicated mask layer): their per-pixel maximum."""
    return b if a is None else bytes(map(max, a, b))


def crop_mask(frame: bytes, w: int, h: int) -> tuple[tuple[int, int], tuple[int, int], bytes] | None:
    """A ``w`` x ``h`` gray8 mask (>= 128 = inside) -> (origin, size, cropped 0/255 bytes) around its inside
    pixels, or None when it is empty."""
    binary = binarize(frame)
    rows = [y for y in range(h) if binary.find(255, y * w, (y + 1) * w) >= 0]
    if not rows:
        return None
    y0, y1 = rows[0], rows[-1] + 1
    x0, x1 = w, 0
    for y in range(y0, y1):
        a = binary.find(255, y * w, (y + 1) * w)
        if a >= 0:
            x0 = min(x0, a - y * w)
            x1 = max(x1, binary.rfind(255, y * w, (y + 1) * w) - y * w + 1)
    out = b"".join(binary[y * w + x0: y * w + x1] for y in range(y0, y1))
    return (x0, y0), (x1 - x0, y1 - y0), out


def source_record(old: Any, uid: str) -> dict[str, Any]:
    """The photo layer's ``colorize-patch-source`` parasite after a new run ``uid`` (earlier runs kept, so the
    recompose of an older result still finds its photo)."""
    uids = [u for u in (old.get("uids") or [old.get("uid")]) if isinstance(u, str)] if isinstance(old, dict) else []
    return {"uid": uid, "uids": [u for u in uids if u != uid][-31:] + [uid]}


def is_source_of(record: Any, uid: str) -> bool:
    """True when a ``colorize-patch-source`` parasite names result ``uid``."""
    return isinstance(record, dict) and (record.get("uid") == uid or uid in (record.get("uids") or []))
