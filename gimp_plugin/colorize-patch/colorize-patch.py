#!/usr/bin/env python3
"""GIMP 3 plug-in: Filters > Colorize (Patch)..., Re-fuse Masks, Add Hint Layer, and the dialog's Preview procedure.

This file registers the procedures and holds their handlers, all run through one skeleton (:func:`_procedure`)
that turns every failure into one sentence and the right status. The GIMP work is in ``gimp_layers.py`` (pixels,
parasites, result layers) and ``gimp_dialog.py`` (arguments, dialog, preview, progress); everything that needs no
GIMP (config, jobs and their messages, result metadata, the dialog's choices) is in ``patchcolor_client``, copied
next to this file by the installer (standard library only, so GIMP's own Python runs it with or without pyzmq).

Re-fuse Masks finds a result by parasite, never by name or position. It asks the backend to recompose the job it kept
(instant); when the backend no longer has it (restarted, the next day, the XCF reopened) it sends the photo layer
and the edited masks with the stored boxes and classes, and the backend colorizes just those crops and the whole
image again: no detector run, the same colours.
"""
from __future__ import annotations

import os
import sys
import traceback
from dataclasses import dataclass
from typing import Any, Callable

PLUGIN_DIR = os.path.dirname(os.path.abspath(__file__))
if PLUGIN_DIR not in sys.path:
    sys.path.insert(0, PLUGIN_DIR)

import gi  # noqa: E402

gi.require_version("Gimp", "3.0")
from gi.repository import Gio, GLib, GObject, Gimp  # noqa: E402

try:
    import gimp_dialog as ui
    import gimp_layers as layers
    from patchcolor_client import BackendError, JobCancelled, dialogspec, launcher, previewflow
    from patchcolor_client import messages as msg
    from patchcolor_client import resultmeta as rm
    from patchcolor_client.config import CONFIG_NAME, PluginConfig
    from patchcolor_client.jobs import CallingError, JobIds, PluginError, check_result, ensure_backend, run_job
    from patchcolor_client.protocol import PREVIEW_SIDE, RESULT_FORMATS
    CLIENT_ERROR = None
except ImportError as _e:          # registered anyway (without options); each run says what is wrong
    CLIENT_ERROR = str(_e)
    PluginError, CallingError, JobCancelled = (type(n, (Exception,), {}) for n in ("PluginError", "CallingError",
                                                                                  "JobCancelled"))

PROC_COLORIZE = "plug-in-colorize-patch"
PROC_RECOMPOSE = "plug-in-colorize-patch-refuse"   # Re-fuse Masks; the PDB name scripts call, kept as first published
PROC_ADD_HINTS = "plug-in-colorize-patch-add-hints"
PROC_PREVIEW = "plug-in-colorize-patch-preview"
HELP_DIR = os.path.join(PLUGIN_DIR, "help")     # help/en/gimp-help.xml maps each procedure to its page
GUIDE = " Full guide: README.md, section \u201cIn GIMP 3\u201d."


# ---- the handler skeleton ------------------------------------------------------------------------------------------

@dataclass
class Run:
    """One call of a procedure: what GIMP passed, config.json as read now, and the progress bar once started."""

    procedure: Any
    run_mode: Any
    image: Any
    drawables: list
    config: Any
    cfg: Any = None
    progress: Any = None

    def start(self, title: str) -> Any:
        self.progress = ui.Progress(title)
        return self.progress

    @property
    def interactive(self) -> bool:
        return self.run_mode == Gimp.RunMode.INTERACTIVE

    def endpoint(self) -> str:
        return self.cfg.endpoint(self.config.get_property("endpoint"))

    def backend(self, endpoint: str, auto_start: bool) -> None:
        """Find or start the backend (with the dialog's device, when the procedure has one)."""
        cfg = self.cfg.with_device(ui.device_of(self.config))
        ensure_backend(endpoint, cfg.auto_start(auto_start), cfg, set_text=self.progress.text,
                       tick=self.progress.tick)


def _values(procedure: Any, status: Any, gtype: Any = None, item: Any = None, count: int = 0,
            error: str | None = None) -> Any:
    if status != Gimp.PDBStatusType.SUCCESS:
        return procedure.new_return_values(status, GLib.Error(error) if error else GLib.Error())
    Gimp.displays_flush()
    rv = procedure.new_return_values(status, GLib.Error())
    rv.remove(1)
    rv.insert(1, GObject.Value(gtype, item))
    rv.remove(2)
    rv.insert(2, GObject.Value(GObject.TYPE_INT, count))
    return rv


class Cancelled(Exception):
    """The user closed the dialog (or cancelled the job): CANCEL, no message."""


