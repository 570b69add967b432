"""Batch planning, reading, writing and running (patchcolor.batch, patchcolor.io, patchcolor.atomic), with a fake
colorizer where the networks do not matter: bad inputs, names and collisions, files never replaced, resume after
kill -9, SIGTERM, full and read-only disks, concurrent runs, overlap = sequential."""
from __future__ import annotations

import errno
import json
import os
import signal
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from patchcolor import batch
from patchcolor.errors import BadOptions, ImageTooLarge, ImageUnreadable, PatchColorError
from patchcolor.io import load_image

TESTS = Path(__file__).resolve().parent


# ------------------------------------------------------------------------------------------------ helpers
def fake_run(src, delay: float = 0.0):
    """A stand-in for Pipeline.run: a tinted RGB image of the input and one instance in its middle."""
    from patchcolor.result import FusionState, InstanceResult, Result

    if delay:
        time.sleep(delay)
    g = src.color if src.is_gray else src.color[..., 0]
    g8 = (g >> 8).astype(np.uint8) if g.dtype == np.uint16 else g
    image = np.dstack([g8, (g8 * 0.8).astype(np.uint8), (g8 * 0.5).astype(np.uint8)])
    h, w = image.shape[:2]
    inst = InstanceResult(0, "person", 0.9, (w / 4, h / 4, 3 * w / 4, 3 * h / 4),
                          np.ones((h // 2, w // 2), bool), (w // 4, h // 4))
    state = FusionState((w, h), np.zeros((2, 1, 1), np.float32), [], [], [])
    return Result(image, [inst], state, {"colorize": 0.0})


def photo(path: Path, w: int = 40, h: int = 30, seed: int = 0, mode: str = "L") -> Path:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (h, w) if mode == "L" else (h, w, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format="JPEG" if path.suffix == ".jpg" else "PNG")
    return path


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose IHDR declares width×height (8-bit gray) followed by one tiny IDAT: a decompression bomb's
    header without the payload."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


def run(plan, **kw):
    return batch.run_batch(plan, fake_run, max_pixels=int(250e6), **kw)


def tmp_files(folder: Path) -> list[Path]:
    return list(folder.rglob(batch.TMP_PREFIX + "*"))


def script(body: str) -> list[str]:
    """python -c command running ``body`` with the tests folder importable (fake_run)."""
    return [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(TESTS)!r})\n" + body]


# ------------------------------------------------------------------------------------------------ bad inputs
@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_one_pixel_image_is_refused_in_one_sentence_and_the_batch_goes_on(tmp_path, mode):
    tiny = photo(tmp_path / "in" / "tiny.png", 1, 1, mode=mode)
    photo(tmp_path / "in" / "ok.png")
    with pytest.raises(ImageUnreadable, match="1x1 pixels: too small"):
        load_image(tiny, int(250e6))
    s = run(batch.plan_batch([tmp_path / "in"], tmp_path / "out"))
    assert (s.count("done"), s.count("failed")) == (1, 1) and not s.ok
    assert (tmp_path / "out" / "ok.png").exists() and not (tmp_path / "out" / "tiny.png").exists()


def test_bomb_png_is_refused_and_pil_limit_follows_max_pixels(tmp_path):
    from PIL import Image

    process_limit = Image.MAX_IMAGE_PIXELS
    bomb = png_header_only(tmp_path / "bomb.png", 100_000, 100_000)
    with pytest.raises(ImageTooLarge, match="over the limit"):
        load_image(bomb, int(250e6))
    # 195 MP is above PIL's own default bomb limit (179 MP) but under --max-pixels 250e6: PIL must let it through
    # to the decoder (which then finds the file truncated), not refuse it as a bomb
    big = png_header_only(tmp_path / "big.png", 15_000, 13_000)
    with pytest.raises(ImageUnreadable):
        load_image(big, int(250e6))
    with pytest.raises(ImageTooLarge, match="max-pixels"):
        load_image(big, int(100e6))
    assert Image.MAX_IMAGE_PIXELS == process_limit      # the limit held for those calls only: nothing leaks


def test_truncated_file_is_one_sentence(tmp_path):
    p = photo(tmp_path / "t.png", 300, 200, mode="RGB")
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    with pytest.raises(ImageUnreadable, match="t.png"):
        load_image(p, int(250e6))


def test_names_that_would_start_with_a_dot_are_made_visible(tmp_path):
    photo(tmp_path / "in" / "..png")
    photo(tmp_path / "in" / ".hidden.png", seed=1)
    plan = batch.plan_batch([tmp_path / "in"], tmp_path / "out", masks=True)
    assert sorted(i.out.name for i in plan.items) == ["_.png", "_hidden.png"]
    assert run(plan).count("done") == 2
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if p.name != batch.STATE_DIR) == [
        "_.png", "__masks", "_hidden.png", "_hidden_masks"]
    assert not batch.plan_batch([tmp_path / "in"], tmp_path / "out", masks=True).items


# ------------------------------------------------------------------------------------------------ output folder
def test_output_folder_equal_to_or_inside_input_is_refused_without_suffix(tmp_path):
    src = photo(tmp_path / "in" / "a.png")
    original = src.read_bytes()
    for out in (tmp_path / "in", tmp_path / "in" / "sub"):
        with pytest.raises(BadOptions, match="--suffix"):
            batch.plan_batch([tmp_path / "in"], out, overwrite=True)
        with pytest.raises(BadOptions, match="input folder"):
            batch.plan_batch([src], tmp_path / "in", overwrite=True)
    plan = batch.plan_batch([tmp_path / "in"], tmp_path / "in", suffix="_color", masks=True)
    assert [i.out.name for i in plan.items] == ["a_color.png"]
    assert run(plan).count("done") == 1 and src.read_bytes() == original
    again = batch.plan_batch([tmp_path / "in"], tmp_path / "in", suffix="_color", masks=True)
    assert not again.items and len(again.done) == 1      # the output is not taken for an input


def test_read_only_output_folder(tmp_path, monkeypatch):
    photo(tmp_path / "in" / "a.png")
    photo(tmp_path / "in" / "b.png")
    if os.geteuid() != 0:     # root writes anyway: the mkstemp probe below covers it
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        with pytest.raises(BadOptions, match="cannot write to the output folder"):
            batch.plan_batch([tmp_path / "in"], ro)
    real = tempfile.mkstemp

    def refuse(*a, **k):
        raise OSError(errno.EROFS, "Read-only file system")
    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    with pytest.raises(BadOptions, match="Read-only file system"):
        batch.plan_batch([tmp_path / "in"], tmp_path / "out")
    monkeypatch.setattr(tempfile, "mkstemp", real)
    plan = batch.plan_batch([tmp_path / "in"], tmp_path / "out")
    monkeypatch.setattr(tempfile, "mkstemp", refuse)     # becomes read-only during the run
    s = run(plan, overlap=False)
    assert (s.count("failed"), s.count("not_attempted")) == (1, 1) and "Read-only" in s.stopped


@pytest.mark.parametrize("overlap", [False, True])
def test_disk_full_stops_cleanly_counts_the_rest_and_leaves_no_tmp(tmp_path, monkeypatch, overlap):
    for k in range(4):
        photo(tmp_path / "in" / f"p{k}.png", seed=k)
    plan = batch.plan_batch([tmp_path / "in"], tmp_path / "out", masks=True)
    real_save = Image.Image.save
    calls = []

    def save(self, fp, *a, **k):
        calls.append(fp)
        if len(calls) > 3:        # the 2nd input's image (1st input: mask + image; 2nd: mask, then image)
            real_save(self, fp, *a, **k)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(self, fp, *a, **k)
    monkeypatch.setattr(Image.Image, "save", save)
    s = run(plan, overlap=overlap)
    assert s.count("done") == 1 and s.count("failed") == 1
    assert s.count("failed") + s.count("not_attempted") + s.count("done") == 4
    assert "No space left" in s.stopped and "Traceback" not in s.stopped
    assert not tmp_files(tmp_path / "out")
    line = s.line(tmp_path / "out")
    assert "1 colorized" in line and "1 failed" in line and "2 not attempted" in line


@pytest.fixture
def small_fs(tmp_path):
    """mount(options) -> a fresh tmpfs folder (root may mount; skipped where mounting is not allowed)."""
    mounted: list[Path] = []

    def mount(options: str) -> Path:
        where = tmp_path / f"fs{len(mounted)}"
        where.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True,
                           text=True)
        if r.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip() or 'not allowed'}): the monkeypatched "
                        "disk-full test covers the same path")
        mounted.append(where)
        return where
    yield mount
    for where in mounted:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


