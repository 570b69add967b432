"""Every sentence the GIMP plug-in can show a person, in one place. Standard library only.

Each message is one sentence: what is wrong (or what to do) and the one action that fixes it. Details a person
does not need to read (a log tail, a traceback, the backend's full wording) go to the log through
:func:`log_details`, never into the message. ``tests/test_client_messages.py`` formats every template below and
checks it with :func:`is_one_sentence`.

Templates are ``str.format`` strings; :data:`SAMPLES` gives each field a sample value.
"""
from __future__ import annotations

import re
import sys

PLUGIN = "Colorize (Patch)"
RECOMPOSE_MENU = "Filters > Colorize (Patch): Re-fuse Masks"

# ---- what the plug-in was given (CALLING_ERROR) --------------------------------------------------------------------
INDEXED_IMAGE = ("Colorize (Patch) needs an RGB or grayscale image, so convert this indexed image first "
                 "(Image > Mode > RGB or Grayscale).")
NOT_ONE_LAYER = "Colorize (Patch) works on one layer but {n} are selected, so select a single layer."
NOT_A_LAYER = "Colorize (Patch) works on a layer but a channel or layer mask is selected, so select the photo's layer."
RESULT_GROUP = ("'{name}' is a Colorize (Patch) result: to apply edited masks use " + RECOMPOSE_MENU
                + ", or select the photo layer below the group to colorize it with other settings.")
A_MASK = "'{name}' is a mask of a Colorize (Patch) result, so apply your edits to it with " + RECOMPOSE_MENU + "."
INSIDE_RESULT = ("'{name}' is part of a Colorize (Patch) result, so select the photo layer below the group to "
                 "colorize it with other settings.")
GROUP_LAYER = "'{name}' is a layer group, so select a pixel layer inside it or merge the group first."
RECOMPOSE_SELECT_ONE = ("Select one layer of a Colorize (Patch) result, or the result's group itself, to re-fuse its "
                        "masks.")
RECOMPOSE_NOT_RESULT = ("'{name}' is not part of a Colorize (Patch) result, so select the result's group or one of "
                        "its layers to re-fuse its masks.")

# ---- the image or the result changed since (EXECUTION_ERROR; nothing was changed) --------------------------------
META_DAMAGED = ("This Colorize (Patch) result's stored data is missing or damaged, so run Colorize (Patch) on the "
                "photo again.")
COLORIZED_DELETED = ("The 'Colorized' layer of this result was deleted, so run Colorize (Patch) on the photo "
                     "again.")
COLORIZED_RESIZED = ("The 'Colorized' layer is now {now} but re-fusing needs it at its original size {was}, so "
                     "undo the resize or run Colorize (Patch) on the photo again.")
SOURCE_GONE = ("The backend no longer has this result and its photo layer below the group is missing or was "
               "resized, so run Colorize (Patch) on the photo again.")
SOURCE_ALPHA = ("The photo layer's alpha channel was added or removed since it was colorized, so undo that or run "
                "Colorize (Patch) on it again.")
HINTS_NO_ALPHA = ("The hint layer '{name}' has no transparency so every pixel would be a hint: add an alpha "
                  "channel (Layer > Transparency > Add Alpha Channel) and erase what is not a hint.")
GIMP_REFUSED_GROUP = "GIMP refused to add the layer group, so nothing was changed."

# ---- the backend --------------------------------------------------------------------------------------------------
CLIENT_MISSING = "The plug-in's client package is missing or broken ({error}), so run `python3 install.py` again."
BAD_RESULT = ("The colorize backend answered with a {got} image instead of {want}, so nothing was changed and the "
              "backend's log says why.")
BAD_PREVIEW = "The colorize backend sent a {fmt} preview instead of an 8-bit one."
UNAVAILABLE = ("The colorize backend at {endpoint} stopped answering, so check that `patchcolor serve` runs "
               "there.")
NO_CONNECTION = "The plug-in cannot talk to {endpoint}: {reason}."
TOO_LARGE = "The image is too large for the colorize backend ({reason})."
BACKEND_ERROR = "The colorize backend could not do this ({code}): {reason}."
BACKEND_SAID = "{reason}."
UNEXPECTED = "{what} failed unexpectedly ({error}), and GIMP's error console has the details."

