"""``patchcolor evaluate``: how well each colorizer recolours the user's own colour photos.

Each colour photo is made gray with its own lightness (skimage L*, as a neutral gray at the photo's bit depth: the
pipeline keeps the input's L*, so the scores measure colour only), colorized with each colorizer asked for (the
same preset and options otherwise), and compared with the original:

* PSNR (dB, RGB in [0, 1]) and SSIM (RGB, channel by channel): ``skimage.metrics``;
* ΔE2000 per pixel (``skimage.color.deltaE_ciede2000`` of ``rgb2lab``), its mean and 95th percentile;
* colourfulness (Hasler & Süsstrunk 2003, on 0–255 RGB) of the result and ΔCF = CF(result) − CF(original):
  negative = duller than the original;
* seconds per image: ``Pipeline.run`` with the networks already loaded (loading is reported apart).

Metrics run in float32, ΔE in row bands, so memory stays a few float32 copies of the photo. No FID (it needs
Inception weights, which are never downloaded at run time). ``--sheet`` writes a contact sheet (original, gray,
each colorizer; one row per photo); ``--json`` prints everything for scripts (PSNR of identical images: null).
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import PatchColorError
from .options import PRESETS, Options

log = logging.getLogger("patchcolor")

DE_BAND_ROWS = 256       # rows per ΔE2000 band (bounds the float Lab temporaries)
SHEET_HEIGHT = 192       # thumbnail height in the contact sheet (px)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp"}


# --------------------------------------------------------------------------------------------------- metrics
@dataclass
class Scores:
    """One (photo, colorizer) comparison. psnr_db: inf for identical images; ssim in [-1, 1]; de_mean / de_p95:
    ΔE2000 mean and 95th percentile; cf / cf_original: Hasler–Süsstrunk colourfulness; seconds: the run."""

    psnr_db: float
    ssim: float
    de_mean: float
    de_p95: float
    cf: float
    cf_original: float
    seconds: float = 0.0

    @property
    def dcf(self) -> float:
        """CF(result) − CF(original): negative = duller than the original."""
        return self.cf - self.cf_original

    def to_json(self) -> dict:
        d = {k: (None if isinstance(v, float) and math.isinf(v) else v) for k, v in asdict(self).items()}
        return {**d, "dcf": self.dcf}


def unit_rgb(img: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 / uint16 RGB -> float32 in [0, 1]."""
    return img.astype(np.float32) * np.float32(1.0 / (65535 if img.dtype == np.uint16 else 255))


def colourfulness(rgb: np.ndarray) -> float:
    """Hasler & Süsstrunk (2003) colourfulness of (H, W, 3) RGB in [0, 1], on the 0–255 scale of the paper:
    rg = R − G, yb = (R + G)/2 − B; CF = sqrt(σ_rg² + σ_yb²) + 0.3 sqrt(μ_rg² + μ_yb²)."""
    r, g, b = (rgb[..., i].astype(np.float64) * 255.0 for i in range(3))
    rg, yb = r - g, 0.5 * (r + g) - b
    return float(np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean()))


def delta_e2000(ref: np.ndarray, out: np.ndarray, band: int = DE_BAND_ROWS) -> np.ndarray:
    """Per-pixel CIEDE2000 between two (H, W, 3) float32 RGB images in [0, 1]: (H, W) float32, in row bands."""
    from skimage.color import deltaE_ciede2000, rgb2lab

    de = np.empty(ref.shape[:2], np.float32)
    for y in range(0, ref.shape[0], band):
        de[y:y + band] = deltaE_ciede2000(rgb2lab(ref[y:y + band]), rgb2lab(out[y:y + band]))
    return de


def compare(ref: np.ndarray, out: np.ndarray) -> Scores:
    """Scores of ``out`` against ``ref``: (H, W, 3) float32 RGB in [0, 1] of the same size."""
    from skimage.metrics import structural_similarity

    if ref.shape != out.shape:
        raise ValueError(f"the result is {out.shape}, the original {ref.shape}")
    mse = float(np.mean(np.square(ref - out, dtype=np.float32), dtype=np.float64))
    psnr = math.inf if mse == 0 else 10.0 * math.log10(1.0 / mse)
    ssim = float(structural_similarity(ref, out, channel_axis=2, data_range=1.0))   # 7×7 windows (sides >= 8)
    de = delta_e2000(ref, out)
    return Scores(psnr, ssim, float(de.mean(dtype=np.float64)), float(np.percentile(de, 95)), colourfulness(out),
                  colourfulness(ref))


