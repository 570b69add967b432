"""``patchcolor evaluate``: the metrics' mechanics (identity, a known desaturation, the gray version), and the whole
command on scikit-image's colour photos with random weights (the numbers mean nothing there; the table, JSON, sheet
and error handling must be right)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image
from skimage import color as skcolor
from skimage import data

from patchcolor.evaluate import Scores, colourfulness, compare, gray_version, run_evaluation, unit_rgb
from patchcolor.options import make_options


def small(img: np.ndarray, side: int = 96) -> np.ndarray:
    h, w = img.shape[:2]
    s = side / max(h, w)
    return np.asarray(Image.fromarray(img).resize((round(w * s), round(h * s)), Image.BICUBIC))


def desaturate(rgb: np.ndarray, k: float) -> np.ndarray:
    """Each pixel pulled toward the mean of its three channels: every opponent channel scales by ``k``."""
    m = rgb.mean(axis=2, keepdims=True)
    return (m + k * (rgb - m)).astype(np.float32)


def test_the_original_against_itself():
    ref = unit_rgb(data.astronaut())
    s = compare(ref, ref.copy())
    assert math.isinf(s.psnr_db) and s.ssim == pytest.approx(1.0) and s.de_mean == 0 and s.de_p95 == 0
    assert s.dcf == 0 and s.cf == s.cf_original > 10
    assert s.to_json()["psnr_db"] is None                 # JSON has no infinity


def test_colourfulness_formula_on_two_pixels():
    """Hasler & Süsstrunk by hand: pure red and pure blue. rg = (255, 0), yb = (127.5, −255):
    σ_rg = 127.5, σ_yb = 191.25, μ_rg = 127.5, μ_yb = −63.75."""
    img = np.array([[[1.0, 0, 0], [0, 0, 1.0]]], np.float32)
    want = math.hypot(127.5, 191.25) + 0.3 * math.hypot(127.5, 63.75)
    assert colourfulness(img) == pytest.approx(want, rel=1e-6)
    assert colourfulness(np.full((4, 4, 3), 0.4, np.float32)) == 0


def test_a_known_desaturation_gives_the_expected_colourfulness_drop():
    ref = unit_rgb(data.coffee())
    half = desaturate(ref, 0.5)
    s = compare(ref, half)
    assert s.cf == pytest.approx(0.5 * s.cf_original, rel=1e-4)
    assert s.dcf == pytest.approx(-0.5 * s.cf_original, rel=1e-4)
    quarter = compare(ref, desaturate(ref, 0.25))
    assert quarter.de_mean > s.de_mean > 1 and quarter.psnr_db < s.psnr_db < 60 and s.ssim < 1
    de = skcolor.deltaE_ciede2000(skcolor.rgb2lab(ref.astype(np.float64)), skcolor.rgb2lab(half.astype(np.float64)))
    assert s.de_mean == pytest.approx(de.mean(), rel=1e-3)     # banded float32 = skimage's float64 on the whole
    assert s.de_p95 == pytest.approx(np.percentile(de, 95), rel=1e-3)


@pytest.mark.parametrize("dtype,tol", [(np.uint8, 0.3), (np.uint16, 0.01)])
def test_gray_version_keeps_the_lightness(dtype, tol):
    rgb = data.chelsea()
    if dtype == np.uint16:
        rgb = rgb.astype(np.uint16) * 257
    gray = gray_version(rgb)
    assert gray.dtype == dtype and gray.shape == rgb.shape[:2]
    top = 65535.0 if dtype == np.uint16 else 255.0
    l_orig = skcolor.rgb2lab(rgb / top)[..., 0]
    l_gray = skcolor.rgb2lab(np.repeat(gray[..., None], 3, axis=2) / top)[..., 0]
    assert np.abs(l_orig - l_gray).max() < tol


@pytest.fixture(scope="module")
def photo_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    for name in ("astronaut", "coffee", "chelsea"):
        Image.fromarray(small(getattr(data, name)())).save(folder / f"{name}.png")
    return folder


def test_every_colorizer_on_skimage_photos(pipeline, ddcolor_models, photo_files):
    """ECCV16, SIGGRAPH17 and DDColor-T on three colour photos: a score per (photo, colorizer), means per
    colorizer, load times apart, and strict JSON."""
    photos = sorted(photo_files.glob("*.png"))
    names = ["eccv16", "siggraph17", "ddcolor-tiny"]
    rows: list = []
    report = run_evaluation(photos, names, make_options("default", detector="none", net_size=64), pipeline,
                            sheet=rows)
    assert not report.failed and report.colorizers == names and set(report.load_seconds) == set(names)
    assert [(r.photo, r.colorizer) for r in report.rows] == [(p.name, n) for p in photos for n in names]
    for r in report.rows:
        s = r.scores
        assert isinstance(s, Scores) and 0 < s.psnr_db < 100 and -1 <= s.ssim <= 1 and s.de_p95 >= s.de_mean > 0
        assert s.cf_original > 0 and s.seconds > 0
    summary = report.summary()
    assert list(summary) == names and all(v["photos"] == 3 for v in summary.values())
    eccv = [r.scores.de_mean for r in report.rows if r.colorizer == "eccv16"]
    assert summary["eccv16"]["de_mean"] == pytest.approx(np.mean(eccv))
    json.loads(json.dumps(report.to_json(), allow_nan=False))
    assert [len(images) for _, images in rows] == [5, 5, 5]       # original, gray, three results


def test_cli_table_json_sheet_and_bad_inputs(models_dir, photo_files, tmp_path, capsys):
    from patchcolor.cli import main

    gray = tmp_path / "gray.png"
    Image.fromarray(small(data.camera())).save(gray)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    sheet = tmp_path / "sheet.png"
    args = ["evaluate", str(photo_files / "coffee.png"), str(gray), str(broken), "--colorizer", "eccv16",
            "--detector", "none", "--models", str(models_dir)]
    assert main(args + ["--json", "--sheet", str(sheet)]) == 1        # two bad inputs: one line each, not fatal
    out = capsys.readouterr()
    got = json.loads(out.out)
    assert [r["photo"] for r in got["rows"]] == ["coffee.png", "gray.png", "broken.png"]
    assert got["rows"][0]["colorizer"] == "eccv16" and got["rows"][0]["de_mean"] > 0
    assert got["rows"][1]["error"] == "already gray" and "cannot read" in got["rows"][2]["error"]
    assert got["summary"]["eccv16"]["photos"] == 1 and "CPU" in got["machine"]
    img = np.asarray(Image.open(sheet))
    assert img.shape[0] == 192 + 16 and img.shape[1] > 3 * 150     # one row: original, gray, eccv16
    before = sheet.stat().st_mtime_ns
    assert main(args + ["--sheet", str(sheet)]) == 1                 # never replaces a file it did not write
    assert "exists" in capsys.readouterr().err and sheet.stat().st_mtime_ns == before
    assert main(["evaluate", str(photo_files / "coffee.png"), "--colorizer", "eccv16", "--detector", "none",
                 "--models", str(models_dir)]) == 0
    table = capsys.readouterr().out
    assert "ΔE00 mean" in table and "coffee.png" in table and "mean (1 photos)" in table
    assert main(["evaluate", str(photo_files), "--colorizer", "eccv16,nope"]) == 1
    assert "unknown colorizer nope" in capsys.readouterr().err
