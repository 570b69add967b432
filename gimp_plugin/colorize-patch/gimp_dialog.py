"""The plug-in's GIMP user interface: the procedures' arguments (the dialog's fields), the Colorize dialog with its
preview beside the options, and the progress bar. The choices and ranges come from dialog.json
(patchcolor_client.dialogspec); the preview's backend requests run in a worker thread (patchcolor_client.previewflow).

The dialog keeps its size: the preview column is as large as the biggest preview from the start, so nothing moves
when a preview arrives. It says what will run: with visible colour hints switched on the colorizer shows
SIGGRAPH17 (and cannot be changed: hints need it) and switching hints off gives the chosen colorizer back. Closing
it (OK or Cancel) cancels the preview the backend is computing, so an OK starts the real job at once and reuses
what the preview finished.
"""
from __future__ import annotations

import traceback
from typing import Any, Callable

import gi

gi.require_version("Gimp", "3.0")
from gi.repository import GLib, GObject, Gimp  # noqa: E402

import gimp_layers as layers  # noqa: E402
from patchcolor_client import dialogspec as ds  # noqa: E402
from patchcolor_client import hintmap, previewflow  # noqa: E402
from patchcolor_client.config import PluginConfig  # noqa: E402
from patchcolor_client.jobs import PluginError, cancel_job, ensure_backend, progress_text  # noqa: E402
from patchcolor_client.protocol import PREVIEW_SIDE  # noqa: E402

RW = GObject.ParamFlags.READWRITE
#: the Colorize dialog's fields, top to bottom ("device" only when dialog.json lists devices)
OPTION_FIELDS = ("preset", "colorizer", "detector", "score-threshold", "max-instances", "saturation", "feather",
                 "precision", "device")
DIALOG_FIELDS = OPTION_FIELDS + ("use-hints", "endpoint", "auto-start")
NOTE_LINES_PX = 54          # height kept for a three-line note above and below the preview


# ---- arguments -----------------------------------------------------------------------------------------------------

def _choice(entries) -> Any:
    c = Gimp.Choice.new()
    for i, e in enumerate(entries):
        c.add(e.name, i, e.label, e.help)
    return c


def add_option_arguments(p: Any, spec: ds.DialogSpec) -> None:
    """The colorize options, declared once for Colorize (Patch) and its preview: choices and ranges from ``spec``
    (the registry and Options), labels and tooltips from dialogspec.FIELD_TEXT."""
    t = ds.FIELD_TEXT
    for kind in ("preset", "colorizer", "detector"):
        p.add_choice_argument(kind, *t[kind], _choice(spec.choices[kind]), spec.default(kind), RW)
    lo, hi = spec.range("score_thresh")
    p.add_double_argument("score-threshold", *t["score-threshold"], lo, hi, spec.default("score_thresh", 0.3), RW)
    lo, hi = spec.range("max_instances")
    p.add_int_argument("max-instances", *t["max-instances"], int(lo), int(hi),
                       int(spec.default("max_instances", hi)), RW)
    lo, hi = spec.range("saturation")
    p.add_double_argument("saturation", *t["saturation"], lo, hi, spec.default("saturation", 1.0), RW)
    lo, hi = spec.range("feather")        # shown in percent of the box diagonal
    p.add_double_argument("feather", *t["feather"], lo * 100, hi * 100, spec.default("feather", 0.02) * 100, RW)
    speeds = [ds.Choice(n, label, text) for n, label, text in ds.SPEEDS]
    p.add_choice_argument("precision", *t["precision"], _choice(speeds), "fp32", RW)
    if spec.choices.get("device"):
        p.add_choice_argument("device", *t["device"], _choice(spec.choices["device"]), spec.default("device"), RW)
    p.add_string_argument("endpoint", *t["endpoint"], "", RW)
    p.add_boolean_argument("auto-start", *t["auto-start"], True, RW)


def add_use_hints_argument(p: Any) -> None:
    p.add_boolean_argument("use-hints", *ds.FIELD_TEXT["use-hints"], True, RW)


def values(config: Any) -> Callable[[str], Any]:
    """get(name) of a procedure config."""
    return config.get_property


def has(config: Any, name: str) -> bool:
    """True when the procedure has argument ``name`` (e.g. "device" only when dialog.json lists devices)."""
    return any(p.name == name for p in config.list_properties())