def _procedure(what: str, body: Callable[[Run], tuple[Any, Any, int]]) -> Callable[..., Any]:
    """A procedure's run function around ``body(run) -> (gtype, item, count)``: CallingError -> CALLING_ERROR,
    PluginError -> EXECUTION_ERROR, a cancel -> CANCEL, anything else -> one sentence plus the traceback on
    stderr; the progress bar always ends."""
    def run(procedure, run_mode, image, drawables, config, run_data):
        r = Run(procedure, run_mode, image, list(drawables), config)
        status = Gimp.PDBStatusType
        try:
            if CLIENT_ERROR is not None:        # messages.CLIENT_MISSING, which could not be imported
                raise PluginError(f"The plug-in's client package is missing or broken ({CLIENT_ERROR}), so run "
                                  "`python3 install.py` again.")
            r.cfg = PluginConfig.load(os.path.join(PLUGIN_DIR, CONFIG_NAME))
            return _values(procedure, status.SUCCESS, *body(r))
        except CallingError as e:
            return _values(procedure, status.CALLING_ERROR, error=str(e))
        except (Cancelled, JobCancelled):
            return _values(procedure, status.CANCEL, error="Cancelled")
        except PluginError as e:
            return _values(procedure, status.EXECUTION_ERROR, error=str(e))
        except Exception as e:          # a bug: still one sentence for the user, the traceback for the log
            traceback.print_exc()
            return _values(procedure, status.EXECUTION_ERROR, error=msg.UNEXPECTED.format(
                what=what, error=f"{e.__class__.__name__}: {msg.first_sentence(str(e))}"))
        finally:
            if r.progress is not None:
                r.progress.end()
    return run


# ---- the procedures ------------------------------------------------------------------------------------------------

def colorize(r: Run) -> tuple[Any, Any, int]:
    """Colorize the selected photo layer: a result group above it (one undo step)."""
    layer = layers.the_photo(r.image, r.drawables)
    if r.interactive and not ui.run_dialog(r.procedure, r.config, r.image, layer, r.cfg, SPEC):
        raise Cancelled()
    progress = r.start("Colorize (Patch)")
    endpoint = r.endpoint()
    options = dialogspec.options_from_values(r.config.get_property)
    w, h, fmt = layer.get_width(), layer.get_height(), layers.wire_format(r.image, layer)
    pixels = layers.read(layer, fmt)
    hints, n_hints = layers.hint_map(r.image, layer, bool(r.config.get_property("use-hints")))
    r.backend(endpoint, bool(r.config.get_property("auto-start")))
    progress.text("Sending the image to the colorize backend\u2026")
    ids = JobIds.new()
    res = run_job(endpoint, r.cfg, lambda client: client.colorize(
        w, h, fmt, pixels, options, progress=progress, should_cancel=progress.idle, job_id=ids.job_id,
        token=ids.token, hints=hints), ids)
    check_result(res, w, h, RESULT_FORMATS[fmt])        # everything checked before the image is touched
    progress.text("Adding the layers\u2026")
    meta = rm.GroupMeta.from_result(res, endpoint, fmt, layer.get_offsets()[1:], options, n_hints,
                                    layers.next_run(r.image))
    group = layers.add_result(r.image, layer, res, meta)
    if not res.instances:
        ui.status_note(msg.NO_OBJECTS)
    return Gimp.GroupLayer, group, len(res.instances)


def recompose(r: Run) -> tuple[Any, Any, int]:
    """Update a result's Colorized layer from its edited mask layers (one undo step)."""
    group = layers.the_result(r.drawables)
    meta = layers.stored_meta(group)
    colorized, masks = layers.edited_masks(group, meta)
    endpoint = r.cfg.recompose_endpoint(r.config.get_property("endpoint"), meta.endpoint,
                                     launcher.default_ping(r.cfg.server_key))
    progress = r.start("Colorize (Patch): Re-fuse Masks")
    r.backend(endpoint, True)
    ids = JobIds.new()

    def call(client: Any) -> tuple[Any, list | None]:
        kept = meta.kept_job_masks(masks) if meta.job_id else None
        if kept is not None:
            try:
                return client.recompose(meta.job_id, kept, progress=progress, should_cancel=progress.idle,
                                     token=meta.token or None), None
            except BackendError as e:
                if e.code not in ("unknown_job", "bad_request"):
                    raise
        return _recolorize(client, r, group, meta, masks, ids)
    res, index = run_job(endpoint, r.cfg, call, ids)
    check_result(res, meta.width, meta.height, meta.result_format or RESULT_FORMATS[meta.format])
    if index is not None:                # the next recompose is instant again, on the new job
        meta.after_recolorize(res, endpoint, index)
    layers.update_result(r.image, group, colorized, res, meta if index is not None else None)
    return Gimp.Layer, colorized, sum(1 for m in masks if any(m))


