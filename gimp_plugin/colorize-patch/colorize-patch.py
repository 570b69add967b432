#!/usr/bin/env python3
"""GIMP 3 plug-in: Filters -> Colorize (Patch)... and Filters -> Colorize (Patch): Re-fuse Masks.

GIMP code only (procedures, dialog, layers, undo); the protocol, transport, endpoint rules and backend start-up live
in ``patchcolor_client`` (copied next to this file by install.py; standard library only, so GIMP's own Python runs
it with or without pyzmq).

Layer layout made by Colorize, directly above the source layer:

    Colorize (Patch)            group (parasite "colorize-patch": job, boxes, classes, options)
      Masks                     group, visible; its mask layers are hidden: turning one on shows it over the result
        person 97%              white = object, 50 % opacity (parasite "colorize-patch-mask": {"index": i})
        ...
      Colorized                 the result (parasite "colorize-patch-colorized")
    <source layer>              (parasite "colorize-patch-source": {"uid": ...})

Re-fuse finds these by parasite, never by name or position, so renaming or moving layers inside the group is fine.
It asks the backend to re-fuse the job it kept (instant); when the backend no longer has it (restarted, the next
day, the XCF reopened) it sends the source layer and the edited masks with the stored boxes and classes, and the
backend re-colorizes just those crops and the whole image: no detector run, the same colours.
"""
from __future__ import annotations

import array
import json
import os
import sys
import traceback
import uuid

PLUGIN_DIR = os.path.dirname(os.path.abspath(__file__))
CONFIG_PATH = os.path.join(PLUGIN_DIR, "config.json")
if PLUGIN_DIR not in sys.path:
    sys.path.insert(0, PLUGIN_DIR)

try:
    import patchcolor_client as PC
    from patchcolor_client import launcher
    from patchcolor_client import protocol as P
    from patchcolor_client.client import Instance
    from patchcolor_client import hintmap, previewflow
    CLIENT_ERROR = None
except ImportError as _e:          # registered anyway; each run says what is wrong
    PC = launcher = P = Instance = hintmap = previewflow = None
    CLIENT_ERROR = str(_e)

PROC_COLORIZE = "plug-in-colorize-patch"
PROC_REFUSE = "plug-in-colorize-patch-refuse"
PROC_ADD_HINTS = "plug-in-colorize-patch-add-hints"
PROC_PREVIEW = "plug-in-colorize-patch-preview"
GROUP_NAME = "Colorize (Patch)"
MASKS_NAME = "Masks"
COLORIZED_NAME = "Colorized"
PARASITE_GROUP = "colorize-patch"            # on the group: JSON with what re-fusing needs (see _group_meta)
PARASITE_COLORIZED = "colorize-patch-colorized"
PARASITE_MASKS = "colorize-patch-masks"
PARASITE_MASK = "colorize-patch-mask"        # on each mask layer: {"index": i}
PARASITE_SOURCE = "colorize-patch-source"    # on the source layer: {"uid": group uid}
MASK_OPACITY = 50.0
HELP_URL = "README.md, section \u201cIn GIMP 3\u201d"
HELP_DIR = os.path.join(PLUGIN_DIR, "help")     # help/en/gimp-help.xml maps the procedures to help/en/index.html
DEFAULT_ENDPOINT = P.DEFAULT_ENDPOINT if P else "tcp://127.0.0.1:5555"

PRESETS = [("default", "Default (full resolution, feathered)",
            "Full-resolution result with feathered object edges: the best-looking output"),
           ("seed", "Seed (as published)",
            "The method exactly as the paper published it: 256-pixel working size, hard object edges, no "
            "full-resolution finish. For comparisons with the paper; it looks softer")]
COLORIZERS = [("eccv16", "ECCV16 (Zhang et al. 2016)", "Zhang et al.'s 2016 network: calm, desaturated colours"),
              ("siggraph17", "SIGGRAPH17 (Zhang et al. 2017)",
               "Zhang et al.'s 2017 network: livelier colours; also the one that takes colour hints")]
DETECTORS = [("r101", "Mask R-CNN R101-FPN (Detectron2 weights)",
              "Finds people, animals, vehicles and 77 other COCO object kinds; the most accurate (default)"),
             ("torchvision-v2", "Mask R-CNN R50-FPN v2 (torchvision weights)",
              "A lighter detector; needs the optional weights (python3 install.py --optional)"),
             ("detectron2", "Detectron2 library (if installed)", "Uses an installed Detectron2 library"),
             ("none", "None (whole image only)", "No objects: the whole image is colorized in one piece")]
#: The "fast" choice (issue 12): bf16 where the backend's CPU/GPU runs it natively (AVX512-BF16/AMX, ~3.5x), never
#: the default; elsewhere the backend runs fp32 (and logs why), so choosing it is always safe.
PRECISIONS = [("fp32", "Exact (fp32, as published)", "The networks' own arithmetic: the same colours as the paper"),
              ("fast", "Fast (bf16 where this computer has it)",
               "bf16 on CPUs with AVX512-BF16/AMX and on GPUs: about 3.5x faster, colours very slightly different "
               "(check with `patchcolor check-precision`); elsewhere it runs exact fp32")]
WIRE_PRECISION = {"fp32": "fp32", "fast": "bf16"}

# wire pixel format -> babl format (GEGL reads/writes native-endian u16; the wire is little-endian)
BABL = {
    "gray8": "Y' u8", "graya8": "Y'A u8", "rgb8": "R'G'B' u8", "rgba8": "R'G'B'A u8",
    "gray16": "Y' u16", "graya16": "Y'A u16", "rgb16": "R'G'B' u16", "rgba16": "R'G'B'A u16",
}


# --------------------------------------------------------------------------------------------------------------------
# GIMP-free helpers (importable without gi, so they can be unit-tested with any Python)
# --------------------------------------------------------------------------------------------------------------------

class PluginError(Exception):
    """A failure the user sees as one clear sentence (EXECUTION_ERROR); the image has not been touched."""


class CallingError(PluginError):
    """Wrong input (CALLING_ERROR): group layer, several layers, no layer..."""


def load_config(path: str = CONFIG_PATH) -> dict:
    """config.json written by install.py: backend_command (list), endpoint, log_file, optional extras."""
    try:
        with open(path, encoding="utf-8") as f:
            cfg = json.load(f)
        return cfg if isinstance(cfg, dict) else {}
    except (OSError, ValueError):
        return {}


def resolve_endpoint(typed: str | None, cfg: dict, stored: str | None = None) -> str:
    """The endpoint typed in the dialog, else the one the group was made with (re-fuse), else config.json's
    (install.py --endpoint; read at every run, so an edit there counts at once), else the default."""
    return (typed or "").strip() or stored or cfg.get("endpoint") or DEFAULT_ENDPOINT


def swap16(data) -> bytes:
    """Native-endian u16 (what GEGL gives) <-> little-endian (the wire)."""
    if sys.byteorder == "little":
        return bytes(data)
    a = array.array("H")
    a.frombytes(bytes(data))
    a.byteswap()
    return a.tobytes()


def instance_layer_name(class_name: str, score: float) -> str:
    """'person 97%'."""
    return f"{class_name} {int(float(score) * 100 + 0.5)}%"


_BINARY = bytes(255 if v >= 128 else 0 for v in range(256))


