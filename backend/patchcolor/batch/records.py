"""What a batch keeps in ``OUT/.patchcolor/`` about each output name, as JSON:

* the **lock record** (``<key>.lock``, the file whose lock a run holds while it works on that output), written
  before any output: {"source": SourceId, "key", "masks", "mask_dir"} — these output names are this input's;
* the **done-marker** (``<key>.json``), written after all outputs: {"source", "key", "outputs", "masks",
  "mask_dir", "instances"} — the input is done while the source and every listed output are unchanged.

``key`` is the image's path relative to OUT; the state file names are shortened like any other (names.fit_name).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from .names import fit_name

STATE_DIR = ".patchcolor"          # done-markers and lock files, inside the output folder


@dataclass(frozen=True)
class SourceId:
    """What identifies an input file: its resolved path, size and modification time (ns)."""

    path: str
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: Path) -> "SourceId":
        st = path.stat()
        return cls(str(path.resolve()), st.st_size, st.st_mtime_ns)


def state_path(out_dir: Path, key: str, kind: str) -> Path:
    """``OUT/.patchcolor/<key><kind>`` (kind ".json": done-marker, ".lock": lock file and its record)."""
    rel = Path(key)
    return out_dir / STATE_DIR / rel.parent / fit_name(rel.name + kind)


def read_record(path: Path) -> dict | None:
    """A marker or lock record, or None (missing, empty, damaged, not ours)."""
    try:
        rec = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(rec, dict) or not isinstance(rec.get("source"), dict):
        return None
    return rec if isinstance(rec["source"].get("path"), str) else None


def lock_record(source: SourceId, key: str, mask_dir: str | None, old: dict | None) -> bytes:
    """The lock record of ``source`` at ``key``. A mask folder an earlier attempt of the same input recorded
    stays recorded (it may already be on disk)."""
    old = old if old is not None and old["source"]["path"] == source.path else {}
    if mask_dir is None and isinstance(old.get("mask_dir"), str):
        mask_dir = old["mask_dir"]
    rec = {"source": asdict(source), "key": key, "masks": mask_dir is not None, "mask_dir": mask_dir}
    return json.dumps(rec).encode()


def done_record(source: SourceId, key: str, mask_dir: str | None, instances: int) -> str:
    """The done-marker: ``outputs`` lists the image and, with masks, the mask folder's instances.json."""
    outputs = [key] + ([str(Path(mask_dir) / "instances.json")] if mask_dir is not None else [])
    return json.dumps({"source": asdict(source), "key": key, "outputs": outputs, "masks": mask_dir is not None,
                       "mask_dir": mask_dir, "instances": instances})


def recorded_outputs(out_dir: Path) -> tuple[set[Path], set[Path]]:
    """(image files, mask folders) that OUT's markers and lock records name: what runs wrote or are writing there."""
    files: set[Path] = set()
    dirs: set[Path] = set()
    state = out_dir / STATE_DIR
    if not state.is_dir():
        return files, dirs
    for p in state.rglob("*"):
        if p.suffix not in (".json", ".lock") or not p.is_file():
            continue
        rec = read_record(p)
        if rec is None:
            continue
        key = rec.get("key") if isinstance(rec.get("key"), str) else str(p.relative_to(state))[: -len(p.suffix)]
        files.add(out_dir / key)
        if isinstance(rec.get("mask_dir"), str):
            dirs.add(out_dir / rec["mask_dir"])
        dirs.update((out_dir / f).parent for f in rec.get("outputs", []) if isinstance(f, str) and f != key)
    return files, dirs
