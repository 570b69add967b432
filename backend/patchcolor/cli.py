"""``patchcolor`` command line: colorize files and folders, serve GIMP, make CURVE keys, check weights."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from .errors import PatchColorError
from .options import PRESETS, make_options

log = logging.getLogger("patchcolor")

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".webp", ".jp2", ".ppm", ".pgm",
                  ".pbm", ".pnm", ".tga", ".psd", ".dib", ".jfif", ".pcx", ".sgi", ".ico", ".im", ".xbm"}


def iter_inputs(paths: list[Path], recursive: bool) -> Iterator[tuple[Path, Path]]:
    """(input file, output path relative to OUT without suffix) for files and folders, sorted, non-images skipped."""
    for p in paths:
        if p.is_dir():
            files = sorted(f for f in (p.rglob("*") if recursive else p.iterdir()) if f.is_file())
            for f in files:
                if f.suffix.lower() in IMAGE_SUFFIXES:
                    yield f, f.relative_to(p).with_suffix("")
                elif not f.name.startswith("."):
                    log.warning("skipping %s: not an image file", f)
        elif p.is_file():
            yield p, Path(p.stem)
        else:
            log.warning("skipping %s: no such file or folder", p)


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write through a temporary file in the same folder, then rename: a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)   # mkstemp makes 0600; give the file the user's usual mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_image(path: Path, image: np.ndarray) -> None:
    """(H, W) / (H, W, 3|4) uint8 -> PNG via PIL; uint16 -> 16-bit PNG or TIFF via OpenCV (PIL has no RGB16)."""
    def write(tmp: Path) -> None:
        if image.dtype == np.uint16:
            import cv2

            bgr = image if image.ndim == 2 else image[..., [2, 1, 0, 3][: image.shape[2]]]
            if not cv2.imwrite(str(tmp), np.ascontiguousarray(bgr)):
                raise OSError(f"could not write {path}")
        else:
            from PIL import Image

            Image.fromarray(image).save(tmp, format="TIFF" if path.suffix.lower() in (".tif", ".tiff") else "PNG")
    atomic_write(path, write)


def output_suffix(fmt: str, bit_depth: int) -> str:
    return ".tif" if fmt == "tiff" else ".png"


def add_colorize_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("colorize", help="colorize image files and folders",
                       description="Colorize every image given (files and folders). Existing outputs are skipped "
                                   "unless --overwrite, so an interrupted run resumes where it stopped.")
    p.add_argument("inputs", nargs="+", type=Path, metavar="IN", help="image files and/or folders")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="OUT", help="output folder")
    p.add_argument("--preset", choices=sorted(PRESETS), default="default",
                   help="seed: the PatchColorization method as written (≤1280 px output, hard masks); "
                        "default: full resolution, feathered masks (default)")
    from .registry import registry   # the one list of model names

    models = registry()
    p.add_argument("--colorizer", choices=models.choices("colorizer"),
                   help="colorization network (default eccv16; " + ", ".join(
                       f"{m.name}: {m.label}" for m in models.models if m.kind == "colorizer") + ")")
    p.add_argument("--detector", choices=models.choices("detector"),
                   help="object detector (default r101; none: whole image only)")
    p.add_argument("--device", default="auto", help="auto (default), cpu or cuda")
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--max-side", type=int, help="long side of the working copy (default 1280)")
    p.add_argument("--saturation", type=float, help="saturation gain (1 = unchanged)")
    p.add_argument("--feather", type=float, help="mask feathering, fraction of the object's size (0 = hard)")
    p.add_argument("--score-thresh", type=float, help="detector score threshold (default 0.3)")
    p.add_argument("--max-instances", type=int, help="at most this many objects (default 100)")
    p.add_argument("--masks", action="store_true", help="also write one mask PNG per detected object")
    p.add_argument("--format", choices=["png", "tiff"], default="png",
                   help="output file type; 16-bit inputs give 16-bit outputs in both")
    p.add_argument("--overwrite", action="store_true", help="redo images whose output exists")
    p.add_argument("--recursive", action="store_true", help="descend into sub-folders")
    p.add_argument("--max-pixels", type=float, default=250e6, help="refuse larger images (default 250e6)")
    p.add_argument("--models", type=Path, help="weights folder (default: models/ or $PATCHCOLOR_MODELS)")
    try:
        from .service.cli_serve import add_remote_arguments
        add_remote_arguments(p)
    except ImportError:  # pragma: no cover - service package always ships
        pass
    p.set_defaults(func=cmd_colorize)
    return p


def _options(args: argparse.Namespace):
    overrides = dict(colorizer=args.colorizer, detector=args.detector, precision=args.precision,
                     max_side=args.max_side, saturation=args.saturation, score_thresh=args.score_thresh,
                     max_instances=args.max_instances)
    if args.feather is not None:
        overrides.update(feather=args.feather, fusion="feather" if args.feather > 0 else "seed")
    return make_options(args.preset, **overrides)


def write_masks(folder: Path, result, width: int, height: int) -> None:
    """One full-size 8-bit PNG per instance (255 inside) plus instances.json (class, score, box)."""
    meta = []
    for k, inst in enumerate(result.instances):
        name = f"{k:02d}_{inst.class_name.replace(' ', '-')}_{round(inst.score * 100)}.png"
        save_image(folder / name, inst.full_mask(width, height))
        meta.append({"file": name, "class": inst.class_name, "score": round(inst.score, 4),
                     "box": [round(v, 2) for v in inst.box]})
    atomic_write(folder / "instances.json", lambda t: t.write_text(json.dumps(meta, indent=1)))


def cmd_colorize(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .prepare import load_image

    opts = _options(args)
    jobs = list(iter_inputs(args.inputs, args.recursive))
    if not jobs:
        log.error("no images found in %s", ", ".join(map(str, args.inputs)))
        return 1
    seen: dict[Path, Path] = {}
    run = None
    failed = done = skipped = 0
    bar = tqdm(jobs, unit="img", disable=None)
    for src_path, rel in bar:
        bar.set_postfix_str(src_path.name[-30:])
        out = args.output / rel.with_suffix(output_suffix(args.format, 8))
        if out in seen:   # a.jpg and a.png in one folder: keep both
            out = out.with_name(f"{rel.name}_{src_path.suffix.lstrip('.')}{out.suffix}")
        seen[out] = src_path
        if out.exists() and not args.overwrite:
            skipped += 1
            continue
        try:
            src = load_image(src_path, int(args.max_pixels))
            if run is None:
                run = _runner(args)
            result = run(src, opts)
            save_image(out, result.image)
            if args.masks:
                h, w = result.image.shape[:2]
                write_masks(out.with_name(out.stem + "_masks"), result, w, h)
            done += 1
        except PatchColorError as e:
            failed += 1
            tqdm.write(f"error: {src_path}: {e.message}", file=sys.stderr)
            if e.code in ("weights_missing", "weights_corrupt", "device_unavailable", "backend_unavailable"):
                break   # every other image would fail the same way
    log.info("%d colorized, %d already done (use --overwrite to redo), %d failed", done, skipped, failed)
    print(f"{done} colorized, {skipped} skipped (output exists), {failed} failed -> {args.output}", file=sys.stderr)
    return 1 if failed else 0


def _runner(args: argparse.Namespace):
    """The local pipeline (models loaded once) or the remote service, as one callable (src, opts) -> Result."""
    if getattr(args, "remote", None):
        from .service.cli_serve import run_remote_colorize

        return lambda src, opts: run_remote_colorize(args.remote, src, opts, server_key=args.server_key,
                                                     client_key=args.client_key, timeout_s=args.remote_timeout)
    from .pipeline import Pipeline

    pipe = Pipeline(args.models, device=args.device, max_pixels=int(args.max_pixels))
    return pipe.run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="patchcolor", description="Instance-aware colorization of B&W photos.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    add_colorize_parser(sub)
    from .service.cli_serve import add_keys_parser, add_serve_parser

    add_serve_parser(sub)
    add_keys_parser(sub)
    from .service.userservice import add_service_parser

    add_service_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        return int(args.func(args) or 0)
    except PatchColorError as e:
        print(f"error: {e.message}", file=sys.stderr)
        return 1
    except ValueError as e:           # bad option values (make_options)
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
