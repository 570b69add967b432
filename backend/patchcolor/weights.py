"""``patchcolor weights list|fetch|verify``: the registry's weight files, downloaded, copied and checked.

Standard library only (no torch), so it runs in a second from a wheel install as well as from the checkout, and
``install.py`` calls it for the weights. The rules a file is checked by are :mod:`patchcolor.models`'
(:func:`~patchcolor.models.verify_file`, the pins in ``verified.json``); the list of files is the registry's.

* ``fetch``: every required file (``--optional``: every file; or the models/file ids named) into the models
  folder. A file already there is verified in full first (a corrupt one is moved aside to ``<file>.corrupt``);
  a missing one is downloaded into ``<file>.part`` (resumable, :mod:`patchcolor.download`), verified, pinned and
  only then renamed into place. ``--from DIR`` takes the files from a folder instead (offline machines): verified
  there, then hard-linked or copied, and verified again.
* ``verify``: hashes every present file, pins newly verified ones, prints a table.
* ``list``: the files, what reads them, their size and whether they are there (no hashing).

Exit codes: 0 everything requested is there and verified; 1 a file is corrupt or was refused (``verify``: or a
required file is missing); 2 bad command line; 3 files asked for could not be obtained (no network?): the
message lists each one with its URL and where to put it; 4 the weights folder cannot be written; 130 interrupted
(a partial download is kept and resumed).
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from . import models
from .download import DownloadError, download, human, say
from .registry import Registry, WeightFile, command_name, models_dir, registry

EXIT_OK, EXIT_CORRUPT, EXIT_USAGE, EXIT_MISSING, EXIT_IO, EXIT_INTERRUPTED = 0, 1, 2, 3, 4, 130


def warn(msg: str) -> None:
    print(f"WARNING: {msg}", file=sys.stderr, flush=True)


@dataclass
class Outcome:
    """What became of one weight file.

    action: "present" (a good copy was there), "downloaded", "copied", "linked", "failed" (not obtained: no
    network, not in the ``--from`` folder, no disk space) or "refused" (obtained but failed verification).
    offline: the download servers could not be reached at all.
    """

    entry: WeightFile
    result: models.VerifyResult | None
    action: str
    detail: str = ""
    offline: bool = False

    @property
    def usable(self) -> bool:
        return self.result is not None and self.result.usable


# ------------------------------------------------------------------------------------------------ one file
def _report(entry: WeightFile, res: models.VerifyResult) -> None:
    if res.status == "unconfirmed":
        warn(f"{entry.file}: {res.message}")
    elif res.prefix_algorithm and entry.hash_prefix is not None and not entry.hash_prefix.confirmed:
        say(f"  {entry.file}: the name's prefix matched its {res.prefix_algorithm} digest "
            f"(catalogue declares {entry.hash_prefix.describe()}; recorded in {models.VERIFIED_NAME})")


def _accept(part: Path, final: Path, entry: WeightFile, folder: Path) -> models.VerifyResult:
    """Verify ``part`` (against the catalogue and any pin) and atomically move it to ``final`` when usable;
    a refused part is deleted."""
    res = models.verify_file(part, entry, full=True, recorded=models.load_verified(folder).get(entry.file))
    if not res.usable:
        part.unlink(missing_ok=True)
        return res
    os.replace(part, final)
    res.path = final
    models.record_verified(folder, entry, res)
    _report(entry, res)
    return res


def check_present(entry: WeightFile, folder: Path) -> models.VerifyResult | None:
    """Verify an installed file in full. Usable -> its result (pinned); absent -> None; corrupt -> moved aside to
    ``<file>.corrupt`` (so a fresh copy can take its place), None."""
    final = folder / entry.file
    if not final.exists():
        return None
    res = models.verify_file(final, entry, full=True, recorded=models.load_verified(folder).get(entry.file))
    if res.usable:
        models.record_verified(folder, entry, res)
        _report(entry, res)
        return res
    aside = final.with_name(final.name + ".corrupt")
    os.replace(final, aside)
    warn(f"{final} is corrupt ({res.message}); moved to {aside.name}, fetching it again")
    return None


def fetch_file(entry: WeightFile, folder: Path, *, retries: int = 5, retry_wait: float = 1.0,
               timeout: float = 30.0, progress: bool = True) -> Outcome:
    """Make sure ``entry``'s file is in ``folder``: keep a good copy, else download it (resuming a ``.part``)."""
    folder.mkdir(parents=True, exist_ok=True)
    res = check_present(entry, folder)
    if res is not None:
        return Outcome(entry, res, "present", res.message)
    final = folder / entry.file
    part = final.with_name(final.name + ".part")
    free = shutil.disk_usage(folder).free
    need = (entry.size_hint or 0) - (part.stat().st_size if part.exists() else 0)
    if need > free:
        return Outcome(entry, None, "failed", f"not enough disk space in {folder} "
                       f"({human(free)} free, about {human(need)} needed)")
    res = None
    for attempt in (1, 2):
        resumed = part.exists() and part.stat().st_size > 0
        say(f"Downloading {entry.file} ({'~' if entry.size is None else ''}{human(entry.size_hint)})"
            + (f", resuming at {human(part.stat().st_size)}" if resumed else ""))
        try:
            download(entry.url, part, retries=retries, retry_wait=retry_wait, timeout=timeout,
                     label=entry.file, progress=progress, expected_size=entry.size_hint)
        except DownloadError as e:
            return Outcome(entry, None, "failed", str(e), offline=e.offline)
        res = _accept(part, final, entry, folder)
        if res.usable:
            return Outcome(entry, res, "downloaded", res.message)
        if not (resumed and attempt == 1):       # a stale resumed part may be the culprit: one clean retry
            break
        say(f"  {entry.file}: the resumed download failed the check ({res.message}); downloading it afresh")
    detail = res.message if res is not None else "?"
    return Outcome(entry, res, "refused", f"downloaded file failed verification: {detail}")


