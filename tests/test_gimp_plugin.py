"""The GIMP 3 plug-in in a real, headless GIMP 3 against the real backend (random official-format weights).

One GIMP start runs every case (each start costs ~6 s): the batch code below calls the two procedures through the
PDB and writes result.json plus raw pixel dumps; the tests assert on those, comparing with what the same backend
returns to a direct client call from this process.  Skipped, with the reason printed, when no GIMP 3 is available
(natively, or in the chroot at $GIMP3_ROOT that ../shared/gimp3/setup-gimp3.sh makes).

Environment knobs (for development): PATCHCOLOR_KEEP_GIMP_WORK=1 keeps the GIMP work folder (inputs, profile, raw
dumps, result.json); PATCHCOLOR_GIMP_TEST_ENDPOINT=tcp://... uses an already running backend instead of starting one
(it must run with --max-pixels 500000 for the "too large" case).
"""
from __future__ import annotations

import json
import os
import re
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gimp_harness import REPO, find_gimp, free_port  # noqa: E402

GIMP, WHY = find_gimp()
if GIMP is None:
    print(f"\n[test_gimp_plugin] skipped: {WHY}", file=sys.stderr)
needs_gimp = pytest.mark.skipif(GIMP is None, reason=f"no GIMP 3: {WHY}")

PATCHCOLOR = REPO / ".venv" / "bin" / "patchcolor"
MAX_PIXELS = 500_000          # the test backend's image size limit (the "too large" case is 800 x 700)
# With random weights ECCV16 predicts nearly the same (almost gray) colour everywhere; SIGGRAPH17 with the largest
# saturation gain gives instance colours that differ visibly from the full-image colour, which recompose tests need.
OPTIONS = {"preset": "default", "colorizer": "siggraph17", "detector": "r101", "score_thresh": 0.3,
           "max_instances": 3, "saturation": 4.0, "feather": 0.02}
DIALOG_ARGS = {"preset": "default", "colorizer": "siggraph17", "detector": "r101", "score-threshold": 0.3,
               "max-instances": 3, "saturation": 4.0, "feather": 2.0}
# DDColor-T (random weights in the model zoo's format, conftest ``ddcolor_models``) chosen in the dialog; saturation 1:
# its colours are strong already.
DD_DIALOG = {"colorizer": "ddcolor-tiny", "saturation": 1.0}
DD_OPTIONS = {**OPTIONS, **DD_DIALOG}
DD_PREVIEW_SIDE = 64
# The plug-in is installed from a catalogue with one more colorizer and Options with another feathering range: the
# registered dialog must offer exactly those (the backend itself runs with the real catalogue).
EXTRA_COLORIZER = ("test-colorizer", "Test colorizer (from a changed catalogue)")
FEATHER_RANGE = (0.0, 0.4)


# ---------------------------------------------------------------------------------------------------------------------
# inputs
# ---------------------------------------------------------------------------------------------------------------------

def write_png(path: Path, a: np.ndarray) -> None:
    """Minimal PNG writer (gray / RGB / RGBA, 8 or 16 bit) so the inputs do not depend on an imaging library."""
    a = np.ascontiguousarray(a)
    h, w = a.shape[:2]
    ch = 1 if a.ndim == 2 else a.shape[2]
    depth = 16 if a.dtype == np.uint16 else 8
    ctype = {1: 0, 2: 4, 3: 2, 4: 6}[ch]
    rows = a.astype(">u2" if depth == 16 else np.uint8).reshape(h, -1).tobytes()
    stride = len(rows) // h
    raw = b"".join(b"\0" + rows[i * stride:(i + 1) * stride] for i in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, ctype, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))


def photo(h: int, w: int, rgb: bool = False) -> np.ndarray:
    """A real photograph (scikit-image's astronaut), resized; float in [0, 1]."""
    from skimage import data, transform
    from skimage.color import rgb2gray
    img = data.astronaut().astype(np.float32) / 255
    img = transform.resize(img, (h, w), anti_aliasing=True)
    return img if rgb else rgb2gray(img)


# A stand-in backend run *inside* GIMP's environment by the plug-in's auto-start: answers ping, refuses jobs with a
# weights_missing error, records each start in a marker file, and exits after 60 s.
FAKE_BACKEND = r'''
import json, sys, time, zmq
marker, endpoint = sys.argv[1], sys.argv[sys.argv.index("--endpoint") + 1]
open(marker, "a").write("started\n")
ctx = zmq.Context(); s = ctx.socket(zmq.ROUTER); s.bind(endpoint)
end = time.time() + 60
while time.time() < end:
    if not s.poll(200):
        continue
    frames = s.recv_multipart()
    ident, h = frames[0], json.loads(frames[1])
    if h.get("type") == "ping":
        r = {"v": 1, "type": "pong", "id": h.get("id")}
    else:
        r = {"v": 1, "type": "error", "id": h.get("id"), "code": "weights_missing",
             "message": "fake backend: the colorizer weights are missing; run: python3 install.py"}
    s.send_multipart([ident, json.dumps(r).encode()])
'''


# ---------------------------------------------------------------------------------------------------------------------
# batch code run by GIMP (python-fu-eval): everything GIMP does in this test module
# ---------------------------------------------------------------------------------------------------------------------

#: Run a PDB procedure non-interactively from a test script inside GIMP: (status nick, return values, last error).
#: Shared by this module's and test_gimp_hints.py's in-GIMP scripts.
GIMP_CALL = r'''
def call(name, image, drawables, **props):
    proc = pdb.lookup_procedure(name)
    cfg = proc.create_config()
    cfg.set_property("run-mode", Gimp.RunMode.NONINTERACTIVE)
    cfg.set_property("image", image)
    cfg.set_core_object_array("drawables", drawables)
    for k, v in props.items():
        cfg.set_property(k, v)
    res = proc.run(cfg)
    vals = [res.index(i) for i in range(1, res.length())]
    return res.index(0).value_nick, vals, pdb.get_last_error()
'''