@pytest.mark.parametrize("limit", ["size=1m,nr_inodes=8", "size=48k"], ids=["inodes", "bytes"])
@pytest.mark.parametrize("overlap", [False, True])
def test_a_real_full_disk_stops_the_batch_once_with_the_summary(tmp_path, small_fs, limit, overlap):
    """Out of inodes (the lock file of the next input cannot be made) or of bytes: no traceback, one stop, the
    rest counted as not attempted."""
    for k in range(6):
        photo(tmp_path / "in" / f"p{k}.png", 80, 60, seed=k)
    out = small_fs(limit)
    plan = batch.plan_batch([tmp_path / "in"], out, masks=False)
    s = run(plan, overlap=overlap)
    assert "No space left on device" in s.stopped and s.count("failed") == 1
    assert s.count("done") + 1 + s.count("not_attempted") == 6 and s.count("done") >= (0 if overlap else 1)
    assert f"{s.count('not_attempted')} not attempted (the batch stopped" in s.line(out)
    assert not tmp_files(out)
    assert all(o.item.is_done() for o in s.outcomes if o.status == "done")


def test_a_full_disk_met_by_two_threads_is_said_once(tmp_path, monkeypatch):
    """Overlapped: the writer is writing p0 when the reader, running ahead, cannot make p1's lock file (disk full);
    the writer then fails the same way. One error, the stop reason once; p0 counts as not attempted."""
    import threading

    from patchcolor.batch import outputs

    photo(tmp_path / "in" / "p0.png")
    photo(tmp_path / "in" / "p1.png", seed=1)
    plan = batch.plan_batch([tmp_path / "in"], tmp_path / "out")
    writing, reader_failed = threading.Event(), threading.Event()
    real_open = os.open

    def full_for_p1_lock(path, *a, **k):
        if str(path).endswith("p1.png.lock"):
            assert writing.wait(30)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(path, *a, **k)

    def save_when_full(path, image, level):
        writing.set()
        assert reader_failed.wait(30)
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(os, "open", full_for_p1_lock)
    monkeypatch.setattr(outputs, "save_image", save_when_full)
    s = run(plan, overlap=True, on_outcome=lambda o: o.status == "failed" and reader_failed.set())
    assert [(o.item.src.name, o.status) for o in s.outcomes] == [("p0.png", "not_attempted"), ("p1.png", "failed")]
    assert s.stopped.endswith("No space left on device; stopping (nothing already written is lost)")