def gray_version(color: np.ndarray) -> np.ndarray:
    """The photo as a gray image with its own lightness: (H, W, 3) uint8/uint16 RGB -> (H, W) of the same dtype,
    the neutral gray whose skimage L* is the photo's (up to the dtype's rounding)."""
    from . import lab

    top = 65535.0 if color.dtype == np.uint16 else 255.0
    gray = lab.neutral_gray(lab.lightness(color)) * np.float32(top / 255.0)
    return np.clip(np.rint(gray), 0, top).astype(color.dtype)


# --------------------------------------------------------------------------------------------------- runs
@dataclass
class Row:
    photo: str
    colorizer: str
    scores: Scores | None = None
    error: str | None = None


@dataclass
class Report:
    """Every (photo, colorizer) row, the colorizers in order, load times (s) and the machine line."""

    colorizers: list[str]
    rows: list[Row] = field(default_factory=list)
    load_seconds: dict[str, float] = field(default_factory=dict)
    machine: str = ""
    skipped: list[str] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return bool(self.skipped) or any(r.error for r in self.rows)

    def summary(self) -> dict[str, dict[str, float]]:
        """Per colorizer: the mean of each score over the photos it colorized (PSNR: mean over finite values)."""
        out = {}
        for name in self.colorizers:
            got = [r.scores for r in self.rows if r.colorizer == name and r.scores is not None]
            if not got:
                continue
            finite = [s.psnr_db for s in got if math.isfinite(s.psnr_db)]
            out[name] = {"photos": len(got), "psnr_db": float(np.mean(finite)) if finite else math.inf,
                         **{k: float(np.mean([getattr(s, k) for s in got]))
                            for k in ("ssim", "de_mean", "de_p95", "cf", "cf_original", "dcf", "seconds")}}
        return out

    def to_json(self) -> dict:
        def clean(d: dict) -> dict:
            return {k: (None if isinstance(v, float) and math.isinf(v) else v) for k, v in d.items()}

        return {"machine": self.machine, "colorizers": self.colorizers, "load_seconds": self.load_seconds,
                "skipped": self.skipped,
                "rows": [{"photo": r.photo, "colorizer": r.colorizer, "error": r.error,
                          **(r.scores.to_json() if r.scores else {})} for r in self.rows],
                "summary": {k: clean(v) for k, v in self.summary().items()}}


def run_evaluation(photos: Sequence[Path], colorizers: Sequence[str], opts: Options, pipeline,
                   max_pixels: int = 250_000_000, sheet: list | None = None) -> Report:
    """Colorize the gray version of each photo with each colorizer and score it (see the module docstring).

    pipeline: a :class:`~patchcolor.pipeline.Pipeline`; a colorizer that cannot load (weights missing, package
    absent) is skipped with one line, a photo that cannot be read or is already gray gives one line; the others
    go on. ``sheet``: when a list, (photo name, [original, gray, result per colorizer]) uint8 rows are appended."""
    from dataclasses import replace

    from .io import load_image
    from .precision import cpu_report

    report = Report(list(colorizers), machine=cpu_report().line() + f"; device {pipeline.device}")
    usable = []
    for name in colorizers:
        t = time.perf_counter()
        try:
            pipeline.colorizer(name)
            if opts.detector != "none":
                pipeline.detector(opts.detector)
        except PatchColorError as e:
            log.error("%s: %s", name, e.message)
            report.skipped.append(name)
            continue
        report.load_seconds[name] = time.perf_counter() - t
        usable.append(name)
    report.colorizers = usable
    for path in photos:
        try:
            src = load_image(path, max_pixels)
        except PatchColorError as e:
            log.error("%s: %s", path, e.message)
            report.rows.append(Row(path.name, "", error=e.message))
            continue
        if src.is_gray or _is_gray(src.color):
            log.error("%s is already gray: nothing to compare the colours with", path)
            report.rows.append(Row(path.name, "", error="already gray"))
            continue
        from .prepare import SourceImage

        gray = SourceImage(gray_version(src.color))
        ref = unit_rgb(src.color)
        thumbs = [src.color, np.repeat(gray.color[..., None], 3, axis=2)]
        for name in usable:
            try:
                t = time.perf_counter()
                result = pipeline.run(gray, replace(opts, colorizer=name))
                seconds = time.perf_counter() - t
            except PatchColorError as e:
                log.error("%s with %s: %s", path, name, e.message)
                report.rows.append(Row(path.name, name, error=e.message))
                thumbs.append(np.zeros_like(src.color))
                continue
            out = result.image[..., :3]
            scores = compare(ref, unit_rgb(out))
            scores.seconds = seconds
            report.rows.append(Row(path.name, name, scores))
            thumbs.append(out)
        if sheet is not None:
            sheet.append((path.name, thumbs))
    return report


