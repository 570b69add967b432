"""The Colorize (Patch) dialog's choices and ranges, and how its values become backend options. Standard library only.

The choice lists (presets, colorizers, detectors, devices) and the numeric ranges and defaults come from the backend's
model registry and ``Options``: the installer (gimp_install.py) writes them into ``dialog.json`` next to the plug-in,
which reads it when GIMP registers the procedures. A new catalogue model or device reaches the dialog by
re-running the installer, with no plug-in edit. The built-in :data:`BUILTIN` is used only when that file is missing
(a plug-in folder copied by hand).

Also here, as data so they are checked without GIMP: each dialog field's label (with its mnemonic) and tooltip.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Callable, Mapping

SPEC_NAME = "dialog.json"
SCHEMA = 1
CHOICE_KINDS = ("preset", "colorizer", "detector", "device")

#: what the dialog's Speed choice sends as the backend's ``precision``
WIRE_PRECISION = {"fp32": "fp32", "fast": "bf16"}
SPEEDS = (("fp32", "Exact (fp32, as published)", "The networks' own arithmetic: the same colours as the paper"),
          ("fast", "Fast (bf16 where this computer has it)",
           "bf16 on CPUs with AVX512-BF16/AMX and on GPUs: about 3.5x faster, colours very slightly different "
           "(check with `patchcolor check-precision`); elsewhere it runs exact fp32"))

#: labels of names the backend gives no label for (the presets and the built-in detector "none")
LABELS = {
    "default": ("Default (full resolution, feathered)",
                "Full-resolution result with feathered object edges: the best-looking output"),
    "seed": ("Seed (as published)", "The method exactly as the paper published it: 256-pixel working size, hard "
             "object edges, no full-resolution finish; for comparisons with the paper, it looks softer"),
    "none": ("None (whole image only)", "No objects: the whole image is colorized in one piece"),
}

#: dialog field -> (label with its mnemonic, tooltip). Mnemonics are unique within the dialog and avoid those of
#: GIMP's procedure dialog buttons and of the preview button (DIALOG_BUTTONS).
FIELD_TEXT: dict[str, tuple[str, str]] = {
    "preset": ("_Preset", "Default: full-resolution, feathered result. Seed (as published): the paper's method "
               "exactly (256-px working size, hard edges), for comparisons"),
    "colorizer": ("Colori_zer", "The network that predicts colours (colour hints always use SIGGRAPH17)"),
    "detector": ("_Detector", "Finds the objects (people, animals, vehicles...) that are colorized one by one; "
                 "'None' colorizes the whole image in one piece"),
    "score-threshold": ("Score _threshold", "Keep only objects the detector is at least this sure of: lower finds "
                        "more objects, and more false ones"),
    "max-instances": ("_Maximum objects", "Colorize at most this many objects separately (the most confident "
                      "first); 0 = whole image only"),
    "saturation": ("Satur_ation", "Multiplies the colour strength: 1 = as predicted, 0 = gray"),
    "feather": ("_Feathering (% of object size)", "Width of the soft edge where an object's colour blends into "
                "the rest, in percent of the object's box diagonal"),
    "precision": ("Sp_eed", "Exact: fp32, as published (default). Fast: bf16 where the backend's CPU "
                  "(AVX512-BF16/AMX) or GPU runs it natively, about 3.5x faster, colours very slightly different; "
                  "elsewhere it runs exact fp32"),
    "device": ("De_vice of a started backend", "Where a backend this plug-in starts runs the networks; a backend "
               "that is already running keeps its own device"),
    "use-hints": ("Use colour hi_nts", "Use the 'Colour hints' layer (painted dabs; Filters > Colorize (Patch): "
                  "Add Hint Layer) when there is a visible one; hints make SIGGRAPH17 run"),
    "endpoint": ("Bac_kend endpoint", "ZeroMQ address of `patchcolor serve`. Empty: the one in the plug-in's "
                 "config.json (python3 install.py --endpoint ...)"),
    "auto-start": ("Start the _backend if needed", "Start the local backend recorded by install.py when nothing "
                   "answers (never for a remote endpoint); `python3 install.py --autostart` starts it at login "
                   "instead"),
}
DIALOG_BUTTONS = ("_Load Saved Settings", "_Save Settings", "_Reset", "_Cancel", "_OK", "_Help", "Previe_w")


@dataclass(frozen=True)
class Choice:
    """One entry of a choice list: the backend's name, the label shown, its tooltip, and whether its weights are
    optional (fetched only on request)."""

    name: str
    label: str
    help: str = ""
    optional: bool = False


@dataclass(frozen=True)
class DialogSpec:
    """choices: kind -> entries (CHOICE_KINDS; "device" may be absent); ranges: Options field -> (low, high);
    defaults: Options field -> value; source: the file read, or "built-in"."""

    choices: Mapping[str, tuple[Choice, ...]]
    ranges: Mapping[str, tuple[float, float]]
    defaults: Mapping[str, Any]
    source: str = "built-in"

    def names(self, kind: str) -> tuple[str, ...]:
        return tuple(c.name for c in self.choices.get(kind, ()))

    def default(self, name: str, fallback: Any = None) -> Any:
        """The Options default of field ``name`` (a choice default is one of the choices)."""
        v = self.defaults.get(name, fallback)
        kind = name if name in self.choices else None
        if kind is not None and v not in self.names(kind):
            v = self.names(kind)[0] if self.choices[kind] else v
        return v

    def range(self, name: str) -> tuple[float, float]:
        return self.ranges[name]


#: used only when dialog.json is missing: the registry and Options as they were when this plug-in was written
BUILTIN: dict[str, Any] = {
    "schema": SCHEMA,
    "choices": {
        "preset": [{"name": "default"}, {"name": "seed"}],
        "colorizer": [{"name": "eccv16", "label": "ECCV16 (Zhang et al. 2016)", "optional": False},
                      {"name": "siggraph17", "label": "SIGGRAPH17 (Zhang et al. 2017)", "optional": True}],
        "detector": [{"name": "r101", "label": "Mask R-CNN R101-FPN (Detectron2 weights)", "optional": False},
                     {"name": "torchvision-v2", "label": "Mask R-CNN R50-FPN v2 (torchvision weights)",
                      "optional": True},
                     {"name": "detectron2", "label": "Detectron2 library (if installed)", "optional": True},
                     {"name": "none"}],
    },
    "ranges": {"score_thresh": [0.0, 1.0], "max_instances": [0, 100], "saturation": [0.0, 4.0],
               "feather": [0.0, 0.5]},
    "defaults": {"preset": "default", "colorizer": "eccv16", "detector": "r101", "score_thresh": 0.3,
                 "max_instances": 100, "saturation": 1.0, "feather": 0.02, "precision": "fp32"},
}


def _choice(kind: str, d: Mapping[str, Any]) -> Choice:
    name = str(d["name"])
    label, text = LABELS.get(name, (None, ""))
    label = str(d.get("label") or label or name)
    optional = bool(d.get("optional", False))
    if optional and kind in ("colorizer", "detector"):
        text = (text + "; " if text else "") + ("needs the optional weights (patchcolor weights fetch "
                                                "--optional)")
    return Choice(name, label, text or label, optional)


def parse(obj: Mapping[str, Any], source: str = "") -> DialogSpec:
    """dialog.json's object -> DialogSpec. ValueError (naming ``source``) when it is not a valid schema-1 spec."""
    try:
        if obj.get("schema") != SCHEMA:
            raise ValueError(f"schema {obj.get('schema')!r} is not {SCHEMA}")
        choices = {k: tuple(_choice(k, d) for d in v) for k, v in obj["choices"].items() if k in CHOICE_KINDS}
        for kind in ("preset", "colorizer", "detector"):
            if not choices.get(kind):
                raise ValueError(f"no {kind} choices")
        ranges = {str(k): (float(v[0]), float(v[1])) for k, v in obj["ranges"].items()}
        for name in ("score_thresh", "max_instances", "saturation", "feather"):
            lo, hi = ranges[name]
            if not lo <= hi:
                raise ValueError(f"range of {name} is empty")
        return DialogSpec(choices, ranges, dict(obj.get("defaults") or {}), source or "built-in")
    except (AttributeError, KeyError, TypeError, IndexError, ValueError) as e:
        raise ValueError(f"{source or 'dialog spec'}: not a valid dialog spec ({e})") from None