def test_a_folder_made_read_only_mid_batch_stops_it_once(tmp_path, small_fs):
    for k in range(4):
        photo(tmp_path / "in" / f"p{k}.png", seed=k)
    out = small_fs("size=4m")
    plan = batch.plan_batch([tmp_path / "in"], out, masks=True)

    def after(o):
        if o.status == "done":
            subprocess.run(["mount", "-o", "remount,ro", str(out)], check=True)
    s = run(plan, overlap=False, on_outcome=after)
    assert (s.count("done"), s.count("failed"), s.count("not_attempted")) == (1, 1, 2)
    assert "Read-only file system" in s.stopped and "stopping" in s.stopped
    assert "2 not attempted (the batch stopped at the error above)" in s.line(out)


def test_a_254_character_name_among_good_files(tmp_path, monkeypatch):
    """Legal input names of 254 bytes: their output, mask folder, marker and lock names are shortened with a hash
    where needed; everything is done and found done again. A name the file system still refuses fails alone."""
    long = "p" * 250 + ".png"
    photo(tmp_path / "in" / long, seed=1)
    photo(tmp_path / "in" / ("é" * 125 + ".png"), seed=2)           # 254 bytes of UTF-8
    for k in range(3):
        photo(tmp_path / "in" / f"ok{k}.png", seed=10 + k)
    plan = batch.plan_batch([tmp_path / "in"], tmp_path / "out", masks=True, suffix="_color")
    s = run(plan)
    assert s.count("done") == 5 and s.ok
    names = [p.name for p in (tmp_path / "out").rglob("*")]
    assert max(len(n.encode()) for n in names) <= 255
    assert {i.src.name: i.out.name for i in plan.items}[long].startswith("p" * 200)
    assert not batch.plan_batch([tmp_path / "in"], tmp_path / "out", masks=True, suffix="_color").items
    # a file system refusing a name (ENAMETOOLONG, e.g. a shorter NAME_MAX): that input fails in one line
    real_open = os.open

    def short_names(path, *a, **k):
        if len(os.path.basename(path)) > 100:
            raise OSError(errno.ENAMETOOLONG, "File name too long", str(path))
        return real_open(path, *a, **k)
    monkeypatch.setattr(os, "open", short_names)
    s = run(batch.plan_batch([tmp_path / "in"], tmp_path / "o2", masks=True))
    assert (s.count("done"), s.count("failed"), s.count("not_attempted")) == (3, 2, 0), s.line(tmp_path / "o2")
    failed = [o.message for o in s.outcomes if o.status == "failed"]
    assert all("File name too long" in m and "\n" not in m for m in failed) and not s.stopped


