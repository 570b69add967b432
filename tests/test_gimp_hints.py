"""Colour hints and the preview in a real, headless GIMP 3 (one GIMP start), against the real backend.

GIMP runs: Add Hint Layer on a grayscale photo (converted to RGB, an empty transparent "Colour hints" layer above
it), paints one dab on it, asks for the dialog's preview through its procedure (a new image; the photo's image is
not touched), colorizes with the hints and with them switched off, and recomposes the hinted result with one mask
cleared. This process compares each result with what a direct client call with the same pixels and hint map gets
from the same backend. Skipped when no GIMP 3 is available (see gimp_harness.py).
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gimp_harness import find_gimp, free_port  # noqa: E402
from test_gimp_plugin import GIMP_CALL, _kill_autostarted, _start_backend, _stop, photo, write_png  # noqa: E402

GIMP, WHY = find_gimp()
needs_gimp = pytest.mark.skipif(GIMP is None, reason=f"no GIMP 3: {WHY}")

W, H = 96, 80
DAB = (30, 30, 8, 8)                       # x, y, w, h on the hint layer
DAB_RGBA = (30, 60, 230, 255)
ARGS = {"preset": "default", "colorizer": "siggraph17", "detector": "r101", "score-threshold": 0.3,
        "max-instances": 3, "saturation": 4.0, "feather": 2.0}
OPTIONS = {"preset": "default", "colorizer": "siggraph17", "detector": "r101", "score_thresh": 0.3,
           "max_instances": 3, "saturation": 4.0, "feather": 0.02}

BATCH = r'''
import json, traceback
from gi.repository import Gimp, Gegl, Gio
P = json.load(open(PARAMS_PATH))
OUT = P["out"]
R = {}
pdb = Gimp.get_pdb()

def save():
    json.dump(R, open(OUT + "/result.json", "w"), indent=1, default=str)

def dump(d, fmt, name):
    data = d.get_buffer().get(Gegl.Rectangle.new(0, 0, d.get_width(), d.get_height()), 1.0, fmt,
                              Gegl.AbyssPolicy.NONE)
    open(OUT + "/" + name, "wb").write(bytes(data))

GIMP_CALL

def layers(image):
    out = []
    for l in image.get_layers():
        out.append(l.get_name())
        if l.is_group_layer():
            out += ["  " + c.get_name() for c in l.get_children()]
    return out

def colorized_and_masks(group):
    col, masks = None, {}
    def walk(g):
        nonlocal col
        for c in g.get_children():
            if c.is_group_layer():
                walk(c)
            elif c.get_parasite("colorize-patch-colorized") is not None:
                col = c
            elif c.get_parasite("colorize-patch-mask") is not None:
                masks[json.loads(bytes(c.get_parasite("colorize-patch-mask").get_data()))["index"]] = c
    walk(group)
    return col, [masks[i] for i in sorted(masks)]

try:
    img = Gimp.file_load(Gimp.RunMode.NONINTERACTIVE, Gio.File.new_for_path(P["photo"]))
    src = img.get_selected_layers()[0]
    args = dict(P["args"]); args["endpoint"] = P["endpoint"]
    for name in ("plug-in-colorize-patch-add-hints", "plug-in-colorize-patch-preview"):
        proc = pdb.lookup_procedure(name)
        R.setdefault("registered", {})[name] = None if proc is None else {
            "menu_label": proc.get_menu_label(), "args": [a.get_name() for a in proc.get_arguments()]}
    R["colorize_args"] = [a.get_name() for a in pdb.lookup_procedure("plug-in-colorize-patch").get_arguments()]

    s, v, e = call("plug-in-colorize-patch-add-hints", img, [src])
    hl = v[0] if s == "success" else None
    R["add"] = {"status": s, "error": e, "base": img.get_base_type().value_nick, "layers": layers(img)}
    if hl is not None:
        R["add"].update(name=hl.get_name(), alpha=hl.has_alpha(), size=[hl.get_width(), hl.get_height()],
                        selected=[l.get_name() for l in img.get_selected_layers()])
        dump(hl, "R'G'B'A u8", "hint_empty.raw")
        s2, v2, e2 = call("plug-in-colorize-patch-add-hints", img, [src])      # again: the same layer, no new one
        R["add"]["again"] = {"status": s2, "same": s2 == "success" and v2[0] == hl, "layers": layers(img)}
        x, y, w, h = P["dab"]
        buf = hl.get_buffer()
        buf.set(Gegl.Rectangle.new(x, y, w, h), "R'G'B'A u8", bytes(P["dab_rgba"]) * (w * h))
        buf.flush()
        hl.update(x, y, w, h)
        dump(hl, "R'G'B'A u8", "hint_layer.raw")
    dump(src, "R'G'B' u8", "src.raw")
    save()

    before = layers(img)
    img.clean_all()               # every undo step after this makes the image dirty: previews must add none
    for key, draft in (("draft", True), ("preview", False), ("draft_again", True)):
        n_images = len(Gimp.get_images())
        s, v, e = call("plug-in-colorize-patch-preview", img, [src], **args, **{"long-side": 64, "draft": draft})
        R[key] = {"status": s, "error": e}
        if s == "success":
            pv = v[0]
            pl = pv.get_layers()[0]
            R[key].update(size=[pl.get_width(), pl.get_height()], n_hints=v[1], layers_same=layers(img) == before,
                          new_images=len(Gimp.get_images()) - n_images, alpha=pl.has_alpha(), name=pl.get_name(),
                          dirty=img.is_dirty())
            dump(pl, "R'G'B' u8", key + ".raw")
            pv.delete()
        save()
    s, v, e = call("plug-in-colorize-patch-preview", img, [src], **args, **{"long-side": 64, "use-hints": False})
    R["preview_off"] = {"status": s, "error": e, "n_hints": v[1] if s == "success" else None}
    if s == "success":
        dump(v[0].get_layers()[0], "R'G'B' u8", "preview_off.raw")
        v[0].delete()
    save()

    for key, use in (("plain", False), ("hinted", True)):
        s, v, e = call("plug-in-colorize-patch", img, [src], **args, **{"use-hints": use})
        R[key] = {"status": s, "error": e}
        if s == "success":
            group = v[0]
            R[key]["n"] = v[1]
            R[key]["meta"] = json.loads(bytes(group.get_parasite("colorize-patch").get_data()).decode())
            col, masks = colorized_and_masks(group)
            dump(col, "R'G'B' u8", key + ".raw")
            if key == "hinted" and masks:
                m = masks[0]
                m.get_buffer().set(Gegl.Rectangle.new(0, 0, m.get_width(), m.get_height()), "Y' u8",
                                   bytes(m.get_width() * m.get_height()))
                m.update(0, 0, m.get_width(), m.get_height())
                s2, v2, e2 = call("plug-in-colorize-patch-refuse", img, [group], endpoint="")
                R[key]["recompose"] = {"status": s2, "error": e2}
                dump(col, "R'G'B' u8", key + "_recomposed.raw")
        save()
    R["layers_end"] = layers(img)
    # a hidden hint layer is not used (and not counted)
    hl.set_visible(False)
    s, v, e = call("plug-in-colorize-patch-preview", img, [src], **args, **{"long-side": 64})
    R["hidden"] = {"status": s, "error": e, "n_hints": v[1] if s == "success" else None}
    if s == "success":
        v[0].delete()
    hl.set_visible(True)
except Exception:
    R["traceback"] = traceback.format_exc()
save()
'''


def _img(out: Path, name: str, w: int = W, h: int = H, ch: int = 3) -> np.ndarray:
    return np.frombuffer((out / name).read_bytes(), np.uint8).reshape(h, w, ch)


@pytest.fixture(scope="module")
def run(models_dir, tmp_path_factory):
    if GIMP is None:
        pytest.skip(f"no GIMP 3: {WHY}")
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    backend_log = tmp_path_factory.mktemp("backend") / "serve.log"
    backend = _start_backend(models_dir, backend_log, endpoint)
    work = GIMP.workdir("hints")
    out = work.host / "out"
    try:
        (work.host / "in").mkdir()
        gray = np.clip(np.rint(photo(H, W) * 255), 0, 255).astype(np.uint8)
        write_png(work.host / "in" / "photo.png", gray)
        GIMP.install_plugin(work, backend_cmd=None, endpoint=endpoint, log_path=work.inner_path("out", "backend.log"),
                            extra_config={"timeout_s": 120.0})
        params = {"out": work.inner_path("out"), "photo": work.inner_path("in", "photo.png"), "endpoint": endpoint,
                  "args": ARGS, "dab": list(DAB), "dab_rgba": list(DAB_RGBA)}
        (work.host / "params.json").write_text(json.dumps(params))
        script = BATCH.replace("GIMP_CALL", GIMP_CALL).replace("PARAMS_PATH", repr(work.inner_path("params.json")))
        (work.host / "batch.py").write_text(script)
        t0 = time.monotonic()
        proc = GIMP.run_batch(work, "batch.py", timeout=900, block_pyzmq=True)
        print(f"\n[test_gimp_hints] {GIMP.describe()}: {time.monotonic() - t0:.1f} s, exit {proc.returncode}",
              file=sys.stderr)
        _kill_autostarted(out)
        if not (out / "result.json").exists():
            pytest.fail(f"GIMP batch failed (exit {proc.returncode}):\n{proc.stderr[-6000:]}")
        result = json.loads((out / "result.json").read_text())
        assert "traceback" not in result, result["traceback"] + proc.stderr[-3000:]
        result["backend_log"] = backend_log.read_text(errors="replace")
        result["stderr"] = proc.stderr
        yield result, out, endpoint, gray
    finally:
        _stop(backend)
        if not os.environ.get("PATCHCOLOR_KEEP_GIMP_WORK"):
            GIMP.cleanup(work)


def _hint_map():
    from patchcolor_client import HintMap

    m = np.zeros((H, W, 4), np.uint8)
    x, y, w, h = DAB
    m[y:y + h, x:x + w] = DAB_RGBA
    return HintMap(W, H, "rgba8", m.tobytes())


@needs_gimp
def test_add_hint_layer(run):
    r, out, _, _ = run
    assert r["registered"]["plug-in-colorize-patch-add-hints"]["menu_label"] == "Colorize (Patch): Add Hint Layer"
    assert "use-hints" in r["colorize_args"] and "long-side" in r["registered"]["plug-in-colorize-patch-preview"]["args"]
    a = r["add"]
    assert a["status"] == "success", a["error"]
    assert a["base"] == "rgb" and a["name"] == "Colour hints" and a["alpha"] and a["size"] == [W, H]
    assert a["layers"][0] == "Colour hints" and a["selected"] == ["Colour hints"]    # above the photo, selected
    assert not _img(out, "hint_empty.raw", ch=4).any()                                 # empty and transparent
    assert a["again"]["same"] and a["again"]["layers"] == a["layers"]
    # its instructions are for people at the dialog (an information there), never a warning in the console
    assert "Warning: Paint" not in r["stderr"] and "Colour hints' layer" not in r["stderr"], r["stderr"][-2000:]


@needs_gimp
def test_a_hidden_hint_layer_is_not_used(run):
    r = run[0]
    assert r["hidden"]["status"] == "success", r["hidden"]["error"]
    assert r["hidden"]["n_hints"] == 0 and r["preview"]["n_hints"] == 1


@needs_gimp
def test_preview_procedure_matches_the_backend_and_leaves_the_image_alone(run):
    from patchcolor_client import Client

    r, out, endpoint, _ = run
    p = r["preview"]
    assert p["status"] == "success", p["error"]
    assert p["size"] == [64, 53] and p["n_hints"] == 1 and p["layers_same"] and p["new_images"] == 1
    assert p["name"] == "Preview" and not p["dirty"]
    assert r["preview_off"]["status"] == "success" and r["preview_off"]["n_hints"] == 0
    src = _img(out, "src.raw")
    with Client(endpoint, timeout_s=120) as c:
        want = c.preview(W, H, "rgb8", src.tobytes(), OPTIONS, hints=_hint_map(), long_side=64)
    got = _img(out, "preview.raw", 64, 53)
    assert np.abs(got.astype(int) - np.frombuffer(want.pixels, np.uint8).reshape(53, 64, 3)).max() <= 1
    assert np.abs(got.astype(int) - _img(out, "preview_off.raw", 64, 53)).max() > 0


@needs_gimp
def test_hint_layer_changes_the_colorized_layer_near_the_hint_and_recompose_keeps_it(run):
    from patchcolor_client import Client

    r, out, endpoint, _ = run
    for key in ("plain", "hinted"):
        assert r[key]["status"] == "success", r[key]["error"]
    assert r["plain"]["meta"]["hints"] == 0 and r["hinted"]["meta"]["hints"] == 1
    plain, hinted = _img(out, "plain.raw").astype(int), _img(out, "hinted.raw").astype(int)
    x, y, w, h = DAB
    near = np.abs(hinted - plain)[y:y + h, x:x + w].mean()
    assert near > 1, near                                         # the hint changed the colours where it was painted
    src = _img(out, "src.raw")
    with Client(endpoint, timeout_s=120) as c:
        want = c.colorize(W, H, "rgb8", src.tobytes(), OPTIONS, hints=_hint_map())
        assert want.extra.get("hints") == 1
        assert np.abs(hinted - np.frombuffer(want.pixels, np.uint8).reshape(H, W, 3)).max() <= 1
        if "recompose" in r["hinted"]:
            assert r["hinted"]["recompose"]["status"] == "success", r["hinted"]["recompose"]["error"]
            masks = [bytearray(i.full_mask(W, H)) for i in want.instances]
            masks[0] = bytearray(W * H)
            again = c.recompose(want.job_id, masks)
            got = _img(out, "hinted_recomposed.raw").astype(int)
            assert np.abs(got - np.frombuffer(again.pixels, np.uint8).reshape(H, W, 3)).max() <= 1


@needs_gimp
def test_preview_procedure_draft_then_exact(run):
    """draft=True on an image the backend has not analysed: a proxy-size draft named so; draft=True again after the
    exact preview: the exact preview (the backend has it cached). Neither touches the source image."""
    r, out, _, _ = run
    assert "draft" in r["registered"]["plug-in-colorize-patch-preview"]["args"]
    d, again = r["draft"], r["draft_again"]
    for p in (d, again):
        assert p["status"] == "success", p["error"]
        assert p["size"] == [64, 53] and p["n_hints"] == 1 and p["new_images"] == 1
        assert p["layers_same"] and not p["dirty"]                  # no layer and no undo step added
    assert d["name"] == "Preview (draft)"
    assert again["name"] == "Preview"
    exact = _img(out, "preview.raw", 64, 53).astype(int)
    assert np.abs(_img(out, "draft_again.raw", 64, 53).astype(int) - exact).max() <= 1
    assert _img(out, "draft.raw", 64, 53).std() > 0                 # a picture, not an empty layer


@needs_gimp
def test_colorize_after_the_dialog_preview_reuses_its_work(run):
    """The plug-in's colorize sends the same pixels, options and hint map as its preview: the backend reuses the
    preview's detections and network outputs for both colorizes (hints off and on, each after its exact preview)
    instead of running the detector and the networks again."""
    r, _, _, _ = run
    assert r["plain"]["status"] == "success" and r["hinted"]["status"] == "success"
    log = r["backend_log"]
    assert log.count("reusing the preview's") >= 4, log[-3000:]     # detections + network outputs, twice
    reused = [line for line in log.splitlines() if "network output for" in line]
    assert len(reused) >= 2 and all(" of " in line for line in reused)
    n_of = [line.split("network output for ")[1].split(" input")[0].split(" of ") for line in reused[-2:]]
    assert all(a == b for a, b in n_of), reused                      # every input reused
