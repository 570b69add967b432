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
    assert "weights fetch" in r.stderr and "install.py" not in r.stderr
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


# ------------------------------------------------------------------------------------------------ precision choice
@pytest.mark.parametrize("native", [True, False])
def test_precision_fast_follows_the_probe(monkeypatch, capsys, native):
    import argparse

    import torch

    from patchcolor import cli, precision
    from patchcolor.options import make_options

    monkeypatch.setattr(precision, "_cpu_native", lambda p: native)
    ns = argparse.Namespace(precision="fast", device="cpu", remote=None)
    assert cli._precision(ns) == ("bf16" if native else "fp32")
    err = capsys.readouterr().err
    if native:
        assert err == ""
    else:
        assert "runs fp32" in err and "CPU " in err and err.count("\n") == 1
    assert precision.resolve_fast(torch.device("cpu"), remote=True) == ("bf16", None)   # the server decides
    assert make_options("default").precision == "fp32" == make_options("seed").precision   # never the default
    assert cli._precision(argparse.Namespace(precision=None, device="cpu")) is None


def test_detection_matching_and_psnr():
    from patchcolor.precision import match_detections, psnr
    from patchcolor.result import InstanceResult

    def inst(cls, box):
        return InstanceResult(cls, "x", 0.9, box, np.ones((1, 1), bool), (0, 0))
    ref = [inst(0, (0, 0, 10, 10)), inst(1, (20, 20, 40, 40)), inst(0, (50, 50, 60, 60))]
    fast = [inst(0, (1, 1, 10, 10)), inst(2, (20, 20, 40, 40)), inst(0, (55, 55, 65, 65))]
    assert match_detections(ref, fast) == 1       # same box other class, IoU 0.14: no match
    assert match_detections(ref, ref) == 3
    a = np.zeros((4, 4, 3), np.uint8)
    b = a.copy()
    b[0, 0, 0] = 255
    assert psnr(a, a) == float("inf") and abs(psnr(a, b) - 10 * np.log10(48)) < 1e-4


def test_check_precision_prints_psnr_and_agreement(models_dir, photo_gray, tmp_path, monkeypatch, capsys):
    from patchcolor import cli, precision

    monkeypatch.setattr(precision, "_cpu_native", lambda p: False)
    p = tmp_path / "a.png"
    Image.fromarray(photo_gray[:160, :200]).save(p)
    rc = cli.main(["check-precision", str(p), str(tmp_path / "missing.png"), "--device", "cpu", "--max-side", "128",
                   "--max-instances", "2", "--models", str(models_dir)])
    out, err = capsys.readouterr()
    assert rc == 1 and "missing.png" in err            # one unreadable image: said, the others compared
    assert out.startswith("CPU ") and "bf16-sim" in out
    line = next(line for line in out.splitlines() if line.startswith("a.png: PSNR "))
    assert "matched (IoU>0.5, same class)" in line and "1 image(s): mean PSNR" in out


def test_check_precision_compares_winograd_with_direct_convolutions(models_dir, photo_gray, tmp_path, monkeypatch,
                                                                    capsys):
    from patchcolor import cli, winograd
    from patchcolor.pipeline import Pipeline

    if not winograd.nnpack_available():
        pytest.skip("this torch build has no NNPACK")
    built: list[tuple[str, bool]] = []
    colorizer, detector = Pipeline.colorizer, Pipeline.detector

    def spy_colorizer(self, name):
        m = colorizer(self, name)
        built.append(("colorizer", winograd.uses_winograd(m)))
        return m

    def spy_detector(self, name):
        d = detector(self, name)
        built.append(("detector", winograd.uses_winograd(d.model)))
        return d

    monkeypatch.setattr(Pipeline, "colorizer", spy_colorizer)
    monkeypatch.setattr(Pipeline, "detector", spy_detector)
    monkeypatch.setenv(winograd.ENV, "off")           # the comparison builds both kinds whatever the policy says
    p = tmp_path / "a.png"
    Image.fromarray(photo_gray[:160, :200]).save(p)
    rc = cli.main(["check-precision", str(p), "--winograd", "--device", "cpu", "--max-side", "128",
                   "--max-instances", "2", "--models", str(models_dir)])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "comparing Winograd 3x3 convolutions (NNPACK) with direct ones" in out
    line = next(line for line in out.splitlines() if line.startswith("a.png: PSNR "))
    assert "detections direct" in line and "/ winograd" in line
    # the first pipeline's models are direct, the second's Winograd (then every job reuses them)
    assert built[:4] == [("colorizer", False), ("detector", False), ("colorizer", True), ("detector", True)]
    monkeypatch.setattr(winograd, "nnpack_available", lambda: False)
    assert cli.main(["check-precision", str(p), "--winograd", "--device", "cpu", "--models", str(models_dir)]) == 2
    assert "needs NNPACK" in capsys.readouterr().err