BATCH = r'''
import json, sys, traceback
from gi.repository import Gimp, Gegl, Gio, GLib, GObject
P = json.load(open(PARAMS_PATH))
OUT = P["out"]
R = {"cases": {}, "errors": {}, "timings": {}}
pdb = Gimp.get_pdb()
BABL = {"gray8": "Y' u8", "graya8": "Y'A u8", "rgb8": "R'G'B' u8", "rgba8": "R'G'B'A u8",
        "gray16": "Y' u16", "graya16": "Y'A u16", "rgb16": "R'G'B' u16", "rgba16": "R'G'B'A u16"}
RESULT = {"gray8": "rgb8", "graya8": "rgba8", "gray16": "rgb16", "graya16": "rgba16"}

def save():
    with open(OUT + "/result.json", "w") as f:
        json.dump(R, f, indent=1, default=str)

def dump(d, fmt, name):
    data = d.get_buffer().get(Gegl.Rectangle.new(0, 0, d.get_width(), d.get_height()), 1.0, fmt,
                              Gegl.AbyssPolicy.NONE)
    with open(OUT + "/" + name, "wb") as f:
        f.write(bytes(data))
    return name

def wire_format(image, layer):
    u8 = image.get_precision() in (Gimp.Precision.U8_LINEAR, Gimp.Precision.U8_NON_LINEAR,
                                   Gimp.Precision.U8_PERCEPTUAL)
    gray = image.get_base_type() == Gimp.ImageBaseType.GRAY
    return ("gray" if gray else "rgb") + ("a" if layer.has_alpha() else "") + ("8" if u8 else "16")

GIMP_CALL

def parts(group):
    """(Colorized layer, {mask index: mask layer}, Masks group) found by parasite, as recompose finds them."""
    found = {"col": None, "masks": {}, "masks_group": None}
    def walk(g):
        for c in g.get_children():
            if c.get_parasite("colorize-patch-masks") is not None:
                found["masks_group"] = c
            if c.is_group_layer():
                walk(c)
            elif c.get_parasite("colorize-patch-colorized") is not None:
                found["col"] = c
            elif c.get_parasite("colorize-patch-mask") is not None:
                found["masks"][json.loads(bytes(c.get_parasite("colorize-patch-mask").get_data()))["index"]] = c
    walk(group)
    return found["col"], [found["masks"][i] for i in sorted(found["masks"])], found["masks_group"]

def find_group(image):
    for l in image.get_layers():
        if l.get_parasite("colorize-patch") is not None:
            return l

def clear(layer):
    w, h = layer.get_width(), layer.get_height()
    layer.get_buffer().set(Gegl.Rectangle.new(0, 0, w, h), "Y' u8", bytes(w * h))
    layer.update(0, 0, w, h)

def describe(it):
    d = {"name": it.get_name(), "group": it.is_group_layer(), "visible": it.get_visible(),
         "opacity": it.get_opacity(), "mode": it.get_mode().value_nick,
         "offsets": list(it.get_offsets()[1:]), "size": [it.get_width(), it.get_height()],
         "alpha": it.has_alpha(), "has_mask": (not it.is_group_layer()) and it.get_mask() is not None}
    if it.is_group_layer():
        d["children"] = [describe(c) for c in it.get_children()]
    return d

def tree(image):
    return [describe(l) for l in image.get_layers()]

def visible(image, name):
    tmp = Gimp.Image.new(image.get_width(), image.get_height(), Gimp.ImageBaseType.RGB)
    v = Gimp.Layer.new_from_visible(image, tmp, "v")
    tmp.insert_layer(v, None, 0)
    dump(v, "R'G'B'A u8", name)
    tmp.delete()

def new_image(w, h, base, precision, layers):
    """layers: list of (name, raw path, babl fmt, w, h, offx, offy, alpha)."""
    img = Gimp.Image.new_with_precision(w, h, base, precision)
    out = []
    for (name, raw, fmt, lw, lh, ox, oy, alpha) in layers:
        gray = base == Gimp.ImageBaseType.GRAY
        t = {(True, False): Gimp.ImageType.GRAY_IMAGE, (True, True): Gimp.ImageType.GRAYA_IMAGE,
             (False, False): Gimp.ImageType.RGB_IMAGE, (False, True): Gimp.ImageType.RGBA_IMAGE}[(gray, alpha)]
        l = Gimp.Layer.new(img, name, lw, lh, t, 100.0, Gimp.LayerMode.NORMAL)
        img.insert_layer(l, None, 0)
        l.set_offsets(ox, oy)
        buf = l.get_buffer()
        buf.set(Gegl.Rectangle.new(0, 0, lw, lh), fmt, open(raw, "rb").read())
        buf.flush()
        out.append(l)
    return img, out

def colorize_case(key, image, src, **props):
    c = R["cases"][key] = {}
    fmt = wire_format(image, src)
    c["wire_format"] = fmt
    c["src_size"] = [src.get_width(), src.get_height()]
    c["src_offsets"] = list(src.get_offsets()[1:])
    c["src_parent"] = src.get_parent().get_name() if src.get_parent() else None
    c["src_pos_before"] = image.get_item_position(src)
    c["tree_before"] = tree(image)
    c["base_before"] = image.get_base_type().value_nick
    c["precision_before"] = image.get_precision().value_nick
    dump(src, BABL[fmt], key + "_src.raw")
    args = dict(P["dialog_args"]); args.update(endpoint=P["endpoint"], **props)
    status, vals, err = call("plug-in-colorize-patch", image, [src], **args)
    c["status"], c["error"] = status, err
    if status != "success":
        return None
    group, n = vals[0], vals[1]
    c["n"] = n
    c["group"] = describe(group)
    c["group_parent"] = group.get_parent().get_name() if group.get_parent() else None
    c["group_pos"] = image.get_item_position(group)
    c["src_pos_after"] = image.get_item_position(src)
    c["src_parent_after"] = src.get_parent().get_name() if src.get_parent() else None
    c["base_after"] = image.get_base_type().value_nick
    c["precision_after"] = image.get_precision().value_nick
    c["selected_after"] = [l.get_name() for l in image.get_selected_layers()]
    c["meta"] = json.loads(bytes(group.get_parasite("colorize-patch").get_data()).decode())
    col, masks, _ = parts(group)
    rfmt = RESULT.get(fmt, fmt)
    dump(col, BABL[rfmt], key + "_colorized.raw")
    if col.get_mask() is not None:
        dump(col.get_mask(), "Y' u8", key + "_colmask.raw")
    for i, ml in enumerate(masks):
        dump(ml, "Y' u8", "%s_mask%d.raw" % (key, i))
    return group

def recompose_case(key, image, group, k, select_layer=None):
    """Clear mask layer k to black and recompose."""
    c = R["cases"][key]
    col, masks, _ = parts(group)
    ml = masks[k]
    clear(ml)
    c["recompose_k"] = k
    ok, *sel_before = Gimp.Selection.bounds(image)
    status, vals, err = call("plug-in-colorize-patch-refuse", image, [select_layer or ml], endpoint="")
    c["recompose_status"], c["recompose_error"] = status, err
    if status == "success":
        c["recompose_n"] = vals[1]
        c["recompose_layer"] = vals[0].get_name()
    ok, *sel_after = Gimp.Selection.bounds(image)
    c["selection_before_recompose"], c["selection_after_recompose"] = sel_before, sel_after
    rfmt = RESULT.get(c["wire_format"], c["wire_format"])
    dump(col, BABL[rfmt], key + "_recomposed.raw")
    c["tree_after_recompose"] = tree(image)

def step(key, fn):
    import time
    t0 = time.monotonic()
    try:
        fn()
    except Exception:
        R["errors"][key] = traceback.format_exc()
    R["timings"][key] = round(time.monotonic() - t0, 2)
    save()

# ---- registration
def registration():
    c = R["cases"]["registration"] = {}
    for name in ("plug-in-colorize-patch", "plug-in-colorize-patch-refuse", "plug-in-colorize-patch-add-hints",
                 "plug-in-colorize-patch-preview"):
        proc = pdb.lookup_procedure(name)
        c[name] = None if proc is None else {
            "menu_label": proc.get_menu_label(), "menu_paths": list(proc.get_menu_paths()),
            "image_types": proc.get_image_types(), "help_id": proc.get_help_id(),
            "args": [a.get_name() for a in proc.get_arguments()],
            "return_values": [a.get_name() for a in proc.get_return_values()],
        }
    proc = pdb.lookup_procedure("plug-in-colorize-patch")
    specs = {a.get_name(): a for a in proc.get_arguments()}
    c["choices"] = {}
    for arg in ("preset", "colorizer", "detector", "precision"):
        ch = Gimp.param_spec_choice_get_choice(specs[arg])
        c["choices"][arg] = [[n, ch.get_label(n)] for n in ch.list_nicks()]
    c["ranges"] = {arg: [specs[arg].minimum, specs[arg].maximum]
                   for arg in ("score-threshold", "max-instances", "saturation", "feather")}
    cfg = proc.create_config()
    c["defaults"] = {k: cfg.get_property(k) for k in ("preset", "colorizer", "detector", "score-threshold",
                     "max-instances", "saturation", "feather", "endpoint", "auto-start")}
step("registration", registration)

# ---- errors: nothing may change
def errors():
    c = R["cases"]["errors"] = {}
    img, (l,) = new_image(32, 24, Gimp.ImageBaseType.GRAY, Gimp.Precision.U8_NON_LINEAR,
                          [("gray", P["inputs"]["small_gray"], "Y' u8", 32, 24, 0, 0, False)])
    before = tree(img)
    s, v, e = call("plug-in-colorize-patch", img, [l], endpoint=P["dead_endpoint"], **{"auto-start": False})
    c["dead"] = {"status": s, "error": e, "tree_same": tree(img) == before, "base": img.get_base_type().value_nick}
    s, v, e = call("plug-in-colorize-patch", img, [l], endpoint=P["remote_endpoint"], **{"auto-start": True})
    c["remote"] = {"status": s, "error": e, "tree_same": tree(img) == before}
    big = Gimp.Image.new(800, 700, Gimp.ImageBaseType.GRAY)
    bl = Gimp.Layer.new(big, "big", 800, 700, Gimp.ImageType.GRAY_IMAGE, 100.0, Gimp.LayerMode.NORMAL)
    big.insert_layer(bl, None, 0)
    s, v, e = call("plug-in-colorize-patch", big, [bl], endpoint=P["endpoint"])
    c["too_large"] = {"status": s, "error": e, "n_layers": len(big.get_layers()),
                      "base": big.get_base_type().value_nick}
    big.delete()
    g = Gimp.GroupLayer.new(img, "G")
    img.insert_layer(g, None, 0)
    l2 = Gimp.Layer.new(img, "second", 32, 24, Gimp.ImageType.GRAY_IMAGE, 100.0, Gimp.LayerMode.NORMAL)
    img.insert_layer(l2, None, 0)
    before = tree(img)
    s, v, e = call("plug-in-colorize-patch", img, [g], endpoint=P["endpoint"])
    c["group_layer"] = {"status": s, "error": e, "tree_same": tree(img) == before}
    s, v, e = call("plug-in-colorize-patch", img, [l, l2], endpoint=P["endpoint"])
    c["two_layers"] = {"status": s, "error": e, "tree_same": tree(img) == before}
    s, v, e = call("plug-in-colorize-patch-refuse", img, [l], endpoint="")
    c["recompose_outside"] = {"status": s, "error": e, "tree_same": tree(img) == before}
    img.delete()
step("errors", errors)

# ---- auto-start of a local backend (the stand-in backend refuses the job: image untouched, started once)
def autostart():
    c = R["cases"]["autostart"] = {}
    img, (l,) = new_image(32, 24, Gimp.ImageBaseType.GRAY, Gimp.Precision.U8_NON_LINEAR,
                          [("gray", P["inputs"]["small_gray"], "Y' u8", 32, 24, 0, 0, False)])
    before = tree(img)
    runs = []
    for i in range(2):
        s, v, e = call("plug-in-colorize-patch", img, [l], endpoint=P["autostart_endpoint"], **{"auto-start": True})
        runs.append({"status": s, "error": e, "tree_same": tree(img) == before,
                     "base": img.get_base_type().value_nick})
    c["runs"] = runs
    img.delete()
step("autostart", autostart)

# ---- A: an 8-bit gray PNG, then recompose with one mask cleared
def gray8():
    img = Gimp.file_load(Gimp.RunMode.NONINTERACTIVE, Gio.File.new_for_path(P["inputs"]["gray8_png"]))
    src = img.get_selected_layers()[0]
    group = colorize_case("gray8", img, src)
    c = R["cases"]["gray8"]
    if group is not None and c["n"] >= 1:
        # a mask layer's eye shows it: the projection changes where the object is, and only there
        col, masks, _ = parts(group)
        visible(img, "gray8_vis_before.raw")
        masks[0].set_visible(True)
        visible(img, "gray8_vis_mask0.raw")
        masks[0].set_visible(False)
        recompose_case("gray8", img, group, P["recompose_k"])
    try:
        import zmq
        R["gimp_python_zmq"] = zmq.__version__
    except ImportError as e:
        R["gimp_python_zmq"] = None
    img.delete()
step("gray8", gray8)

# ---- recompose after XCF save/reopen and a backend restart == recompose without the restart
def restart():
    import os, time
    c = R["cases"]["restart"] = {}
    img = Gimp.file_load(Gimp.RunMode.NONINTERACTIVE, Gio.File.new_for_path(P["inputs"]["gray8_png"]))
    src = img.get_selected_layers()[0]
    args = dict(P["dialog_args"]); args.update(endpoint=P["restart_endpoint"])
    s, v, e = call("plug-in-colorize-patch", img, [src], **args)
    c["colorize"] = {"status": s, "error": e}
    if s != "success":
        return
    c["n"] = v[1]
    xcf = OUT + "/restart.xcf"
    Gimp.file_save(Gimp.RunMode.NONINTERACTIVE, img, Gio.File.new_for_path(xcf), None)
    img.delete()
    k = P["recompose_k"]
    def reopen_and_recompose(name):
        im = Gimp.file_load(Gimp.RunMode.NONINTERACTIVE, Gio.File.new_for_path(xcf))
        g = find_group(im)
        col, masks, _ = parts(g)
        clear(masks[k])
        s, v, e = call("plug-in-colorize-patch-refuse", im, [masks[k]], endpoint="")
        res = {"status": s, "error": e, "job": json.loads(bytes(g.get_parasite("colorize-patch").get_data()))["job_id"]}
        dump(col, "R'G'B' u8", name + ".raw")
        if s == "success":      # again, now on the job the backend made (instant path with the index map)
            s2, v2, e2 = call("plug-in-colorize-patch-refuse", im, [g], endpoint="")
            res["again"] = {"status": s2, "error": e2}
            dump(col, "R'G'B' u8", name + "_again.raw")
        im.delete()
        return res
    c["before"] = reopen_and_recompose("restart_before")       # the backend still has the job
    # two FIFOs made by the test: ask it to restart the backend, then wait (at most 240 s) until it says done
    import select
    ready = os.open(OUT + "/restarted", os.O_RDONLY | os.O_NONBLOCK)
    req = os.open(OUT + "/restart_request", os.O_WRONLY | os.O_NONBLOCK)
    os.write(req, b"1")
    os.close(req)
    c["restarted"] = bool(select.select([ready], [], [], 240)[0]) and os.read(ready, 1) == b"1"
    os.close(ready)
    c["after"] = reopen_and_recompose("restart_after")
step("restart", restart)

# ---- a second run on the same photo: named recognisably, and recomposing the first result still works, also when
# the backend has to colorize it again from its photo layer (which both results share)
def second_run():
    c = R["cases"]["second_run"] = {}
    img = Gimp.file_load(Gimp.RunMode.NONINTERACTIVE, Gio.File.new_for_path(P["inputs"]["gray8_png"]))
    src = img.get_selected_layers()[0]
    args = dict(P["dialog_args"]); args.update(endpoint=P["endpoint"])
    runs = [call("plug-in-colorize-patch", img, [src], **args) for _ in range(2)]
    c["status"] = [r[0] for r in runs]
    c["errors"] = [r[2] for r in runs]
    if any(r[0] != "success" for r in runs):
        return
    g1, g2 = runs[0][1][0], runs[1][1][0]
    c["tree"] = tree(img)
    c["runs"] = [json.loads(bytes(g.get_parasite("colorize-patch").get_data()))["run"] for g in (g1, g2)]
    col1, masks1, _ = parts(g1)
    col2, masks2, _ = parts(g2)
    c["n"] = len(masks1)
    if not masks1:
        return
    # the backend does not know the stored job: recompose must colorize again from the photo layer
    meta = json.loads(bytes(g1.get_parasite("colorize-patch").get_data()))
    meta["job_id"] = "0" * 32
    g1.attach_parasite(Gimp.Parasite.new("colorize-patch", Gimp.PARASITE_PERSISTENT,
                                         list(json.dumps(meta).encode())))
    dump(col1, "R'G'B' u8", "second_col1_before.raw")
    dump(col2, "R'G'B' u8", "second_col2_before.raw")
    clear(masks1[0])
    s, v, e = call("plug-in-colorize-patch-refuse", img, [masks1[0]], endpoint="")
    c["recompose"] = {"status": s, "error": e}
    dump(col1, "R'G'B' u8", "second_col1_after.raw")
    dump(col2, "R'G'B' u8", "second_col2_after.raw")
    # a mask layer selected: Colorize says how to apply edited masks
    before = tree(img)
    s, v, e = call("plug-in-colorize-patch", img, [masks2[0]], **args)
    c["mask_selected"] = {"status": s, "error": e, "tree_same": tree(img) == before}
    s, v, e = call("plug-in-colorize-patch", img, [g2], **args)
    c["group_selected"] = {"status": s, "error": e, "tree_same": tree(img) == before}
    img.delete()
step("second_run", second_run)

# ---- B: a 16-bit RGB PNG
def rgb16():
    img = Gimp.file_load(Gimp.RunMode.NONINTERACTIVE, Gio.File.new_for_path(P["inputs"]["rgb16_png"]))
    colorize_case("rgb16", img, img.get_selected_layers()[0])
    img.delete()
step("rgb16", rgb16)

# ---- C: an RGBA layer with offsets inside a layer group
def rgba_group():
    W, H = 100, 80
    img, (bg, src) = new_image(W, H, Gimp.ImageBaseType.RGB, Gimp.Precision.U8_NON_LINEAR, [
        ("Background", P["inputs"]["bg_rgb"], "R'G'B' u8", W, H, 0, 0, False),
        ("Photo", P["inputs"]["rgba_raw"], "R'G'B'A u8", 72, 56, 9, 6, True)])
    grp = Gimp.GroupLayer.new(img, "Photos")
    img.insert_layer(grp, None, 0)
    img.reorder_item(src, grp, 0)
    img.reorder_item(bg, grp, 1)
    top = Gimp.Layer.new(img, "Top", W, H, Gimp.ImageType.RGBA_IMAGE, 100.0, Gimp.LayerMode.NORMAL)
    img.insert_layer(top, None, 0)
    colorize_case("rgba_group", img, src)
    img.delete()
step("rgba_group", rgba_group)

# ---- D: a rectangular selection (then recompose while it is active)
def selection():
    W, H = 96, 72
    img, (src,) = new_image(W, H, Gimp.ImageBaseType.RGB, Gimp.Precision.U8_NON_LINEAR,
                            [("Photo", P["inputs"]["sel_rgb"], "R'G'B' u8", W, H, 0, 0, False)])
    x, y, w, h = P["selection"]
    img.select_rectangle(Gimp.ChannelOps.REPLACE, x, y, w, h)
    visible(img, "selection_visible_before.raw")
    group = colorize_case("selection", img, src)
    visible(img, "selection_visible_after.raw")
    c = R["cases"]["selection"]
    if group is not None and c["n"] >= 1:
        # clear the instance with the most mask pixels outside the selection: a recompose clipped to the
        # selection would then show
        best, k = -1, 0
        for i in range(c["n"]):
            m = open(OUT + "/selection_mask%d.raw" % i, "rb").read()
            outside = sum(1 for j, v in enumerate(m) if v and not (x <= j % W < x + w and y <= j // W < y + h))
            if outside > best:
                best, k = outside, i
        recompose_case("selection", img, group, k, select_layer=group)
    img.delete()
step("selection", selection)

# ---- F: DDColor chosen in the dialog: its preview (draft, then exact), Colorize, recompose with mask 0 cleared
def ddcolor():
    if not P["ddcolor_args"]:
        return
    img = Gimp.file_load(Gimp.RunMode.NONINTERACTIVE, Gio.File.new_for_path(P["inputs"]["gray8_png"]))
    src = img.get_selected_layers()[0]
    pv = R["cases"]["ddcolor_preview"] = {}
    args = dict(P["dialog_args"]); args.update(endpoint=P["endpoint"], **P["ddcolor_args"])
    for key, draft in (("draft", True), ("exact", False)):
        s, v, e = call("plug-in-colorize-patch-preview", img, [src], **args,
                       **{"long-side": P["ddcolor_preview_side"], "draft": draft})
        pv[key] = {"status": s, "error": e}
        if s == "success":
            pl = v[0].get_layers()[0]
            pv[key].update(name=pl.get_name(), size=[pl.get_width(), pl.get_height()])
            dump(pl, "R'G'B' u8", "ddcolor_preview_%s.raw" % key)
            v[0].delete()
        save()
    group = colorize_case("ddcolor", img, src, **P["ddcolor_args"])
    if group is not None and R["cases"]["ddcolor"]["n"] >= 1:
        recompose_case("ddcolor", img, group, 0)
    img.delete()
step("ddcolor", ddcolor)

# ---- E: a float image is sent as 16-bit
def float_gray():
    img, (src,) = new_image(40, 32, Gimp.ImageBaseType.GRAY, Gimp.Precision.FLOAT_LINEAR,
                            [("Photo", P["inputs"]["float_gray"], "Y' u8", 40, 32, 0, 0, False)])
    colorize_case("float_gray", img, src, detector="none")        # only the format matters here: no detector
    img.delete()
step("float_gray", float_gray)
'''


