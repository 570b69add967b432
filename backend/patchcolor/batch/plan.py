"""The batch plan: which inputs, which output names, what is already done — decided before any pixel is read.

:func:`plan_batch` -> :class:`BatchPlan` of :class:`BatchItem` s. An input is *done* when its done-marker records
this very source and every output it lists exists. Output names follow names.py and never replace an input or a
file patchcolor did not write (:meth:`BatchItem.conflict`).
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable

from ..atomic import TMP_PREFIX
from ..errors import BadOptions
from .names import candidates, fit_name, output_suffix, same_format, split_name, strip_ext
from .records import STATE_DIR, SourceId, read_record, recorded_outputs, state_path

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".webp", ".jp2", ".ppm", ".pgm",
                  ".pbm", ".pnm", ".tga", ".psd", ".dib", ".jfif", ".pcx", ".sgi", ".ico", ".im", ".xbm"}


@dataclass(frozen=True)
class BatchItem:
    """One input and where its results go.

    src:      the input file.
    out:      the colorized image.
    mask_dir: the folder for its per-instance masks and instances.json (None without --masks).
    key:      the output's path relative to the output folder (names its done-marker and lock).
    source:   the input's identity, recorded in the done-marker and the lock record.
    """

    src: Path
    out: Path
    mask_dir: Path | None
    key: str
    source: SourceId
    out_dir: Path

    @property
    def marker(self) -> Path:
        return state_path(self.out_dir, self.key, ".json")

    @property
    def lock_path(self) -> Path:
        return state_path(self.out_dir, self.key, ".lock")

    @property
    def mask_key(self) -> str | None:
        """The mask folder relative to the output folder (None without masks)."""
        return str(self.mask_dir.relative_to(self.out_dir)) if self.mask_dir is not None else None

    def is_done(self) -> bool:
        """True when the marker records this source and all the outputs it lists exist."""
        rec = read_record(self.marker)
        if rec is None or rec.get("source") != asdict(self.source):
            return False
        if self.mask_dir is not None and not rec.get("masks"):
            return False
        return all((self.out_dir / f).exists() for f in rec.get("outputs", [])) and self.out.exists()

    def conflict(self) -> str:
        """"" when this input may write its outputs; else why not, in one sentence. They are ours to replace only
        when a record of ours (the done-marker, else the lock record) gives this output name to this very input;
        with no record, nothing may exist at the output paths (a file patchcolor did not write is never
        replaced)."""
        recs = [r for r in (read_record(self.marker), read_record(self.lock_path)) if r is not None]
        if recs:
            if recs[0]["source"]["path"] != self.source.path:
                return f"{self.out.name} belongs to another input ({recs[0]['source']['path']})"
            if (self.mask_dir is not None and os.path.lexists(self.mask_dir)
                    and not any(r.get("masks") for r in recs)):
                return f"{self.mask_dir} exists and was not written by patchcolor"
            return ""
        for p in (self.out, self.mask_dir):
            if p is not None and os.path.lexists(p):
                return f"{p} exists and was not written by patchcolor"
        return ""


@dataclass
class BatchPlan:
    """items: what to do, in order; done: inputs whose outputs are complete; notes: skipped paths, renamed
    outputs (one line each)."""

    out_dir: Path
    items: list[BatchItem]
    done: list[BatchItem]
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Source:
    """An input file found: ``name`` is its output name relative to OUT without extension; ``root`` the input
    folder it came from (a file's own folder); ``from_folder``: found by listing a folder."""

    file: Path
    name: str
    root: Path
    from_folder: bool


def _inside(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def iter_sources(inputs: Iterable[Path], recursive: bool, out_dir: Path, notes: list[str]) -> list[Source]:
    """The input files of files and folders, sorted, each once (symlinks resolved). Skipped: non-images (a note),
    missing paths (a note), our own state and temporary files, and, in a folder that is (or holds) OUT, the
    outputs OUT's records name — any other file there is an input like the rest."""
    found: list[Source] = []
    seen: set[Path] = set()
    ours: tuple[set[Path], set[Path]] | None = None
    for p in map(Path, inputs):
        if p.is_file():
            listing, root, from_folder = [p], p.resolve().parent, False
        elif p.is_dir():
            listing = sorted(f for f in (p.rglob("*") if recursive else p.iterdir()) if f.is_file())
            root, from_folder = p.resolve(), True
        else:
            notes.append(f"skipping {p}: no such file or folder")
            continue
        for f in listing:
            rf = f.resolve()
            rel = f.relative_to(p) if from_folder else Path(f.name)
            if rf in seen or from_folder and (f.name.startswith(TMP_PREFIX) or STATE_DIR in rel.parts):
                continue
            if from_folder and _inside(rf, out_dir):
                ours = ours if ours is not None else recorded_outputs(out_dir)
                if rf in ours[0] or any(d in ours[1] for d in rf.parents):
                    continue
            if from_folder and f.suffix.lower() not in IMAGE_SUFFIXES:
                if not f.name.startswith("."):
                    notes.append(f"skipping {f}: not an image file")
                continue
            seen.add(rf)
            found.append(Source(f, str(rel.parent / strip_ext(rel.name)) if rel.parent != Path(".")
                                else strip_ext(rel.name), root, from_folder))
    return found


def plan_batch(inputs: Iterable[Path], out_dir: Path, *, fmt: str = "png", suffix: str = "",
               overwrite: bool = False, masks: bool = False, recursive: bool = False) -> BatchPlan:
    """Plan a batch: unique outputs ``OUT/<name><suffix>.<ext>``, done-markers checked, the folder layout checked.

    Names: ``photo.v1.png`` -> ``photo.v1.png``; when two inputs would share a name, the one already in the
    output format keeps it (``photo.png`` -> ``photo.png``, ``photo.jpg`` -> ``photo_jpg.png``), then ``_2``, ...,
    whatever the order of the inputs. A name an earlier run gave to an input stays that input's. A name never
    starts with a dot and never replaces an input or a file patchcolor did not write (the output takes the next
    name and a note says so).

    Raises BadOptions (one sentence) when the output folder is, or is inside, an input folder and ``suffix`` is
    empty, or when it cannot be written."""
    out_dir = Path(out_dir).absolute().resolve()
    if any(c in suffix for c in "/\\\0"):
        raise BadOptions(f"the output suffix {suffix!r} must not contain a path separator")
    notes: list[str] = []
    sources = iter_sources(inputs, recursive, out_dir, notes)
    if not suffix:
        _refuse_input_folder(sources, out_dir)
    _check_writable(out_dir)
    taken = {str(s.file.resolve()).casefold() for s in sources}     # never write onto an input
    named: dict[int, tuple[BatchItem, list[str]]] = {}
    # inputs already in the output format choose first: photo.png keeps photo.png whatever the order
    for k in sorted(range(len(sources)), key=lambda k: (not same_format(sources[k].file.suffix, fmt), k)):
        try:
            named[k] = _name(sources[k], SourceId.of(sources[k].file), out_dir, fmt, suffix, masks, taken)
        except OSError as e:
            notes.append(f"skipping {sources[k].file}: {e.strerror or e}")
    items, done = [], []
    for k in sorted(named):
        item, renamed = named[k]
        if not overwrite and item.is_done():
            done.append(item)
        else:
            items.append(item)
            notes.extend(renamed)
    return BatchPlan(out_dir, items, done, notes)


def _name(src: Source, source: SourceId, out_dir: Path, fmt: str, suffix: str, masks: bool, taken: set[str]
          ) -> tuple[BatchItem, list[str]]:
    """The first free output name of ``src`` (not an input, not taken in this plan, no conflict), added to
    ``taken``; and one note per file in OUT that it passed over because patchcolor did not write it."""
    renamed: list[str] = []
    for cand in candidates(src.name, src.file.suffix.lstrip(".").lower(), suffix):
        folder, stem = split_name(cand)
        image = folder / fit_name(stem + output_suffix(fmt))
        item = BatchItem(src.file, out_dir / image, out_dir / folder / fit_name(stem + "_masks") if masks else None,
                         str(image), source, out_dir)
        if {str(item.out).casefold(), str(item.out.resolve()).casefold()} & taken:
            continue
        why = item.conflict()
        if not why:
            taken.add(str(item.out).casefold())
            return item, [f"{w}: it is kept and {src.file.name} is written to {item.out.name}" for w in renamed]
        if "not written by patchcolor" in why:
            renamed.append(why)
    raise AssertionError("unreachable: candidates() is endless")


def _refuse_input_folder(sources: list[Source], out_dir: Path) -> None:
    """Without a suffix, a folder input's OUT must not be it or inside it, and a file input's not its folder."""
    for s in sources:
        if out_dir == s.root or (s.from_folder and _inside(out_dir, s.root)):
            raise BadOptions(f"the output folder {out_dir} is {'the' if out_dir == s.root else 'inside the'} "
                             f"input folder {s.root}: outputs would replace or be taken for the photos; "
                             "choose another -o folder or give the outputs a --suffix (e.g. _color)")


def _check_writable(out_dir: Path) -> None:
    try:
        (out_dir / STATE_DIR).mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{os.getpid()}-", dir=out_dir)
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise BadOptions(f"cannot write to the output folder {out_dir}: {e.strerror or e}") from None