def test_summary_counts_inputs_never_attempted_when_backend_goes(tmp_path):
    for k in range(3):
        photo(tmp_path / "in" / f"p{k}.png", seed=k)

    calls = []

    def unreachable(src):
        calls.append(1)
        e = PatchColorError("no answer from tcp://127.0.0.1:5555 within 30 s")
        e.code = "backend_unavailable"
        raise e
    s = batch.run_batch(batch.plan_batch([tmp_path / "in"], tmp_path / "out"), unreachable, max_pixels=10**8)
    assert len(calls) == 1 and s.count("failed") == 1 and s.count("not_attempted") == 2
    assert "2 not attempted" in s.line(tmp_path / "out") and not s.ok


# ------------------------------------------------------------------------------------------------ names, resume
def test_collisions_get_unique_names_and_other_inputs_never_make_one_done(tmp_path):
    a, b, c = photo(tmp_path / "in" / "photo.v1.png", seed=1), photo(tmp_path / "in" / "photo.png", seed=2), \
        photo(tmp_path / "in" / "photo.jpg", seed=3)
    d = photo(tmp_path / "in2" / "photo.png", seed=4)
    plan = batch.plan_batch([tmp_path / "in", d], tmp_path / "out")
    outs = {i.src.name if i.src.parent.name == "in" else "in2/" + i.src.name: i.out.name for i in plan.items}
    assert outs == {"photo.jpg": "photo_jpg.png", "photo.png": "photo.png", "photo.v1.png": "photo.v1.png",
                    "in2/photo.png": "photo_png.png"}
    assert run(plan).count("done") == 4
    # a later run with one of them alone: its own output is found, another input's output is never taken for it
    for src, name in ((b, "photo.png"), (a, "photo.v1.png"), (d, "photo_png.png"), (c, "photo_jpg.png")):
        p = batch.plan_batch([src], tmp_path / "out")
        assert not p.items and [i.out.name for i in p.done] == [name]
    other = photo(tmp_path / "in3" / "photo.png", seed=5)      # a new photo with an existing output's name
    p = batch.plan_batch([other], tmp_path / "out")
    assert len(p.items) == 1 and p.items[0].out.name not in {"photo.png", "photo_png.png", "photo_jpg.png"}
    c.write_bytes(c.read_bytes())    # same name, new content (mtime/size): redone, not skipped
    os.utime(c, ns=(time.time_ns(), time.time_ns() + 10**9))
    p = batch.plan_batch([tmp_path / "in"], tmp_path / "out")
    assert [i.src.name for i in p.items] == ["photo.jpg"] and p.items[0].out.name == "photo_jpg.png"


@pytest.mark.parametrize("fmt", ["png", "tiff"])
def test_the_input_in_the_output_format_keeps_the_plain_name_in_every_order(tmp_path, fmt):
    """README: photo.png keeps photo.png, photo.jpg becomes photo_jpg.png, whatever the order of the inputs."""
    import itertools

    files = [photo(tmp_path / "in" / n, seed=k) for k, n in enumerate(("photo.png", "photo.jpg", "photo.tif"))]
    ext = batch.output_suffix(fmt)
    keeps = "photo.png" if fmt == "png" else "photo.tif"
    want = {n: ("photo" if n == keeps else f"photo_{n.split('.')[1]}") + ext for n in
            ("photo.png", "photo.jpg", "photo.tif")}
    for k, order in enumerate(itertools.permutations(files)):
        plan = batch.plan_batch(list(order), tmp_path / f"out{k}", fmt=fmt)
        assert {i.src.name: i.out.name for i in plan.items} == want, order
        assert [i.src for i in plan.items] == list(order)            # the work keeps the order given
    assert {i.src.name: i.out.name for i in batch.plan_batch([tmp_path / "in"], tmp_path / "o", fmt=fmt).items} == want


