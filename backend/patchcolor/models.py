"""The model catalogue, where the weight files live, and how a file is checked.

This module must stay **standard-library only**: ``install.py`` loads it (without importing the ``patchcolor``
package, i.e. before torch exists) to share the exact same verification rules.

* ``models/catalog.json`` (tracked) lists every weight file: id, file name, URL, size, hash prefix and which hash
  algorithm the prefix belongs to.
* ``models/verified.json`` (git-ignored, written by ``install.py``) pins the full sha256 of each file the first time
  it passed the check; later checks compare against it.

Hash prefixes: the official file names carry a hash prefix.  For the torch.hub / torchvision files
(``colorization_release_v2-9b330a0b.pth``, ``siggraph17-df00044c.pth``, ``maskrcnn_resnet50_fpn_v2_coco-73cbd019.pth``)
it is the SHA-256 prefix that ``torch.hub.check_hash`` tests.  For Detectron2's ``model_final_a3ec72.pkl`` the
algorithm is not documented (Detectron2 calls it a "commit"); the catalogue declares ``"sha256|md5 (unverified)"``:
a match of either is accepted and recorded, and ``on_prefix_mismatch`` decides what happens when neither matches.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .errors import WeightsCorrupt, WeightsMissing

CHUNK = 1 << 20                      # 1 MiB streaming-hash chunks
REPO_ROOT = Path(__file__).resolve().parents[2]
REPO_MODELS = REPO_ROOT / "models"
CATALOG_NAME = "catalog.json"
VERIFIED_NAME = "verified.json"
INSTALL_CMD = "python3 install.py"
INSTALL_FROM_CMD = "python3 install.py --models-from DIR"

#: Names the pipeline uses (``Options.colorizer`` / ``Options.detector``) -> catalogue id.
#: ``detectron2`` (the real library) and ``r101`` (our torchvision port) read the same checkpoint file.
MODEL_IDS: dict[str, str] = {
    "eccv16": "eccv16",
    "siggraph17": "siggraph17",
    "r101": "r101",
    "detectron2": "r101",
    "torchvision-v2": "torchvision-v2",
}
COLORIZERS = ("eccv16", "siggraph17")
DETECTORS = ("r101", "detectron2", "torchvision-v2")

Status = Literal["ok", "unconfirmed", "missing", "corrupt"]
_HEX = re.compile(r"^[0-9a-f]+$")
_NAME_HASH = re.compile(r"[-_]([0-9a-f]{6,64})\.[A-Za-z0-9]+$")
_KNOWN_ALGOS = ("sha256", "md5")


# --------------------------------------------------------------------------------------------------- catalogue
@dataclass(frozen=True)
class ModelEntry:
    """One weight file of the catalogue."""

    id: str
    role: str                          # "colorizer" | "detector"
    file: str                          # file name inside the models folder
    url: str
    required: bool
    hash_prefix: str                   # hex prefix carried by the official file name
    hash_prefix_algorithm: str         # "sha256", "md5" or "sha256|md5 (unverified)"
    size: int | None = None            # exact size in bytes, when verified
    approx_size: int | None = None     # estimate (from parameter counts) when the exact size is unknown
    sha256: str | None = None          # full sha256 of the official file, when known
    on_prefix_mismatch: Literal["reject", "warn"] = "reject"
    description: str = ""
    notes: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def prefix_algorithms(self) -> tuple[str, ...]:
        """The algorithms whose hex digest may start with ``hash_prefix`` (e.g. ``("sha256", "md5")``)."""
        spec = self.hash_prefix_algorithm.split("(")[0]
        return tuple(a.strip() for a in spec.split("|") if a.strip())

    @property
    def prefix_confirmed(self) -> bool:
        """False when the prefix's algorithm is a guess (the declaration says ``unverified``)."""
        return "unverified" not in self.hash_prefix_algorithm and len(self.prefix_algorithms) == 1

    @property
    def size_hint(self) -> int | None:
        """Exact size when known, otherwise the estimate (for messages and progress only)."""
        return self.size if self.size is not None else self.approx_size

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModelEntry:
        known = {"id", "role", "file", "url", "required", "hash_prefix", "hash_prefix_algorithm", "size",
                 "approx_size", "sha256", "on_prefix_mismatch", "description", "notes"}
        missing = {"id", "role", "file", "url", "required", "hash_prefix", "hash_prefix_algorithm"} - set(d)
        if missing:
            raise ValueError(f"catalogue entry {d.get('id', '?')!r} lacks {', '.join(sorted(missing))}")
        return cls(**{k: d[k] for k in known if k in d}, extra={k: v for k, v in d.items() if k not in known})


