"""Where each weight file is, and how a file is checked (the catalogue itself is :mod:`.registry`).

This module must stay **standard-library only**: ``patchcolor weights`` (:mod:`.weights`: download, copy,
verify) applies these rules without importing torch, and the loaders apply the same ones.

* ``catalog.json`` (package data, read by :mod:`.registry`) lists every weight file: id, file name, URL, size and
  a typed hash prefix (:class:`~.registry.HashPrefix`: hex, the algorithms it may prefix, confirmed or not).
* ``<models>/verified.json`` (git-ignored, written by ``patchcolor weights fetch|verify``) pins the full sha256 of
  each file the first time it passed the check; later checks compare against it.

Hash prefixes: the official file names carry a hash prefix.  For the torch.hub / torchvision files
(``colorization_release_v2-9b330a0b.pth``, ``siggraph17-df00044c.pth``, ``maskrcnn_resnet50_fpn_v2_coco-73cbd019.pth``)
it is the SHA-256 prefix that ``torch.hub.check_hash`` tests.  For Detectron2's ``model_final_a3ec72.pkl`` the
algorithm is not documented (Detectron2 calls it a "commit"); the catalogue declares sha256 or md5, unconfirmed:
a match of either is accepted and recorded, and ``on_prefix_mismatch`` decides what happens when neither matches.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import importlib.util
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from . import registry as _registry
from .registry import HashPrefix, WeightFile, corrupt_error, missing_error, models_dir, registry

CHUNK = 1 << 20                      # 1 MiB streaming-hash chunks
VERIFIED_NAME = "verified.json"

Status = Literal["ok", "unconfirmed", "missing", "corrupt"]

__all__ = ["CHUNK", "VERIFIED_NAME", "HashPrefix", "Status", "WeightFile", "VerifyResult", "hash_file", "load_verified", "models_dir",
           "record_verified", "verify_file", "verify_model", "weight_path", "weights_status"]


def weight_path(model: str, models_dir: Path | None = None) -> Path:
    """Path of the weight file for ``model`` (model name or file id) in ``models_dir`` (default folder if None).

    Cheap checks only (no hashing): raises :class:`WeightsMissing` when the file is absent and
    :class:`WeightsCorrupt` when its size differs from the catalogue's exact size or from the size pinned in
    ``verified.json``.  Both messages come from the registry (one sentence with the exact ``patchcolor weights
    fetch`` command; file and folder in ``details``).
    """
    folder = Path(models_dir) if models_dir is not None else _registry.models_dir()
    entry = registry().file(model)
    path = folder / entry.file
    if not path.is_file():
        raise missing_error(model, folder)
    size = path.stat().st_size
    pinned = load_verified(folder).get(entry.file)
    expected = entry.size if entry.size is not None else (pinned or {}).get("size")
    if expected is not None and size != expected:
        raise corrupt_error(model, path, f"{size} bytes instead of {expected}: damaged or incomplete")
    return path


def weights_status(models_dir: Path | None = None) -> dict[str, Any]:
    """The service's ``info`` section on weights: ``{"models_dir", "colorizers": {name: status},
    "detectors": {name: status, "none": "ok"}, "models": [{name, kind, label, optional, file, status, fetch}]}``,
    status "ok" | "missing" | "corrupt" (cheap checks of :func:`weight_path`: presence and size, no hashing), or
    "unavailable" when the Python package the model requires (e.g. detectron2) is not installed; ``fetch`` is the
    command that downloads the model's weights into this folder (for a client's message)."""
    from .errors import WeightsCorrupt, WeightsMissing
    from .registry import NO_DETECTOR, describe, fetch_command

    folder = Path(models_dir) if models_dir is not None else _registry.models_dir()
    reg = registry()

    def status(name: str) -> str:
        needs = reg.model(name).requires
        if needs and importlib.util.find_spec(needs) is None:
            return "unavailable"
        try:
            weight_path(name, folder)
            return "ok"
        except WeightsMissing:
            return "missing"
        except WeightsCorrupt:
            return "corrupt"

    found = {m.name: status(m.name) for m in reg.models}
    return {"models_dir": str(folder),
            "colorizers": {n: found[n] for n in reg.names("colorizer")},
            "detectors": {**{n: found[n] for n in reg.names("detector")}, NO_DETECTOR: "ok"},
            "models": [{**d, "status": found[d["name"]], "fetch": fetch_command(d["name"], folder, reg)}
                       for d in describe(reg)]}


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


def verify_file(path: Path, entry: WeightFile, full: bool = True,
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

    algos = list(entry.hash_prefix.algorithms) if entry.hash_prefix is not None else []
    digests = hash_file(path, ["sha256", *algos])
    res.hashed, res.sha256, res.md5 = True, digests["sha256"], digests.get("md5")
    prefix = entry.hash_prefix.hex if entry.hash_prefix is not None else ""
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
    if entry.hash_prefix is None:
        return _verify_unhashed_name(res, path, entry, pinned)
    if res.prefix_algorithm:
        res.message = f"{res.prefix_algorithm} prefix {prefix} ok"
        if pinned:
            res.message += ", same file as pinned"
        return res

    shown = ", ".join(f"{a} {digests[a][:len(prefix)]}" for a in algos)
    if entry.hash_prefix.confirmed or entry.on_prefix_mismatch != "warn":
        res.status, res.message = "corrupt", f"hash prefix mismatch: name says {prefix}, file has {shown}"
        return res
    # The suffix's algorithm is unknown and neither candidate matched: accept only a plausible file.
    problem = _implausible(path, size, entry, pinned)
    if problem:
        res.status, res.message = "corrupt", problem
        return res
    res.status = "unconfirmed"
    res.message = (f"name suffix {prefix} matches neither {' nor '.join(algos)} ({shown}); accepted because its "
                   f"algorithm is unverified and the file looks complete" +
                   (", same file as pinned" if pinned else "; sha256 pinned on first use"))
    return res


def _implausible(path: Path, size: int, entry: WeightFile, pinned: str | None) -> str | None:
    """Why a file no hash confirms cannot be the catalogue's (damaged format, or a size far from the estimate
    while nothing is pinned yet), or None when it looks complete."""
    problem = _plausible_structure(path, size)
    if problem is None and entry.size is None and entry.approx_size and pinned is None:
        lo, hi = int(entry.approx_size * 0.75), int(entry.approx_size * 1.25)
        if not lo <= size <= hi:
            problem = f"size {size} bytes is far from the expected ~{entry.approx_size}"
    return problem


def _verify_unhashed_name(res: VerifyResult, path: Path, entry: WeightFile, pinned: str | None) -> VerifyResult:
    """A file whose official name carries no hash (``hash_prefix`` None): the catalogue's sha256 or the pinned one
    confirm it; without either it is accepted as "unconfirmed" when it looks complete, and pinned (trust on first
    use: a later change of the file is caught)."""
    if entry.sha256 or pinned:
        res.message = "sha256 matches the catalogue" if entry.sha256 else "same file as pinned"
        return res
    problem = _implausible(path, res.size or 0, entry, pinned)
    if problem:
        res.status, res.message = "corrupt", problem
        return res
    res.status = "unconfirmed"
    res.message = "its official name carries no hash; accepted because it looks complete, sha256 pinned on first use"
    return res


# --------------------------------------------------------------------------------------------------- verified.json
def load_verified(folder: Path | None = None) -> dict[str, dict[str, Any]]:
    """``{file name: record}`` from ``<models>/verified.json`` (empty when absent or unreadable)."""
    p = Path(folder if folder is not None else models_dir()) / VERIFIED_NAME
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
        files = data.get("files", {})
        return files if isinstance(files, dict) else {}
    except (OSError, ValueError):
        return {}


def record_verified(folder: Path, entry: WeightFile, result: VerifyResult) -> bool:
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


def verify_model(model: str, models_dir: Path | None = None, full: bool = True,
                 record: bool = False) -> VerifyResult:
    """Verify the installed file of ``model`` (name or file id) against the catalogue and its pin; optionally
    pin it."""
    folder = Path(models_dir) if models_dir is not None else _registry.models_dir()
    entry = registry().file(model)
    res = verify_file(folder / entry.file, entry, full=full, recorded=load_verified(folder).get(entry.file))
    if record:
        record_verified(folder, entry, res)
    return res