# ---- notes (not errors) -------------------------------------------------------------------------------------------
NO_OBJECTS = "Colorize (Patch) found no objects, so the whole image was colorized in one piece."
ADD_HINTS_HOWTO = ("Paint a few separate dabs of colour on the 'Colour hints' layer, one colour each, then run "
                   "Colorize (Patch) or Re-fuse Masks.")

#: every template above with sample values for its fields (what the message test formats)
SAMPLES: dict[str, dict[str, str]] = {
    "NOT_ONE_LAYER": {"n": "2"}, "RESULT_GROUP": {"name": "Colorize (Patch)"}, "A_MASK": {"name": "person 97%"},
    "INSIDE_RESULT": {"name": "Colorized"}, "GROUP_LAYER": {"name": "Photos"},
    "RECOMPOSE_NOT_RESULT": {"name": "Photo"},
    "COLORIZED_RESIZED": {"now": "90x80", "was": "96x80"}, "HINTS_NO_ALPHA": {"name": "Colour hints"},
    "CLIENT_MISSING": {"error": "No module named 'patchcolor_client'"},
    "BAD_RESULT": {"got": "32x32 rgb8", "want": "96x80 rgb16"}, "BAD_PREVIEW": {"fmt": "rgb16"},
    "UNAVAILABLE": {"endpoint": "tcp://127.0.0.1:5555"},
    "NO_CONNECTION": {"endpoint": "tcp://192.0.2.1:5555", "reason": "talking to a server with CURVE keys needs pyzmq"},
    "TOO_LARGE": {"reason": "25000000 pixels, the limit is 250000000"},
    "BACKEND_ERROR": {"code": "bad_options", "reason": "saturation must be between 0 and 4"},
    "BACKEND_SAID": {"reason": "The R101 detector weights are missing: run `patchcolor weights fetch`"},
    "UNEXPECTED": {"what": "Colorize (Patch)", "error": "KeyError: 'x'"},
}


def templates() -> dict[str, str]:
    """Every message template of this module by name (what the message test checks)."""
    return {k: v for k, v in globals().items()
            if k.isupper() and isinstance(v, str) and k not in ("PLUGIN", "RECOMPOSE_MENU")}


_CODE = re.compile(r"`[^`]*`")
_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")
_BREAK = re.compile(r"[.!?][)\]'\"]*\s+[A-Z`]")


def is_one_sentence(text: str) -> bool:
    """True when ``text`` reads as one sentence: one line, ends with ``.``, ``!`` or ``?`` (not ``..``), and no
    sentence ends inside it (a ``.``/``?``/``!`` followed by a capital letter), counting neither commands in
    backticks nor quoted names."""
    t = text.strip()
    if not t or "\n" in t or t[-1] not in ".!?" or (t.endswith("..") and not t.endswith("...")) or t.endswith("..."):
        return False
    bare = _QUOTED.sub("'x'", _CODE.sub("`x`", t))
    return _BREAK.search(bare[:-1]) is None


def first_sentence(text: str) -> str:
    """The first sentence of ``text`` (a backend's or a library's wording), without its final period; the rest
    goes to the log through :func:`log_details`."""
    t = " ".join(str(text).split())
    bare = _QUOTED.sub(lambda m: "x" * len(m.group()), _CODE.sub(lambda m: "x" * len(m.group()), t))
    m = _BREAK.search(bare)
    head = t[:m.start() + 1] if m else t
    return head.rstrip(" .")


def one_sentence(text: str) -> str:
    """``text`` cut to its first sentence, ending with a period (full text logged when something was cut)."""
    head = first_sentence(text)
    if head != " ".join(str(text).split()).rstrip(" ."):
        log_details(str(text))
    return head + "."


def log_details(text: str) -> None:
    """Details for the log: GIMP's terminal / error output (stderr), one block per call."""
    try:
        sys.stderr.write(f"colorize-patch: {text.rstrip()}\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