def _is_gray(color: np.ndarray) -> bool:
    """True when the three channels are equal (a gray photo stored as RGB)."""
    return bool(np.array_equal(color[..., 0], color[..., 1]) and np.array_equal(color[..., 1], color[..., 2]))


# --------------------------------------------------------------------------------------------------- output
COLUMNS = (("PSNR dB", "psnr_db", "{:.2f}"), ("SSIM", "ssim", "{:.4f}"), ("ΔE00 mean", "de_mean", "{:.2f}"),
           ("ΔE00 p95", "de_p95", "{:.2f}"), ("CF", "cf", "{:.1f}"), ("ΔCF", "dcf", "{:+.1f}"),
           ("s/image", "seconds", "{:.2f}"))


def format_table(report: Report) -> str:
    """The report as an aligned text table: one line per (photo, colorizer), then the mean per colorizer."""
    head = ["photo", "colorizer"] + [c[0] for c in COLUMNS]
    lines: list[list[str]] = []
    for r in report.rows:
        if r.scores is None:
            lines.append([r.photo, r.colorizer or "-", f"error: {r.error}"])
            continue
        values = {**asdict(r.scores), "dcf": r.scores.dcf}
        lines.append([r.photo, r.colorizer] + [fmt.format(values[k]) for _, k, fmt in COLUMNS])
    summary = report.summary()
    if summary:
        lines.append([])
        for name, s in summary.items():
            lines.append([f"mean ({int(s['photos'])} photos)", name] + [fmt.format(s[k]) for _, k, fmt in COLUMNS])
    widths = [max(len(row[i]) for row in [head, *lines] if len(row) > i and len(row) == len(head))
              for i in range(len(head))]
    out = [report.machine, "  ".join(h.ljust(w) for h, w in zip(head, widths))]
    for row in lines:
        out.append("  ".join(v.ljust(w) for v, w in zip(row, widths)) if len(row) == len(head) else "  ".join(row))
    if report.load_seconds:
        out.append("models loaded in " + ", ".join(f"{k} {v:.1f} s" for k, v in report.load_seconds.items()))
    return "\n".join(out)


def contact_sheet(rows: list, labels: Sequence[str], height: int = SHEET_HEIGHT) -> np.ndarray:
    """One row per photo (name, [images]) of thumbnails ``height`` px high with a caption strip: (H, W, 3) uint8."""
    from PIL import Image, ImageDraw

    from .prepare import to_8bit

    caption = 16
    strips = []
    for name, images in rows:
        thumbs = []
        for img, label in zip(images, labels):
            small = Image.fromarray(to_8bit(img)).convert("RGB")
            w = max(1, round(small.width * height / small.height))
            tile = Image.new("RGB", (w, height + caption), "white")
            tile.paste(small.resize((w, height), Image.LANCZOS), (0, caption))
            ImageDraw.Draw(tile).text((2, 2), f"{name}: {label}" if label == labels[0] else label, fill="black")
            thumbs.append(np.asarray(tile))
        strips.append(np.concatenate(thumbs, axis=1))
    width = max(s.shape[1] for s in strips)
    return np.concatenate([np.pad(s, ((0, 0), (0, width - s.shape[1]), (0, 0)), constant_values=255)
                           for s in strips], axis=0)