def crop_mask(frame: bytes, w: int, h: int) -> tuple[tuple[int, int], tuple[int, int], bytes] | None:
    """A w x h gray8 mask (>= 128 = inside) -> (origin, size, cropped 0/255 bytes) around its inside pixels,
    or None when it is empty."""
    binary = bytes(frame).translate(_BINARY)
    rows = [y for y in range(h) if binary.find(255, y * w, (y + 1) * w) >= 0]
    if not rows:
        return None
    y0, y1 = rows[0], rows[-1] + 1
    x0, x1 = w, 0
    for y in range(y0, y1):
        a = binary.find(255, y * w, (y + 1) * w)
        if a >= 0:
            x0 = min(x0, a - y * w)
            x1 = max(x1, binary.rfind(255, y * w, (y + 1) * w) - y * w + 1)
    out = b"".join(binary[y * w + x0: y * w + x1] for y in range(y0, y1))
    return (x0, y0), (x1 - x0, y1 - y0), out


def backend_message(e: Exception, endpoint: str) -> str:
    """One paragraph for a client exception."""
    code = getattr(e, "code", None)
    msg = getattr(e, "message", None) or str(e) or e.__class__.__name__
    if code == "weights_missing":
        return (f"The colorize backend cannot find model weights: {msg}. Fetch the optional ones with "
                "`python3 install.py --optional` (add `--models-dir DIR` for a custom folder), or pick another "
                "detector/colorizer.")
    if code == "image_too_large":
        return f"The image is too large for the colorize backend: {msg}"
    if e.__class__.__name__ == "BackendUnavailable":
        return f"The colorize backend at {endpoint} stopped answering: {msg}"
    if code:
        return f"The colorize backend reported an error ({code}): {msg}"
    return f"The colorize backend reported an error: {msg}"


def _need_client():
    if PC is None:
        raise PluginError(f"the plug-in's client package is missing or broken ({CLIENT_ERROR}); run "
                          "`python3 install.py` again")


# --------------------------------------------------------------------------------------------------------------------
# GIMP part
# --------------------------------------------------------------------------------------------------------------------

try:
    import gi
    gi.require_version("Gimp", "3.0")
    gi.require_version("Gegl", "0.4")
    from gi.repository import Gegl, Gimp, GLib, GObject  # noqa: F401
except (ImportError, ValueError):      # imported for tests by a Python without GIMP
    Gimp = None


def _choice(items):
    c = Gimp.Choice.new()
    for i, (nick, label, help_text) in enumerate(items):
        c.add(nick, i, label, help_text)
    return c


def _error(procedure, msg: str, status=None):
    return procedure.new_return_values(status or Gimp.PDBStatusType.EXECUTION_ERROR, GLib.Error(msg))


def _success(procedure, gtype, item, count: int):
    """SUCCESS return values: (status, item of ``gtype``, count)."""
    Gimp.displays_flush()
    rv = procedure.new_return_values(Gimp.PDBStatusType.SUCCESS, GLib.Error())
    rv.remove(1)
    rv.insert(1, GObject.Value(gtype, item))
    rv.remove(2)
    rv.insert(2, GObject.Value(GObject.TYPE_INT, count))
    return rv


def _status(text: str):
    """A short note in the status bar (GIMP's message console in batch mode)."""
    try:
        Gimp.message_set_handler(Gimp.MessageHandlerType.STATUS_BAR)
    except Exception:          # noqa: BLE001 - older/newer API: the default handler is fine too
        pass
    Gimp.message(text)


# ---- pixels and parasites ------------------------------------------------------------------------------------------

def _bits(image) -> int:
    p = image.get_precision()
    return 8 if p in (Gimp.Precision.U8_LINEAR, Gimp.Precision.U8_NON_LINEAR, Gimp.Precision.U8_PERCEPTUAL) else 16


def _read(drawable, fmt: str, rect=None) -> bytes:
    r = rect or (0, 0, drawable.get_width(), drawable.get_height())
    data = drawable.get_buffer().get(Gegl.Rectangle.new(*r), 1.0, BABL[fmt], Gegl.AbyssPolicy.NONE)
    return swap16(data) if fmt.endswith("16") else bytes(data)


def _write(buffer, w: int, h: int, fmt: str, data):
    buffer.set(Gegl.Rectangle.new(0, 0, w, h), BABL[fmt], swap16(data) if fmt.endswith("16") else bytes(data))
    buffer.flush()


def _attach_json(item, name: str, obj: dict):
    data = json.dumps(obj, separators=(",", ":")).encode()
    item.attach_parasite(Gimp.Parasite.new(name, Gimp.PARASITE_PERSISTENT | Gimp.PARASITE_UNDOABLE, list(data)))


def _read_json(item, name: str):
    p = item.get_parasite(name)
    if p is None:
        return None
    try:
        obj = json.loads(bytes(p.get_data()).decode())
    except (ValueError, UnicodeDecodeError):
        return None
    return obj if isinstance(obj, dict) else None


def _descendants(group):
    for child in group.get_children():
        yield child
        if child.is_group_layer():
            yield from _descendants(child)


def _all_layers(image):
    for layer in image.get_layers():
        yield layer
        if layer.is_group_layer():
            yield from _descendants(layer)


# ---- dialog (kept apart so hint pick-up and preview can be added beside it) ----------------------------------------

DIALOG_FIELDS = ["preset", "colorizer", "detector", "score-threshold", "max-instances", "saturation", "feather",
                 "precision", "use-hints", "endpoint", "auto-start"]


def run_dialog(procedure, config, image=None, layer=None) -> bool:
    """The interactive dialog; True when the user pressed OK."""
    gi.require_version("GimpUi", "3.0")
    from gi.repository import GimpUi
    GimpUi.init("colorize-patch")
    dialog = GimpUi.ProcedureDialog.new(procedure, config, "Colorize (Patch)")
    dialog.fill(DIALOG_FIELDS)
    close_preview = None
    if image is not None:
        try:
            close_preview = _dialog_preview(dialog, image, layer, config)
        except Exception:       # noqa: BLE001 - the dialog works without its preview
            traceback.print_exc()
    ok = dialog.run()
    if close_preview is not None:       # cancel a preview in flight; nothing waits for it, no widget is touched
        close_preview()
    dialog.destroy()
    return bool(ok)


def options_from_config(config) -> dict:
    """The dialog's values -> the backend's option names."""
    return {
        "preset": config.get_property("preset"),
        "colorizer": config.get_property("colorizer"),
        "detector": config.get_property("detector"),
        "score_thresh": float(config.get_property("score-threshold")),
        "max_instances": int(config.get_property("max-instances")),
        "saturation": float(config.get_property("saturation")),
        "feather": float(config.get_property("feather")) / 100.0,     # percent -> fraction of the box diagonal
        "precision": WIRE_PRECISION.get(config.get_property("precision"), "fp32"),
    }


# ---- progress ------------------------------------------------------------------------------------------------------

