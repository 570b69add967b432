"""User-facing options and the two presets.

The preset ``seed`` is the method as published (PatchColorization's paper and code, :data:`PAPER`); ``default`` is
the best we can do. Every field can be overridden after a preset is applied (CLI flags, service requests). The
fields' values for the published method say "paper" (``fusion="paper"``, ``finish="paper"``,
``paper_desaturate``); the first spellings ("seed") are still accepted where options arrive (:data:`RENAMED`).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Literal, Mapping

Preset = Literal["seed", "default"]
FusionMode = Literal["paper", "feather"]


@dataclass(frozen=True)
class Options:
    preset: Preset = "default"
    colorizer: str = "eccv16"            # a colorizer name of the model registry (patchcolor.registry)
    detector: str = "r101"               # a detector name of the registry, or "none"
    max_side: int = 1280                 # working-copy long side (detector, networks, fusion)
    full_resolution: bool = True         # output at the input's size (paper: at working size)
    fusion: FusionMode = "feather"
    feather: float = 0.02                # feather width as a fraction of the instance box diagonal
    order: Literal["score", "area"] = "area"   # paper: score order, later (lower score) wins
    paper_desaturate: bool = True        # the paper's luminance-parabola desaturation
    finish: Literal["paper", "keep-l"] = "keep-l"   # paper: lab2rgb clip + HSV; keep-l: chroma-only, L* kept
    context: float = 0.15                # crop margin around each box (fraction of its size); paper: 0
    square_crops: bool = True            # grow crops toward square so the 256² stretch distorts less
    saturation: float = 1.0              # extra HSV saturation gain applied after it
    score_thresh: float = 0.3
    nms_thresh: float = 0.3
    min_area_frac: float = 0.001         # keep boxes with area > frac * W * H (int-truncated box)
    max_instances: int = 100
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    net_size: int = 256                  # the networks' input side (the method's 256; multiple of 8)
    batch_size: int = 8                  # colorizer inputs per forward (bounds memory)
    hint_spread: int = 2                 # colour hints: half-width of the square each hint point covers at the
                                         # network's resolution (ideepcolor's default 2 = 5×5; 0..4, see hints.py)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


#: The options a user chooses (CLI flags, the GIMP dialog, ``patchcolor.colorize(**options)``). The other fields
#: are the presets' internal knobs (fusion, crop geometry, filters, network size, batching): a preset sets them.
USER_OPTIONS: tuple[str, ...] = ("colorizer", "detector", "saturation", "feather", "score_thresh", "max_instances",
                                 "precision", "hint_spread", "max_side")


#: the ``seed`` preset: the method as published (working-size output, hard masks in score order, tight crops)
PAPER = Options(
    preset="seed", full_resolution=False, fusion="paper", order="score", paper_desaturate=True,
    finish="paper", context=0.0, square_crops=False, saturation=1.0, precision="fp32",
)
DEFAULT = Options()
PRESETS: dict[str, Options] = {"seed": PAPER, "default": DEFAULT}

#: Option names and values as first published -> today's. Scripts and service clients written against the first
#: names may still send them; :func:`current_spelling` maps them wherever options arrive (:func:`make_options`,
#: the service's ``parse_options``). Keys: an option name, or (option name, value). (The GIMP plug-in sends and
#: stores in XCF files only the user options, whose names and values did not change.)
RENAMED: dict[Any, str] = {"seed_desaturate": "paper_desaturate", ("fusion", "seed"): "paper",
                           ("finish", "seed"): "paper"}


def current_spelling(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``overrides`` with first-published option names and values replaced by today's (:data:`RENAMED`)."""
    out: dict[str, Any] = {}
    for key, value in overrides.items():
        key = RENAMED.get(key, key)
        if isinstance(value, str):
            value = RENAMED.get((key, value), value)
        out[key] = value
    return out


#: inclusive ranges of the numeric fields: validate() checks them, and the GIMP dialog shows them (gimp_install.py
#: writes them into the plug-in's dialog.json)
RANGES: dict[str, tuple[float, float]] = {
    "max_side": (64, 8192), "feather": (0.0, 0.5), "saturation": (0.0, 4.0), "score_thresh": (0.0, 1.0),
    "max_instances": (0, 100), "context": (0.0, 1.0), "batch_size": (1, 64), "hint_spread": (0, 4),
}
_RANGE_UNITS = {"feather": " (fraction of the box diagonal)", "hint_spread": " (network pixels)"}


def make_options(preset: str = "default", **overrides: Any) -> Options:
    """Start from ``preset`` and apply the non-None ``overrides``. Raises ValueError on bad values."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r} (choose from {', '.join(PRESETS)})")
    overrides = current_spelling(overrides)
    names = {f.name for f in fields(Options)}
    unknown = set(overrides) - names
    if unknown:
        raise ValueError(f"unknown option(s): {', '.join(sorted(unknown))}")
    opts = replace(PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None})
    validate(opts)
    return opts


def validate(o: Options) -> None:
    """Raise ValueError (one sentence) for the first out-of-range field; model names come from the registry."""
    from .registry import registry

    reg = registry()
    for kind, value in (("colorizer", o.colorizer), ("detector", o.detector)):
        if value not in reg.choices(kind):
            raise ValueError(f"unknown {kind} {value!r} ({', '.join(reg.choices(kind))})")
    if o.preset not in PRESETS:
        raise ValueError(f"unknown preset {o.preset!r} ({', '.join(PRESETS)})")
    for name, (low, high) in RANGES.items():
        if not low <= getattr(o, name) <= high:
            raise ValueError(f"{name} must be between {low:g} and {high:g}{_RANGE_UNITS.get(name, '')}")
    if o.fusion not in ("paper", "feather"):
        raise ValueError("fusion must be 'paper' or 'feather'")
    if o.order not in ("score", "area"):
        raise ValueError("order must be 'score' or 'area'")
    if not 0.0 < o.nms_thresh <= 1.0:
        raise ValueError("nms_thresh must be in (0, 1]")
    if o.finish not in ("paper", "keep-l"):
        raise ValueError("finish must be 'paper' or 'keep-l'")
    if o.precision not in ("fp32", "bf16", "fp16"):
        raise ValueError("precision must be fp32, bf16 or fp16")
    if not 64 <= o.net_size <= 1024 or o.net_size % 8:
        raise ValueError("net_size must be a multiple of 8 between 64 and 1024")
