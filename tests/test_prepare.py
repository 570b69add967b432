"""Step 1: reading every image mode, 16 bit, EXIF orientation, the resize rule, clear errors."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
from PIL import Image

from patchcolor.errors import ImageTooLarge, ImageUnreadable
from patchcolor.io import load_image
from patchcolor.prepare import SourceImage, working_copy, working_size

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (30, 40, 3), dtype=np.uint8)


@pytest.mark.parametrize("mode,gray,has_alpha", [
    ("L", True, False), ("1", True, False), ("LA", True, True), ("RGB", False, False), ("RGBA", False, True),
    ("P", False, False), ("CMYK", False, False), ("I;16", True, False)])
def test_every_mode(tmp_path, mode, gray, has_alpha):
    img = Image.fromarray(RGB).convert("RGBA" if mode in ("RGBA", "LA") else "RGB")
    if mode == "I;16":
        img = Image.fromarray((RGB[..., 0].astype(np.uint16) * 257))
    elif mode != "RGB":
        img = img.convert(mode)
    path = tmp_path / ("x.tif" if mode == "CMYK" else "x.png")
    img.save(path)
    src = load_image(path)
    assert src.is_gray == gray
    assert (src.alpha is not None) == has_alpha
    assert (src.height, src.width) == (30, 40)
    assert src.bit_depth == (16 if mode == "I;16" else 8)
    if mode == "I;16":
        np.testing.assert_array_equal(src.color, RGB[..., 0].astype(np.uint16) * 257)
    if mode == "P":   # palette colours, not palette indices
        np.testing.assert_array_equal(src.color, np.asarray(img.convert("RGB")))


def test_16bit_rgb_keeps_full_depth(tmp_path):
    a = RNG.integers(0, 65536, (20, 24, 3), dtype=np.uint16)
    cv2.imwrite(str(tmp_path / "x.png"), a[..., ::-1])
    src = load_image(tmp_path / "x.png")
    assert src.color.dtype == np.uint16 and src.bit_depth == 16
    np.testing.assert_array_equal(src.color, a)
    rgba = RNG.integers(0, 65536, (20, 24, 4), dtype=np.uint16)
    cv2.imwrite(str(tmp_path / "y.png"), rgba[..., [2, 1, 0, 3]])
    src = load_image(tmp_path / "y.png")
    np.testing.assert_array_equal(src.color, rgba[..., :3])
    np.testing.assert_array_equal(src.alpha, rgba[..., 3])


def test_exif_orientation_is_applied(tmp_path):
    img = Image.fromarray(RGB)
    exif = img.getexif()
    exif[0x0112] = 6   # rotate 90° clockwise on display
    img.save(tmp_path / "x.jpg", exif=exif, quality=95)
    src = load_image(tmp_path / "x.jpg")
    assert (src.width, src.height) == (30, 40)


def test_unreadable_and_too_large(tmp_path):
    (tmp_path / "x.png").write_bytes(b"not an image at all")
    with pytest.raises(ImageUnreadable, match="cannot read"):
        load_image(tmp_path / "x.png")
    Image.fromarray(RGB).save(tmp_path / "ok.png")
    data = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "trunc.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageUnreadable):
        load_image(tmp_path / "trunc.png")
    with pytest.raises(ImageTooLarge, match="over the limit"):
        load_image(tmp_path / "ok.png", max_pixels=1000)


@pytest.mark.parametrize("size,expected", [
    ((1920, 1080), (1280, 720)), ((1000, 3000), (426, 1280)), ((2000, 2000), (1280, 1280)),
    ((1280, 700), (1280, 700)), ((1281, 3), (1280, 2)), ((640, 480), (640, 480))])
def test_resize_rule(size, expected):
    assert working_size(*size, 1280) == expected


def test_working_copy_is_the_papers_bicubic_three_channel_image():
    big = RNG.integers(0, 256, (300, 500), dtype=np.uint8)
    work = working_copy(SourceImage(big), 128)
    ref = np.asarray(Image.fromarray(np.stack([big] * 3, -1)).resize((128, 76), resample=3))
    assert work.shape == (76, 128, 3)
    np.testing.assert_array_equal(work, ref)
    small = working_copy(SourceImage(big[:100, :100]), 128)
    np.testing.assert_array_equal(small[..., 1], big[:100, :100])


def test_from_buffer_formats():
    px = RNG.integers(0, 65536, (3, 5, 4), dtype=np.uint16)
    src = SourceImage.from_buffer(px.astype("<u2").tobytes(), 5, 3, "rgba16")
    np.testing.assert_array_equal(src.color, px[..., :3])
    np.testing.assert_array_equal(src.alpha, px[..., 3])
    g = SourceImage.from_buffer(bytes(range(15)), 5, 3, "gray8")
    assert g.is_gray and g.color[2, 4] == 14
    with pytest.raises(ImageUnreadable, match="needs 30 bytes"):
        SourceImage.from_buffer(bytes(15), 5, 3, "graya8")
    with pytest.raises(ImageUnreadable, match="unknown pixel format"):
        SourceImage.from_buffer(bytes(15), 5, 3, "cmyk8")