class Progress:
    """Backend stage events -> GIMP's progress bar."""

    STAGES = {"accepted": "Waiting for the colorize backend", "queued": "Waiting in the backend's queue",
              "prepare": "Preparing the image", "segment": "Detecting objects", "detect": "Detecting objects",
              "colorize": "Colorizing", "fuse": "Fusing instance colours", "finish": "Finishing",
              "refuse": "Re-fusing masks"}

    def __init__(self, title: str):
        Gimp.progress_init(title)
        self.stage = None
        self.events = 0

    def text(self, msg: str):
        Gimp.progress_set_text(msg)

    def __call__(self, stage, fraction=None, overall=None):
        """The client's progress callback: (stage, fraction within the stage, overall fraction)."""
        self.events += 1
        frac = overall if overall is not None else fraction
        if stage and stage != self.stage:
            self.stage = stage
            Gimp.progress_set_text(self.STAGES.get(str(stage), str(stage).replace("_", " ").capitalize()) + "\u2026")
        if isinstance(frac, (int, float)):
            Gimp.progress_update(max(0.0, min(1.0, float(frac))))
        else:
            Gimp.progress_pulse()

    def tick(self):
        Gimp.progress_pulse()

    def idle(self):
        """Polled by the client about every 0.1 s while it waits: keep the bar moving until the first event."""
        if not self.events:
            Gimp.progress_pulse()
        return False        # GIMP cancels a plug-in by killing it: the watchdog sends the backend's cancel


# ---- talking to the backend ----------------------------------------------------------------------------------------

def _server_key(cfg: dict):
    return cfg.get("server_public_key") or None


def _run_job(endpoint: str, cfg: dict, call, progress: Progress, job_id: str | None = None,
             token: str | None = None):
    """Run ``call(client)`` (a colorize or refuse) with a watchdog that cancels the job if GIMP kills us."""
    watchdog = launcher.Watchdog(endpoint, _server_key(cfg)) if job_id else None
    client = None
    try:
        if watchdog is not None:
            watchdog.job(job_id, token)
        client = PC.Client(endpoint, timeout_s=float(cfg.get("timeout_s", 30.0)), server_public_key=_server_key(cfg))
        return call(client)
    except PC.BackendUnavailable as e:
        raise PluginError(backend_message(e, endpoint))
    finally:
        if client is not None:
            client.close()
        if watchdog is not None:
            watchdog.done()


def _ensure_backend(endpoint: str, auto_start: bool, cfg: dict, progress: Progress):
    try:
        launcher.ensure_backend(endpoint, auto_start, cfg, set_text=progress.text, tick=progress.tick)
    except launcher.LaunchError as e:
        raise PluginError(str(e))


def _token_kw(fn, token):
    """Pass ``token`` only to a client that takes it (older clients bind jobs to the connection)."""
    import inspect
    return {"token": token} if token and "token" in inspect.signature(fn).parameters else {}


# ---- Colorize ------------------------------------------------------------------------------------------------------

def _the_layer(image, drawables):
    if image.get_base_type() == Gimp.ImageBaseType.INDEXED:
        raise CallingError("Colorize (Patch) needs an RGB or grayscale image; convert this indexed image first "
                           "(Image > Mode > RGB or Grayscale).")
    if len(drawables) != 1:
        raise CallingError(f"Colorize (Patch) works on exactly one layer, but {len(drawables)} are selected. "
                           "Select a single layer.")
    d = drawables[0]
    if not d.is_layer():
        raise CallingError("Colorize (Patch) works on a layer; a channel or layer mask is selected. "
                           "Select the photo's layer.")
    if d.is_group_layer():
        if _read_json(d, PARASITE_GROUP) is not None or _inside_result(d):
            raise CallingError(f"'{d.get_name()}' is a Colorize (Patch) result. To colorize again, select its source "
                               "layer (just below the group); to apply edited masks, use Filters > Colorize "
                               "(Patch): Re-fuse Masks.")
        raise CallingError(f"'{d.get_name()}' is a layer group. Colorize (Patch) works on a single pixel layer: "
                           "select a layer inside the group, or merge the group first.")
    if _inside_result(d):
        raise CallingError(f"'{d.get_name()}' belongs to a Colorize (Patch) result. Select the source layer below "
                           "the group to colorize again, or use Re-fuse Masks after editing the masks.")
    return d


def _inside_result(item) -> bool:
    while item is not None:
        if item.is_group_layer() and _read_json(item, PARASITE_GROUP) is not None:
            return True
        item = item.get_parent()
    return False


def _wire_format(image, layer) -> str:
    gray = image.get_base_type() == Gimp.ImageBaseType.GRAY
    return ("gray" if gray else "rgb") + ("a" if layer.has_alpha() else "") + str(_bits(image))


def _check_result(res, w: int, h: int, rfmt: str):
    if res.fmt != rfmt or res.width != w or res.height != h:
        raise PluginError(f"the colorize backend answered with a {res.width}x{res.height} {res.fmt} image instead "
                          f"of {w}x{h} {rfmt}; nothing was changed")


def run_colorize(procedure, run_mode, image, drawables, config, run_data):
    try:
        layer = _the_layer(image, drawables)
    except CallingError as e:
        return _error(procedure, str(e), Gimp.PDBStatusType.CALLING_ERROR)
    if run_mode == Gimp.RunMode.INTERACTIVE and not run_dialog(procedure, config, image, layer):
        return procedure.new_return_values(Gimp.PDBStatusType.CANCEL, GLib.Error())

    progress = Progress("Colorize (Patch)")
    try:
        _need_client()
        cfg = load_config()
        endpoint = resolve_endpoint(config.get_property("endpoint"), cfg)
        options = options_from_config(config)
        auto_start = bool(config.get_property("auto-start")) and cfg.get("auto_start", True) is not False
        w, h = layer.get_width(), layer.get_height()
        fmt = _wire_format(image, layer)
        rfmt = P.RESULT_FORMATS[fmt]
        pixels = _read(layer, fmt)
        hints, n_hints = _hint_map(image, layer, _use_hints(config))

        _ensure_backend(endpoint, auto_start, cfg, progress)
        progress.text("Sending the image to the colorize backend\u2026")
        job_id = P.new_id()
        token = P.new_token() if hasattr(P, "new_token") else None

        def call(client):
            return client.colorize(w, h, fmt, pixels, options, progress=progress, should_cancel=progress.idle,
                                   job_id=job_id, **_hints_kw(hints), **_token_kw(client.colorize, token))
        try:
            res = _run_job(endpoint, cfg, call, progress, job_id, token)
        except PC.JobCancelled:
            return procedure.new_return_values(Gimp.PDBStatusType.CANCEL, GLib.Error("Cancelled"))
        except PC.BackendError as e:
            raise PluginError(backend_message(e, endpoint))
        _check_result(res, w, h, rfmt)          # everything checked before the image is touched

        progress.text("Adding the layers\u2026")
        meta = _group_meta(res, endpoint, w, h, fmt, list(layer.get_offsets()[1:]), options)
        meta["hints"] = n_hints          # re-fuse colorizes again with the hint layer when there were hints
        group = _add_layers(image, layer, rfmt, res, meta)
        if not res.instances:
            _status("Colorize (Patch): no objects found: whole-image colorization only.")
    except CallingError as e:
        return _error(procedure, str(e), Gimp.PDBStatusType.CALLING_ERROR)
    except PluginError as e:
        return _error(procedure, str(e))
    except Exception as e:           # a bug: still one sentence for the user, the traceback for the terminal
        traceback.print_exc()
        return _error(procedure, f"Colorize (Patch) failed unexpectedly: {e.__class__.__name__}: {e}")
    finally:
        Gimp.progress_end()
    return _success(procedure, Gimp.GroupLayer, group, len(res.instances))