# ---------------------------------------------------------------------------------------------------------------------
# fixtures
# ---------------------------------------------------------------------------------------------------------------------

def _client():
    from patchcolor_client.client import Client
    return Client


def _wait_ping(endpoint: str, proc: subprocess.Popen, log: Path, deadline_s: float) -> None:
    Client = _client()
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"patchcolor serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        c = Client(endpoint, timeout_s=1.0, retries=0)
        try:
            c.ping(1.0)
            return
        except Exception:
            pass
        finally:
            c.close()
    raise RuntimeError(f"patchcolor serve did not answer within {deadline_s} s:\n{log.read_text()[-3000:]}")


def _start_backend(models_dir: Path, log: Path, endpoint: str) -> subprocess.Popen:
    """`patchcolor serve` at ``endpoint``, answering pings (or RuntimeError)."""
    if not PATCHCOLOR.exists():
        pytest.fail(f"{PATCHCOLOR} is missing: run install.py")
    env = {**os.environ, "PATCHCOLOR_MODELS": str(models_dir)}
    with open(log, "ab") as f:
        proc = subprocess.Popen([str(PATCHCOLOR), "serve", "--endpoint", endpoint, "--device", "cpu",
                                 "--models", str(models_dir), "--max-pixels", str(MAX_PIXELS)],
                                stdout=f, stderr=subprocess.STDOUT, env=env)
    try:
        _wait_ping(endpoint, proc, log, 120)
    except BaseException:
        _stop(proc)
        raise
    return proc


def _stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _has_ddcolor() -> bool:
    import importlib.util
    return importlib.util.find_spec("spandrel_extra_arches") is not None


@pytest.fixture(scope="module")
def backend(models_dir, tmp_path_factory, request):
    """The real backend (`patchcolor serve`) on a free loopback port, killed by PID afterwards. Its models folder
    holds the DDColor-T test weights too (conftest ``ddcolor_models``) where spandrel-extra-arches is installed."""
    if _has_ddcolor():
        request.getfixturevalue("ddcolor_models")
    if os.environ.get("PATCHCOLOR_GIMP_TEST_ENDPOINT"):      # use a backend that is already running
        yield os.environ["PATCHCOLOR_GIMP_TEST_ENDPOINT"]
        return
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    proc = _start_backend(models_dir, tmp_path_factory.mktemp("backend") / "serve.log", endpoint)
    try:
        yield endpoint
    finally:
        _stop(proc)