def find_in(src: Path, file_name: str, max_depth: int = 6) -> Path | None:
    """``src/file_name``, else the first match in sub-folders up to ``max_depth`` levels (e.g. a mirrored
    Detectron2 URL layout ``COCO-InstanceSegmentation/.../138205316/model_final_a3ec72.pkl``)."""
    direct = src / file_name
    if direct.is_file():
        return direct
    base = len(src.parts)
    for dirpath, dirnames, filenames in os.walk(src):
        dirnames.sort()
        if len(Path(dirpath).parts) - base >= max_depth:
            dirnames.clear()
        if file_name in filenames and (Path(dirpath) / file_name).is_file():
            return Path(dirpath) / file_name
    return None


def copy_file(entry: WeightFile, src_dir: Path, folder: Path) -> Outcome:
    """Take ``entry``'s file from an offline folder: verified first, then hard-linked (same file system) or
    copied through ``<file>.part`` and verified again before the atomic rename. A bad file is refused."""
    folder.mkdir(parents=True, exist_ok=True)
    present = check_present(entry, folder)
    if present is not None:
        return Outcome(entry, present, "present", present.message)
    src = find_in(src_dir, entry.file)
    if src is None:
        return Outcome(entry, None, "failed", f"not found in {src_dir}")
    res = models.verify_file(src, entry, full=True, recorded=models.load_verified(folder).get(entry.file))
    if not res.usable:
        return Outcome(entry, res, "refused", f"{src} refused: {res.message}")
    final = folder / entry.file
    part = final.with_name(final.name + ".part")
    part.unlink(missing_ok=True)
    try:
        os.link(src, part)
        action = "linked"
        res.path = final
        os.replace(part, final)
        models.record_verified(folder, entry, res)
        _report(entry, res)
    except OSError:
        shutil.copyfile(src, part)
        action = "copied"
        res = _accept(part, final, entry, folder)
        if not res.usable:
            return Outcome(entry, res, "refused", f"copy of {src} failed verification: {res.message}")
    return Outcome(entry, res, action, res.message)


# ------------------------------------------------------------------------------------------------ many files
def select(reg: Registry, names: Sequence[str] = (), optional: bool = False) -> list[WeightFile]:
    """The files to act on: those of the models/file ids ``names`` (catalogue order, each once), else the
    required ones (every one with ``optional``). KeyError naming the choices for an unknown name."""
    if not names:
        return [f for f in reg.files if f.required or optional]
    wanted = {reg.file(n).id for n in names}
    return [f for f in reg.files if f.id in wanted]


def _fetch_hint(folder: Path) -> str:
    return "" if folder.resolve() == models_dir().resolve() else f" --models-dir {folder}"


