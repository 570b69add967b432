"""End to end through the ``patchcolor`` command on a real photo (scikit-image sample converted to gray)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
from PIL import Image

PATCHCOLOR = [sys.executable, "-m", "patchcolor.cli"]


def _run(args, models_dir, **kw):
    env = dict(os.environ, PATCHCOLOR_MODELS=str(models_dir))
    return subprocess.run(PATCHCOLOR + [str(a) for a in args], capture_output=True, text=True, env=env,
                          timeout=600, **kw)


@pytest.fixture(scope="module")
def folder(tmp_path_factory, photo_gray):
    d = tmp_path_factory.mktemp("photos")
    Image.fromarray(photo_gray).save(d / "astronaut.jpg", quality=95)
    a16 = (photo_gray[:200, :300].astype(np.uint16) * 257)
    cv2.imwrite(str(d / "deep.png"), a16)
    (d / "notes.txt").write_text("not a photo")
    (d / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    return d


def test_folder_run_masks_resume_and_errors(folder, models_dir, tmp_path):
    out = tmp_path / "out"
    r = _run(["colorize", folder, "-o", out, "--masks", "--max-side", "512"], models_dir)
    assert r.returncode == 1, r.stderr                        # broken.png failed ...
    assert "Traceback" not in r.stderr
    assert "broken.png" in r.stderr and "notes.txt: not an image" in r.stderr
    assert "2 colorized" in r.stderr                          # ... the others were done
    img = np.asarray(Image.open(out / "astronaut.png"))
    assert img.shape == (512, 512, 3) and img.dtype == np.uint8
    deep = cv2.imread(str(out / "deep.png"), cv2.IMREAD_UNCHANGED)
    assert deep.dtype == np.uint16 and deep.shape == (200, 300, 3)
    meta = json.loads((out / "astronaut_masks" / "instances.json").read_text())
    assert meta and meta[0]["class"] == "person"
    m = np.asarray(Image.open(out / "astronaut_masks" / meta[0]["file"]))
    assert m.shape == (512, 512) and set(np.unique(m)) <= {0, 255} and m.max() == 255
    assert not list(out.glob(".tmp-*"))                      # atomic writes left nothing behind
    before = (out / "astronaut.png").stat().st_mtime_ns
    r2 = _run(["colorize", folder / "astronaut.jpg", "-o", out], models_dir)
    assert r2.returncode == 0 and "1 skipped" in r2.stderr
    assert (out / "astronaut.png").stat().st_mtime_ns == before


def test_seed_preset_and_tiff(folder, models_dir, tmp_path):
    r = _run(["colorize", folder / "deep.png", "-o", tmp_path, "--preset", "seed", "--format", "tiff",
              "--detector", "none"], models_dir)
    assert r.returncode == 0, r.stderr
    t = cv2.imread(str(tmp_path / "deep.tif"), cv2.IMREAD_UNCHANGED)
    assert t.dtype == np.uint16 and t.shape == (200, 300, 3)


def test_clear_errors_without_traceback(folder, tmp_path):
    r = _run(["colorize", folder / "astronaut.jpg", "-o", tmp_path], tmp_path / "no-models")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "install.py" in r.stderr
    r = _run(["colorize", folder / "astronaut.jpg", "-o", tmp_path, "--saturation", "99"], tmp_path)
    assert r.returncode == 2 and "saturation must be" in r.stderr
    r = _run(["colorize", folder / "astronaut.jpg", "-o", tmp_path, "--max-pixels", "1000"], tmp_path)
    assert r.returncode == 1 and "over the limit" in r.stderr


def test_bad_inputs_are_one_line_each_and_never_stop_the_batch(tmp_path):
    """1x1 gray/RGB, a PNG declaring 100000x100000, '..png', a truncated file: no model is needed to refuse them."""
    from test_batch import photo, png_header_only

    d = tmp_path / "in"
    photo(d / "gray1.png", 1, 1)
    photo(d / "rgb1.png", 1, 1, mode="RGB")
    png_header_only(d / "bomb.png", 100_000, 100_000)
    photo(d / "..png", 1, 1)
    cut = photo(d / "cut.png", 300, 200, mode="RGB")
    cut.write_bytes(cut.read_bytes()[:300])
    r = _run(["colorize", d, "-o", tmp_path / "out"], tmp_path / "no-models")
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 5 and all(n in r.stderr for n in ("gray1.png", "rgb1.png", "bomb.png", "/..png", "cut.png"))
    assert "0 colorized, 0 skipped (already done), 5 failed" in r.stderr


def test_output_folder_equal_to_input_is_refused(tmp_path):
    from test_batch import photo

    p = photo(tmp_path / "a.png")
    before = p.read_bytes()
    r = _run(["colorize", tmp_path, "-o", tmp_path, "--overwrite"], tmp_path / "no-models")
    assert r.returncode == 1 and "Traceback" not in r.stderr and "--suffix" in r.stderr, r.stderr
    assert p.read_bytes() == before and sorted(f.name for f in tmp_path.iterdir()) == ["a.png"]
