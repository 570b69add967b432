"""The Colorize (Patch) dialog in a real GIMP 3 with its user interface, under Xvfb at 1366x768, against the real
backend (random official-format weights).

One GIMP start opens the dialog three times (scripted in GIMP, driven with xdotool through the buttons' and fields'
Alt+letter mnemonics; the backend's log says what it runs), each time while the exact preview is being computed:
on a photo without hints "Use colour hints" is switched off and OK pressed (GIMP remembers the switch); on a photo
with hints Cancel is pressed; on another photo with hints OK. Checked: the dialog fits the screen and keeps its size
when the preview arrives; Cancel cancels the preview job on the backend (it does not run to its end); OK cancels
the preview and starts the colorize job at once; a remembered "hints off" does not silently ignore a later photo's
hint layer, and the colorizer GIMP remembers is the user's, not the one hints forced; GIMP logs no "no mnemonic"
warning for any field. Skipped when GIMP 3 or Xvfb/xdotool/ImageMagick are not available (see gimp_harness.py).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gimp_harness import REPO, GuiSession, LineWatcher, find_gimp, free_port, gui_missing  # noqa: E402
from test_gimp_plugin import photo, write_png  # noqa: E402

GIMP, WHY = find_gimp()
GUI_WHY = gui_missing(GIMP) if GIMP is not None else WHY
needs_gui = pytest.mark.skipif(GUI_WHY is not None, reason=f"no GIMP 3 GUI: {GUI_WHY}")
PATCHCOLOR = REPO / ".venv" / "bin" / "patchcolor"
SCREEN = (1366, 768)
PANEL_PX = 48               # a desktop panel / taskbar the dialog must leave room for
TITLE = r"^Colorize \(Patch\)$"


class Backend:
    """`patchcolor serve` on a free loopback port; its log lines are watched (LineWatcher) as they come."""

    def __init__(self, models_dir: Path, log_path: Path):
        self.endpoint = f"tcp://127.0.0.1:{free_port()}"
        env = {**os.environ, "PATCHCOLOR_MODELS": str(models_dir)}
        self.proc = subprocess.Popen([str(PATCHCOLOR), "serve", "--endpoint", self.endpoint, "--device", "cpu",
                                      "--models", str(models_dir)], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, env=env)
        self.log = LineWatcher(self.proc.stdout, log_path)

    def __enter__(self) -> "Backend":
        if not self.log.wait_for(r"serving protocol", timeout=180):
            self.__exit__()
            raise RuntimeError("patchcolor serve did not start:\n" + "\n".join(self.log.lines[-30:]))
        return self

    def __exit__(self, *exc) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def wait_preview_done(backend: Backend, count: int, timeout: float, start: int = 0) -> bool:
    """Wait until ``count`` preview jobs logged after line ``start`` are done."""
    end = time.monotonic() + timeout
    pos = start
    for _ in range(count):
        m = backend.log.wait_for(r"\(preview\) done", max(0.0, end - time.monotonic()), pos)
        if m is None:
            return False
        pos = next(i for i in range(pos, len(backend.log.lines)) if m.string == backend.log.lines[i]) + 1
    return True


def _line_index(lines: list[str], match, start: int = 0) -> int:
    return next(i for i in range(start, len(lines)) if lines[i] == match.string)


#: GIMP batch code: for each (photo, with hints, action) open the photo, optionally add a hint layer with a dab,
#: show it, run Colorize (Patch) interactively, and record the status in out/result.json
GUI_BATCH = r'''
import json, os, select
from gi.repository import Gimp, Gegl, Gio
P = json.load(open(PARAMS))
pdb = Gimp.get_pdb()
R = []

def call(name, image, drawables, mode, **props):
    proc = pdb.lookup_procedure(name)
    cfg = proc.create_config()
    cfg.set_property("run-mode", mode)
    cfg.set_property("image", image)
    cfg.set_core_object_array("drawables", drawables)
    for k, v in props.items():
        cfg.set_property(k, v)
    res = proc.run(cfg)
    return res.index(0).value_nick, [res.index(i) for i in range(1, res.length())]

for photo, hints, action in P["steps"]:
    img = Gimp.file_load(Gimp.RunMode.NONINTERACTIVE, Gio.File.new_for_path(photo))
    src = img.get_selected_layers()[0]
    if hints:
        s, v = call("plug-in-colorize-patch-add-hints", img, [src], Gimp.RunMode.NONINTERACTIVE)
        hl = v[0]
        w, h = img.get_width(), img.get_height()
        for (x, y, rgb) in [(w // 2, h * 3 // 4, (30, 60, 200)), (w * 2 // 3, h // 4, (220, 170, 140))]:
            hl.get_buffer().set(Gegl.Rectangle.new(x - 4, y - 4, 8, 8), "R'G'B'A u8", bytes((*rgb, 255)) * 64)
        hl.update(0, 0, w, h)
    Gimp.Display.new(img)
    Gimp.displays_flush()
    s, v = call("plug-in-colorize-patch", img, [src], Gimp.RunMode.INTERACTIVE, saturation=2.0,
                **{"max-instances": 3, "endpoint": P["endpoint"]})
    R.append({"photo": photo, "status": s})
    if s == "success":
        R[-1]["meta"] = json.loads(bytes(v[0].get_parasite("colorize-patch").get_data()).decode())
    json.dump(R, open(P["out"] + "/result.json", "w"))
    if s == "success" and action == "ok_then_show_mask":
        group = v[0]
        masks = [c for c in group.get_children() if c.is_group_layer()]
        if masks and masks[0].get_children():       # the largest object's mask, turned on
            def area(l):
                return sum(l.get_buffer().get(Gegl.Rectangle.new(0, 0, l.get_width(), l.get_height()), 1.0,
                                              "Y' u8", Gegl.AbyssPolicy.NONE)) // 255
            m = max(masks[0].get_children(), key=area)
            m.set_visible(True)
            img.set_selected_layers([m])
        Gimp.displays_flush()
        fifo = P["out"] + "/shots_done"
        os.mkfifo(fifo)
        fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
        print("MASK SHOWN", flush=True)
        select.select([fd], [], [], 600)
        os.close(fd)
'''


def gui_batch(work, steps: list[tuple[str, bool, str]], endpoint: str) -> None:
    """Write work/gui.py (GUI_BATCH) and its parameters; ``steps``: (photo file in work/in, with hints, action)."""
    params = {"out": work.inner_path("out"), "endpoint": endpoint,
              "steps": [[work.inner_path("in", p), h, a] for p, h, a in steps]}
    (work.host / "params.json").write_text(json.dumps(params))
    (work.host / "gui.py").write_text(GUI_BATCH.replace("PARAMS", repr(work.inner_path("params.json"))))


def _dialog(gui: GuiSession, backend: Backend, action: str, first_keys: tuple[str, ...] = ()) -> dict:
    """One dialog: wait for it and its draft preview, then, while the exact preview is computed, type
    ``first_keys`` and press ``action`` ("cancel" or "ok"). Returns what happened (sizes, the backend jobs and
    when they ended)."""
    start = len(backend.log.lines)
    wid = gui.window(TITLE, timeout=300)
    assert wid, gui.gimp_log.read_text()[-3000:]
    r = {"open": gui.geometry(wid)}
    draft = backend.log.wait_for(r"\(preview\) done", 600, start)
    assert draft, backend.log.lines[-20:]
    after_draft = _line_index(backend.log.lines, draft, start)
    exact = backend.log.wait_for(r"job #(\d+) \(preview ", 120, after_draft)
    assert exact, backend.log.lines[-20:]
    r["preview_job"] = int(exact.group(1))
    r["after_preview"] = gui.geometry(wid)
    for keys in first_keys:
        gui.key(wid, keys)
    click_at = len(backend.log.lines)
    t0 = time.monotonic()
    gui.key(wid, "alt+o" if action == "ok" else "alt+c")       # the _OK / _Cancel buttons' mnemonics
    ended = backend.log.wait_for(rf"job #{r['preview_job']} (cancelled|\(preview\) done)", 300, after_draft)
    r["preview_ended"] = ended.group(1) if ended else None
    r["preview_end_s"] = time.monotonic() - t0
    if action == "ok":
        job = backend.log.wait_for(r"job #(\d+) \(colorize ", 120, click_at)
        r["colorize_queued_s"] = time.monotonic() - t0 if job else None
        if job:
            done = backend.log.wait_for(rf"job #{job.group(1)} (done|cancelled|failed)", 600, click_at)
            r["colorize_ended"] = done.group(1) if done else None
            r["colorize_done_s"] = time.monotonic() - t0
    return r


@pytest.fixture(scope="module")
def dialogs(models_dir):
    if GUI_WHY is not None:
        pytest.skip(f"no GIMP 3 GUI: {GUI_WHY}")
    work = GIMP.workdir("dialog")
    out = work.host / "out"
    try:
        with Backend(models_dir, out / "serve.log") as backend:
            (work.host / "in").mkdir()
            for name, flip in (("a.png", None), ("b.png", 1), ("c.png", 0)):
                img = photo(360, 480)
                img = np.flip(img, axis=flip) if flip is not None else img     # different images: no cache hit
                write_png(work.host / "in" / name, np.clip(np.rint(img * 255), 0, 255).astype(np.uint8))
            GIMP.install_plugin(work, backend_cmd=None, endpoint=backend.endpoint,
                                log_path=work.inner_path("out", "backend.log"), extra_config={"timeout_s": 120.0})
            gui_batch(work, [("b.png", False, "ok"), ("a.png", True, "cancel"), ("c.png", True, "ok")],
                      backend.endpoint)
            t0 = time.monotonic()
            with GuiSession(GIMP, work, "gui.py", *SCREEN) as gui:
                runs = [_dialog(gui, backend, "ok", ("alt+n",)),       # "Use colour hi_nts" off, then OK
                        _dialog(gui, backend, "cancel"), _dialog(gui, backend, "ok")]
                gui.gimp_proc.wait(300)
            print(f"\n[test_gimp_dialog] {GIMP.describe()} under Xvfb {SCREEN[0]}x{SCREEN[1]}: "
                  f"{time.monotonic() - t0:.1f} s; {runs}", file=sys.stderr)
            result = json.loads((out / "result.json").read_text()) if (out / "result.json").exists() else []
            yield {"runs": runs, "result": result, "gimp_log": gui.gimp_log.read_text(),
                   "backend": list(backend.log.lines)}
    finally:
        if not os.environ.get("PATCHCOLOR_KEEP_GIMP_WORK"):
            GIMP.cleanup(work)


@needs_gui
def test_dialog_fits_a_laptop_screen_and_keeps_its_size(dialogs):
    for key, run in enumerate(dialogs["runs"]):
        g0, g1 = run["open"], run["after_preview"]
        assert (g0["WIDTH"], g0["HEIGHT"]) == (g1["WIDTH"], g1["HEIGHT"]), (key, g0, g1)
        assert g0["WIDTH"] <= SCREEN[0] and g0["HEIGHT"] <= SCREEN[1] - PANEL_PX, (key, g0)
        # the preview is beside the options: the dialog is wider than tall
        assert g0["WIDTH"] > g0["HEIGHT"], g0


@needs_gui
def test_cancel_with_a_preview_running_cancels_its_backend_job(dialogs):
    r = dialogs["runs"][1]
    assert r["preview_ended"] == "cancelled", (r, dialogs["backend"][-15:])
    assert dialogs["result"][1]["status"] == "cancel"


@needs_gui
def test_ok_during_a_preview_starts_the_job_at_once(dialogs):
    for i in (0, 2):
        r = dialogs["runs"][i]
        assert r["preview_ended"] == "cancelled", (r, dialogs["backend"][-15:])
        assert r["colorize_queued_s"] is not None and r["colorize_queued_s"] < 10, r
        assert r["colorize_ended"] == "done", r
        assert dialogs["result"][i]["status"] == "success"


@needs_gui
def test_remembered_settings_never_silently_disable_hints(dialogs):
    """Hints were switched off on the first photo (no hints) and GIMP remembered it; the third photo has a hint
    layer: its dialog switched hints on again and the colorize used them. The colorizer the dialog showed for the
    hints (SIGGRAPH17) is not what GIMP remembers: the run stored the user's choice."""
    first, third = dialogs["result"][0], dialogs["result"][2]
    assert first["meta"]["hints"] == 0 and third["meta"]["hints"] >= 1, (first["meta"], third["meta"])
    assert third["meta"]["options"]["colorizer"] == first["meta"]["options"]["colorizer"] == "eccv16"


@needs_gui
def test_gimp_logs_no_missing_mnemonic(dialogs):
    log = dialogs["gimp_log"]
    assert "no mnemonic" not in log, [ln for ln in log.splitlines() if "mnemonic" in ln]