# ------------------------------------------------------------------------------------------------ never replace
def _bytes(*paths: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in paths}


def test_suffix_in_the_input_folder_replaces_nothing_and_colorizes_suffix_named_inputs(tmp_path):
    """The issue's case: -o s --suffix _c with s/a.png and s/a_c.png (another photo), and inputs whose names end in
    the suffix: every photo keeps its bytes, every photo is colorized, a rerun finds them all done."""
    s = tmp_path / "s"
    inputs = [photo(s / n, seed=k) for k, n in enumerate(("a.png", "a_c.png", "a_c.jpg", "b_c.png", "family_c.png"))]
    before = _bytes(*inputs)
    plan = batch.plan_batch([s], s, suffix="_c", masks=True)
    assert sorted(i.src.name for i in plan.items) == sorted(p.name for p in inputs)
    outs = {i.out for i in plan.items}
    assert len(outs) == 5 and not outs & set(inputs)
    summary = run(plan)
    assert summary.count("done") == 5 and summary.ok
    assert _bytes(*inputs) == before
    again = batch.plan_batch([s], s, suffix="_c", masks=True)        # outputs are not taken for inputs
    assert not again.items and len(again.done) == 5 and not again.notes


def test_a_file_patchcolor_did_not_write_is_kept_and_the_output_named_otherwise(tmp_path):
    album, out = tmp_path / "album", tmp_path / "out"
    photo(album / "family.png", seed=1)
    photo(album / "dad.png", seed=2)
    theirs = photo(out / "family.png", seed=9)                       # unrelated, already in OUT
    (out / "dad_masks").mkdir()
    mine = out / "dad_masks" / "notes.txt"
    mine.write_text("mine")
    before = _bytes(theirs, mine)
    plan = batch.plan_batch([album], out, masks=True)
    assert {i.src.name: i.out.name for i in plan.items} == {"family.png": "family_png.png", "dad.png": "dad_png.png"}
    assert len(plan.notes) == 2 and all("not written by patchcolor" in n and "kept" in n for n in plan.notes)
    assert any(str(theirs) in n for n in plan.notes) and any(str(out / "dad_masks") in n for n in plan.notes)
    assert run(plan).count("done") == 2
    assert _bytes(theirs, mine) == before and sorted(p.name for p in (out / "dad_masks").iterdir()) == ["notes.txt"]
    again = batch.plan_batch([album], out, masks=True)
    assert not again.items and not again.notes                       # said once, while there is work to do


def test_symlinked_inputs_and_output_folder_are_resolved(tmp_path):
    real = tmp_path / "real"
    a = photo(real / "a.png")
    (tmp_path / "link").symlink_to(real, target_is_directory=True)
    (real / "b_c.png").symlink_to(a)                                 # the same photo under an output-like name
    for inputs in ([tmp_path / "link"], [real / "b_c.png"]):
        with pytest.raises(BadOptions, match="--suffix"):
            batch.plan_batch(inputs, real)
    before = a.read_bytes()
    plan = batch.plan_batch([tmp_path / "link", real / "b_c.png"], tmp_path / "link", suffix="_c")
    assert [(i.src.name, i.out.name) for i in plan.items] == [("a.png", "a_c.png")]     # one photo, once
    assert run(plan).count("done") == 1 and a.read_bytes() == before and (real / "b_c.png").is_symlink()


def test_a_name_given_away_meanwhile_is_not_replaced(tmp_path):
    """Two runs planned at once for different photos of the same name: the second finds the name taken by the
    first when it claims it, fails that input in one line and replaces nothing."""
    first, second = photo(tmp_path / "x" / "p.png", seed=1), photo(tmp_path / "y" / "p.png", seed=2)
    plan_a = batch.plan_batch([first], tmp_path / "out")
    plan_b = batch.plan_batch([second], tmp_path / "out")
    assert plan_a.items[0].out == plan_b.items[0].out
    assert run(plan_a).count("done") == 1
    before = _bytes(plan_a.items[0].out)
    s = run(plan_b)
    assert s.count("failed") == 1 and "belongs to another input" in s.outcomes[0].message
    assert _bytes(plan_a.items[0].out) == before
    assert run(batch.plan_batch([second], tmp_path / "out")).count("done") == 1      # a rerun picks a free name