class Restarter:
    """A second backend for the restart case: when the GIMP batch writes to the FIFO out/restart_request, it is
    stopped and a fresh one is started on the same endpoint (it knows no job), then the FIFO out/restarted gets a
    byte. The watching thread blocks on the FIFO (and on a pipe that close() writes to), never on a timer."""

    def __init__(self, models_dir: Path, log: Path, out: Path):
        self.models_dir, self.log, self.out = models_dir, log, out
        self.endpoint = f"tcp://127.0.0.1:{free_port()}"
        self.proc = _start_backend(models_dir, log, self.endpoint)
        self.error: str | None = None
        for name in ("restart_request", "restarted"):
            os.mkfifo(out / name)
        self._request = os.open(out / "restart_request", os.O_RDONLY | os.O_NONBLOCK)
        self._stop_r, self._stop_w = os.pipe()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        import select
        while True:
            ready = select.select([self._request, self._stop_r], [], [])[0]
            if self._stop_r in ready:
                return
            if os.read(self._request, 1) == b"1":
                break
        try:
            _stop(self.proc)
            self.proc = _start_backend(self.models_dir, self.log, self.endpoint)
            done = os.open(self.out / "restarted", os.O_WRONLY | os.O_NONBLOCK)
            os.write(done, b"1")
            os.close(done)
        except Exception as e:      # noqa: BLE001 - reported by the test
            self.error = repr(e)

    def close(self) -> None:
        os.write(self._stop_w, b"x")
        self._thread.join(150)
        for fd in (self._request, self._stop_r, self._stop_w):
            os.close(fd)
        _stop(self.proc)


@pytest.fixture(scope="module")
def gimp_run(backend, models_dir):
    """Run every GIMP case in one headless GIMP start; returns (result dict, out folder, params)."""
    work = GIMP.workdir("plugin")
    out = work.host / "out"
    inputs = work.host / "in"
    inputs.mkdir()
    # inputs
    g8 = np.clip(np.rint(photo(80, 96) * 255), 0, 255).astype(np.uint8)
    write_png(inputs / "gray8.png", g8)
    rgb16 = np.clip(np.rint(photo(64, 80, rgb=True) * 65535), 0, 65535).astype(np.uint16)
    write_png(inputs / "rgb16.png", rgb16)
    rgba = np.zeros((56, 72, 4), np.uint8)
    rgba[..., :3] = np.clip(np.rint(photo(56, 72)[..., None] * 255), 0, 255)
    rgba[..., 3] = 255
    rgba[40:, 50:, 3] = 0                          # a transparent corner
    rgba[:, :8, 3] = 128                            # a half-transparent strip
    (inputs / "rgba.raw").write_bytes(rgba.tobytes())
    (inputs / "bg.raw").write_bytes(np.full((80, 100, 3), 200, np.uint8).tobytes())
    sel = np.repeat(np.clip(np.rint(photo(72, 96) * 255), 0, 255).astype(np.uint8)[..., None], 3, axis=2)
    (inputs / "sel.raw").write_bytes(sel.tobytes())
    (inputs / "small_gray.raw").write_bytes((np.arange(32 * 24) % 256).astype(np.uint8).tobytes())
    (inputs / "float_gray.raw").write_bytes(np.clip(photo(32, 40) * 255, 0, 255).astype(np.uint8).tobytes())
    (work.host / "fake_backend.py").write_text(FAKE_BACKEND)

    marker = work.inner_path("out", "fake_backend_starts.txt")
    from patchcolor import options, registry
    catalog = json.loads(registry.PACKAGE_CATALOG.read_text())
    catalog["models"].append({**catalog["models"][0], "name": EXTRA_COLORIZER[0], "label": EXTRA_COLORIZER[1]})
    (work.host / "catalog.json").write_text(json.dumps(catalog))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PATCHCOLOR_CATALOG", str(work.host / "catalog.json"))
        mp.setitem(options.RANGES, "feather", FEATHER_RANGE)
        GIMP.install_plugin(work, backend_cmd=["/usr/bin/python3", work.inner_path("fake_backend.py"), marker],
                            endpoint="tcp://127.0.0.1:5555", log_path=work.inner_path("out", "backend.log"),
                            extra_config={"ping_timeout_s": 1.0, "remote_ping_timeout_s": 1.0,
                                          "start_timeout_s": 30.0, "timeout_s": 60.0})
    inner = {k: work.inner_path("in", v) for k, v in {
        "gray8_png": "gray8.png", "rgb16_png": "rgb16.png", "rgba_raw": "rgba.raw", "bg_rgb": "bg.raw",
        "sel_rgb": "sel.raw", "small_gray": "small_gray.raw", "float_gray": "float_gray.raw"}.items()}
    params = {
        "out": work.inner_path("out"), "inputs": inner, "endpoint": backend,
        "dead_endpoint": f"tcp://127.0.0.1:{free_port()}", "remote_endpoint": "tcp://192.0.2.1:5555",
        "autostart_endpoint": f"tcp://127.0.0.1:{free_port()}", "dialog_args": DIALOG_ARGS,
        "selection": [34, 26, 24, 18], "recompose_k": 0,
        "ddcolor_args": DD_DIALOG if _has_ddcolor() else None, "ddcolor_preview_side": DD_PREVIEW_SIDE,
    }
    restarter = Restarter(models_dir, work.host / "restart-serve.log", out)
    params["restart_endpoint"] = restarter.endpoint
    (work.host / "params.json").write_text(json.dumps(params))
    script = BATCH.replace("GIMP_CALL", GIMP_CALL).replace("PARAMS_PATH", repr(work.inner_path("params.json")))
    (work.host / "batch.py").write_text(script)
    t0 = time.monotonic()
    try:
        proc = GIMP.run_batch(work, "batch.py", timeout=600, block_pyzmq=True)
    finally:
        _kill_autostarted(out)
        restarter.close()
    elapsed = time.monotonic() - t0
    steps = ""
    if (out / "result.json").exists():
        steps = ", ".join(f"{k} {v:.1f} s" for k, v in json.loads((out / "result.json").read_text())
                          .get("timings", {}).items())
    print(f"\n[test_gimp_plugin] {GIMP.describe()}: one GIMP run, {elapsed:.1f} s, exit {proc.returncode} "
          f"({steps})", file=sys.stderr)
    result_file = out / "result.json"
    if proc.returncode != 0 or not result_file.exists():
        pytest.fail(f"GIMP batch failed (exit {proc.returncode}):\n{proc.stderr[-6000:]}")
    result = json.loads(result_file.read_text())
    result["_stderr"] = proc.stderr
    result["_restart_error"] = restarter.error
    result["_zmq_blocked"] = (out / "zmq_import_blocked.txt").read_text() if (out / "zmq_import_blocked.txt").exists() \
        else ""
    result["_pluginrc"] = (work.host / "profile" / "pluginrc").read_text(errors="replace")
    result["_marker"] = (out / "fake_backend_starts.txt").read_text() if (out / "fake_backend_starts.txt").exists() \
        else ""
    result["_work"] = [work.inner, str(work.host)]
    yield result, out, params
    if os.environ.get("PATCHCOLOR_KEEP_GIMP_WORK"):
        print(f"[test_gimp_plugin] kept {work.host}", file=sys.stderr)
    else:
        GIMP.cleanup(work)


def _kill_autostarted(out: Path) -> None:
    """Stop the stand-in backend the plug-in auto-started (its PID is in the plug-in's state file)."""
    for state in out.glob("colorize-patch-backend-*.json"):
        try:
            pid = int(json.loads(state.read_text())["pid"])
            os.kill(pid, signal.SIGTERM)
        except (OSError, ValueError, KeyError):
            pass


def case(gimp_run, key, colorized=False):
    result = gimp_run[0]
    assert key not in result["errors"], f"batch step {key} raised:\n{result['errors'][key]}"
    cs = result["cases"][key]
    if colorized:
        assert cs["status"] == "success", f"Colorize (Patch) failed: {cs['error']}"
    return cs


def raw(out: Path, name: str, shape, dtype=np.uint8) -> np.ndarray:
    return np.frombuffer((out / name).read_bytes(), dtype=dtype).reshape(shape)


BITS = {"8": np.uint8, "16": np.dtype("<u2")}


def fmt_info(fmt: str):
    bits = "16" if fmt.endswith("16") else "8"
    kind = fmt[: -len(bits)]
    return kind, {"gray": 1, "graya": 2, "rgb": 3, "rgba": 4}[kind], BITS[bits]


def result_fmt(fmt: str) -> str:
    kind, _, _ = fmt_info(fmt)
    return fmt.replace(kind, {"gray": "rgb", "graya": "rgba"}.get(kind, kind), 1)


def load_layer(out, name, fmt, size):
    _, ch, dt = fmt_info(fmt)
    return raw(out, name, (size[1], size[0], ch), dt)


@pytest.fixture(scope="module")
def expected(gimp_run, backend):
    """What the backend says about each case, asked directly by this process.

    * ``reuse``: recomposing the plug-in's own job with the mask layers read back from GIMP. The pipeline reuses an
      instance exactly when its mask is unchanged, so this equals the Colorized layer only if every mask layer is
      the backend's mask, in the right order (and is cheap: no network runs again).
    * ``recomposed`` / ``full_colour``: that job recomposed with mask k cleared / with every mask cleared.
    * gray8 and ddcolor only (the detector is slow on 2 CPUs): an independent colorize of the same pixels ->
      pixels, masks, class names and scores to compare with directly.
    * ddcolor: the same objects colorized by ECCV16, the exact preview with ``ddcolor-tiny`` and with ECCV16.
    """
    result, out, params = gimp_run
    Client = _client()
    exp = {}
    c = Client(backend, timeout_s=120)
    try:
        for key in ("gray8", "rgb16", "rgba_group", "selection", "ddcolor"):
            cs = result["cases"].get(key)
            if not cs or cs.get("status") != "success":
                continue
            w, h = cs["src_size"]
            job = cs["meta"]["job_id"]
            tok = {"token": cs["meta"]["token"]} if cs["meta"].get("token") else {}
            masks = [(out / f"{key}_mask{i}.raw").read_bytes() for i in range(cs["n"])]
            e = {"reuse": bytes(c.recompose(job, masks, **tok).pixels)}
            if "recompose_k" in cs:
                cleared = list(masks)
                cleared[cs["recompose_k"]] = bytes(w * h)
                e["recomposed"] = bytes(c.recompose(job, cleared, **tok).pixels)
                e["full_colour"] = bytes(c.recompose(job, [bytes(w * h)] * len(masks), **tok).pixels)
            if key in ("gray8", "ddcolor"):
                src = (out / f"{key}_src.raw").read_bytes()
                opts = OPTIONS if key == "gray8" else DD_OPTIONS
                r = c.colorize(w, h, cs["wire_format"], src, opts)
                e.update(pixels=bytes(r.pixels), masks=[bytes(i.full_mask(w, h)) for i in r.instances],
                         names=[(i.class_name, i.score) for i in r.instances])
            if key == "ddcolor":    # the exact preview; both on ECCV16 (what a silent fallback would give)
                on_eccv = {**DD_OPTIONS, "colorizer": "eccv16"}
                fmt, side = cs["wire_format"], DD_PREVIEW_SIDE
                e["eccv16"] = bytes(c.colorize(w, h, fmt, src, on_eccv, instances=r.instances).pixels)
                p = c.preview(w, h, fmt, src, DD_OPTIONS, long_side=side)
                e["preview"] = (bytes(p.pixels), p.width, p.height)
                e["preview_eccv16"] = bytes(c.preview(w, h, fmt, src, on_eccv, long_side=side).pixels)
            exp[key] = e
    finally:
        c.close()
    return exp