def _recolorize(client: Any, r: Run, group: Any, meta: Any, masks: list, ids: Any) -> tuple[Any, list]:
    """The backend lost the job: colorize the photo again with the stored boxes and edited masks (no detector)."""
    src = layers.find_source(r.image, group, meta)
    if src is None or src.get_width() != meta.width or src.get_height() != meta.height:
        raise PluginError(msg.SOURCE_GONE)
    if src.has_alpha() != meta.format.startswith(("graya", "rgba")):
        raise PluginError(msg.SOURCE_ALPHA)
    pixels = layers.read(src, meta.format)     # a gray photo was converted to RGB with R=G=B: Y' gives it back
    hints = layers.hint_map(r.image, src, bool(meta.hints))[0]
    instances, index = meta.instances_for(masks)
    r.progress.text("Re-colorizing the objects (the backend no longer had this result)\u2026")
    res = client.colorize(meta.width, meta.height, meta.format, pixels, meta.options, progress=r.progress,
                          should_cancel=r.progress.idle, job_id=ids.job_id, instances=instances, hints=hints,
                          token=ids.token)
    return res, index


def add_hints(r: Run) -> tuple[Any, Any, int]:
    """An empty, transparent "Colour hints" layer above the photo, selected, with the paintbrush."""
    layer = layers.the_photo(r.image, r.drawables)
    made = layers.find_hint_layer(r.image, layer, hidden=True) is None
    hl = layers.add_hint_layer(r.image, layer)
    if made and r.interactive:
        ui.show_note("Colour hints", msg.ADD_HINTS_HOWTO)
    return Gimp.Layer, hl, 0


def preview(r: Run) -> tuple[Any, Any, int]:
    """What the dialog's preview shows, as a new image (not displayed; the photo's image is not touched)."""
    layer = layers.the_photo(r.image, r.drawables)
    progress = r.start("Colorize (Patch): Preview")
    endpoint = r.endpoint()
    r.backend(endpoint, bool(r.config.get_property("auto-start")))
    fmt = layers.wire_format(r.image, layer)
    hints, n = layers.hint_map(r.image, layer, bool(r.config.get_property("use-hints")))
    inp = previewflow.PreviewInputs(layer.get_width(), layer.get_height(), fmt, layers.read(layer, fmt), hints, n)
    ids = JobIds.new()
    res = run_job(endpoint, r.cfg, previewflow.preview_call(
        inp, dialogspec.options_from_values(r.config.get_property), ids, int(r.config.get_property("long-side")),
        bool(r.config.get_property("draft")), progress, progress.idle), ids)
    return Gimp.Image, layers.preview_image(res), n


# ---- registration --------------------------------------------------------------------------------------------------

RW = GObject.ParamFlags.READWRITE
SPEC = None             # the dialog's choices and ranges (dialog.json), read when GIMP registers the procedures


@dataclass(frozen=True)
class Procedure:
    """What GIMP is told about one procedure: handler, menu label (None: no menu entry), blurb and help text,
    image types, whether it takes the colorize options, and its return values (kind, name, nick, blurb)."""

    body: Callable[[Run], tuple[Any, Any, int]]
    what: str
    label: str | None
    blurb: str
    text: str
    returns: tuple[tuple[str, str, str, str], ...]
    options: bool = False
    types: str = "RGB*, GRAY*"