def _group_meta(res, endpoint, w, h, fmt, origin, options) -> dict:
    """What re-fusing needs, kept in the image (survives XCF save/load): the job (instant re-fuse while the backend
    keeps it) and, for a backend that no longer has it, the boxes, classes and options."""
    return {
        "version": 2, "uid": uuid.uuid4().hex, "job_id": res.job_id, "token": getattr(res, "token", "") or "",
        "endpoint": endpoint, "width": w, "height": h, "format": fmt, "result_format": res.fmt,
        "origin": origin, "options": options,
        "instances": [{"class_id": i.class_id, "class_name": i.class_name, "score": i.score,
                       "box": list(i.box)} for i in res.instances],
        "job_index": list(range(len(res.instances))),
    }


def _add_layers(image, src, rfmt, res, meta):
    """All changes to the image, in one undo group."""
    w, h = src.get_width(), src.get_height()
    _, offx, offy = src.get_offsets()
    image.undo_group_start()
    group = None
    converted = False
    try:
        if image.get_base_type() == Gimp.ImageBaseType.GRAY:
            image.convert_rgb()
            converted = True
        parent = src.get_parent()
        pos = image.get_item_position(src)
        group = Gimp.GroupLayer.new(image, GROUP_NAME)
        if not image.insert_layer(group, parent, pos):
            raise PluginError("GIMP refused to add the layer group")
        _attach_json(group, PARASITE_GROUP, meta)
        _attach_json(src, PARASITE_SOURCE, {"uid": meta["uid"]})

        ltype = Gimp.ImageType.RGBA_IMAGE if rfmt.startswith("rgba") else Gimp.ImageType.RGB_IMAGE
        col = Gimp.Layer.new(image, COLORIZED_NAME, w, h, ltype, 100.0, Gimp.LayerMode.NORMAL)
        image.insert_layer(col, group, 0)
        col.set_offsets(offx, offy)
        _write(col.get_buffer(), w, h, rfmt, res.pixels)
        _attach_json(col, PARASITE_COLORIZED, {"uid": meta["uid"]})
        if not Gimp.Selection.is_empty(image):
            # outside the selection the Colorized layer is transparent, so the source shows unchanged
            col.add_mask(col.create_mask(Gimp.AddMaskType.SELECTION))
        col.update(0, 0, w, h)

        if res.instances:
            # above Colorized, so that turning a mask layer's eye on shows it; the group itself stays visible
            masks = Gimp.GroupLayer.new(image, MASKS_NAME)
            image.insert_layer(masks, group, 0)
            _attach_json(masks, PARASITE_MASKS, {"uid": meta["uid"]})
            for i, inst in enumerate(res.instances):
                ml = Gimp.Layer.new(image, instance_layer_name(inst.class_name, inst.score), w, h,
                                    Gimp.ImageType.RGB_IMAGE, MASK_OPACITY, Gimp.LayerMode.NORMAL)
                image.insert_layer(ml, masks, i)
                ml.set_offsets(offx, offy)
                _write(ml.get_buffer(), w, h, "gray8", inst.full_mask(w, h))
                ml.set_visible(False)
                _attach_json(ml, PARASITE_MASK, {"index": i, "uid": meta["uid"]})
                ml.update(0, 0, w, h)
        image.set_selected_layers([group])
    except Exception:
        # best effort to leave the image as it was (the undo group also holds every step)
        try:
            if group is not None and group.is_valid():
                image.remove_layer(group)
            if converted:
                image.convert_grayscale()
        except Exception:
            pass
        raise
    finally:
        image.undo_group_end()
    return group


# ---- Re-fuse -------------------------------------------------------------------------------------------------------

def _find_group(drawables):
    if len(drawables) != 1:
        raise CallingError("Select one layer of the 'Colorize (Patch)' group (or the group itself) to re-fuse.")
    item = drawables[0]
    if item.is_layer_mask():                    # a layer's mask is selected: start from its layer
        item = Gimp.Layer.from_mask(Gimp.LayerMask.get_by_id(item.get_id()))
    while item is not None:
        if item.is_group_layer() and item.get_parasite(PARASITE_GROUP) is not None:
            return item
        item = item.get_parent()
    raise CallingError("The selected layer is not part of a 'Colorize (Patch)' group. Select the group made by "
                       "Filters > Colorize (Patch)... or one of its layers, then re-fuse.")


def _find_source(image, group, meta):
    """The layer the group was made from: by its parasite, else the layer just below the group."""
    for layer in _all_layers(image):
        s = _read_json(layer, PARASITE_SOURCE)
        if s is not None and s.get("uid") == meta.get("uid") and not layer.is_group_layer():
            return layer
    parent = group.get_parent()
    siblings = parent.get_children() if parent is not None else image.get_layers()
    pos = image.get_item_position(group)
    if pos + 1 < len(siblings) and not siblings[pos + 1].is_group_layer():
        return siblings[pos + 1]
    return None


def _mask_frame(layer, origin, w, h) -> bytes:
    """A mask layer as a w x h gray8 frame in the job's coordinates (the source layer's extent at colorize time):
    moved or resized mask layers are handled, transparent pixels count as black."""
    _, mx, my = layer.get_offsets()
    rect = (origin[0] - mx, origin[1] - my, w, h)
    if layer.has_alpha():        # premultiplied gray: transparent counts as black
        return bytes(layer.get_buffer().get(Gegl.Rectangle.new(*rect), 1.0, "Y'aA u8", Gegl.AbyssPolicy.NONE))[0::2]
    return _read(layer, "gray8", rect)


def _edited_masks(group, meta) -> tuple[object, list[bytes]]:
    """(Colorized layer, one w x h 0/255 mask per stored instance; all zero for a deleted mask layer)."""
    w, h = int(meta["width"]), int(meta["height"])
    n = len(meta.get("instances", []))
    origin = meta.get("origin", [0, 0])
    colorized, masks = None, [None] * n
    for child in _descendants(group):
        if child.is_group_layer():
            continue
        if colorized is None and child.get_parasite(PARASITE_COLORIZED) is not None:
            colorized = child
        m = _read_json(child, PARASITE_MASK)
        if m is not None and isinstance(m.get("index"), int) and 0 <= m["index"] < n:
            frame = _mask_frame(child, origin, w, h)
            prev = masks[m["index"]]
            masks[m["index"]] = frame if prev is None else bytes(map(max, prev, frame))   # duplicated layer
    if colorized is None:
        raise PluginError("The 'Colorized' layer of this group was deleted; run Colorize (Patch) again.")
    if colorized.get_width() != w or colorized.get_height() != h:
        raise PluginError(f"The 'Colorized' layer was resized ({colorized.get_width()}x{colorized.get_height()}, "
                          f"was {w}x{h}); re-fusing needs its original size. Run Colorize (Patch) again.")
    # white = object: at least 50 % gray counts as inside (soft brush edges do not grow the object)
    return colorized, [m.translate(_BINARY) if m is not None else bytes(w * h) for m in masks]


def _refuse_kept_job(client, meta, masks, progress):
    """Re-fuse on the backend's kept job (instant). None when that job cannot express these masks."""
    index = meta.get("job_index") or list(range(len(masks)))
    njob = max([j for j in index if j is not None], default=-1) + 1
    job_masks = [None] * njob
    for i, j in enumerate(index):
        if j is None:
            if any(masks[i]):
                return None                     # an instance the kept job dropped was painted back
        else:
            job_masks[j] = masks[i]
    if any(m is None for m in job_masks):
        return None
    return client.refuse(meta["job_id"], job_masks, progress=progress, should_cancel=progress.idle,
                         **_token_kw(client.refuse, meta.get("token")))