# ---------------------------------------------------------------------------------------------------------------------
# tests
# ---------------------------------------------------------------------------------------------------------------------

@needs_gimp
def test_registration(gimp_run):
    result = gimp_run[0]
    reg = case(gimp_run, "registration")
    col, ref = reg["plug-in-colorize-patch"], reg["plug-in-colorize-patch-refuse"]
    assert col is not None and ref is not None, "procedures not registered"
    assert col["menu_label"] == "Colorize (Patch)..." and col["menu_paths"] == ["<Image>/Filters"]
    assert ref["menu_label"] == "Colorize (Patch): Re-fuse Masks" and ref["menu_paths"] == ["<Image>/Filters"]
    for arg in ("preset", "colorizer", "detector", "score-threshold", "max-instances", "saturation", "feather",
                "endpoint", "auto-start"):
        assert arg in col["args"], arg
    assert col["return_values"] == ["group", "n-instances"]
    # empty: config.json's endpoint (written by the installer) is read at each run, so editing it takes effect
    assert reg["defaults"]["endpoint"] == ""
    assert reg["defaults"]["preset"] == "default" and reg["defaults"]["detector"] == "r101"
    rc = result["_pluginrc"]
    assert '"${gimp_dir}/plug-ins/colorize-patch/colorize-patch.py"' in rc
    for proc, label in (("plug-in-colorize-patch", "Colorize (Patch)..."),
                        ("plug-in-colorize-patch-refuse", "Colorize (Patch): Re-fuse Masks")):
        block = rc[rc.index(f'(proc-def "{proc}"'):]
        block = block[:block.index("(proc-arg")]
        assert f'"{label}"' in block and '(menu-path "<Image>/Filters")' in block, block


@needs_gimp
def test_dialog_choices_and_ranges_follow_the_registry_and_options(gimp_run):
    """The plug-in was installed from a catalogue with an extra colorizer and Options with another feathering
    range: its registered arguments offer that colorizer with its label and that range (in percent)."""
    reg = case(gimp_run, "registration")
    from patchcolor import options, registry
    colorizers = dict(reg["choices"]["colorizer"])
    assert colorizers[EXTRA_COLORIZER[0]] == EXTRA_COLORIZER[1]
    assert {m.name: m.label for m in registry.registry().models if m.kind == "colorizer"}.items() <= \
        colorizers.items()
    detectors = [n for n, _ in reg["choices"]["detector"]]
    assert detectors == list(registry.registry().choices("detector"))
    assert reg["ranges"]["feather"] == pytest.approx([FEATHER_RANGE[0] * 100, FEATHER_RANGE[1] * 100])
    for arg, field in (("score-threshold", "score_thresh"), ("max-instances", "max_instances"),
                       ("saturation", "saturation")):
        assert reg["ranges"][arg] == pytest.approx(list(options.RANGES[field])), arg
    assert [n for n, _ in reg["choices"]["preset"]] == ["default", "seed"]


def _resolve_help(help_root: Path, domain_uri: str, help_id: str, locale: str = "en") -> str | None:
    """GIMP's help lookup (plug-ins/help/gimphelplocale.c, gimphelpdomain.c): parse <root>/<locale>/gimp-help.xml
    as its GMarkup parser does (a top-level <gimp-help>; its <help-item id= ref=> children count, anything inside
    an element it does not know is skipped; an xmlns:PREFIX naming the domain makes PREFIX:id the id attribute)
    and return domain_uri/locale/ref, or None ("Help ID unknown")."""
    import xml.parsers.expat
    state, unknown, id_attr, mapping = ["start"], [0], ["id"], {}

    def start(name, attrs):
        if unknown[0]:
            unknown[0] += 1
        elif state[0] == "start" and name == "gimp-help":
            state[0] = "help"
            for k, v in attrs.items():
                if k.startswith("xmlns:") and v == "colorize-patch":
                    id_attr[0] = k[6:] + ":id"
        elif state[0] == "help" and name == "help-item":
            state[0] = "item"
            if id_attr[0] in attrs and "ref" in attrs:
                mapping[attrs[id_attr[0]]] = attrs["ref"]
        elif state[0] == "help" and name == "help-missing":
            state[0] = "item"
        else:
            unknown[0] = 1

    def end(name):
        if unknown[0]:
            unknown[0] -= 1
        elif state[0] == "item":
            state[0] = "help"
        elif state[0] == "help":
            state[0] = "start"
    p = xml.parsers.expat.ParserCreate()
    p.StartElementHandler, p.EndElementHandler = start, end
    p.Parse((help_root / locale / "gimp-help.xml").read_bytes(), True)
    ref = mapping.get(help_id)
    return None if ref is None else f"{domain_uri.rstrip('/')}/{locale}/{ref}"


@needs_gimp
def test_help_opens_each_procedures_own_page(gimp_run):
    """Each procedure's Help resolves, the way GIMP's help plug-in does, to its own page of the installed plug-in
    (a page per procedure: browsers opening file:// URIs drop #anchors), and that page is about it."""
    from html.parser import HTMLParser
    from urllib.parse import unquote, urlparse
    result = gimp_run[0]
    reg = case(gimp_run, "registration")
    m = re.search(r'\(help-def "colorize-patch" "(file://[^"]*/plug-ins/colorize-patch/help)"\)', result["_pluginrc"])
    assert m, result["_pluginrc"][-3000:]
    inner, host = result["_work"]
    root = Path(host) / os.path.relpath(unquote(urlparse(m.group(1)).path), inner)
    pages = set()
    for proc in ("plug-in-colorize-patch", "plug-in-colorize-patch-refuse", "plug-in-colorize-patch-add-hints",
                 "plug-in-colorize-patch-preview"):
        # a help id "DOMAIN?ID" is looked up as ID in DOMAIN (app/widgets/gimphelp.c splits it at the "?")
        domain, _, help_id = reg[proc]["help_id"].rpartition("?")
        assert domain in ("", "colorize-patch"), reg[proc]["help_id"]
        uri = _resolve_help(root, m.group(1), help_id)
        assert uri is not None, f"Help ID {help_id!r} unknown"
        assert "#" not in uri, uri
        page = root / os.path.relpath(unquote(urlparse(uri).path), unquote(urlparse(m.group(1)).path))
        assert page.is_file(), page
        pages.add(page)

        class Title(HTMLParser):
            text, inside = "", False

            def handle_starttag(self, tag, attrs):
                self.inside = tag == "h1"

            def handle_data(self, data):
                if self.inside:
                    self.text += data
        t = Title()
        t.feed(page.read_text())
        want = reg[proc]["menu_label"] or "Preview"
        assert want.rstrip(".").split(": ")[-1] in t.text, (proc, t.text)
    assert len(pages) == 4


@needs_gimp
def test_errors_leave_the_image_alone(gimp_run):
    e = case(gimp_run, "errors")
    dead = e["dead"]
    assert dead["status"] == "execution-error"
    assert "No colorize backend answers at" in dead["error"] and "automatic start is turned off" in dead["error"]
    assert dead["tree_same"] and dead["base"] == "gray"          # no layer added, not converted to RGB
    assert e["remote"]["status"] == "execution-error" and e["remote"]["tree_same"]
    assert "not an address on this computer" in e["remote"]["error"]
    big = e["too_large"]
    assert big["status"] == "execution-error" and big["error"].startswith("The image is too large"), big
    assert big["n_layers"] == 1 and big["base"] == "gray"
    assert e["group_layer"]["status"] == "calling-error" and "is a layer group" in e["group_layer"]["error"]
    assert e["two_layers"]["status"] == "calling-error" and "works on one layer but 2" in e["two_layers"]["error"]
    assert e["recompose_outside"]["status"] == "calling-error" and "not part of a" in e["recompose_outside"]["error"]
    for k in ("group_layer", "two_layers", "recompose_outside"):
        assert e[k]["tree_same"], k
    assert gimp_run[0]["_marker"].count("started") == 1, "remote/disabled cases must not start a backend"


@needs_gimp
def test_autostart_starts_one_local_backend(gimp_run):
    runs = case(gimp_run, "autostart")["runs"]
    for r in runs:
        assert r["status"] == "execution-error", r
        # the backend's weights message, cut to its one sentence
        assert r["error"] == "fake backend: the colorizer weights are missing; run: python3 install.py.", r["error"]
        assert r["tree_same"] and r["base"] == "gray"
    assert gimp_run[0]["_marker"].count("started") == 1, "the backend must be started exactly once"


def _unique_suffix_removed(name: str) -> str:
    """GIMP makes layer names unique by appending " #1", " #2"...: two persons at 98% are "person 98%" and
    "person 98% #1"."""
    return re.sub(r" #\d+$", "", name)


def _check_structure(cs, name_of_parent, expected_names):
    assert cs["status"] == "success", cs["error"]
    w, h = cs["src_size"]
    ox, oy = cs["src_offsets"]
    # group directly above the source, in the source's parent
    assert cs["group_parent"] == name_of_parent == cs["src_parent_after"]
    assert cs["group_pos"] == cs["src_pos_before"] and cs["src_pos_after"] == cs["src_pos_before"] + 1
    g = cs["group"]
    assert g["name"] == "Colorize (Patch)" and g["group"] and g["visible"]
    top = g["children"]
    # "Masks" (visible group, hidden 50 % mask layers) above "Colorized": turning a mask's eye on shows it
    assert [k["name"] for k in top] == (["Masks", "Colorized"] if expected_names else ["Colorized"])
    col = top[-1]
    assert col["visible"] and col["size"] == [w, h] and col["offsets"] == [ox, oy] and not col["group"]
    kids = top[0]["children"] if expected_names else []
    if expected_names:
        assert top[0]["group"] and top[0]["visible"]
    names = [k["name"] for k in kids]
    assert len(set(names)) == len(names)
    assert [_unique_suffix_removed(n) for n in names] == expected_names
    for m in kids:
        assert not m["visible"] and m["size"] == [w, h] and m["offsets"] == [ox, oy] and not m["alpha"], m
        assert m["mode"] == "screen" and m["opacity"] > 0, m
    assert cs["n"] == len(kids) == len(cs["meta"]["instances"])
    assert cs["meta"]["format"] == cs["wire_format"] and cs["meta"]["job_id"]