def catalog_path() -> Path:
    """The catalogue in use: $PATCHCOLOR_CATALOG, else the repo's ``models/catalog.json``."""
    env = os.environ.get("PATCHCOLOR_CATALOG")
    if env:
        return Path(env).expanduser()
    return REPO_MODELS / CATALOG_NAME


def load_catalog(path: Path | None = None) -> list[ModelEntry]:
    """Read and validate the catalogue (see :func:`catalog_path`); falls back to the copy packaged with
    ``patchcolor`` (package data ``catalog.json``) when the repo's file is absent (non-editable install)."""
    p = Path(path) if path is not None else catalog_path()
    if p.is_file():
        data = json.loads(p.read_text(encoding="utf-8"))
    else:
        try:
            from importlib.resources import files
            data = json.loads((files(__package__ or "patchcolor") / CATALOG_NAME).read_text(encoding="utf-8"))
        except Exception as exc:  # any failure means "no catalogue"
            raise FileNotFoundError(f"model catalogue not found: {p}") from exc
    entries = [ModelEntry.from_dict(m) for m in data["models"]]
    ids = [e.id for e in entries]
    if len(set(ids)) != len(ids):
        raise ValueError(f"duplicate ids in the model catalogue {p}")
    return entries


def get_entry(model_id: str, catalog: Iterable[ModelEntry] | None = None) -> ModelEntry:
    """Catalogue entry for a pipeline name or catalogue id (``detectron2`` resolves to ``r101``)."""
    cid = MODEL_IDS.get(model_id, model_id)
    for e in (catalog if catalog is not None else load_catalog()):
        if e.id == cid:
            return e
    raise KeyError(f"unknown model {model_id!r} (known: {', '.join(sorted(MODEL_IDS))})")


def hash_suffix_from_name(file_name: str) -> str | None:
    """The hex hash carried by an official file name: the text after the last '-' or '_' before the extension
    (torch.hub: ``name-<sha256 prefix>.pth``; Detectron2: ``model_final_<6 hex>.pkl``)."""
    m = _NAME_HASH.search(file_name)
    return m.group(1) if m else None


# --------------------------------------------------------------------------------------------------- folders
def _data_home() -> Path:
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")


def models_dir() -> Path:
    """Folder holding the weight files: $PATCHCOLOR_MODELS, else the repo's ``models/``, else
    ``~/.local/share/patchcolor/models`` (a non-editable install has no repo folder)."""
    return _default_models_dir()


def _default_models_dir() -> Path:
    env = os.environ.get("PATCHCOLOR_MODELS")
    if env:
        return Path(env).expanduser()
    if REPO_MODELS.is_dir():
        return REPO_MODELS
    return _data_home() / "patchcolor" / "models"


def _install_hint(entry: ModelEntry, folder: Path) -> str:
    where = f" in {REPO_ROOT}" if (REPO_ROOT / "install.py").is_file() else " in the Patch Colorization source folder"
    opt = "" if folder.resolve() == _default_models_dir().resolve() else f" --models-dir {folder}"
    return (f"Run `{INSTALL_CMD}{opt}`{where} to download it, or `{INSTALL_FROM_CMD}{opt}` to copy it from a "
            f"folder that already has it (or put {entry.file} from {entry.url} into {folder} yourself).")


def weight_path(model_id: str, models_dir: Path | None = None) -> Path:
    """Path of the weight file for ``model_id`` (pipeline name or catalogue id).

    Cheap checks only (no hashing): raises :class:`WeightsMissing` when the file is absent and
    :class:`WeightsCorrupt` when its size differs from the catalogue's exact size or from the size pinned in
    ``verified.json``.  Both messages name the file, the folder and the install command.
    """
    folder = Path(models_dir) if models_dir is not None else _default_models_dir()
    entry = get_entry(model_id)
    path = folder / entry.file
    if not path.is_file():
        partial = path.with_name(path.name + ".part")
        extra = " A partial download is there; the same command resumes it." if partial.exists() else ""
        raise WeightsMissing(f"The {entry.description or entry.id} weights file {entry.file} is missing from "
                             f"{folder}. {_install_hint(entry, folder)}{extra}")
    size = path.stat().st_size
    pinned = load_verified(folder).get(entry.file)
    expected = entry.size if entry.size is not None else (pinned or {}).get("size")
    if expected is not None and size != expected:
        raise WeightsCorrupt(f"The weights file {path} has {size} bytes instead of {expected}: it is damaged or "
                             f"incomplete. Delete it and run `{INSTALL_CMD}` again (or `{INSTALL_FROM_CMD}`); "
                             f"`python3 install.py --verify` checks every file.")
    return path