def _recolorize(client, image, group, meta, masks, progress, job_id, token):
    """The backend lost the job: colorize the source again with the stored boxes and edited masks (no detector)."""
    src = _find_source(image, group, meta)
    w, h = int(meta["width"]), int(meta["height"])
    if src is None or src.get_width() != w or src.get_height() != h:
        raise PluginError("The backend no longer has this colorization and its source layer (below the group) is "
                          "missing or was resized, so it cannot be re-fused; run Colorize (Patch) again.")
    fmt = meta["format"]
    if src.has_alpha() != fmt.startswith(("graya", "rgba")):
        raise PluginError("The source layer's alpha channel was added or removed since colorizing; re-fusing needs "
                          "it as it was. Run Colorize (Patch) again.")
    pixels = _read(src, fmt)          # a gray source was converted to RGB with R=G=B: reading Y' gives it back
    hints = _hint_map(image, src, bool(meta.get("hints")))[0]
    instances, index = [], []
    for i, (m, stored) in enumerate(zip(masks, meta["instances"])):
        cropped = crop_mask(m, w, h)
        if cropped is None:
            index.append(None)
            continue
        origin, size, data = cropped
        index.append(len(instances))
        instances.append(Instance(int(stored.get("class_id", 0)), str(stored.get("class_name", "object")),
                                  float(stored.get("score", 1.0)), tuple(float(v) for v in stored["box"]),
                                  origin, size, data))
    progress.text("Re-colorizing the objects (the backend no longer had this job)\u2026")
    res = client.colorize(w, h, fmt, pixels, meta.get("options") or {}, progress=progress,
                          should_cancel=progress.idle, job_id=job_id, instances=instances,
                          **_hints_kw(hints), **_token_kw(client.colorize, token))
    return res, index


def _refuse_endpoint(typed, cfg: dict, stored: str | None) -> str:
    """The endpoint typed, else the one that made the group (it may still hold the job) if it answers, else the
    current one from config.json (the backend may have moved since, e.g. to a login service's port)."""
    endpoint = resolve_endpoint(typed, cfg, stored)
    current = resolve_endpoint("", cfg)
    if (typed or "").strip() or endpoint == current:
        return endpoint
    try:
        if launcher.default_ping(_server_key(cfg))(endpoint, float(cfg.get("ping_timeout_s", 2.0))):
            return endpoint
    except launcher.LaunchError:
        pass
    return current


def run_refuse(procedure, run_mode, image, drawables, config, run_data):
    progress = None
    try:
        _need_client()
        group = _find_group(drawables)
        meta = _read_json(group, PARASITE_GROUP)
        if not meta or "job_id" not in meta or not isinstance(meta.get("instances"), list):
            raise PluginError("The 'Colorize (Patch)' group's data is missing or damaged; run Colorize (Patch) "
                              "again.")
        colorized, masks = _edited_masks(group, meta)
        w, h = int(meta["width"]), int(meta["height"])
        rfmt = meta.get("result_format") or P.RESULT_FORMATS[meta["format"]]

        cfg = load_config()
        endpoint = _refuse_endpoint(config.get_property("endpoint"), cfg, meta.get("endpoint"))
        progress = Progress("Colorize (Patch): Re-fuse Masks")
        _ensure_backend(endpoint, True, cfg, progress)
        job_id = P.new_id()
        token = P.new_token() if hasattr(P, "new_token") else None
        box = {}

        def call(client):
            res = None
            if meta.get("job_id"):
                try:
                    res = _refuse_kept_job(client, meta, masks, progress)
                except PC.BackendError as e:
                    if e.code not in ("unknown_job", "bad_request"):
                        raise
            if res is not None:
                box["index"] = None
                return res
            res, box["index"] = _recolorize(client, image, group, meta, masks, progress, job_id, token)
            return res
        try:
            res = _run_job(endpoint, cfg, call, progress, job_id, token)
        except PC.JobCancelled:
            return procedure.new_return_values(Gimp.PDBStatusType.CANCEL, GLib.Error("Cancelled"))
        except PC.BackendError as e:
            raise PluginError(backend_message(e, endpoint))
        _check_result(res, w, h, rfmt)

        image.undo_group_start()
        try:
            # The shadow buffer + merge_shadow(undo=True) is GIMP's undoable in-place update; merging is clipped to
            # the selection, so the selection is cleared for the merge and restored afterwards (both undoable).
            saved = None
            if not Gimp.Selection.is_empty(image):
                saved = Gimp.Selection.save(image)
                Gimp.Selection.none(image)
            shadow = colorized.get_shadow_buffer()
            _write(shadow, w, h, rfmt, res.pixels)
            colorized.merge_shadow(True)
            colorized.update(0, 0, w, h)
            if saved is not None:
                image.select_item(Gimp.ChannelOps.REPLACE, saved)
                image.remove_channel(saved)
            if box.get("index") is not None:     # the next re-fuse is instant again, on the new job
                meta.update(job_id=res.job_id, token=getattr(res, "token", "") or "", endpoint=endpoint,
                            job_index=box["index"])
                _attach_json(group, PARASITE_GROUP, meta)
        finally:
            image.undo_group_end()
    except CallingError as e:
        return _error(procedure, str(e), Gimp.PDBStatusType.CALLING_ERROR)
    except PluginError as e:
        return _error(procedure, str(e))
    except Exception as e:
        traceback.print_exc()
        return _error(procedure, f"Re-fusing failed unexpectedly: {e.__class__.__name__}: {e}")
    finally:
        if progress is not None:
            Gimp.progress_end()
    return _success(procedure, Gimp.Layer, colorized, sum(1 for m in masks if any(m)))


# ---- colour hints and preview (issue 10) ---------------------------------------------------------------------------

PREVIEW_SIDE = 384          # the dialog preview's long side
AUTO_PREVIEW_S = 2.0        # the dialog refreshes the preview by itself while the backend answers this fast
PREVIEW_LAYER = "Preview"                   # the Preview procedure's layer name: the exact preview
PREVIEW_DRAFT_LAYER = "Preview (draft)"     # ... a draft (approximate: the backend had no exact analysis yet)


def _use_hints(config) -> bool:
    try:
        return bool(config.get_property("use-hints"))
    except TypeError:          # a config without the argument (older callers)
        return True


def _hints_kw(hints) -> dict:
    return {"hints": hints} if hints is not None else {}


def _find_hint_layer(image, layer):
    """The colour-hint layer for the photo ``layer``: a pixel layer tagged with the hints parasite or named
    "Colour hints" / "Color hints"; one in the photo's own layer stack first. None when there is none."""
    found = [l for l in _all_layers(image) if not l.is_group_layer() and l != layer
             and (l.get_parasite(hintmap.PARASITE_HINTS) is not None or hintmap.is_hint_layer_name(l.get_name()))]
    if not found:
        return None
    same = [l for l in found if l.get_parent() == layer.get_parent()]
    return (same or found)[0]