def _names(pairs):
    return [f"{n} {int(s * 100 + 0.5)}%" for n, s in pairs]


def _meta_names(cs):
    return _names([(i["class_name"], i["score"]) for i in cs["meta"]["instances"]])


def _lightness(rgb: np.ndarray, top: float) -> np.ndarray:
    from skimage.color import rgb2lab
    rgb = rgb.astype(np.float64) / top
    if rgb.shape[-1] == 1:
        rgb = np.repeat(rgb, 3, axis=-1)
    return rgb2lab(rgb[..., :3])[..., 0]


def _check_pixels(out, key, cs, exp, l_tol):
    w, h = cs["src_size"]
    fmt = cs["wire_format"]
    rfmt = result_fmt(fmt)
    kind, ch, dt = fmt_info(fmt)
    top = 65535.0 if dt != np.uint8 else 255.0
    src = load_layer(out, f"{key}_src.raw", fmt, (w, h))
    col = load_layer(out, f"{key}_colorized.raw", rfmt, (w, h))
    # the mask layers are the backend's masks and the Colorized layer is its result: recomposing the job with the
    # mask layers read back from GIMP reproduces the Colorized layer exactly (to rounding)
    reuse = np.frombuffer(exp["reuse"], dtype=dt).reshape(col.shape)
    worst = int(np.abs(col.astype(np.int64) - reuse.astype(np.int64)).max())
    assert worst <= 1, f"Colorized differs from the backend's recompose with the mask layers by up to {worst}"
    if "pixels" in exp:       # an independent run of the same pixels
        want = np.frombuffer(exp["pixels"], dtype=dt).reshape(col.shape)
        worst = int(np.abs(col.astype(np.int64) - want.astype(np.int64)).max())
        assert worst <= 1, f"Colorized differs from the backend's result by up to {worst}"
    # its lightness is the source's; it has colour
    color_ch = 1 if kind.startswith("gray") else 3
    opaque = (src[..., -1] > 0) if kind.endswith("a") else np.ones((h, w), bool)
    dl = np.abs(_lightness(col[..., :3], top) - _lightness(src[..., :color_ch], top))[opaque]
    assert dl.max() <= l_tol, f"lightness differs by up to {dl.max():.3f}"
    assert np.ptp(col[..., :3].astype(np.int64), axis=-1).max() > 0, "no colour at all"
    if kind.endswith("a"):
        assert np.array_equal(col[..., 3], src[..., -1]), "alpha not kept"
    for i in range(cs["n"]):
        got = raw(out, f"{key}_mask{i}.raw", (h, w))
        assert set(np.unique(got).tolist()) <= {0, 255} and got.any(), f"mask layer {i} is not white on black"
    if "masks" in exp:        # mask layers equal the masks of an independent run
        assert len(exp["masks"]) == cs["n"]
        for i, m in enumerate(exp["masks"]):
            got = raw(out, f"{key}_mask{i}.raw", (h, w))
            assert np.array_equal(got, np.frombuffer(m, np.uint8).reshape(h, w)), f"mask {i} differs"


@needs_gimp
def test_gray8_png(gimp_run, expected):
    cs = case(gimp_run, "gray8", colorized=True)
    _check_structure(cs, None, _names(expected["gray8"]["names"]))
    assert cs["n"] >= 2, "the biased detector should find objects"
    assert cs["base_before"] == "gray" and cs["base_after"] == "rgb"
    assert cs["precision_after"] == cs["precision_before"]
    assert cs["selected_after"] == ["Colorize (Patch)"]
    assert not cs["group"]["children"][-1]["has_mask"]
    _check_pixels(gimp_run[1], "gray8", cs, expected["gray8"], l_tol=1.0)


@needs_gimp
def test_a_mask_layer_shows_when_its_eye_is_turned_on(gimp_run):
    out = gimp_run[1]
    cs = case(gimp_run, "gray8", colorized=True)
    w, h = cs["src_size"]
    before = raw(out, "gray8_vis_before.raw", (h, w, 4)).astype(int)
    shown = raw(out, "gray8_vis_mask0.raw", (h, w, 4)).astype(int)
    mask = raw(out, "gray8_mask0.raw", (h, w)) > 0
    diff = np.abs(shown - before)[..., :3].max(axis=-1)
    assert (diff[mask] > 0).mean() > 0.9, "the object does not show"
    # the object is lightened (the photo still shows through) and everything else is exactly as it was
    assert shown[..., :3][mask].mean() > before[..., :3][mask].mean()
    assert shown[..., :3][mask].std() > 0, "the object is covered, not highlighted"
    assert np.array_equal(shown[~mask], before[~mask]), "turning a mask on changed the image outside its object"


@needs_gimp
def test_gimp_python_runs_without_pyzmq(gimp_run):
    """The GIMP run blocks `import zmq` for every plug-in: all cases above used the built-in ZMTP transport."""
    result = gimp_run[0]
    assert result.get("gimp_python_zmq", "missing") is None, "GIMP's Python could import zmq"
    assert "blocked" in result["_zmq_blocked"], "the plug-in never tried pyzmq"
    assert case(gimp_run, "gray8")["status"] == "success"


@needs_gimp
def test_recompose_after_xcf_reopen_and_backend_restart(gimp_run):
    result, out, params = gimp_run
    cs = case(gimp_run, "restart")
    assert result["_restart_error"] is None, result["_restart_error"]
    assert cs["colorize"]["status"] == "success", cs["colorize"]["error"]
    assert cs["n"] >= 1 and cs["restarted"]
    b, a = cs["before"], cs["after"]
    assert b["status"] == "success", b["error"]
    assert a["status"] == "success", a["error"]
    assert a["job"] != b["job"], "after the restart the group must point at the backend's new job"
    w, h = 96, 80
    before = raw(out, "restart_before.raw", (h, w, 3)).astype(np.float64)
    after = raw(out, "restart_after.raw", (h, w, 3)).astype(np.float64)
    mse = float(((before - after) ** 2).mean())
    psnr = float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)
    print(f"\n[test_gimp_plugin] recompose after restart vs without: PSNR {psnr:.1f} dB", file=sys.stderr)
    assert psnr >= 50.0, psnr
    # and the next recompose (instant, on the new job, through the index map) gives the same again
    assert a["again"]["status"] == "success", a["again"]["error"]
    again = raw(out, "restart_after_again.raw", (h, w, 3)).astype(np.int64)
    assert int(np.abs(again - after).max()) <= 1


@needs_gimp
def test_rgb16_png(gimp_run, expected):
    cs = case(gimp_run, "rgb16", colorized=True)
    assert cs["wire_format"] == "rgb16" and cs["precision_after"] == cs["precision_before"]
    _check_structure(cs, None, _meta_names(cs))
    _check_pixels(gimp_run[1], "rgb16", cs, expected["rgb16"], l_tol=0.05)


@needs_gimp
def test_rgba_layer_with_offsets_in_a_group(gimp_run, expected):
    cs = case(gimp_run, "rgba_group", colorized=True)
    assert cs["wire_format"] == "rgba8" and cs["src_offsets"] == [9, 6] and cs["src_size"] == [72, 56]
    _check_structure(cs, "Photos", _meta_names(cs))
    assert cs["src_pos_before"] == 0
    assert cs["group"]["children"][-1]["name"] == "Colorized"
    assert cs["group"]["children"][-1]["alpha"]
    _check_pixels(gimp_run[1], "rgba_group", cs, expected["rgba_group"], l_tol=1.0)


@needs_gimp
def test_selection(gimp_run, expected):
    result, out, params = gimp_run
    cs = case(gimp_run, "selection", colorized=True)
    _check_structure(cs, None, _meta_names(cs))
    assert cs["group"]["children"][-1]["has_mask"], "Colorized needs a layer mask from the selection"
    _check_pixels(out, "selection", cs, expected["selection"], l_tol=1.0)
    W, H = cs["src_size"]
    x, y, w, h = params["selection"]
    inside = np.zeros((H, W), bool)
    inside[y:y + h, x:x + w] = True
    mask = raw(out, "selection_colmask.raw", (H, W))
    assert (mask[inside] == 255).all() and (mask[~inside] == 0).all()
    before = raw(out, "selection_visible_before.raw", (H, W, 4))
    after = raw(out, "selection_visible_after.raw", (H, W, 4))
    assert np.array_equal(before[~inside], after[~inside]), "pixels outside the selection changed"
    assert not np.array_equal(before[inside], after[inside]), "nothing changed inside the selection"


def _check_recompose(out, key, cs, exp):
    assert "recompose_status" in cs, f"no recompose was run ({cs.get('n')} instances)"
    assert cs["recompose_status"] == "success", cs["recompose_error"]
    w, h = cs["src_size"]
    rfmt = result_fmt(cs["wire_format"])
    dt = fmt_info(rfmt)[2]
    k = cs["recompose_k"]
    col = load_layer(out, f"{key}_colorized.raw", rfmt, (w, h)).astype(np.int64)
    ref = load_layer(out, f"{key}_recomposed.raw", rfmt, (w, h)).astype(np.int64)
    want = np.frombuffer(exp["recomposed"], dt).reshape(ref.shape).astype(np.int64)
    full = np.frombuffer(exp["full_colour"], dt).reshape(ref.shape).astype(np.int64)
    worst = int(np.abs(ref - want).max())
    assert worst <= 1, f"recomposed layer differs from the backend's recompose by up to {worst}"
    changed = np.abs(ref - col).max(axis=-1) > 1
    assert bool(changed.any()), "clearing a mask changed nothing"
    masks = [raw(out, f"{key}_mask{i}.raw", (h, w)) > 0 for i in range(cs["n"])]
    # only that instance's pixels change: everything that changed lies in its (feathered) box ...
    ys, xs = np.nonzero(masks[k])
    diag = float(np.hypot(np.ptp(xs) + 1, np.ptp(ys) + 1))
    pad = int(np.ceil(0.02 * diag)) + 2
    near = np.zeros((h, w), bool)
    near[max(0, ys.min() - pad): ys.max() + pad + 1, max(0, xs.min() - pad): xs.max() + pad + 1] = True
    stray = int((changed & ~near).sum())
    assert stray == 0, f"{stray} pixels outside the cleared instance changed"
    # ... and where only that instance was, the result is now the full-image colour
    others = np.zeros((h, w), bool)
    for i, m in enumerate(masks):
        if i != k:
            others |= m
    only = masks[k] & ~others
    from scipy import ndimage
    core = ndimage.binary_erosion(only, iterations=pad) if only.sum() > 50 else only
    if core.any():
        worst = int(np.abs(ref[core] - full[core]).max())
        assert worst <= 1, f"the cleared instance differs from the full-image colour by up to {worst}"
    return changed


