"""Screenshots of the Colorize (Patch) dialog and of a mask turned on, from a real GIMP 3 under Xvfb (random weights,
so the colours mean nothing). Run from the repo root: ``.venv/bin/python bench/screenshot_dialog_preview.py``.

A 1366x768 screen (SCREEN="WxH" to change it). GIMP opens a photo with a colour-hint layer and runs Colorize (Patch)
interactively; the dialog shows a draft preview, then the exact one. Written to $SHOT_DIR (default docs/img):

  dialog-1366x768.png       the whole screen with the dialog over GIMP's window, once the exact preview is shown
  dialog-draft-preview.png  the dialog with the draft preview, while the exact one is computed
  mask-highlight.png      GIMP's window after OK, with the largest object's mask layer turned on (highlighted)

It prints the dialog's size when it opened and after the preview arrived (they must be equal) and the backend's
job lines. Needs Xvfb, xdotool and ImageMagick's import where GIMP runs (see tests/gimp_harness.py).
"""
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
import numpy as np  # noqa: E402
from fake_colorizers import write_colorizer_pth  # noqa: E402
from fake_r101 import write_r101_pkl  # noqa: E402
from gimp_harness import GuiSession, find_gimp, gui_missing  # noqa: E402
from test_gimp_dialog import Backend, gui_batch, wait_preview_done  # noqa: E402
from test_gimp_plugin import photo, write_png  # noqa: E402


def stable_shot(gui: GuiSession, path: Path, limit_s: float = 30.0) -> None:
    """A screenshot once GIMP has redrawn (two captures a second apart are identical), at most ``limit_s``."""
    end = time.monotonic() + limit_s
    gui.shot(None, path)
    while time.monotonic() < end:
        time.sleep(1.0)
        before = path.read_bytes()
        gui.shot(None, path)
        if path.read_bytes() == before:
            return


def main() -> int:
    gimp, why = find_gimp()
    if gimp is None or gui_missing(gimp):
        print(f"no GIMP GUI: {why if gimp is None else gui_missing(gimp)}")
        return 1
    sw, sh = (int(v) for v in os.environ.get("SCREEN", "1366x768").split("x"))
    shot_dir = Path(os.environ.get("SHOT_DIR", REPO / "docs" / "img"))
    models = Path(tempfile.mkdtemp())
    write_colorizer_pth("eccv16", models, seed=1)
    write_colorizer_pth("siggraph17", models, seed=2, with_num_batches_tracked=False)
    write_r101_pkl(models / "model_final_a3ec72.pkl", seed=3, bias_class=0)
    work = gimp.workdir("shot")
    try:
        with Backend(models, work.host / "out" / "serve.log") as backend:
            (work.host / "in").mkdir()
            write_png(work.host / "in" / "photo.png",
                      np.clip(np.rint(photo(400, 600) * 255), 0, 255).astype(np.uint8))
            gimp.install_plugin(work, backend_cmd=None, endpoint=backend.endpoint,
                                log_path=work.inner_path("out", "backend.log"), extra_config={"timeout_s": 120.0})
            gui_batch(work, [("photo.png", True, "ok_then_show_mask")], backend.endpoint)
            with GuiSession(gimp, work, "gui.py", sw, sh) as gui:
                wid = gui.window(r"^Colorize \(Patch\)$", timeout=300)
                assert wid, gui.gimp_log.read_text()[-3000:]
                g0 = gui.geometry(wid)
                main_window = gui.window(" GIMP$", timeout=10)
                if main_window:                                  # GIMP's window fills the screen, as on a laptop
                    gui.x("xdotool", "windowsize", main_window, str(sw), str(sh))
                print(f"dialog opened: {g0['WIDTH']}x{g0['HEIGHT']} at {g0['X']},{g0['Y']} on {sw}x{sh}", flush=True)
                out = work.host / "out"
                assert wait_preview_done(backend, 1, timeout=600), backend.log.lines[-20:]
                gui.shot(wid, out / "draft.png")
                assert wait_preview_done(backend, 2, timeout=600), backend.log.lines[-20:]
                g1 = gui.geometry(wid)
                print(f"after the exact preview: {g1['WIDTH']}x{g1['HEIGHT']}", flush=True)
                gui.shot(None, out / "screen.png")
                gui.key(wid, "alt+o")                                       # OK
                assert gui.gimp_out.wait_for("MASK SHOWN", timeout=600), gui.gimp_log.read_text()[-3000:]
                stable_shot(gui, out / "mask.png")
                os.close(os.open(out / "shots_done", os.O_WRONLY | os.O_NONBLOCK))
                gui.gimp_proc.wait(120)
            for line in backend.log.lines:
                if "job #" in line:
                    print("backend:", line.split("] ")[-1])
        shot_dir.mkdir(parents=True, exist_ok=True)
        for src, name in (("screen.png", f"dialog-{sw}x{sh}.png"), ("draft.png", "dialog-draft-preview.png"),
                          ("mask.png", "mask-highlight.png")):
            shutil.copy(work.host / "out" / src, shot_dir / name)
            print("wrote", shot_dir / name)
        return 0
    finally:
        if not os.environ.get("PATCHCOLOR_KEEP_GIMP_WORK"):
            gimp.cleanup(work)
            shutil.rmtree(models, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
