"""The one model registry: every model name, what it is, which weight file it reads, and where files live.

This module must stay **standard-library only**: ``patchcolor weights`` (:mod:`.weights`) reads it without
importing torch.

Everything comes from ``catalog.json`` (package data next to this file, shipped in the wheel):

* ``files``: one :class:`WeightFile` per weight file (URL, size, typed :class:`HashPrefix`, full sha256);
* ``models``: one :class:`ModelSpec` per name the user can choose (``Options.colorizer`` / ``Options.detector``,
  CLI choices, the service's ``info``, the GIMP dialog through ``info``): kind, weight file, optional or not,
  label, and the builder (``"module:attribute"`` inside ``patchcolor``; colorizer builders take no arguments and
  return the network, detector builders take ``(weights_path, device)``).

A file is *required* (fetched by a plain ``patchcolor weights fetch``) when a non-optional model reads it; the
others are fetched by ``patchcolor weights fetch NAME`` or ``--optional``. :func:`missing_error` and
:func:`corrupt_error` are the only places that word "your weights are missing/damaged": every loader uses them, so
each message is one sentence naming the model and the exact repair command (the model's name for an optional one,
``--models-dir DIR`` where it applies); the file, folder and URL go to the exception's ``details``.
"""
from __future__ import annotations

import functools
import json
import os
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

from .errors import BadOptions, WeightsCorrupt, WeightsMissing

Kind = Literal["colorizer", "detector"]
HashAlgorithm = Literal["sha256", "md5"]
KINDS: tuple[Kind, ...] = ("colorizer", "detector")
HASH_ALGORITHMS: tuple[HashAlgorithm, ...] = ("sha256", "md5")
NO_DETECTOR = "none"                       # Options.detector value: whole image only, no weight file
CATALOG_NAME = "catalog.json"
PACKAGE_CATALOG = Path(__file__).resolve().with_name(CATALOG_NAME)

_HEX = re.compile(r"^[0-9a-f]+$")
_BUILDER = re.compile(r"^patchcolor(\.[A-Za-z_][A-Za-z0-9_]*)+:[A-Za-z_][A-Za-z0-9_]*$")


# --------------------------------------------------------------------------------------------------- types
@dataclass(frozen=True)
class HashPrefix:
    """The hex hash carried by an official file name.

    hex:        lowercase hex (6..64 characters);
    algorithms: whose digest may start with it (torch.hub names: ``("sha256",)``; Detectron2's
                ``model_final_<6 hex>.pkl``: ``("sha256", "md5")``, undocumented);
    confirmed:  False when the algorithm is a guess (then exactly which one matched is recorded on first use).
    """

    hex: str
    algorithms: tuple[HashAlgorithm, ...] = ("sha256",)
    confirmed: bool = True

    def __post_init__(self) -> None:
        if not (6 <= len(self.hex) <= 64 and _HEX.match(self.hex)):
            raise ValueError(f"hash prefix {self.hex!r} is not 6-64 lowercase hex digits")
        if not self.algorithms or any(a not in HASH_ALGORITHMS for a in self.algorithms):
            raise ValueError(f"hash prefix algorithms {self.algorithms!r} must be among {HASH_ALGORITHMS}")
        if self.confirmed and len(self.algorithms) != 1:
            raise ValueError("a confirmed hash prefix names exactly one algorithm")

    def describe(self) -> str:
        """e.g. ``sha256`` or ``sha256 or md5 (unconfirmed)`` (for messages)."""
        return " or ".join(self.algorithms) + ("" if self.confirmed else " (unconfirmed)")