def _hint_map(image, layer, use_hints: bool):
    """(HintMap, number of hints) for the photo ``layer`` from the image's hint layer, or (None, 0) when there is
    none, it is empty, or hints are switched off. The hint layer is read over the photo layer's extent (moved or
    smaller hint layers work: outside it there is no hint)."""
    if not use_hints or hintmap is None:
        return None, 0
    hl = _find_hint_layer(image, layer)
    if hl is None:
        return None, 0
    if not hl.has_alpha():
        raise PluginError(f"The hint layer '{hl.get_name()}' has no transparency, so every pixel would be a hint: "
                          "add an alpha channel (Layer > Transparency > Add Alpha Channel) and erase what is not a "
                          "hint, or use Filters > Colorize (Patch): Add Hint Layer.")
    w, h = layer.get_width(), layer.get_height()
    _, hx, hy = hl.get_offsets()
    _, lx, ly = layer.get_offsets()
    data = bytes(hl.get_buffer().get(Gegl.Rectangle.new(lx - hx, ly - hy, w, h), 1.0, BABL["rgba8"],
                                     Gegl.AbyssPolicy.NONE))
    n = hintmap.count_blobs(data[3::4], w, h)
    return (PC.HintMap(w, h, "rgba8", data), n) if n else (None, 0)


def preview_inputs(image, layer, use_hints: bool, cache: dict | None = None):
    """The layer and hint layer as a preview sends them. ``cache``: a dict kept by the caller while the image
    cannot change (the modal dialog): the layer and the hint layer are read from GIMP once, not at every
    refresh. Main thread only."""
    fmt = _wire_format(image, layer)
    cache = {} if cache is None else cache
    if "pixels" not in cache:
        cache["pixels"] = _read(layer, fmt)
    if use_hints and "hints" not in cache:
        cache["hints"] = _hint_map(image, layer, True)
    hints, n = cache["hints"] if use_hints else (None, 0)
    return previewflow.PreviewInputs(layer.get_width(), layer.get_height(), fmt, cache["pixels"], hints, n)


def fetch_preview(inp, options: dict, endpoint: str, cfg: dict, long_side: int = PREVIEW_SIDE,
                  draft: bool = False, progress=None, should_cancel=None):
    """Ask the backend for the preview of ``inp``: the ColorizeResult with the 8-bit proxy (``extra["draft"]``:
    a draft was rendered). No GIMP call: safe in a worker thread. ``draft``: an approximate preview when the
    backend has not analysed this image exactly yet (else it sends the exact one). ``inp``: PreviewInputs."""
    client = PC.Client(endpoint, timeout_s=float(cfg.get("timeout_s", 30.0)), server_public_key=_server_key(cfg))
    if should_cancel is None and progress is not None:
        should_cancel = progress.idle
    try:
        res = client.preview(inp.width, inp.height, inp.fmt, inp.pixels, options, hints=inp.hints,
                             long_side=long_side, progress=progress, should_cancel=should_cancel,
                             draft=draft)
    except PC.BackendUnavailable as e:
        raise PluginError(backend_message(e, endpoint))
    except PC.BackendError as e:
        raise PluginError(backend_message(e, endpoint))
    finally:
        client.close()
    if res.fmt not in ("rgb8", "rgba8"):
        raise PluginError(f"the colorize backend sent a {res.fmt} preview instead of an 8-bit one")
    return res


def make_preview(image, layer, options: dict, use_hints: bool, endpoint: str, cfg: dict,
                 long_side: int = PREVIEW_SIDE, progress=None, cache: dict | None = None, draft: bool = False):
    """The backend's preview of ``layer`` (same options, the hint layer unless switched off): (ColorizeResult with
    the 8-bit proxy, number of hints). Only reads the image; the Preview procedure calls this, the dialog calls
    its two halves (preview_inputs on the main thread, fetch_preview in a worker thread)."""
    inp = preview_inputs(image, layer, use_hints, cache)
    return fetch_preview(inp, options, endpoint, cfg, long_side, draft, progress), inp.n_hints


def _preview_pixbuf(res):
    """A ColorizeResult's 8-bit pixels -> GdkPixbuf (main thread)."""
    from gi.repository import GdkPixbuf
    ch = 4 if res.fmt == "rgba8" else 3
    return GdkPixbuf.Pixbuf.new_from_bytes(GLib.Bytes.new(bytes(res.pixels)), GdkPixbuf.Colorspace.RGB, ch == 4, 8,
                                           res.width, res.height, res.width * ch)


def _dialog_preview(dialog, image, layer, config):
    """Adds "N hints found", a Preview button and the preview image to the Colorize dialog. Returns a function
    that closes the preview (call it before destroying the dialog).

    On open and on the button: a draft preview first ("Draft preview (approximate) ..."), then the exact one
    replaces it. The backend calls run in a daemon thread (previewflow.PreviewFlow); the dialog never waits for
    them. Option changes refresh by themselves while the backend answered the last request within AUTO_PREVIEW_S;
    a change made while a slower request runs refreshes once when that request ends. It never touches the image."""
    gi.require_version("Gtk", "3.0")
    gi.require_version("GdkPixbuf", "2.0")
    from gi.repository import Gtk
    cfg = load_config()
    box = Gtk.Box(orientation=Gtk.Orientation.VERTICAL, spacing=6)
    try:
        n = _hint_map(image, layer, True)[1]
    except PluginError as e:
        n = 0
        note = str(e)
    else:
        note = (f"{n} colour hint{'s' if n != 1 else ''} found in the '{hintmap.HINT_LAYER_NAME}' layer (they make "
                "SIGGRAPH17 run)" if n else "No colour hints (Filters > Colorize (Patch): Add Hint Layer to paint "
                "some)")
    hint_label = Gtk.Label(label=note, xalign=0.0)
    hint_label.set_line_wrap(True)
    button = Gtk.Button.new_with_mnemonic("_Preview")
    status = Gtk.Label(label="", xalign=0.0)
    status.set_line_wrap(True)
    picture = Gtk.Image()
    state = {"pending": 0, "cache": {}, "handler": 0}

    def fetch(job, attempt):           # worker thread: no GIMP and no GTK calls here
        try:
            launcher.ensure_backend(job.endpoint, job.auto_start, cfg, set_text=attempt.note, tick=lambda: None)
        except launcher.LaunchError as e:
            raise PluginError(str(e))
        return fetch_preview(job.inputs, job.options, job.endpoint, cfg, draft=attempt.draft,
                             should_cancel=attempt.should_cancel), job.inputs.n_hints

    def show(update):
        picture.set_from_pixbuf(_preview_pixbuf(update.result))
        text = previewflow.describe(update)
        if update.final and not flow.fast:
            text += " (press Preview after changes)"
        status.set_text(text)

    def later():
        if state["pending"]:
            GLib.source_remove(state["pending"])
        state["pending"] = GLib.timeout_add(400, refresh)      # one refresh after a burst of changes

    flow = previewflow.PreviewFlow(fetch, show, lambda f: status.set_text(f"No preview: {f.message}"),
                                   status.set_text, deliver=lambda fn: GLib.idle_add(fn), auto_s=AUTO_PREVIEW_S,
                                   on_outdated=later)

    def refresh(*_args):
        state["pending"] = 0
        if flow.closed:
            return False
        try:
            auto_start = bool(config.get_property("auto-start")) and cfg.get("auto_start", True) is not False
            job = previewflow.PreviewJob(preview_inputs(image, layer, _use_hints(config), state["cache"]),
                                         options_from_config(config),
                                         resolve_endpoint(config.get_property("endpoint"), cfg), auto_start)
        except Exception as e:      # noqa: BLE001 - shown in the dialog, never fatal
            flow.cancel()
            status.set_text(f"No preview: {e}")
            return False
        status.set_text("Draft preview\u2026" if picture.get_storage_type() == Gtk.ImageType.EMPTY
                        else "Updating the preview\u2026")
        flow.request(job)
        return False

    def changed(*_args):
        if not flow.closed and flow.option_changed():
            later()

    def close():
        flow.close()
        if state["pending"]:
            GLib.source_remove(state["pending"])
            state["pending"] = 0
        if state["handler"]:
            config.disconnect(state["handler"])
            state["handler"] = 0

    button.connect("clicked", refresh)
    state["handler"] = config.connect("notify", changed)
    for widget in (hint_label, button, status, picture):
        box.pack_start(widget, False, False, 0)
    dialog.get_content_area().pack_end(box, False, False, 6)
    box.show_all()
    GLib.idle_add(refresh)            # the first (draft) preview as soon as the dialog is up
    return close