PROCEDURES = {
    PROC_COLORIZE: Procedure(
        colorize, "Colorize (Patch)", "Colorize (Patch)...", "Colorize a black-and-white photo, object by object",
        "Sends the selected layer to the Patch Colorization backend and adds a layer group above it: a 'Colorized' "
        "layer and, above it, a 'Masks' group with one hidden mask layer per detected object (turn its eye on to "
        "highlight the object; white = object). Paint on the masks and run 'Colorize (Patch): Re-fuse Masks' to "
        "update the colours without detecting again. Outside a selection the photo stays unchanged.",
        (("group", "group", "Group", "The new 'Colorize (Patch)' layer group"),
         ("int", "n-instances", "Instances", "Number of detected objects (mask layers)")), options=True),
    PROC_RECOMPOSE: Procedure(
        recompose, "Re-fusing", "Colorize (Patch): Re-fuse Masks",
        "Update a Colorize (Patch) result from its edited mask layers",
        "Select the 'Colorize (Patch)' group or one of its layers. The edited mask layers (white = object) are sent "
        "to the backend, which re-fuses the colours it kept from that run, or, when it no longer has them (it was "
        "restarted, the XCF was reopened), colorizes only the objects again from the photo layer. The 'Colorized' "
        "layer is updated in place (one undo step). A deleted or all-black mask layer removes its object.",
        (("layer", "colorized", "Colorized", "The updated 'Colorized' layer"),
         ("int", "n-instances", "Instances", "Objects still present after re-fusing")), types="RGB*"),
    PROC_ADD_HINTS: Procedure(
        add_hints, "Add Hint Layer", "Colorize (Patch): Add Hint Layer",
        "Add a transparent 'Colour hints' layer above the photo",
        "Creates an empty transparent layer named 'Colour hints' above the selected photo layer (a grayscale image "
        "is converted to RGB so colours can be painted) and selects the paintbrush. Paint a few separate dabs, each "
        "in the colour that part of the photo should have; Colorize (Patch) and Re-fuse Masks then make SIGGRAPH17 "
        "follow them on the whole image and inside every object.",
        (("layer", "hint-layer", "Hint layer", "The 'Colour hints' layer"),
         ("int", "n-hints", "Hints", "Always 0 (the layer is empty when made)"))),
    PROC_PREVIEW: Procedure(
        preview, "Preview", None, "The Colorize (Patch) dialog's preview, as a new image",
        "Colorizes a small copy (long side 'long-side') of the selected layer with the given options and the hint "
        "layer, exactly as the dialog's preview does, and returns it as a new image that is not displayed. The "
        "photo's image, its layers and its undo history are not touched. With 'draft' on, the backend answers with "
        "an approximate preview (layer 'Preview (draft)') in about a second while it has not analysed this image "
        "exactly yet, else with the exact one (layer 'Preview').",
        (("image", "preview", "Preview", "A new image with the preview"),
         ("int", "n-hints", "Hints", "Colour hints used")), options=True),
}


def _make(plugin: Any, name: str, d: Procedure) -> Any:
    p = Gimp.ImageProcedure.new(plugin, name, Gimp.PDBProcType.PLUGIN, _procedure(d.what, d.body), None)
    p.set_image_types(d.types)
    p.set_sensitivity_mask(Gimp.ProcedureSensitivityMask.DRAWABLE)
    if d.label:
        p.set_menu_label(d.label)
        p.add_menu_path("<Image>/Filters")
    p.set_documentation(d.blurb, d.text + GUIDE, name)
    p.set_attribution("Patch Colorization contributors", "MIT", "2025")
    if d.options and SPEC is not None:      # without the client package: no options (every run says why)
        ui.add_option_arguments(p, SPEC)
        ui.add_use_hints_argument(p)
        if name == PROC_PREVIEW:
            p.add_int_argument("long-side", "_Long side", "The preview's long side in pixels", 64, 1024,
                               PREVIEW_SIDE, RW)
            p.add_boolean_argument("draft", "_Draft", "Accept an approximate preview (smaller detector and network "
                                   "sizes, about a second) while the backend has not analysed this image exactly "
                                   "yet; the layer is then named 'Preview (draft)'. Off: always the exact preview",
                                   False, RW)
    if name == PROC_RECOMPOSE:
        p.add_string_argument("endpoint", "Backend _endpoint", "Empty: the endpoint that made the group", "", RW)
    for kind, rname, nick, blurb in d.returns:
        if kind == "int":
            p.add_int_return_value(rname, nick, blurb, 0, 100000, 0, RW)
        else:
            add = {"group": p.add_group_layer_return_value, "layer": p.add_layer_return_value,
                   "image": p.add_image_return_value}[kind]
            add(rname, nick, blurb, kind != "image", RW)
    return p


class ColorizePatch(Gimp.PlugIn):
    def do_set_i18n(self, name):
        return False

    def do_query_procedures(self):
        # the Help buttons open this plug-in's own pages (help/en/) instead of "the user manual is missing"
        self.set_help_domain("colorize-patch", Gio.File.new_for_path(HELP_DIR))
        return list(PROCEDURES)

    def do_create_procedure(self, name):
        global SPEC
        if SPEC is None and CLIENT_ERROR is None:
            try:
                SPEC = dialogspec.load(os.path.join(PLUGIN_DIR, dialogspec.SPEC_NAME))
            except ValueError as e:        # a broken dialog.json: say so, and offer the built-in choices
                msg.log_details(f"{e}; using the built-in choices (run `python3 install.py` again)")
                SPEC = dialogspec.parse(dialogspec.BUILTIN)
        return _make(self, name, PROCEDURES[name]) if name in PROCEDURES else None


if __name__ == "__main__":
    Gimp.main(ColorizePatch.__gtype__, sys.argv)