@dataclass(frozen=True)
class WeightFile:
    """One weight file of the catalogue.

    size:        exact byte count when verified, else None (then ``approx_size`` is an estimate used for messages
                 and a ±25 % plausibility bound of unconfirmed files);
    sha256:      full digest once known;
    hash_prefix: None when the official name carries no hash (e.g. DDColor's ``ddcolor_modelscope.pth``): then
                 nothing but ``sha256`` (when known) confirms the file, and its sha256 is pinned on first download
                 (``verified.json``) so that a later change is caught;
    on_prefix_mismatch: ``reject``, or ``warn`` (accept as "unconfirmed" when the prefix algorithm itself is a
                 guess and the file looks complete; allowed only for unconfirmed prefixes);
    required:    set by the registry: a non-optional model reads this file.
    """

    id: str
    file: str
    url: str
    hash_prefix: HashPrefix | None
    size: int | None = None
    approx_size: int | None = None
    sha256: str | None = None
    on_prefix_mismatch: Literal["reject", "warn"] = "reject"
    required: bool = False
    description: str = ""
    notes: str = field(default="", repr=False)

    def __post_init__(self) -> None:
        if self.on_prefix_mismatch not in ("reject", "warn"):
            raise ValueError(f"{self.id}: on_prefix_mismatch must be 'reject' or 'warn'")
        if self.on_prefix_mismatch == "warn" and (self.hash_prefix is None or self.hash_prefix.confirmed):
            raise ValueError(f"{self.id}: on_prefix_mismatch 'warn' needs an unconfirmed hash prefix")
        if self.sha256 is not None and not (len(self.sha256) == 64 and _HEX.match(self.sha256)):
            raise ValueError(f"{self.id}: sha256 must be 64 lowercase hex digits")
        for name in ("size", "approx_size"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v <= 0):
                raise ValueError(f"{self.id}: {name} must be a positive integer or null")

    @property
    def size_hint(self) -> int | None:
        """Exact size when known, otherwise the estimate (for messages and progress only)."""
        return self.size if self.size is not None else self.approx_size


@dataclass(frozen=True)
class ModelSpec:
    """One model name the user can choose.

    builder: ``"patchcolor.pkg.module:Attribute"``; colorizer: ``Attribute()`` -> torch.nn.Module (weights are
    loaded by :func:`patchcolor.colorizers.load_colorizer`); detector: ``Attribute(weights_path, device)`` ->
    Detector. requires: an extra Python package the builder imports (one sentence if it is absent).
    """

    name: str
    kind: Kind
    weights: WeightFile
    optional: bool
    builder: str
    label: str
    requires: str | None = None

    def build_target(self) -> Any:
        """Import and return the builder attribute (imports torch: never called by install.py)."""
        import importlib

        module, _, attr = self.builder.partition(":")
        return getattr(importlib.import_module(module), attr)


@dataclass(frozen=True)
class Registry:
    """Every weight file and every model name, in catalogue order."""

    files: tuple[WeightFile, ...]
    models: tuple[ModelSpec, ...]
    source: str = ""

    def names(self, kind: Kind) -> tuple[str, ...]:
        """Model names of ``kind`` (catalogue order; the detector ``none`` is not a model)."""
        return tuple(m.name for m in self.models if m.kind == kind)

    def choices(self, kind: Kind) -> tuple[str, ...]:
        """What ``Options`` / the CLI accept for ``kind``: the names, plus ``none`` for detectors."""
        return self.names(kind) + ((NO_DETECTOR,) if kind == "detector" else ())

    def model(self, name: str, kind: Kind | None = None) -> ModelSpec:
        """The model called ``name`` (of ``kind`` when given). Raises BadOptions naming the choices."""
        for m in self.models:
            if m.name == name and (kind is None or m.kind == kind):
                return m
        what = kind or "model"
        known = self.choices(kind) if kind else tuple(m.name for m in self.models)
        raise BadOptions(f"Unknown {what} {name!r}; choose one of {', '.join(known)}.")

    def file(self, key: str) -> WeightFile:
        """A weight file by file id or by model name (``detectron2`` -> the ``r101`` file). KeyError if unknown."""
        for f in self.files:
            if f.id == key:
                return f
        for m in self.models:
            if m.name == key:
                return m.weights
        raise KeyError(f"unknown model {key!r} (known: {', '.join(m.name for m in self.models)})")

    def users(self, file_id: str) -> tuple[ModelSpec, ...]:
        """The models reading weight file ``file_id``."""
        return tuple(m for m in self.models if m.weights.id == file_id)


# --------------------------------------------------------------------------------------------------- loading
_FILE_KEYS = {"id", "file", "url", "hash_prefix", "size", "approx_size", "sha256", "on_prefix_mismatch",
              "description", "notes"}
_MODEL_KEYS = {"name", "kind", "file", "optional", "builder", "label", "requires"}