# --------------------------------------------------------------------------------------------------- CLI
def add_evaluate_parser(sub) -> argparse.ArgumentParser:
    from .registry import registry

    names = registry().names("colorizer")
    p = sub.add_parser("evaluate", help="score colorizers on your own colour photos (PSNR, SSIM, ΔE2000, "
                                        "colourfulness, time)",
                       description="Make each colour photo gray (its own lightness), colorize it with each "
                                   "colorizer and compare with the original: PSNR, SSIM, ΔE2000 mean and 95th "
                                   "percentile, Hasler–Süsstrunk colourfulness and its change, seconds per image.")
    p.add_argument("photos", nargs="+", type=Path, metavar="PHOTO", help="colour photos and/or folders of them")
    p.add_argument("--colorizer", metavar="A,B,...",
                   help=f"colorizers to compare (default: every one whose weights are installed; {', '.join(names)})")
    p.add_argument("--preset", choices=sorted(PRESETS), default="default")
    p.add_argument("--detector", choices=registry().choices("detector"), help="object detector (default r101)")
    from .device import DEVICES, device_arg

    p.add_argument("--device", default="auto", type=device_arg, metavar="{" + ",".join(DEVICES) + "}",
                   help="where the networks run (default auto)")
    p.add_argument("--max-side", type=int, help="long side of the working copy (default 1280)")
    p.add_argument("--max-instances", type=int, help="at most this many objects (default 100)")
    p.add_argument("--max-pixels", type=float, default=250e6, help="refuse larger images (default 250e6)")
    p.add_argument("--models", type=Path, help="weights folder (default: models/ or $PATCHCOLOR_MODELS)")
    p.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    p.add_argument("--sheet", type=Path, metavar="OUT.png", help="also write a contact sheet (original, gray, "
                                                                  "each colorizer; one row per photo)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --sheet file")
    p.set_defaults(func=cmd_evaluate)
    return p


def _photos(inputs: Sequence[Path]) -> list[Path]:
    found: list[Path] = []
    for p in inputs:
        if p.is_dir():
            found += sorted(q for q in p.iterdir() if q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES)
        else:
            found.append(p)
    return found


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .errors import BadOptions
    from .models import weights_status
    from .options import make_options
    from .pipeline import Pipeline
    from .registry import registry

    reg = registry()
    if args.colorizer:
        names = [n.strip() for n in args.colorizer.split(",") if n.strip()]
        unknown = [n for n in names if n not in reg.names("colorizer")]
        if unknown:
            raise BadOptions(f"unknown colorizer {', '.join(unknown)}; choose from "
                             f"{', '.join(reg.names('colorizer'))}.")
    else:
        status = weights_status(args.models)["colorizers"]
        names = [n for n, s in status.items() if s == "ok"]
        if not names:
            raise BadOptions("no colorizer has its weights installed: run `patchcolor weights fetch`.")
    if args.sheet is not None and args.sheet.exists() and not args.overwrite:
        raise BadOptions(f"{args.sheet} exists: give another --sheet name, or --overwrite to replace it.")
    try:
        opts = make_options(args.preset, detector=args.detector, max_side=args.max_side,
                            max_instances=args.max_instances)
    except ValueError as e:
        raise BadOptions(str(e)) from None
    photos = _photos(args.photos)
    if not photos:
        log.error("no photos found in %s", ", ".join(map(str, args.photos)))
        return 1
    pipe = Pipeline(args.models, device=args.device, max_pixels=int(args.max_pixels))
    rows: list | None = [] if args.sheet is not None else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)   # skimage's "negative Z values" on saturated blues
        report = run_evaluation(photos, names, opts, pipe, int(args.max_pixels), rows)
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print(format_table(report))
    if rows:
        from .io import save_image

        save_image(args.sheet, contact_sheet(rows, ["original", "gray", *report.colorizers]))
        print(f"contact sheet: {args.sheet}", file=sys.stderr)
    return 1 if report.failed else 0
