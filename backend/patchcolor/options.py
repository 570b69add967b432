"""User-facing options and the two presets.

``seed`` reproduces PatchColorization as written; ``default`` is the best we can do.
Every field can be overridden after a preset is applied (CLI flags, service requests).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Literal

Preset = Literal["seed", "default"]
FusionMode = Literal["seed", "feather"]


@dataclass(frozen=True)
class Options:
    preset: Preset = "default"
    colorizer: str = "eccv16"            # a colorizer name of the model registry (patchcolor.registry)
    detector: str = "r101"               # a detector name of the registry, or "none"
    max_side: int = 1280                 # working-copy long side (detector, networks, fusion)
    full_resolution: bool = True         # output at the input's size (seed: output at working size)
    fusion: FusionMode = "feather"
    feather: float = 0.02                # feather width as a fraction of the instance box diagonal
    order: Literal["score", "area"] = "area"   # seed: score order, later (lower score) wins
    seed_desaturate: bool = True         # the seed's luminance-parabola desaturation
    finish: Literal["seed", "keep-l"] = "keep-l"   # seed: lab2rgb clip + HSV; keep-l: chroma-only, L* kept
    context: float = 0.15                # crop margin around each box (fraction of its size); seed: 0
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


SEED = Options(
    preset="seed", full_resolution=False, fusion="seed", order="score", seed_desaturate=True,
    finish="seed", context=0.0, square_crops=False, saturation=1.0, precision="fp32",
)
DEFAULT = Options()
PRESETS: dict[str, Options] = {"seed": SEED, "default": DEFAULT}


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
    if o.fusion not in ("seed", "feather"):
        raise ValueError("fusion must be 'seed' or 'feather'")
    if o.order not in ("score", "area"):
        raise ValueError("order must be 'score' or 'area'")
    if not 0.0 < o.nms_thresh <= 1.0:
        raise ValueError("nms_thresh must be in (0, 1]")
    if o.finish not in ("seed", "keep-l"):
        raise ValueError("finish must be 'seed' or 'keep-l'")
    if o.precision not in ("fp32", "bf16", "fp16"):
        raise ValueError("precision must be fp32, bf16 or fp16")
    if not 64 <= o.net_size <= 1024 or o.net_size % 8:
        raise ValueError("net_size must be a multiple of 8 between 64 and 1024")