def explain_missing(entries: Sequence[WeightFile], folder: Path, offline: bool = False) -> None:
    """Where to put each missing file (its URL) and the commands that take it from there."""
    why = " (no connection to the download servers?)" if offline else ""
    prog, where = command_name(), _fetch_hint(folder)
    say(f"Missing weight file(s){why}. Put these files into {folder}:")
    for e in entries:
        say(f"  {e.file}  ({'~' if e.size is None else ''}{human(e.size_hint)})  {e.url}")
    say(f"then check them with:          {prog} weights verify{where}")
    say(f"or copy them from a folder:    {prog} weights fetch --from /path/to/folder{where}")
    say(f"(an interrupted download resumes when you run `{prog} weights fetch{where}` again)")


def fetch_files(files: Sequence[WeightFile], folder: Path, *, from_dir: Path | None = None, retries: int = 5,
                retry_wait: float = 1.0, timeout: float = 30.0, progress: bool = True) -> int:
    """Fetch (or with ``from_dir`` copy) ``files`` into ``folder``, one line each; EXIT_OK, EXIT_CORRUPT (a file
    was refused) or EXIT_MISSING (a required file could not be obtained). Once the servers are known to be
    unreachable, the remaining files are not tried."""
    say(f"Weights folder: {folder}")
    outcomes: list[Outcome] = []
    offline = False
    for e in files:
        if from_dir is not None:
            out = copy_file(e, from_dir, folder)
        elif offline:
            present = check_present(e, folder)
            out = (Outcome(e, present, "present", present.message) if present is not None
                   else Outcome(e, None, "failed", "skipped: offline", offline=True))
        else:
            out = fetch_file(e, folder, retries=retries, retry_wait=retry_wait, timeout=timeout, progress=progress)
            offline = offline or out.offline
        outcomes.append(out)
        status = out.result.status if out.result is not None else "missing"
        say(f"  {e.id:<15} {status:<12} {out.action:<10} {out.detail}")
    refused = [o for o in outcomes if o.action == "refused"]
    missing = [o.entry for o in outcomes if not o.usable]
    for o in refused:
        warn(f"{o.entry.file} was refused: {o.detail}")
    if missing:
        say("")
        explain_missing(missing, folder, offline=offline)
    if refused:
        return EXIT_CORRUPT
    return EXIT_MISSING if missing else EXIT_OK