def test_multi_frame_inputs_say_only_the_first_frame_is_colorized(tmp_path):
    frames = [Image.fromarray(np.full((20, 24), v, np.uint8)) for v in (10, 120, 240)]
    (tmp_path / "in").mkdir()
    frames[0].save(tmp_path / "in" / "anim.gif", save_all=True, append_images=frames[1:])
    frames[0].save(tmp_path / "in" / "pages.tif", save_all=True, append_images=frames[1:2])
    photo(tmp_path / "in" / "one.png")
    seen = []
    s = run(batch.plan_batch([tmp_path / "in"], tmp_path / "out"), on_outcome=seen.append)
    assert s.count("done") == 3
    notes = {o.item.src.name: o.note for o in seen}
    assert notes == {"anim.gif": "only the first of its 3 frames is colorized",
                     "pages.tif": "only the first of its 2 frames is colorized", "one.png": ""}



def test_kill9_between_image_and_marker_is_redone_with_masks(tmp_path):
    photo(tmp_path / "in" / "a.png")
    out = tmp_path / "out"
    body = (f"import os, signal\nfrom pathlib import Path\nfrom patchcolor import batch\nfrom test_batch import fake_run\n"
            f"batch.outputs.write_marker = lambda item, n: os.kill(os.getpid(), signal.SIGKILL)\n"
            f"plan = batch.plan_batch([Path({str(tmp_path / 'in')!r})], Path({str(out)!r}), masks=True)\n"
            f"batch.run_batch(plan, fake_run, max_pixels=10**8)\n")
    r = subprocess.run(script(body), capture_output=True, text=True, timeout=120)
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert (out / "a.png").exists()                 # the image was written, its done-marker was not
    shutil_rm = [p for p in (out / "a_masks").iterdir()]
    for p in shutil_rm:                             # even if the masks are lost too, resume must rewrite them
        p.unlink()
    plan = batch.plan_batch([tmp_path / "in"], out, masks=True)
    assert len(plan.items) == 1
    assert run(plan).count("done") == 1 and (out / "a_masks" / "instances.json").exists()
    assert len(list((out / "a_masks").glob("*.png"))) == 1


def test_masks_requested_later_are_not_done(tmp_path):
    photo(tmp_path / "in" / "a.png")
    run(batch.plan_batch([tmp_path / "in"], tmp_path / "out"))
    assert len(batch.plan_batch([tmp_path / "in"], tmp_path / "out", masks=True).items) == 1
    assert not batch.plan_batch([tmp_path / "in"], tmp_path / "out").items


def test_sigterm_during_save_removes_tmp_and_next_run_cleans_dead_runs(tmp_path):
    photo(tmp_path / "in" / "a.png", 400, 300)
    out = tmp_path / "out"
    body = (f"import time\nfrom pathlib import Path\nfrom PIL import Image\nfrom patchcolor import batch\n"
            f"from test_batch import fake_run\nreal = Image.Image.save\n"
            f"def slow(self, fp, *a, **k):\n    real(self, fp, *a, **k)\n    print('saving', flush=True)\n"
            f"    time.sleep(60)\n"
            f"Image.Image.save = slow\nbatch.install_sigterm_cleanup()\n"
            f"plan = batch.plan_batch([Path({str(tmp_path / 'in')!r})], Path({str(out)!r}))\n"
            f"batch.run_batch(plan, fake_run, max_pixels=10**8, overlap=False)\n")
    proc = subprocess.Popen(script(body), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "saving"
    assert tmp_files(out)                            # a temporary file is being written
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM and "Traceback" not in err, err
    assert not tmp_files(out) and not (out / "a.png").exists()
    # leftovers of a run killed with -9 (its pid is gone) are removed by the next run; a live run's are kept
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / f".tmp-{dead.pid}-x.png").write_bytes(b"x" * 100)
    (out / f".tmp-{os.getpid()}-mine.png").write_bytes(b"x")
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (out / f".tmp-{live.pid}-y.png").write_bytes(b"y")
        assert batch.clean_stale_tmp(out) == 1
        assert sorted(p.name.split("-")[1] for p in tmp_files(out)) == sorted([str(live.pid), str(os.getpid())])
    finally:
        live.kill()