def test_unreachable_backend_counts_the_inputs_never_attempted(tmp_path):
    import socket

    from test_batch import photo

    for k in range(3):
        photo(tmp_path / "in" / f"p{k}.png", seed=k)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = _run(["colorize", tmp_path / "in", "-o", tmp_path / "out", "--remote", f"tcp://127.0.0.1:{port}",
              "--remote-timeout", "1"], tmp_path / "no-models")
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert "0 colorized, 0 skipped (already done), 1 failed, 2 not attempted" in r.stderr, r.stderr


# ------------------------------------------------------------------------------------------------ option values
@pytest.mark.parametrize("args", [["--max-pixels", "inf"], ["--max-pixels", "nan"], ["--max-pixels", "-5"],
                                  ["--max-pixels", "0"], ["--ray-cpus-per-worker", "nan"],
                                  ["--ray-cpus-per-worker", "-1"], ["--remote-timeout", "inf"],
                                  ["--remote-timeout", "-1"], ["--saturation", "nan"], ["--feather", "inf"],
                                  ["--score-thresh", "-0.1"], ["--max-side", "-3"], ["--max-instances", "-1"]])
def test_every_numeric_option_is_checked_in_one_line(tmp_path, capsys, args):
    from patchcolor import cli
    from test_batch import photo

    p = photo(tmp_path / "a.png")
    code = cli.main(["colorize", str(p), "-o", str(tmp_path / "out")] + args)
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and args[0].lstrip("-").split("-")[0] in lines[0]
    assert not (tmp_path / "out").exists()


def test_check_precision_checks_max_pixels(tmp_path, capsys):
    from patchcolor import cli

    assert cli.main(["check-precision", str(tmp_path / "a.png"), "--max-pixels", "inf"]) == 2
    assert capsys.readouterr().err.startswith("error: --max-pixels must be a number")


# ------------------------------------------------------------------------------------------------ never replace
def test_cli_replaces_nothing_names_everything_and_says_what_it_did(models_dir, tmp_path):
    """Through the real command: the issue's --suffix case (s/a.png + s/a_c.png), an unrelated OUT/family.png, a
    254-character name, an animated GIF (one note line), a name that would be hidden."""
    from test_batch import photo

    s, out = tmp_path / "s", tmp_path / "out"
    mine = [photo(s / n, 64, 48, seed=k) for k, n in enumerate(("a.png", "a_c.png", "b_c.jpg"))]
    before = {p: p.read_bytes() for p in mine}
    r = _run(["colorize", s, "-o", s, "--suffix", "_c", "--detector", "none", "--max-side", "64"], models_dir)
    assert r.returncode == 0 and "3 colorized, 0 skipped (already done), 0 failed" in r.stderr, r.stderr
    assert {p: p.read_bytes() for p in mine} == before
    assert sorted(p.name for p in s.iterdir() if p.is_file()) == ["a.png", "a_c.png", "a_c_c.png", "a_png_c.png",
                                                                   "b_c.jpg", "b_c_c.png"]

    album = tmp_path / "album"
    photo(album / "family.png", 64, 48, seed=5)
    photo(album / ("p" * 250 + ".png"), 64, 48, seed=6)
    photo(album / "..png", 64, 48, seed=7)
    frames = [Image.fromarray(np.full((48, 64), v, np.uint8)) for v in (20, 200)]
    frames[0].save(album / "anim.gif", save_all=True, append_images=frames[1:])
    theirs = photo(out / "family.png", seed=9)
    kept = theirs.read_bytes()
    r = _run(["colorize", album, "-o", out, "--masks", "--detector", "none", "--max-side", "64"], models_dir)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert "4 colorized, 0 skipped (already done), 0 failed" in r.stderr
    assert theirs.read_bytes() == kept and (out / "family_png.png").exists() and (out / "_.png").exists()
    lines = r.stderr.splitlines()
    assert sum("not written by patchcolor" in ln and "family_png.png" in ln for ln in lines) == 1
    assert [ln for ln in lines if ln.startswith("note: ")] == [
        f"note: {album / 'anim.gif'}: only the first of its 2 frames is colorized"]