@needs_gimp
def test_recompose_after_clearing_one_mask(gimp_run, expected):
    out = gimp_run[1]
    cs = case(gimp_run, "gray8", colorized=True)
    _check_recompose(out, "gray8", cs, expected["gray8"])
    assert cs["recompose_n"] == cs["n"] - 1 and cs["recompose_layer"] == "Colorized"
    # nothing else changed in the layer tree (same layers, mask layers stay hidden)
    after = cs["tree_after_recompose"][0]["children"]
    assert [c["name"] for c in after] == [c["name"] for c in cs["group"]["children"]]
    assert after[0]["name"] == "Masks" and not any(m["visible"] for m in after[0]["children"])


@needs_gimp
def test_ddcolor_from_the_dialog_previews_colorizes_and_recomposes(gimp_run, expected, pipeline):
    """DDColor-T chosen in the dialog (a choice dialog.json took from the registry): the dialog's draft and exact
    previews, Colorize and recompose with mask 0 cleared give what the backend gives for ``ddcolor-tiny`` (the
    draft: what this process's pipeline drafts; the backend has the exact preview by then) and not ECCV16's colours
    (a silent fallback to the default)."""
    from patchcolor.options import make_options
    from patchcolor.preview import PreviewSession
    from patchcolor.prepare import SourceImage

    result, out, params = gimp_run
    if not params["ddcolor_args"]:
        pytest.skip("spandrel-extra-arches is not installed: no DDColor")
    colorizers = dict(case(gimp_run, "registration")["choices"]["colorizer"])
    assert "DDColor-T" in colorizers.get("ddcolor-tiny", ""), colorizers
    cs = case(gimp_run, "ddcolor", colorized=True)
    exp = expected["ddcolor"]
    _check_structure(cs, None, _names(exp["names"]))
    assert cs["n"] >= 2, "the biased detector should find objects"
    _check_pixels(out, "ddcolor", cs, exp, l_tol=1.0)
    w, h = cs["src_size"]
    col = raw(out, "ddcolor_colorized.raw", (h, w, 3)).astype(int)
    off = float(np.abs(col - np.frombuffer(exp["eccv16"], np.uint8).reshape(h, w, 3)).mean())
    assert off > 5, f"the Colorized layer is ECCV16's colours (mean difference {off:.2f})"
    assert cs["meta"]["options"]["colorizer"] == "ddcolor-tiny"
    _check_recompose(out, "ddcolor", cs, exp)
    assert cs["recompose_n"] == cs["n"] - 1

    pv = case(gimp_run, "ddcolor_preview")
    for key, name in (("draft", "Preview (draft)"), ("exact", "Preview")):
        assert pv[key]["status"] == "success", pv[key]["error"]
        assert pv[key]["name"] == name
    pixels, pw, ph = exp["preview"]
    assert pv["exact"]["size"] == pv["draft"]["size"] == [pw, ph]
    exact = raw(out, "ddcolor_preview_exact.raw", (ph, pw, 3)).astype(int)
    worst = int(np.abs(exact - np.frombuffer(pixels, np.uint8).reshape(ph, pw, 3)).max())
    assert worst <= 1, f"the exact preview differs from the backend's by up to {worst}"
    off = float(np.abs(exact - np.frombuffer(exp["preview_eccv16"], np.uint8).reshape(ph, pw, 3)).mean())
    assert off > 5, f"the exact preview is ECCV16's colours ({off:.2f})"
    session = PreviewSession(pipeline, SourceImage.from_buffer((out / "ddcolor_src.raw").read_bytes(), w, h,
                                                               cs["wire_format"]), long_side=DD_PREVIEW_SIDE)
    draft = raw(out, "ddcolor_preview_draft.raw", (ph, pw, 3)).astype(int)
    want = session.render(make_options(**DD_OPTIONS), draft=True)
    assert want.draft and want.image.shape == draft.shape
    worst = int(np.abs(draft - want.image).max())
    assert worst <= 1, f"the draft preview differs from the pipeline's draft by up to {worst}"
    eccv = session.render(make_options(**{**DD_OPTIONS, "colorizer": "eccv16"}), draft=True).image
    off = float(np.abs(draft - eccv).mean())
    assert off > 5, f"the draft preview is ECCV16's colours ({off:.2f})"


@needs_gimp
def test_recompose_with_a_selection_updates_the_whole_layer(gimp_run, expected):
    out = gimp_run[1]
    cs = case(gimp_run, "selection", colorized=True)
    changed = _check_recompose(out, "selection", cs, expected["selection"])
    W, H = cs["src_size"]
    x, y, w, h = gimp_run[2]["selection"]
    inside = np.zeros((H, W), bool)
    inside[y:y + h, x:x + w] = True
    assert cs["selection_after_recompose"] == cs["selection_before_recompose"], "selection not restored"
    # the selection is smaller than the objects the test detector finds: the recompose changed pixels outside it
    assert (changed & ~inside).any(), "recompose was clipped to the selection"


@needs_gimp
def test_second_run_is_named_by_its_number_and_recompose_finds_each(gimp_run):
    """Two runs on one photo: the second result's layers are named "..., run 2" (not GIMP's " #1"); recomposing the
    first result (made to colorize again: the backend "lost" its job) changes only the first result, using the
    photo layer that both share."""
    out = gimp_run[1]
    cs = case(gimp_run, "second_run")
    assert cs["status"] == ["success", "success"], cs["errors"]
    assert cs["runs"] == [1, 2]
    top = cs["tree"]
    g1, g2 = top[0], top[1]                         # the newer result directly above the photo, below the older
    assert g1["name"] == "Colorize (Patch)" and g2["name"] == "Colorize (Patch), run 2"
    assert [c["name"] for c in g1["children"]] == ["Masks", "Colorized"]
    assert [c["name"] for c in g2["children"]] == ["Masks, run 2", "Colorized, run 2"]
    names1 = [_unique_suffix_removed(m["name"]) for m in g1["children"][0]["children"]]
    names2 = [_unique_suffix_removed(m["name"]) for m in g2["children"][0]["children"]]
    assert names1 and names2 == [n + ", run 2" for n in names1], (names1, names2)
    assert cs["recompose"]["status"] == "success", cs["recompose"]["error"]
    w, h = 96, 80
    col1 = [raw(out, f"second_col1_{t}.raw", (h, w, 3)).astype(int) for t in ("before", "after")]
    col2 = [raw(out, f"second_col2_{t}.raw", (h, w, 3)).astype(int) for t in ("before", "after")]
    assert np.abs(col1[1] - col1[0]).max() > 1, "recomposing the first result changed nothing"
    assert np.array_equal(col2[0], col2[1]), "recomposing the first result changed the second"


@needs_gimp
def test_selected_mask_or_result_says_what_to_do(gimp_run):
    cs = case(gimp_run, "second_run")
    for key in ("mask_selected", "group_selected"):
        r = cs[key]
        assert r["status"] == "calling-error" and r["tree_same"], r
        assert "Re-fuse Masks" in r["error"] and "colorize again" not in r["error"], r["error"]


@needs_gimp
def test_every_message_shown_is_one_sentence(gimp_run):
    """Every error the GIMP runs above produced (and every note GIMP printed for the plug-in) is one sentence."""
    from patchcolor_client.messages import is_one_sentence
    result = gimp_run[0]
    seen = []

    def walk(obj):
        if isinstance(obj, dict):
            for status, error in (("status", "error"), ("recompose_status", "recompose_error")):
                if obj.get(status) not in (None, "success") and isinstance(obj.get(status), str):
                    seen.append(obj[error])
            if isinstance(obj.get("status"), list):
                seen.extend(e for st, e in zip(obj["status"], obj.get("errors", [])) if st != "success")
            for v in obj.values():
                walk(v)
        elif isinstance(obj, list):
            for v in obj:
                walk(v)
    walk(result["cases"])
    notes = re.findall(r"colorize-patch\.py-Warning: (.*)", result["_stderr"])
    assert len(seen) >= 8, seen
    for text in seen + notes:
        assert is_one_sentence(text), text


@needs_gimp
def test_float_image_is_sent_as_16_bit(gimp_run):
    cs = case(gimp_run, "float_gray", colorized=True)
    assert cs["status"] == "success", cs["error"]
    assert cs["wire_format"] == "gray16" and cs["meta"]["format"] == "gray16"
    assert cs["precision_after"] == cs["precision_before"] == "float-linear" and cs["base_after"] == "rgb"


# ---------------------------------------------------------------------------------------------------------------------
# backend auto-start logic and the installer, without GIMP (the plug-in's GIMP-free logic: test_client_plugin.py)
# ---------------------------------------------------------------------------------------------------------------------

def _launcher():
    from patchcolor_client import launcher
    return launcher