def _checked_keys(d: Mapping[str, Any], allowed: set[str], required: set[str], what: str) -> None:
    if not isinstance(d, Mapping):
        raise ValueError(f"{what} must be an object")
    missing, unknown = required - set(d), set(d) - allowed
    if missing or unknown:
        raise ValueError(f"{what} {d.get('id', d.get('name', '?'))!r}: "
                         + "; ".join(s for s in (missing and f"lacks {', '.join(sorted(missing))}",
                                                 unknown and f"unknown key(s) {', '.join(sorted(unknown))}") if s))


def parse_registry(data: Mapping[str, Any], source: str = "") -> Registry:
    """Build and validate a :class:`Registry` from the catalogue's JSON object (schema 2). ValueError if bad."""
    if data.get("schema") != 2:
        raise ValueError(f"model catalogue {source}: schema {data.get('schema')!r} is not 2")
    files: dict[str, dict[str, Any]] = {}
    for d in data.get("files", []):
        _checked_keys(d, _FILE_KEYS, {"id", "file", "url", "hash_prefix"}, "catalogue file")
        if d["id"] in files:
            raise ValueError(f"duplicate file id {d['id']!r} in the model catalogue {source}")
        hp = d["hash_prefix"]
        if hp is None:          # the name carries no hash: pinned on first download
            files[d["id"]] = dict(d)
            continue
        _checked_keys(hp, {"hex", "algorithms", "confirmed"}, {"hex", "algorithms", "confirmed"}, "hash_prefix of")
        files[d["id"]] = {**d, "hash_prefix": HashPrefix(hp["hex"], tuple(hp["algorithms"]), bool(hp["confirmed"]))}
    names: set[str] = set()
    for d in data.get("models", []):
        _checked_keys(d, _MODEL_KEYS, {"name", "kind", "file", "optional", "builder", "label"}, "catalogue model")
        if d["name"] in names or d["name"] == NO_DETECTOR:
            raise ValueError(f"model name {d['name']!r} is reserved or used twice in {source}")
        names.add(d["name"])
        if d["kind"] not in KINDS:
            raise ValueError(f"model {d['name']!r}: kind must be one of {', '.join(KINDS)}")
        if d["file"] not in files:
            raise ValueError(f"model {d['name']!r} reads unknown file id {d['file']!r}")
        if not _BUILDER.match(d["builder"]):
            raise ValueError(f"model {d['name']!r}: builder must be 'patchcolor.module:Attribute'")
    required = {d["file"] for d in data.get("models", []) if not d["optional"]}
    wf = {k: WeightFile(**v, required=k in required) for k, v in files.items()}
    models = tuple(ModelSpec(name=d["name"], kind=d["kind"], weights=wf[d["file"]], optional=bool(d["optional"]),
                             builder=d["builder"], label=d["label"], requires=d.get("requires"))
                   for d in data.get("models", []))
    return Registry(tuple(wf.values()), models, source)


def catalog_path() -> Path:
    """The catalogue in use: $PATCHCOLOR_CATALOG, else the package's ``catalog.json``."""
    env = os.environ.get("PATCHCOLOR_CATALOG")
    return Path(env).expanduser() if env else PACKAGE_CATALOG


@functools.lru_cache(maxsize=8)
def _load(path: str, mtime_ns: int) -> Registry:
    return parse_registry(json.loads(Path(path).read_text(encoding="utf-8")), path)


def registry(path: Path | None = None) -> Registry:
    """The registry from ``path`` (default :func:`catalog_path`), cached while the file is unchanged.
    Raises FileNotFoundError / ValueError (bad JSON or schema) with the file named."""
    p = Path(path) if path is not None else catalog_path()
    try:
        mtime = p.stat().st_mtime_ns
    except OSError:
        raise FileNotFoundError(f"model catalogue not found: {p}") from None
    return _load(str(p), mtime)