def run_add_hints(procedure, run_mode, image, drawables, config, run_data):
    """Add an empty, transparent "Colour hints" layer above the photo and set up the paintbrush."""
    try:
        layer = _the_layer(image, drawables)
    except CallingError as e:
        return _error(procedure, str(e), Gimp.PDBStatusType.CALLING_ERROR)
    if hintmap is None:
        return _error(procedure, f"the plug-in's client package is missing or broken ({CLIENT_ERROR})")
    hl = _find_hint_layer(image, layer)
    if hl is None:
        image.undo_group_start()
        try:
            if image.get_base_type() == Gimp.ImageBaseType.GRAY:
                image.convert_rgb()          # colours cannot be painted in a grayscale image
            hl = Gimp.Layer.new(image, hintmap.HINT_LAYER_NAME, image.get_width(), image.get_height(),
                                Gimp.ImageType.RGBA_IMAGE, 100.0, Gimp.LayerMode.NORMAL)
            image.insert_layer(hl, layer.get_parent(), image.get_item_position(layer))
            hl.fill(Gimp.FillType.TRANSPARENT)
            _attach_json(hl, hintmap.PARASITE_HINTS, {"version": 1})
        finally:
            image.undo_group_end()
    image.set_selected_layers([hl])
    try:        # a paintbrush of a few pixels at full opacity: one dab = one hint
        Gimp.context_set_paint_method("gimp-paintbrush")
        Gimp.context_set_paint_mode(Gimp.LayerMode.NORMAL)
        Gimp.context_set_opacity(100.0)
        Gimp.context_set_brush_size(float(max(3, min(image.get_width(), image.get_height()) // 80)))
    except Exception:           # noqa: BLE001 - the layer is what matters
        pass
    _status("Paint a few dabs of colour on the 'Colour hints' layer (separate dabs, one colour each), then run "
            "Colorize (Patch) or Re-fuse Masks.")
    return _success(procedure, Gimp.Layer, hl, 0)


def run_preview(procedure, run_mode, image, drawables, config, run_data):
    """What the dialog's preview shows, as a new image (not displayed; the source image is not touched)."""
    try:
        layer = _the_layer(image, drawables)
    except CallingError as e:
        return _error(procedure, str(e), Gimp.PDBStatusType.CALLING_ERROR)
    progress = Progress("Colorize (Patch): Preview")
    try:
        _need_client()
        cfg = load_config()
        endpoint = resolve_endpoint(config.get_property("endpoint"), cfg)
        auto_start = bool(config.get_property("auto-start")) and cfg.get("auto_start", True) is not False
        _ensure_backend(endpoint, auto_start, cfg, progress)
        res, n = make_preview(image, layer, options_from_config(config), _use_hints(config), endpoint, cfg,
                              int(config.get_property("long-side")), progress,
                              draft=bool(config.get_property("draft")))
        rgba = res.fmt == "rgba8"
        out = Gimp.Image.new(res.width, res.height, Gimp.ImageBaseType.RGB)
        name = PREVIEW_DRAFT_LAYER if res.extra.get("draft") else PREVIEW_LAYER
        pl = Gimp.Layer.new(out, name, res.width, res.height,
                            Gimp.ImageType.RGBA_IMAGE if rgba else Gimp.ImageType.RGB_IMAGE, 100.0,
                            Gimp.LayerMode.NORMAL)
        out.insert_layer(pl, None, 0)
        _write(pl.get_buffer(), res.width, res.height, res.fmt, res.pixels)
    except PC.JobCancelled if PC else ():
        return procedure.new_return_values(Gimp.PDBStatusType.CANCEL, GLib.Error("Cancelled"))
    except PluginError as e:
        return _error(procedure, str(e))
    except Exception as e:
        traceback.print_exc()
        return _error(procedure, f"Preview failed unexpectedly: {e.__class__.__name__}: {e}")
    finally:
        Gimp.progress_end()
    return _success(procedure, Gimp.Image, out, n)


def _add_hints_procedure(plugin, name):
    RW = GObject.ParamFlags.READWRITE
    p = Gimp.ImageProcedure.new(plugin, name, Gimp.PDBProcType.PLUGIN, run_add_hints, None)
    p.set_image_types("RGB*, GRAY*")
    p.set_sensitivity_mask(Gimp.ProcedureSensitivityMask.DRAWABLE)
    p.set_menu_label("Colorize (Patch): Add Hint Layer")
    p.add_menu_path("<Image>/Filters")
    p.set_documentation(
        "Add a transparent 'Colour hints' layer above the photo",
        "Creates an empty transparent layer named 'Colour hints' above the selected photo layer (a grayscale image "
        "is converted to RGB so colours can be painted) and selects the paintbrush. Paint a few separate dabs, each "
        "in the colour that part of the photo should have; Colorize (Patch) and Re-fuse Masks then make SIGGRAPH17 "
        "follow them on the whole image and inside every object. Full guide: " + HELP_URL + ".", name)
    p.set_attribution("Patch Colorization contributors", "MIT", "2025")
    p.add_layer_return_value("hint-layer", "Hint layer", "The 'Colour hints' layer", True, RW)
    p.add_int_return_value("n-hints", "Hints", "Always 0 (the layer is empty when made)", 0, 100000, 0, RW)
    return p


def _preview_procedure(plugin, name):
    RW = GObject.ParamFlags.READWRITE
    p = Gimp.ImageProcedure.new(plugin, name, Gimp.PDBProcType.PLUGIN, run_preview, None)
    p.set_image_types("RGB*, GRAY*")
    p.set_sensitivity_mask(Gimp.ProcedureSensitivityMask.DRAWABLE)
    p.set_documentation(
        "The Colorize (Patch) dialog's preview, as a new image",
        "Colorizes a small copy (long side 'long-side') of the selected layer with the given options and the hint "
        "layer, exactly as the dialog's preview does, and returns it as a new image that is not displayed. The "
        "source image, its layers and its undo history are not touched. With 'draft' on, the backend answers with "
        "an approximate preview (layer 'Preview (draft)') in about a second while it has not analysed this image "
        "exactly yet, else with the exact one (layer 'Preview').", name)
    p.set_attribution("Patch Colorization contributors", "MIT", "2025")
    _add_option_arguments(p)
    _add_use_hints_argument(p)
    p.add_int_argument("long-side", "_Long side", "The preview's long side in pixels", 64, 1024, PREVIEW_SIDE, RW)
    p.add_boolean_argument("draft", "_Draft", "Accept an approximate preview (smaller detector and network sizes, "
                           "about a second) while the backend has not analysed this image exactly yet; the layer "
                           "is then named 'Preview (draft)'. Off: always the exact preview", False, RW)
    p.add_image_return_value("preview", "Preview", "A new image with the preview", False, RW)
    p.add_int_return_value("n-hints", "Hints", "Colour hints used", 0, 100000, 0, RW)
    return p


def _add_option_arguments(p):
    """The colorize options, declared once for Colorize (Patch) and its preview (same names, ranges, defaults)."""
    RW = GObject.ParamFlags.READWRITE
    p.add_choice_argument("preset", "_Preset", "Default: full-resolution, feathered result. Seed (as published): "
                          "the paper's method exactly (256-px working size, hard edges), for comparisons",
                          _choice(PRESETS), "default", RW)
    p.add_choice_argument("colorizer", "Colori_zer", "The network that predicts colours: ECCV16 (calm) or "
                          "SIGGRAPH17 (livelier)", _choice(COLORIZERS), "eccv16", RW)
    p.add_choice_argument("detector", "_Detector", "Finds the objects (people, animals, vehicles...) that are "
                          "colorized one by one; 'None' colorizes the whole image in one piece",
                          _choice(DETECTORS), "r101", RW)
    p.add_double_argument("score-threshold", "Score _threshold", "Keep only objects the detector is at least this "
                          "sure of (0-1): lower finds more objects, and more false ones", 0.0, 1.0, 0.3, RW)
    p.add_int_argument("max-instances", "_Maximum objects", "Colorize at most this many objects separately (the "
                       "most confident first); 0 = whole image only", 0, 100, 100, RW)
    p.add_double_argument("saturation", "Satur_ation", "Multiplies the colour strength: 1 = as predicted, 0 = gray, "
                          "2 = twice as vivid", 0.0, 4.0, 1.0, RW)
    p.add_double_argument("feather", "_Feathering (% of object size)", "Width of the soft edge where an object's "
                          "colour blends into the rest, in percent of the object's box diagonal", 0.0, 50.0, 2.0, RW)
    # "Speed" has no mnemonic: each of its letters is taken by another control or dialog button
    p.add_choice_argument("precision", "Speed", "Exact: fp32, as published (default). Fast: bf16 where the "
                          "backend's CPU (AVX512-BF16/AMX) or GPU runs it natively, about 3.5x faster, colours very "
                          "slightly different; elsewhere it runs exact fp32", _choice(PRECISIONS), "fp32", RW)
    p.add_string_argument("endpoint", "Backend _endpoint", "ZeroMQ address of `patchcolor serve`. Empty: the one "
                          "in the plug-in's config.json (python3 install.py --endpoint ...), else "
                          + DEFAULT_ENDPOINT, "", RW)
    p.add_boolean_argument("auto-start", "Start the _backend if needed", "Start the local backend recorded by "
                           "install.py when nothing answers (never for a remote endpoint). `python3 install.py "
                           "--autostart` starts it at login instead", True, RW)


def _add_use_hints_argument(p):
    p.add_boolean_argument("use-hints", "Use colour _hints", "Use the 'Colour hints' layer (painted dabs; "
                           "Filters > Colorize (Patch): Add Hint Layer) when there is one; it makes SIGGRAPH17 "
                           "run. Off: ignore it", True, GObject.ParamFlags.READWRITE)


# ---- registration --------------------------------------------------------------------------------------------------

def _colorize_procedure(plugin, name):
    RW = GObject.ParamFlags.READWRITE
    p = Gimp.ImageProcedure.new(plugin, name, Gimp.PDBProcType.PLUGIN, run_colorize, None)
    p.set_image_types("RGB*, GRAY*")
    p.set_sensitivity_mask(Gimp.ProcedureSensitivityMask.DRAWABLE)
    p.set_menu_label("Colorize (Patch)...")
    p.add_menu_path("<Image>/Filters")
    p.set_documentation(
        "Colorize a black-and-white photo, object by object",
        "Sends the selected layer to the Patch Colorization backend and adds a layer group above it: a "
        "'Colorized' layer and, above it, a 'Masks' group with one hidden mask layer per detected object (turn its "
        "eye on to see it; white = object). Paint on the masks and run 'Colorize (Patch): Re-fuse Masks' to update "
        "the colours without detecting again. Outside a selection the source stays unchanged. Full guide: "
        + HELP_URL + ".", name)
    p.set_attribution("Patch Colorization contributors", "MIT", "2025")
    _add_option_arguments(p)
    _add_use_hints_argument(p)
    p.add_group_layer_return_value("group", "Group", "The new 'Colorize (Patch)' layer group", True, RW)
    p.add_int_return_value("n-instances", "Instances", "Number of detected objects (mask layers)", 0, 100000, 0, RW)
    return p


def _refuse_procedure(plugin, name):
    RW = GObject.ParamFlags.READWRITE
    p = Gimp.ImageProcedure.new(plugin, name, Gimp.PDBProcType.PLUGIN, run_refuse, None)
    p.set_image_types("RGB*")
    p.set_sensitivity_mask(Gimp.ProcedureSensitivityMask.DRAWABLE)
    p.set_menu_label("Colorize (Patch): Re-fuse Masks")
    p.add_menu_path("<Image>/Filters")
    p.set_documentation(
        "Update a Colorize (Patch) result from its edited mask layers",
        "Select the 'Colorize (Patch)' group or one of its layers. The edited mask layers (white = object) are sent "
        "to the backend, which re-fuses the colours it kept from that run, or, when it no longer has them (it was "
        "restarted, the XCF was reopened), re-colorizes only the objects from the source layer. The 'Colorized' "
        "layer is updated in place (one undo step). A deleted or all-black mask layer removes its object. Full "
        "guide: " + HELP_URL + ".", name)
    p.set_attribution("Patch Colorization contributors", "MIT", "2025")
    p.add_string_argument("endpoint", "Backend _endpoint", "Empty: the endpoint that made the group", "", RW)
    p.add_layer_return_value("colorized", "Colorized", "The updated 'Colorized' layer", True, RW)
    p.add_int_return_value("n-instances", "Instances", "Objects still present after re-fusing", 0, 100000, 0, RW)
    return p


if Gimp is not None:
    class ColorizePatch(Gimp.PlugIn):
        def do_set_i18n(self, name):
            return False

        def do_query_procedures(self):
            try:        # the Help buttons open help/en/index.html instead of "the user manual is missing"
                from gi.repository import Gio
                self.set_help_domain("colorize-patch", Gio.File.new_for_path(HELP_DIR))
            except Exception:       # noqa: BLE001 - help is optional
                pass
            return [PROC_COLORIZE, PROC_REFUSE, PROC_ADD_HINTS, PROC_PREVIEW]

        def do_create_procedure(self, name):
            if name == PROC_COLORIZE:
                return _colorize_procedure(self, name)
            if name == PROC_REFUSE:
                return _refuse_procedure(self, name)
            if name == PROC_ADD_HINTS:
                return _add_hints_procedure(self, name)
            if name == PROC_PREVIEW:
                return _preview_procedure(self, name)
            return None

    if __name__ == "__main__":
        Gimp.main(ColorizePatch.__gtype__, sys.argv)