def weights_corrupt(model_id: str, reason: str, models_dir: Path | None = None) -> WeightsCorrupt:
    """The error a loader raises when a weight file exists but cannot be used (bad keys/shapes, unreadable):
    one sentence naming the file, the reason and the repair command."""
    folder = Path(models_dir) if models_dir is not None else _default_models_dir()
    entry = get_entry(model_id)
    return WeightsCorrupt(f"The weights file {folder / entry.file} is damaged or not the official file ({reason}). "
                          f"Delete it and run `{INSTALL_CMD}` again (or `{INSTALL_FROM_CMD}`); "
                          f"`python3 install.py --verify` checks every file.")


# --------------------------------------------------------------------------------------------------- verification
@dataclass
class VerifyResult:
    """Outcome of checking one file against its catalogue entry.

    status: ``ok`` (hash confirmed), ``unconfirmed`` (usable: the name's hash algorithm is unknown and did not
    match, but size/structure are plausible and ``on_prefix_mismatch`` is ``warn``), ``missing`` or ``corrupt``.
    """

    model_id: str
    path: Path
    status: Status
    message: str
    size: int | None = None
    sha256: str | None = None
    md5: str | None = None
    prefix_algorithm: str | None = None     # which digest matched the name's prefix ("sha256" / "md5")
    hashed: bool = False

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def usable(self) -> bool:
        """The file may be used (confirmed, or accepted without confirmation)."""
        return self.status in ("ok", "unconfirmed")


def hash_file(path: Path, algorithms: Iterable[str] = ("sha256",)) -> dict[str, str]:
    """Hex digests of ``path`` for each algorithm, in one streaming pass (1 MiB chunks)."""
    hashers = {}
    for a in dict.fromkeys(algorithms):
        hashers[a] = hashlib.md5(usedforsecurity=False) if a == "md5" else hashlib.new(a)
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            for h in hashers.values():
                h.update(chunk)
    return {a: h.hexdigest() for a, h in hashers.items()}


def _plausible_structure(path: Path, size: int) -> str | None:
    """Format sanity for files whose hash cannot be confirmed: None if plausible, else the reason."""
    if size < 1024:
        return "the file is far too small"
    with open(path, "rb") as f:
        head = f.read(4)
        f.seek(-min(size, 65536), os.SEEK_END)
        tail = f.read()
    if path.name.endswith(".pkl"):
        if head[:1] != b"\x80" or not 2 <= head[1] <= 5:
            return "it does not start like a pickle file"
        if not tail.endswith(b"."):
            return "the pickle stream is cut off (no STOP opcode at the end): incomplete download?"
        return None
    if head == b"PK\x03\x04":                         # torch zip format: needs its end-of-central-directory record
        return None if b"PK\x05\x06" in tail else "the zip archive is cut off: incomplete download?"
    if head[:1] == b"\x80":                           # legacy torch pickle format
        return None
    return "it is neither a torch checkpoint nor a pickle file"