def device_of(config: Any) -> str | None:
    """The dialog's device for a backend the plug-in starts, when the procedure has that argument."""
    return config.get_property("device") if has(config, "device") else None


# ---- progress ------------------------------------------------------------------------------------------------------

class Progress:
    """Backend progress events -> GIMP's progress bar and its text (what runs, and the time left once the
    backend can tell)."""

    def __init__(self, title: str):
        Gimp.progress_init(title)
        self.shown: str | None = None
        self.events = 0

    def text(self, text: str) -> None:
        Gimp.progress_set_text(text)

    def __call__(self, stage: str, fraction: float | None = None, overall: float | None = None) -> None:
        """The client's progress callback: (client.Stage, fraction within the stage, overall fraction)."""
        self.events += 1
        frac = overall if overall is not None else fraction
        text = progress_text(stage, getattr(stage, "text", None), getattr(stage, "eta", None)) if stage else None
        if text and text != self.shown:
            self.shown = text
            Gimp.progress_set_text(text)
        if isinstance(frac, (int, float)):
            Gimp.progress_update(max(0.0, min(1.0, float(frac))))
        else:
            Gimp.progress_pulse()

    def tick(self) -> None:
        Gimp.progress_pulse()

    def idle(self) -> bool:
        """Polled by the client about every 0.1 s while it waits: keep the bar moving until the first event.
        Never asks to cancel: GIMP cancels a plug-in by killing it, and the watchdog then cancels the job."""
        if not self.events:
            Gimp.progress_pulse()
        return False

    @staticmethod
    def end() -> None:
        Gimp.progress_end()


# ---- the dialog ----------------------------------------------------------------------------------------------------

def run_dialog(procedure: Any, config: Any, image: Any, layer: Any, cfg: PluginConfig, spec: ds.DialogSpec) -> bool:
    """The interactive Colorize dialog; True when the user pressed OK."""
    gi.require_version("GimpUi", "3.0")
    from gi.repository import GimpUi
    GimpUi.init("colorize-patch")
    dialog = GimpUi.ProcedureDialog.new(procedure, config, "Colorize (Patch)")
    dialog.fill([f for f in DIALOG_FIELDS if has(config, f)])
    panel = None
    try:
        panel = PreviewPanel(dialog, image, layer, config, cfg, spec)
    except Exception:       # noqa: BLE001 - the dialog works without its preview
        traceback.print_exc()
    ok = dialog.run()
    if panel is not None:
        panel.close()
    dialog.destroy()
    return bool(ok)


def status_note(text: str) -> None:
    """A short note in the status bar (GIMP's message console in batch mode)."""
    try:
        Gimp.message_set_handler(Gimp.MessageHandlerType.STATUS_BAR)
    except Exception:          # noqa: BLE001 - the default handler is fine too
        pass
    Gimp.message(text)


def show_note(title: str, text: str) -> None:
    """An information (not a warning) the user confirms with OK: for instructions in interactive runs."""
    gi.require_version("GimpUi", "3.0")
    gi.require_version("Gtk", "3.0")
    from gi.repository import GimpUi, Gtk
    GimpUi.init("colorize-patch")
    d = Gtk.MessageDialog(message_type=Gtk.MessageType.INFO, buttons=Gtk.ButtonsType.OK, text=title)
    d.format_secondary_text(text)
    d.run()
    d.destroy()


def _preview_pixbuf(res: Any) -> Any:
    """A ColorizeResult's 8-bit pixels -> GdkPixbuf (main thread)."""
    gi.require_version("GdkPixbuf", "2.0")
    from gi.repository import GdkPixbuf
    ch = 4 if res.fmt == "rgba8" else 3
    return GdkPixbuf.Pixbuf.new_from_bytes(GLib.Bytes.new(bytes(res.pixels)), GdkPixbuf.Colorspace.RGB, ch == 4, 8,
                                           res.width, res.height, res.width * ch)


def _holds_dialog_buttons(widget: Any) -> bool:
    """True for the dialog's own button rows (OK, Cancel, Save Settings...), found by their labels."""
    from gi.repository import Gtk
    if isinstance(widget, Gtk.Button):
        return (widget.get_label() or "") in ds.DIALOG_BUTTONS[:-1]
    return isinstance(widget, Gtk.Container) and any(_holds_dialog_buttons(c) for c in widget.get_children())