def _table(rows: list[tuple[str, ...]], header: tuple[str, ...]) -> None:
    widths = [max(len(r[i]) for r in [*rows, header]) for i in range(len(header) - 1)]
    for r in (header, *rows):
        say("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1])


def verify_files(files: Sequence[WeightFile], folder: Path, optional: bool = False) -> int:
    """Hash every present file of ``files``, pin newly verified ones, print a table; EXIT_OK or EXIT_CORRUPT (a
    file is corrupt, or a required one — with ``optional`` any one — is missing)."""
    rows, missing, corrupt = [], [], False
    pins = models.load_verified(folder)
    for e in files:
        res = models.verify_file(folder / e.file, e, full=True, recorded=pins.get(e.file))
        if res.usable:
            models.record_verified(folder, e, res)
        corrupt = corrupt or res.status == "corrupt"
        if res.status == "missing" and (e.required or optional):
            missing.append(e)
        detail = res.message if res.status != "missing" else e.url
        rows.append((e.id, e.file, "required" if e.required else "optional", res.status, detail))
    say(f"Weights folder: {folder}")
    _table(rows, ("file id", "file", "need", "status", "detail"))
    if missing:
        say("")
        explain_missing(missing, folder)
    if corrupt:
        say(f"Corrupt files: run `{command_name()} weights fetch{_fetch_hint(folder)}`, which moves them aside and "
            "downloads them again.")
    return EXIT_CORRUPT if missing or corrupt else EXIT_OK


def list_files(reg: Registry, files: Sequence[WeightFile], folder: Path) -> int:
    """The files, the models that read them, their size and presence (cheap checks: size, no hashing)."""
    rows = []
    for e in files:
        res = models.verify_file(folder / e.file, e, full=False, recorded=models.load_verified(folder).get(e.file))
        status = {"ok": "present"}.get(res.status, res.status)
        if res.status == "missing" and (folder / (e.file + ".part")).exists():
            status = "partial"
        users = ",".join(m.name for m in reg.users(e.id))
        rows.append((e.id, "required" if e.required else "optional", users, f"{'~' if e.size is None else ''}"
                     f"{human(e.size_hint)}", status, e.file))
    say(f"Weights folder: {folder}")
    _table(rows, ("file id", "need", "models", "size", "status", "file"))
    return EXIT_OK


# ------------------------------------------------------------------------------------------------ command line
def add_weights_parser(sub) -> argparse.ArgumentParser:
    """Register ``weights list|fetch|verify`` on an argparse subparsers object."""
    p = sub.add_parser("weights", help="list, download or check the model weight files",
                       description="The weight files of the model registry: `list` them, `fetch` them (resumable "
                                   "downloads, or --from a folder), `verify` them (full hash check).")
    actions = p.add_subparsers(dest="weights_action", required=True, metavar="{list,fetch,verify}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("names", nargs="*", metavar="NAME",
                        help="only these models or file ids (default: the required files)")
    common.add_argument("--models-dir", "--models", dest="models_dir", type=Path, metavar="DIR",
                        help="weights folder (default: $PATCHCOLOR_MODELS, the checkout's models/, else "
                             "~/.local/share/patchcolor/models)")
    actions.add_parser("list", parents=[common], help="the files, what reads them, whether they are there")
    f = actions.add_parser("fetch", parents=[common], help="download (or --from DIR: copy) and verify the files",
                           epilog=(__doc__ or "")[(__doc__ or "").index("Exit codes"):],
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    f.add_argument("--optional", action="store_true", help="also the optional models' files (" + ", ".join(
        m.name for m in registry().models if not m.weights.required) + ")")
    f.add_argument("--from", dest="from_dir", type=Path, metavar="DIR",
                   help="copy/link the files from this folder instead of downloading (offline machines)")
    f.add_argument("--retries", type=int, default=5, help="download retries per file (default 5)")
    f.add_argument("--retry-wait", type=float, default=1.0, help="first retry wait in s, doubling (default 1)")
    f.add_argument("--timeout", type=float, default=30.0, help="network timeout in s (default 30)")
    f.add_argument("--quiet", action="store_true", help="no progress lines")
    v = actions.add_parser("verify", parents=[common], help="hash every present file against the catalogue")
    v.add_argument("--optional", action="store_true", help="a missing optional file is an error too")
    p.set_defaults(func=cmd_weights)
    return p


def cmd_weights(args: argparse.Namespace) -> int:
    """``patchcolor weights ...``; returns the exit code (see the module docstring)."""
    try:
        reg = registry()
    except (OSError, ValueError) as e:
        warn(f"cannot read the model catalogue: {e}")
        return EXIT_USAGE
    folder = Path(args.models_dir).expanduser().resolve() if args.models_dir else models_dir()
    try:
        files = select(reg, args.names, getattr(args, "optional", False))
    except KeyError:
        known = dict.fromkeys([m.name for m in reg.models] + [f.id for f in reg.files])
        print(f"error: unknown model {', '.join(n for n in args.names if not _known(reg, n))}; choose among "
              f"{', '.join(known)}.", file=sys.stderr)
        return EXIT_USAGE
    try:
        if args.weights_action == "list":
            return list_files(reg, files if args.names else reg.files, folder)
        if args.weights_action == "verify":
            return verify_files(files if args.names else reg.files, folder, optional=args.optional)
        from_dir = Path(args.from_dir).expanduser() if args.from_dir else None
        if from_dir is not None and not from_dir.is_dir():
            print(f"error: --from {args.from_dir} is not a folder.", file=sys.stderr)
            return EXIT_USAGE
        return fetch_files(files, folder, from_dir=from_dir, retries=args.retries, retry_wait=args.retry_wait,
                           timeout=args.timeout, progress=not args.quiet)
    except KeyboardInterrupt:
        print("\nInterrupted. Partial downloads are kept; run the same command again to resume.", file=sys.stderr)
        return EXIT_INTERRUPTED
    except OSError as e:                        # e.g. a read-only weights folder: one sentence, no traceback
        print(f"error: {e}", file=sys.stderr)
        return EXIT_IO


def _known(reg: Registry, name: str) -> bool:
    try:
        reg.file(name)
        return True
    except KeyError:
        return False