def verify_file(path: Path, entry: ModelEntry, full: bool = True,
                recorded: Mapping[str, Any] | None = None) -> VerifyResult:
    """Check ``path`` against ``entry``.

    * size: the catalogue's exact size (when known) and the size pinned in ``recorded`` (a ``verified.json``
      record) must match; an ``approx_size`` is only used, with a wide tolerance, for unconfirmed files;
    * ``full=True``: streaming hash; the name's prefix must match the declared algorithm (either of ``sha256|md5``,
      and the one that matched is reported); the catalogue's full ``sha256`` and the pinned sha256 must match.
    ``full=False`` does the size checks only.
    """
    path = Path(path)
    if not path.is_file():
        return VerifyResult(entry.id, path, "missing", f"{entry.file} is not in {path.parent}")
    size = path.stat().st_size
    res = VerifyResult(entry.id, path, "ok", "", size=size)
    pinned_size = (recorded or {}).get("size")
    for label, expected in (("catalogue", entry.size), ("pinned", pinned_size)):
        if expected is not None and size != expected:
            res.status, res.message = "corrupt", f"size {size} bytes, expected {expected} ({label})"
            return res
    if not full:
        res.message = "size ok (not hashed)"
        return res

    algos = [a for a in entry.prefix_algorithms if a in _KNOWN_ALGOS] or ["sha256"]
    digests = hash_file(path, ["sha256", *algos])
    res.hashed, res.sha256, res.md5 = True, digests["sha256"], digests.get("md5")
    prefix = entry.hash_prefix.lower()
    res.prefix_algorithm = next((a for a in algos if digests[a].startswith(prefix)), None)

    if entry.sha256 and res.sha256 != entry.sha256.lower():
        res.status, res.message = "corrupt", f"sha256 {res.sha256[:16]}... differs from the catalogue's"
        return res
    pinned = (recorded or {}).get("sha256")
    if pinned and res.sha256 != pinned:
        when = (recorded or {}).get("verified_at", "earlier")
        res.status, res.message = "corrupt", (f"sha256 differs from the copy verified {when} (if you replaced "
                                              f"the file on purpose, delete its entry in {VERIFIED_NAME})")
        return res
    if res.prefix_algorithm:
        res.message = f"{res.prefix_algorithm} prefix {prefix} ok"
        if pinned:
            res.message += ", same file as pinned"
        return res

    shown = ", ".join(f"{a} {digests[a][:len(prefix)]}" for a in algos)
    if entry.prefix_confirmed or entry.on_prefix_mismatch != "warn":
        res.status, res.message = "corrupt", f"hash prefix mismatch: name says {prefix}, file has {shown}"
        return res
    # The suffix's algorithm is unknown and neither candidate matched: accept only a plausible file.
    problem = _plausible_structure(path, size)
    if problem is None and entry.size is None and entry.approx_size and pinned is None:
        lo, hi = int(entry.approx_size * 0.75), int(entry.approx_size * 1.25)
        if not lo <= size <= hi:
            problem = f"size {size} bytes is far from the expected ~{entry.approx_size}"
    if problem:
        res.status, res.message = "corrupt", problem
        return res
    res.status = "unconfirmed"
    res.message = (f"name suffix {prefix} matches neither {' nor '.join(algos)} ({shown}); accepted because its "
                   f"algorithm is unverified and the file looks complete" +
                   (", same file as pinned" if pinned else "; sha256 pinned on first use"))
    return res


# --------------------------------------------------------------------------------------------------- verified.json
def load_verified(folder: Path | None = None) -> dict[str, dict[str, Any]]:
    """``{file name: record}`` from ``<models>/verified.json`` (empty when absent or unreadable)."""
    p = Path(folder if folder is not None else _default_models_dir()) / VERIFIED_NAME
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
        files = data.get("files", {})
        return files if isinstance(files, dict) else {}
    except (OSError, ValueError):
        return {}


def record_verified(folder: Path, entry: ModelEntry, result: VerifyResult) -> bool:
    """Pin ``result``'s sha256/size in ``<folder>/verified.json`` (atomic write). Only a hashed, usable result is
    recorded, and an existing pin is never replaced. Returns True when a new record was written."""
    if not (result.usable and result.hashed and result.sha256):
        return False
    folder = Path(folder)
    files = load_verified(folder)
    if entry.file in files:
        return False
    files[entry.file] = {
        "id": entry.id,
        "size": result.size,
        "sha256": result.sha256,
        "md5": result.md5,
        "prefix_algorithm": result.prefix_algorithm,    # None: accepted unconfirmed (trust on first use)
        "verified_at": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
    }
    tmp = folder / (VERIFIED_NAME + ".tmp")
    tmp.write_text(json.dumps({"schema": 1, "files": files}, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, folder / VERIFIED_NAME)
    return True


def verify_model(model_id: str, models_dir: Path | None = None, full: bool = True,
                 record: bool = False) -> VerifyResult:
    """Verify the installed file of ``model_id`` against the catalogue and its pin; optionally pin it."""
    folder = Path(models_dir) if models_dir is not None else _default_models_dir()
    entry = get_entry(model_id)
    res = verify_file(folder / entry.file, entry, full=full, recorded=load_verified(folder).get(entry.file))
    if record:
        record_verified(folder, entry, res)
    return res


def is_hex(s: str) -> bool:
    """True for a non-empty lowercase hex string."""
    return bool(_HEX.match(s))