class PreviewPanel:
    """The column beside the options: what the colour hints do, a Preview button, the preview and its status.

    On open and on the button: a draft preview first, then the exact one replaces it (previewflow.PreviewFlow;
    the backend calls run in a daemon thread, the dialog never waits for them). Option changes refresh by
    themselves while the backend answered the last request within previewflow.AUTO_PREVIEW_S; a change made
    while a slower request runs refreshes once when that request ends. It never touches the image."""

    def __init__(self, dialog: Any, image: Any, layer: Any, config: Any, cfg: PluginConfig, spec: ds.DialogSpec):
        gi.require_version("Gtk", "3.0")
        from gi.repository import Gtk
        self.Gtk = Gtk
        self.dialog, self.image, self.layer, self.config, self.cfg = dialog, image, layer, config, cfg
        self.cache: dict[str, Any] = {}
        self.pending = 0
        self.endpoint = ""
        self.colorizers = {c.name: c.label for c in spec.choices["colorizer"]}
        self.chosen_colorizer = config.get_property("colorizer")      # the user's choice (hints may force another)
        self.forced = False                                          # the colorizer shows SIGGRAPH17 for hints
        self.setting = False
        try:
            self.n_hints = layers.hint_map(image, layer, True)[1]
            self.hint_error = None
        except PluginError as e:
            self.n_hints, self.hint_error = 0, str(e)
        if self.n_hints:
            config.set_property("use-hints", True)      # a hint layer is never ignored because of an earlier run

        self.hint_label = self._label()
        self.button = Gtk.Button.new_with_mnemonic(ds.DIALOG_BUTTONS[-1])
        self.status = self._label()
        self.picture = Gtk.Image()
        self.picture.set_size_request(PREVIEW_SIDE, PREVIEW_SIDE)      # the largest preview: no resize later
        self.picture.set_property("yalign", 0.0)
        column = Gtk.Box(orientation=Gtk.Orientation.VERTICAL, spacing=6)
        for widget in (self.hint_label, self.button, self.picture, self.status):
            column.pack_start(widget, False, False, 0)
        self._place(column)
        self._show_hints()

        self.flow = previewflow.PreviewFlow(self._fetch, self._show, self._failed, self.status.set_text,
                                            deliver=lambda fn: GLib.idle_add(fn), on_outdated=self._later)
        self.button.connect("clicked", self.refresh)
        self.handler = config.connect("notify", self._changed)
        GLib.idle_add(self.refresh)            # the first (draft) preview as soon as the dialog is up

    # ---- layout
    def _label(self) -> Any:
        label = self.Gtk.Label(label="", xalign=0.0, yalign=0.0)
        label.set_line_wrap(True)
        label.set_size_request(PREVIEW_SIDE, NOTE_LINES_PX)
        label.set_max_width_chars(40)
        return label

    def _place(self, column: Any) -> None:
        """The options on the left, this column on the right (inside the dialog's content area)."""
        Gtk = self.Gtk
        area = self.dialog.get_content_area()
        row = Gtk.Box(orientation=Gtk.Orientation.HORIZONTAL, spacing=12)
        left = Gtk.Box(orientation=Gtk.Orientation.VERTICAL, spacing=0)
        for child in area.get_children():
            if _holds_dialog_buttons(child):
                continue                                # the dialog's buttons stay below, full width
            area.remove(child)
            left.pack_start(child, True, True, 0)
        row.pack_start(left, True, True, 0)
        row.pack_start(column, False, False, 0)
        area.pack_start(row, True, True, 0)
        area.reorder_child(row, 0)
        row.show_all()

    # ---- what will run
    def _set_colorizer(self, name: str) -> None:
        if self.config.get_property("colorizer") != name and name in self.colorizers:
            self.setting = True
            try:
                self.config.set_property("colorizer", name)
            finally:
                self.setting = False

    def _show_hints(self) -> None:
        """The hint line, and the colorizer that will run: SIGGRAPH17 (locked) while visible hints are used."""
        use = bool(self.config.get_property("use-hints"))
        hinted = bool(self.n_hints) and use
        if hinted != self.forced:
            self.forced = hinted
            self._set_colorizer(ds.effective_colorizer(self.chosen_colorizer, self.n_hints, use))
        widget = self.dialog.get_widget("colorizer", GObject.TYPE_NONE)
        if widget is not None:
            widget.set_sensitive(not hinted)
        label = self.colorizers.get(self.chosen_colorizer, self.chosen_colorizer)
        self.hint_label.set_text(self.hint_error or ds.hint_note(self.n_hints, use, label, hintmap.HINT_LAYER_NAME))

    # ---- preview requests
    def _fetch(self, job: previewflow.PreviewJob, attempt: previewflow.Attempt) -> tuple[Any, int]:
        """Worker thread: no GIMP and no GTK calls here."""
        ensure_backend(job.endpoint, job.auto_start, self.cfg, set_text=attempt.note, tick=lambda: None)
        return previewflow.fetch_preview(job.inputs, job.options, job.endpoint, self.cfg, attempt), job.inputs.n_hints

    def _show(self, update: previewflow.PreviewUpdate) -> None:
        self.picture.set_from_pixbuf(_preview_pixbuf(update.result))
        text = previewflow.describe(update)
        if update.final and not self.flow.fast:
            text += " (press Preview after changes)"
        self.status.set_text(text)

    def _failed(self, failure: previewflow.PreviewFailure) -> None:
        self.status.set_text(f"No preview: {failure.message}")

    def _later(self) -> None:
        if self.pending:
            GLib.source_remove(self.pending)
        self.pending = GLib.timeout_add(400, self.refresh)      # one refresh after a burst of changes

    def inputs(self) -> previewflow.PreviewInputs:
        """The layer and hint layer as a preview sends them, read from GIMP once per dialog (it is modal, the
        image cannot change meanwhile)."""
        c = self.cache
        if "pixels" not in c:
            c["fmt"] = layers.wire_format(self.image, self.layer)
            c["pixels"] = layers.read(self.layer, c["fmt"])
        use = bool(self.config.get_property("use-hints"))
        if use and "hints" not in c:
            c["hints"] = layers.hint_map(self.image, self.layer, True)
        hints, n = c["hints"] if use else (None, 0)
        return previewflow.PreviewInputs(self.layer.get_width(), self.layer.get_height(), c["fmt"], c["pixels"],
                                         hints, n)

    def refresh(self, *_args: Any) -> bool:
        self.pending = 0
        if self.flow.closed:
            return False
        try:
            self.endpoint = self.cfg.endpoint(self.config.get_property("endpoint"))
            job = previewflow.PreviewJob(self.inputs(), ds.options_from_values(values(self.config)), self.endpoint,
                                         self.cfg.auto_start(self.config.get_property("auto-start")))
        except Exception as e:      # noqa: BLE001 - shown in the dialog, never fatal
            self.flow.cancel()
            self.status.set_text(f"No preview: {e}")
            return False
        self.status.set_text("Draft preview\u2026" if self.picture.get_storage_type() == self.Gtk.ImageType.EMPTY
                             else "Updating the preview\u2026")
        self.flow.request(job)          # an older request still running is cancelled by its worker
        return False

    def _changed(self, _config: Any, pspec: Any) -> None:
        if self.setting:
            return
        if pspec.name == "colorizer":        # the user's choice (or GIMP's Reset): hints keep SIGGRAPH17 shown
            self.chosen_colorizer = self.config.get_property("colorizer")
            if self.forced:
                self._set_colorizer(ds.effective_colorizer(self.chosen_colorizer, self.n_hints, True))
        if pspec.name == "use-hints":
            self._show_hints()
        if not self.flow.closed and self.flow.option_changed():
            self._later()

    def close(self) -> None:
        """Before the dialog is destroyed: stop refreshing, cancel the preview the backend is computing (a request
        not sent yet is never sent; one just sent is cancelled on a second try), and give the config the user's
        colorizer back (GIMP remembers it for the next image; with hints the backend runs SIGGRAPH17 anyway)."""
        ids = self.flow.close()
        if self.pending:
            GLib.source_remove(self.pending)
            self.pending = 0
        self.config.disconnect(self.handler)
        self._set_colorizer(self.chosen_colorizer)
        if ids is not None and self.endpoint and not cancel_job(self.endpoint, self.cfg, ids, timeout_s=1.0):
            if not self.flow.wait_idle(0.5):
                cancel_job(self.endpoint, self.cfg, ids, timeout_s=1.0)