def test_two_concurrent_runs_share_the_work(tmp_path):
    for k in range(8):
        photo(tmp_path / "in" / f"p{k}.png", seed=k)
    out = tmp_path / "out"
    body = (f"import functools, json\nfrom pathlib import Path\nfrom patchcolor import batch\n"
            f"from test_batch import fake_run\n"
            f"plan = batch.plan_batch([Path({str(tmp_path / 'in')!r})], Path({str(out)!r}))\n"
            f"s = batch.run_batch(plan, functools.partial(fake_run, delay=0.4), max_pixels=10**8)\n"
            f"print(json.dumps({{k: s.count(k) for k in ('done', 'skipped', 'busy', 'failed')}}))\n")
    procs = [subprocess.Popen(script(body), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    counts = [json.loads(p.communicate(timeout=120)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sum(c["done"] for c in counts) == 8, counts             # each input colorized exactly once
    assert all(c["done"] > 0 for c in counts), counts              # and both runs did some
    assert all(c["failed"] == 0 for c in counts)
    assert not batch.plan_batch([tmp_path / "in"], out).items


# ------------------------------------------------------------------------------------------------ overlap
def _outputs(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and batch.STATE_DIR not in p.parts}


def test_overlapped_batch_writes_the_same_bytes_as_sequential(tmp_path):
    for k in range(5):
        photo(tmp_path / "in" / f"p{k}.png", 64 + k, 48, seed=k, mode="RGB" if k % 2 else "L")
    photo(tmp_path / "in" / "tiny.png", 1, 1)
    seq = run(batch.plan_batch([tmp_path / "in"], tmp_path / "seq", masks=True), overlap=False)
    ovl = run(batch.plan_batch([tmp_path / "in"], tmp_path / "ovl", masks=True), overlap=True)
    assert [o.status for o in seq.outcomes] == [o.status for o in ovl.outcomes]
    assert seq.count("done") == 5
    a, b = _outputs(tmp_path / "seq"), _outputs(tmp_path / "ovl")
    assert a.keys() == b.keys() and len(a) == 5 * 3 and all(a[k] == b[k] for k in a)


def test_overlapped_batch_resumes_after_kill9(tmp_path):
    for k in range(6):
        photo(tmp_path / "in" / f"p{k}.png", 64, 48, seed=k)
    run(batch.plan_batch([tmp_path / "in"], tmp_path / "ref", masks=True), overlap=False)
    out = tmp_path / "out"
    body = (f"import functools\nfrom pathlib import Path\nfrom patchcolor import batch\n"
            f"from test_batch import fake_run\n"
            f"plan = batch.plan_batch([Path({str(tmp_path / 'in')!r})], Path({str(out)!r}), masks=True)\n"
            f"batch.run_batch(plan, functools.partial(fake_run, delay=0.3), max_pixels=10**8, "
            f"on_outcome=lambda o: print(o.status, flush=True))\n")
    proc = subprocess.Popen(script(body), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for _ in range(2):
        assert proc.stdout.readline().strip() == "done"
    proc.kill()
    proc.wait()
    batch.clean_stale_tmp(out)
    plan = batch.plan_batch([tmp_path / "in"], out, masks=True)
    assert 0 < len(plan.items) < 6
    assert run(plan).count("done") == len(plan.items)
    a, b = _outputs(tmp_path / "ref"), _outputs(out)
    assert a.keys() == b.keys() and all(a[k] == b[k] for k in a)


def test_overlapped_real_pipeline_is_byte_identical(pipeline, photo_gray, tmp_path):
    from patchcolor.options import make_options

    (tmp_path / "in").mkdir()
    for k, side in enumerate((96, 128, 80)):
        Image.fromarray(photo_gray[:side, : side + 20]).save(tmp_path / "in" / f"p{k}.png")
    opts = make_options("default", max_side=128, max_instances=3)

    def go(out, overlap):
        plan = batch.plan_batch([tmp_path / "in"], out, masks=True)
        return batch.run_batch(plan, lambda s: pipeline.run(s, opts), max_pixels=10**8, overlap=overlap)
    assert go(tmp_path / "seq", False).count("done") == 3
    assert go(tmp_path / "ovl", True).count("done") == 3
    a, b = _outputs(tmp_path / "seq"), _outputs(tmp_path / "ovl")
    assert a.keys() == b.keys() and all(a[k] == b[k] for k in a)


def test_auto_overlap_only_where_a_core_is_free(monkeypatch):
    import torch

    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert batch.auto_overlap(networks_on_cpu=True) is False      # 2 cores, 2 torch threads: sequential
    assert batch.auto_overlap(networks_on_cpu=False) is True      # GPU / remote: the CPU is free
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    assert batch.auto_overlap(networks_on_cpu=True) is True
