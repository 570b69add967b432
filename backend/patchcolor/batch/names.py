"""Output names: which file name each input's results get (pure functions of strings; no file is touched).

``photo.v1.png`` -> ``photo.v1<suffix>.png``; on a collision ``photo_jpg``, ``photo_jpg_2``, ...; a leading dot
becomes ``_``; a name over NAME_MAX bytes is cut short with a hash.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterator

NAME_MAX = 255                     # bytes in one file name (ext4, tmpfs, APFS, NTFS: 255)


def output_suffix(fmt: str) -> str:
    """The output file extension for ``fmt`` ("png" | "tiff")."""
    return {"png": ".png", "tiff": ".tif"}[fmt]


def same_format(src_ext: str, fmt: str) -> bool:
    """Is an input with extension ``src_ext`` (".PNG", ".tiff", ...) already in the output format ``fmt``?"""
    return src_ext.lower() in ({".png"} if fmt == "png" else {".tif", ".tiff"})


def strip_ext(name: str) -> str:
    """'photo.v1.png' -> 'photo.v1'; '..png' -> '.'; 'README' -> 'README' (string based: Path.with_suffix
    would drop '.v1' and fails on '.')."""
    ext = Path(name).suffix
    return name[: len(name) - len(ext)] or name


def candidates(name: str, src_ext: str, suffix: str) -> Iterator[str]:
    """Output names without extension, in order of preference: photo, photo_jpg, photo_jpg_2, ... (``suffix``
    appended to each)."""
    yield name + suffix
    base = f"{name}_{src_ext}" if src_ext else name
    if base != name:
        yield base + suffix
    n = 2
    while True:
        yield f"{base}_{n}{suffix}"
        n += 1


def visible(name: str) -> str:
    """A leading dot would hide the output (and could meet our own ``.patchcolor``/``.tmp-`` names): each leading
    dot becomes ``_`` ('..png' -> stem '.' -> '_')."""
    stripped = name.lstrip(".")
    return "_" * (len(name) - len(stripped)) + stripped


def fit_name(name: str, limit: int = NAME_MAX) -> str:
    """``name`` if it fits in ``limit`` UTF-8 bytes, else its stem cut short plus ``-`` and 10 hex digits of its
    SHA-1, extension kept: any legal input name gives legal output, marker and lock names."""
    raw = name.encode("utf-8", "surrogateescape")
    if len(raw) <= limit:
        return name
    ext = Path(name).suffix if len(Path(name).suffix) <= 16 else ""
    raw_ext = ext.encode("utf-8", "surrogateescape")
    tag = "-" + hashlib.sha1(raw).hexdigest()[:10]
    stem = raw[: len(raw) - len(raw_ext)][: limit - len(raw_ext) - len(tag)]
    return stem.decode("utf-8", "ignore") + tag + ext


def split_name(cand: str) -> tuple[Path, str]:
    """'sub/photo_c' -> (Path('sub'), 'photo_c'), every part made visible (not Path(): '.' is a name here)."""
    *folders, stem = [visible(part) for part in cand.replace("\\", "/").split("/")]
    return (Path(*folders) if folders else Path()), stem