def load(path: str | os.PathLike[str]) -> DialogSpec:
    """dialog.json at ``path``; the built-in spec when the file does not exist. ValueError when it exists but
    cannot be read (a broken install must say so, not show stale choices)."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        return parse(BUILTIN, "built-in")
    except OSError as e:
        raise ValueError(f"{os.fspath(path)}: cannot be read ({e.strerror or e})") from None
    try:
        obj = json.loads(text)
    except ValueError as e:
        raise ValueError(f"{os.fspath(path)}: not JSON ({e})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{os.fspath(path)}: not a JSON object")
    return parse(obj, os.fspath(path))


def options_from_values(get: Callable[[str], Any]) -> dict[str, Any]:
    """The dialog's values (``get(field)``, GIMP argument names) -> the backend's option names and units."""
    return {
        "preset": str(get("preset")),
        "colorizer": str(get("colorizer")),
        "detector": str(get("detector")),
        "score_thresh": float(get("score-threshold")),
        "max_instances": int(get("max-instances")),
        "saturation": float(get("saturation")),
        "feather": float(get("feather")) / 100.0,     # percent -> fraction of the box diagonal
        "precision": WIRE_PRECISION.get(str(get("precision")), "fp32"),
    }


def effective_colorizer(chosen: str, n_hints: int, use_hints: bool) -> str:
    """The colorizer that will run: hints (found, switched on) make the backend use SIGGRAPH17."""
    return "siggraph17" if n_hints and use_hints else chosen


def mnemonic(label: str) -> str | None:
    """The mnemonic letter of a GTK label ('Satur_ation' -> 'a'), or None."""
    i = label.replace("__", "").find("_")
    return label.replace("__", "")[i + 1].lower() if 0 <= i < len(label.replace("__", "")) - 1 else None


def hint_note(n_hints: int, use_hints: bool, colorizer_label: str, layer_name: str) -> str:
    """The dialog's line about colour hints: how many visible hints the photo has and what will run with them."""
    if not n_hints:
        return ("No colour hints (paint some after Filters > Colorize (Patch): Add Hint Layer).")
    what = f"{n_hints} colour hint{'s' if n_hints != 1 else ''} in '{layer_name}'"
    if use_hints:
        return f"{what}: SIGGRAPH17 runs to follow them."
    return f"{what} switched off: {colorizer_label} runs without them."
