"""Screenshots of the Colorize (Patch) dialog with its preview and colour hints, from a real GIMP 3 under Xvfb in the
chroot (random weights). The dialog asks for a draft preview on open and replaces it with the exact one when that
arrives (the backend call runs in a thread: the dialog stays responsive meanwhile). Shots of the dialog window are
taken SHOT_TIMES seconds (comma-separated, default "8,20,60") after it appeared, as
$SHOT_DIR/dialog-preview-<t>s.png (default /tmp/h4/fig), plus screen.png at the end; docs/img/dialog-hints-preview.png
is one of them. SHOT_CLICKS="t:x,y;..." clicks at window coordinates (x, y) t seconds after it appeared, e.g. the
Saturation "+" while the exact preview is computed: a later shot shows the new value (the dialog was not frozen),
or OK (the dialog closes without waiting for the preview). screen.png is taken SHOT_END seconds after the dialog
appeared (default: after the last shot).
Run from the repo root with .venv/bin/python."""
import os, shutil, signal, subprocess, sys, tempfile, time
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import numpy as np
from gimp_harness import find_gimp, free_port
from test_gimp_plugin import _start_backend, _stop, photo, write_png
from fake_colorizers import write_colorizer_pth
from fake_r101 import write_r101_pkl

GIMP, why = find_gimp()
assert GIMP is not None and GIMP.mode == "chroot", why
root = str(GIMP.root)
models = Path(tempfile.mkdtemp())
write_colorizer_pth("eccv16", models, seed=1)
write_colorizer_pth("siggraph17", models, seed=2, with_num_batches_tracked=False)
write_r101_pkl(models / "model_final_a3ec72.pkl", seed=3, bias_class=0)
endpoint = f"tcp://127.0.0.1:{free_port()}"
backend = _start_backend(models, Path(tempfile.mkdtemp()) / "serve.log", endpoint)
work = GIMP.workdir("shot")
procs = []
try:
    (work.host / "in").mkdir()
    g = np.clip(np.rint(photo(300, 300) * 255), 0, 255).astype(np.uint8)
    write_png(work.host / "in" / "photo.png", g)
    GIMP.install_plugin(work, backend_cmd=None, endpoint=endpoint, log_path=work.inner_path("out", "backend.log"),
                        extra_config={"timeout_s": 120.0})
    batch = f'''
import json
from gi.repository import Gimp, Gegl, Gio
pdb = Gimp.get_pdb()
img = Gimp.file_load(Gimp.RunMode.NONINTERACTIVE, Gio.File.new_for_path("{work.inner_path('in', 'photo.png')}"))
src = img.get_selected_layers()[0]
def call(name, image, drawables, mode, **props):
    proc = pdb.lookup_procedure(name)
    cfg = proc.create_config()
    cfg.set_property("run-mode", mode)
    cfg.set_property("image", image)
    cfg.set_core_object_array("drawables", drawables)
    for k, v in props.items():
        cfg.set_property(k, v)
    return proc.run(cfg)
r = call("plug-in-colorize-patch-add-hints", img, [src], Gimp.RunMode.NONINTERACTIVE)
hl = r.index(1)
for (x, y, rgb) in [(150, 232, (30, 60, 200)), (195, 95, (220, 170, 140)), (45, 60, (200, 40, 40))]:
    hl.get_buffer().set(Gegl.Rectangle.new(x - 4, y - 4, 8, 8), "R'G'B'A u8", bytes((*rgb, 255)) * 64)
hl.update(0, 0, 300, 300)
Gimp.Display.new(img)
call("plug-in-colorize-patch", img, [src], Gimp.RunMode.INTERACTIVE, colorizer="siggraph17", saturation=2.0,
     **{{"max-instances": 3, "endpoint": "{endpoint}"}})
'''
    (work.host / "gui.py").write_text(batch)
    env = ["env", "-i", f"HOME={work.inner_path('home')}", f"GIMP3_DIRECTORY={work.inner_path('profile')}",
           f"XDG_CONFIG_HOME={work.inner_path('home/.config')}", f"XDG_CACHE_HOME={work.inner_path('home/.cache')}",
           f"XDG_DATA_HOME={work.inner_path('home/.local/share')}", f"TMPDIR={work.inner_path('out')}",
           "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8", "DISPLAY=:77"]
    xlog = open(work.host / "out" / "xvfb.log", "wb")
    procs.append(subprocess.Popen(["chroot", root, *env, "Xvfb", ":77", "-screen", "0", "1500x1000x24", "-nolisten", "tcp"],
                                  stdout=xlog, stderr=xlog))
    time.sleep(3)
    glog = open(work.host / "out" / "gimp.log", "wb")
    procs.append(subprocess.Popen(["chroot", root, *env, "gimp-3.0", "--no-splash", "--batch-interpreter=python-fu-eval",
                                   "-b", f'exec(open("{work.inner_path("gui.py")}").read())'], stdout=glog, stderr=glog))
    def x(*args):
        return subprocess.run(["chroot", root, *env, *args], capture_output=True, text=True, timeout=60)
    wid = None
    end = time.time() + 240
    while time.time() < end and wid is None:
        time.sleep(3)
        r = x("xdotool", "search", "--name", "^Colorize \\(Patch\\)$")
        ids = r.stdout.split()
        if ids:
            wid = ids[-1]
    print("window", wid, flush=True)
    assert wid, (work.host / "out" / "gimp.log").read_text()[-3000:]
    t_open = time.time()
    x("xdotool", "windowactivate", "--sync", wid)
    names = []
    events = [(float(v), "shot", None) for v in os.environ.get("SHOT_TIMES", "8,20,60").split(",")]
    for item in filter(None, os.environ.get("SHOT_CLICKS", "").split(";")):
        t, xy = item.split(":")
        events.append((float(t), "click", xy.split(",")))
    for t, kind, xy in sorted(events, key=lambda e: e[0]):
        time.sleep(max(0.0, t_open + t - time.time()))
        if kind == "click":
            x("xdotool", "mousemove", "--window", wid, xy[0], xy[1], "click", "1")
            print(f"click {xy} at {time.time() - t_open:.1f} s", flush=True)
            continue
        name = f"dialog-preview-{t:g}s.png"
        if x("xdotool", "getwindowname", wid).returncode != 0:
            print(f"no dialog at {t:g} s (closed)", flush=True)
            continue
        x("import", "-window", wid, work.inner_path("out", name))
        names.append(name)
        print("shot", name, f"at {time.time() - t_open:.1f} s", flush=True)
    time.sleep(max(0.0, t_open + float(os.environ.get("SHOT_END", "0")) - time.time()))
    x("import", "-window", "root", work.inner_path("out", "screen.png"))
    shot_dir = os.environ.get("SHOT_DIR", "/tmp/h4/fig")
    os.makedirs(shot_dir, exist_ok=True)
    for n in names + ["screen.png"]:
        p = work.host / "out" / n
        if p.exists():
            shutil.copy(p, os.path.join(shot_dir, n))
    print("done", flush=True)
finally:
    for p in reversed(procs):
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
    _stop(backend)
    if not os.environ.get("PATCHCOLOR_KEEP_GIMP_WORK"):
        GIMP.cleanup(work)
        shutil.rmtree(models, ignore_errors=True)