def test_autostart_never_starts_two(models_dir, tmp_path, monkeypatch):
    """Two plug-ins asking at once for a dead local endpoint start exactly one real `patchcolor serve`."""
    L = _launcher()
    monkeypatch.setattr(L.tempfile, "gettempdir", lambda: str(tmp_path))
    monkeypatch.setenv("PATCHCOLOR_MODELS", str(models_dir))
    spawned = []
    real_spawn = L.spawn_backend

    def spawn(cmd, log_file, cfg, endpoint):
        p = real_spawn(cmd, log_file, cfg, endpoint)
        spawned.append(p)
        return p
    monkeypatch.setattr(L, "spawn_backend", spawn)
    ping = L.default_ping()
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    cfg = {"backend_command": [str(PATCHCOLOR), "serve", "--device", "cpu"], "log_file": str(tmp_path / "b.log"),
           "ping_timeout_s": 0.5, "start_timeout_s": 120}
    texts, results, errors = [], [], []

    def worker():
        try:
            results.append(L.ensure_backend(endpoint, True, cfg, ping, texts.append))
        except Exception as e:          # noqa: BLE001
            errors.append(e)
    threads = [threading.Thread(target=worker) for _ in range(2)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(180)
        assert not errors, errors
        assert sorted(results) == [False, True], results     # one started it, the other found it running
        assert len(spawned) == 1
        assert L.STARTING_TEXT in texts
        assert ping(endpoint, 2.0)
        # a third call finds it up and starts nothing
        assert L.ensure_backend(endpoint, True, cfg, ping) is False and len(spawned) == 1
    finally:
        for p in spawned:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()


def test_autostart_rules_without_a_backend(tmp_path, monkeypatch):
    L = _launcher()
    monkeypatch.setattr(L.tempfile, "gettempdir", lambda: str(tmp_path))
    dead = lambda endpoint, timeout_s: False      # noqa: E731
    cfg = {"backend_command": [sys.executable, "-c", "import sys; sys.exit(3)"], "log_file": str(tmp_path / "l"),
           "autostart_command": "python3 /x/install.py --autostart"}
    with pytest.raises(L.LaunchError, match="not an address on this computer"):
        L.ensure_backend("tcp://10.1.2.3:5555", True, cfg, dead)
    with pytest.raises(L.LaunchError, match="not an address on this computer"):   # looks local, is a host name
        L.ensure_backend("tcp://127.example.com:5555", True, cfg, dead)
    with pytest.raises(L.LaunchError, match="automatic start is turned off") as ei:
        L.ensure_backend("tcp://127.0.0.1:9", False, cfg, dead)
    assert "--endpoint tcp://127.0.0.1:9" in str(ei.value) and "/x/install.py --autostart" in str(ei.value)
    with pytest.raises(L.LaunchError, match="records no backend command"):
        L.ensure_backend("tcp://127.0.0.1:9", True, {}, dead)
    with pytest.raises(L.LaunchError, match=r"stopped while starting \(exit code 3\)"):
        L.ensure_backend("tcp://127.0.0.1:9", True, cfg, dead)
    # the command cannot run (a sandboxed GIMP cannot see the venv): the exact manual command and --autostart
    missing = {**cfg, "backend_command": [str(tmp_path / "no-such-venv" / "patchcolor"), "serve"]}
    with pytest.raises(L.LaunchError) as ei:
        L.ensure_backend("tcp://127.0.0.1:9", True, missing, dead)
    msg = str(ei.value)
    assert "Could not start the colorize backend" in msg and "serve --endpoint tcp://127.0.0.1:9" in msg
    assert "/x/install.py --autostart" in msg and "Run install.py again" not in msg
    assert L.backend_command(cfg, "tcp://127.0.0.1:9")[-2:] == ["--endpoint", "tcp://127.0.0.1:9"]


def test_installer_layout(tmp_path):
    sys.path.insert(0, str(REPO / "gimp_plugin"))
    try:
        import gimp_install
    finally:
        sys.path.remove(str(REPO / "gimp_plugin"))
    home = tmp_path / "home"
    for p in (".config/GIMP/3.0", ".config/GIMP/2.10", ".var/app/org.gimp.GIMP/config/GIMP/3.1"):
        (home / p).mkdir(parents=True)
    found = gimp_install.find_gimp_profiles(home=home, env={}, system="Linux")
    assert found == [home / ".config/GIMP/3.0", home / ".var/app/org.gimp.GIMP/config/GIMP/3.1"]
    (home / "Library/Application Support/GIMP/3.0").mkdir(parents=True)
    assert gimp_install.find_gimp_profiles(home=home, env={}, system="Darwin") == \
        [home / "Library/Application Support/GIMP/3.0"]
    (tmp_path / "appdata/GIMP/3.0").mkdir(parents=True)
    assert gimp_install.find_gimp_profiles(home=home, env={"APPDATA": str(tmp_path / "appdata")},
                                           system="Windows") == [tmp_path / "appdata/GIMP/3.0"]
    profile = home / ".config/GIMP/3.0"
    r = gimp_install.install_plugin(profile, ["/x/patchcolor", "serve"], "tcp://127.0.0.1:5555", "/x/b.log",
                                    pyzmq="skip")
    d = profile / "plug-ins" / "colorize-patch"
    assert r.plugin_dir == d
    assert os.access(d / "colorize-patch.py", os.X_OK)
    assert (d / "patchcolor_client" / "client.py").exists()
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["backend_command"] == ["/x/patchcolor", "serve"] and cfg["endpoint"] == "tcp://127.0.0.1:5555"
    assert cfg["log_file"] == "/x/b.log"
    assert cfg["autostart_command"].endswith("install.py --autostart")      # named when auto-start cannot work
    assert (d / "patchcolor_client" / "zmtp.py").exists() and (d / "help" / "en" / "gimp-help.xml").exists()
    assert (d / "gimp_layers.py").exists() and (d / "gimp_dialog.py").exists()
    spec = json.loads((d / "dialog.json").read_text())           # the dialog's choices, from the registry
    from patchcolor import registry
    assert [c["name"] for c in spec["choices"]["colorizer"]] == list(registry.registry().names("colorizer"))
    assert any("dialog" in m and "eccv16" in m for m in r.messages), r.messages
    assert not list(d.rglob("__pycache__"))
    gimp_install.install_plugin(profile, [], "tcp://127.0.0.1:6000", None, pyzmq="skip")     # update in place
    assert json.loads((d / "config.json").read_text())["endpoint"] == "tcp://127.0.0.1:6000"
    assert gimp_install.uninstall_plugin(profile) and not d.exists()
    assert not gimp_install.uninstall_plugin(profile)


def test_watchdog_cancels_the_job_when_the_plugin_dies(backend):
    """GIMP cancels a plug-in by killing it: the watchdog's pipe closes without "done" and it cancels the job."""
    import uuid
    from patchcolor_client.client import JobCancelled
    L = _launcher()
    Client = _client()
    from patchcolor_client import protocol as CP
    job = uuid.uuid4().hex
    token = CP.new_token()
    w, h = 768, 576
    pixels = np.clip(np.rint(photo(h, w) * 255), 0, 255).astype(np.uint8).tobytes()
    started = threading.Event()

    def run():
        with Client(backend, timeout_s=60) as c:
            return c.colorize(w, h, "gray8", pixels, OPTIONS, job_id=job, progress=lambda *a: started.set(),
                              token=token)
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(1) as pool:
        colorized = pool.submit(run)
        wd = L.Watchdog(backend, None)
        wd.job(job, token)
        assert started.wait(60), "the job did not start"
        wd.proc.stdin.close()           # what the plug-in's death looks like to the watchdog
        wd.proc.wait(30)
        with pytest.raises(JobCancelled):
            colorized.result(180)


def test_installer_pyzmq_probe_with_and_without_zmq(tmp_path):
    """The probe must tell a Python with pyzmq from one without (it once read "imports pyzmq 3.11" for both)."""
    sys.path.insert(0, str(REPO / "gimp_plugin"))
    try:
        import gimp_install
    finally:
        sys.path.remove(str(REPO / "gimp_plugin"))
    import zmq
    with_zmq = gimp_install.probe_python([sys.executable], tmp_path)
    assert with_zmq is not None and with_zmq["zmq"] == zmq.__version__
    assert with_zmq["python"] == "%d.%d" % sys.version_info[:2]
    # -S: no site-packages, so this very Python has no pyzmq
    without = gimp_install.probe_python([sys.executable, "-S"], tmp_path)
    assert without is not None and without["zmq"] == "" and without["python"] == with_zmq["python"]
    assert without["platform"] and without["machine"]
    # a pyzmq placed in the plug-in folder counts (the folder is on the probe's sys.path)
    fake = tmp_path / "zmq"
    fake.mkdir()
    (fake / "__init__.py").write_text("__version__ = '0.0-fake'\n")
    assert gimp_install.probe_python([sys.executable, "-S"], tmp_path)["zmq"] == "0.0-fake"
    # ensure_pyzmq: without pyzmq it reports False and says the built-in transport is used, never "run install.py"
    (fake / "__init__.py").unlink()
    fake.rmdir()
    real = gimp_install.gimp_python
    try:
        gimp_install.gimp_python = lambda kind: ([sys.executable, "-S"], "test python")
        ok, msgs = gimp_install.ensure_pyzmq(tmp_path, "windows")
        assert ok is False and "built-in ZeroMQ transport" in msgs[0] and "install.py" not in " ".join(msgs)
        gimp_install.gimp_python = lambda kind: ([sys.executable], "test python")
        ok, msgs = gimp_install.ensure_pyzmq(tmp_path, "windows")
        assert ok is True and zmq.__version__ in msgs[0]
    finally:
        gimp_install.gimp_python = real
    assert gimp_install.probe_python([sys.executable, "-c", "raise SystemExit(3)", "--"], tmp_path) is None


BROKEN_BATCH = r'''
import json
from gi.repository import Gimp
pdb = Gimp.get_pdb()
GIMP_CALL
img = Gimp.Image.new(16, 12, Gimp.ImageBaseType.RGB)
layer = Gimp.Layer.new(img, "Photo", 16, 12, Gimp.ImageType.RGB_IMAGE, 100.0, Gimp.LayerMode.NORMAL)
img.insert_layer(layer, None, 0)
R = {"registered": pdb.procedure_exists("plug-in-colorize-patch")}
R["status"], _, R["error"] = call("plug-in-colorize-patch", img, [layer])
R["layers"] = len(img.get_layers())
json.dump(R, open(OUT + "/result.json", "w"))
img.delete()
'''


@needs_gimp
def test_a_plugin_without_its_client_package_registers_and_says_why():
    """A plug-in folder copied without patchcolor_client: the procedures still exist, and a run says in one
    sentence what is wrong and how to fix it, adding nothing to the image."""
    from patchcolor_client.messages import is_one_sentence
    work = GIMP.workdir("broken")
    try:
        dest = GIMP.install_plugin(work, backend_cmd=None, endpoint="tcp://127.0.0.1:5555")
        import shutil
        shutil.rmtree(dest / "patchcolor_client")
        (work.host / "batch.py").write_text(BROKEN_BATCH.replace("GIMP_CALL", GIMP_CALL)
                                            .replace("OUT", repr(work.inner_path("out"))))
        proc = GIMP.run_batch(work, "batch.py", timeout=300)
        assert (work.host / "out" / "result.json").exists(), proc.stderr[-3000:]
        r = json.loads((work.host / "out" / "result.json").read_text())
        assert r["registered"] and r["status"] == "execution-error" and r["layers"] == 1, r
        assert "client package is missing" in r["error"] and "install.py" in r["error"], r["error"]
        assert is_one_sentence(r["error"]), r["error"]
    finally:
        GIMP.cleanup(work)