# --------------------------------------------------------------------------------------------------- folders
def source_root() -> Path | None:
    """The source checkout this module runs from (it has ``install.py``), or None for an installed wheel."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "install.py").is_file() and (root / "backend" / "patchcolor").is_dir() else None


def _data_home() -> Path:
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")


def models_dir() -> Path:
    """Folder holding the weight files: $PATCHCOLOR_MODELS, else the checkout's ``models/``, else
    ``~/.local/share/patchcolor/models`` (an installed wheel has no checkout)."""
    env = os.environ.get("PATCHCOLOR_MODELS")
    if env:
        return Path(env).expanduser()
    root = source_root()
    if root is not None and (root / "models").is_dir():
        return root / "models"
    return _data_home() / "patchcolor" / "models"


# --------------------------------------------------------------------------------------------------- messages
def command_name() -> str:
    """How the user runs this package's command: ``patchcolor`` when that name on PATH is this environment's
    script, else the script's full path (e.g. a backend GIMP started from ``.venv/bin``), else ``patchcolor``."""
    script = Path(sys.executable).with_name("patchcolor.exe" if os.name == "nt" else "patchcolor")
    if not script.is_file():
        return "patchcolor"
    found = shutil.which("patchcolor")
    return "patchcolor" if found and Path(found).resolve() == script.resolve() else str(script)


def fetch_command(name_or_file: str, folder: Path | None = None, reg: Registry | None = None) -> str:
    """The command that fetches ``name_or_file``'s weights into ``folder``: ``patchcolor weights fetch``, with the
    model's name when no required model reads the file, and ``--models-dir DIR`` when ``folder`` is not the
    default folder."""
    reg = reg or registry()
    wf = reg.file(name_or_file)
    parts = [command_name(), "weights", "fetch"]
    if not wf.required:
        parts.append(name_or_file)
    if folder is not None and Path(folder).resolve() != models_dir().resolve():
        parts.append(f"--models-dir {folder}")
    return " ".join(parts)


def _subject(name_or_file: str, reg: Registry) -> str:
    """``r101 detector`` / ``siggraph17 colorizer``: the model (or the first model reading the file id)."""
    users = [m for m in reg.models if m.name == name_or_file] or list(reg.users(reg.file(name_or_file).id))
    return f"{users[0].name} {users[0].kind}" if users else name_or_file


def missing_error(name_or_file: str, folder: Path, reg: Registry | None = None) -> WeightsMissing:
    """The error for an absent weight file: one sentence (what is missing, the command that fetches it); the file,
    folder and URL are its ``details``, for the log."""
    reg = reg or registry()
    wf = reg.file(name_or_file)
    folder = Path(folder)
    partial = (folder / (wf.file + ".part")).exists()
    return WeightsMissing(
        f"The {_subject(name_or_file, reg)} weights are missing: run `{fetch_command(name_or_file, folder, reg)}`.",
        details=f"{wf.file} is not in {folder} (download: {wf.url})"
                + ("; a partial download is there, the same command resumes it" if partial else ""))


_HINT_TAIL = re.compile(r"[;.]?\s*(?:run|Run) `(?:python3? install\.py|patchcolor weights)[^`]*`.*$", re.S)
_FILE_SUBJECT = re.compile(r"^(?:The |the )?(?:[\w-]+ )?weights file \S+ ")   # "The detector weights file X is ..."


def clean_reason(reason: str) -> str:
    """A loader's reason without its own repair advice (ours is appended) and without library advice that must
    never reach a user (torch's "weights_only=False" hint); first line only, at most 300 characters."""
    text = _FILE_SUBJECT.sub("it ", _HINT_TAIL.sub("", str(reason).strip()).strip())   # our message names it
    if "weights_only" in text:       # torch's refusal of a pickled non-tensor object, with unsafe advice
        text = "it holds objects other than tensors, which are refused for safety"
    text = text.splitlines()[0] if text else "unreadable"
    return text if len(text) <= 300 else text[:300] + " ..."


def corrupt_error(name_or_file: str, path: Path, reason: str, reg: Registry | None = None) -> WeightsCorrupt:
    """The error for a weight file that exists but cannot be used: one sentence naming the file and the repair;
    the reason is its ``details``, for the log."""
    reg = reg or registry()
    path = Path(path)
    return WeightsCorrupt(f"The {_subject(name_or_file, reg)} weights file {path} is damaged or not the official "
                          f"file: delete it and run `{fetch_command(name_or_file, path.parent, reg)}`.",
                          details=clean_reason(reason))


def describe(reg: Registry | None = None) -> list[dict[str, Any]]:
    """JSON-ready list of the models (name, kind, label, optional, file) for the service's ``info`` and
    the GIMP dialog."""
    reg = reg or registry()
    return [{"name": m.name, "kind": m.kind, "label": m.label, "optional": m.optional, "file": m.weights.file}
            for m in reg.models]
