"""The front door: ``from patchcolor import colorize`` is the function whatever was imported before it."""
from __future__ import annotations

import pkgutil
import subprocess
import sys

import patchcolor


def test_no_module_shadows_an_export():
    """A submodule named like an export would replace it in the package namespace once imported."""
    modules = {m.name for m in pkgutil.iter_modules(patchcolor.__path__)}
    assert modules, "the package lists no modules"
    assert not modules & set(patchcolor.__all__), modules & set(patchcolor.__all__)


def test_colorize_is_the_function_after_the_pipeline_is_imported():
    """In a fresh interpreter (nothing cached): the pipeline imports every step's module, then the name is asked."""
    code = ("import patchcolor.pipeline, patchcolor.api\n"
            "from patchcolor import colorize\n"
            "assert colorize is patchcolor.api.colorize, colorize\n"
            "print(colorize.__module__, colorize.__name__)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["patchcolor.api", "colorize"]


# ------------------------------------------------------------------------------------------- the README's example
import re  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_example() -> str:
    """The Python block of the README's "Python API" section."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Python API"):]
    section = section[:section.index("\n## ", 1)]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 1, "the Python API section has one example"
    return blocks[0]


def test_the_readme_example_runs(models_dir, photo_gray, tmp_path, monkeypatch, capsys):
    Image.fromarray(photo_gray).save(tmp_path / "old.jpg", quality=95)
    monkeypatch.chdir(tmp_path)
    exec(compile(readme_example(), "README.md (Python API)", "exec"), {})
    listed = eval(capsys.readouterr().out.strip().splitlines()[-1])      # the printed (class, score) pairs
    assert listed and all(cls == "person" and 0.3 <= score <= 1 for cls, score in listed)
    color = np.asarray(Image.open(tmp_path / "old_color.png"))
    edited = np.asarray(Image.open(tmp_path / "old_color_edited.png"))
    masks = sorted((tmp_path / "old_color_masks").glob("*.png"))
    assert color.shape == (512, 512, 3) and len(masks) == len(listed)
    first = np.asarray(Image.open(masks[0])) > 0
    assert np.any(color[first] != edited[first]) and np.array_equal(color[~first], edited[~first])


# ------------------------------------------------------------------------------------------- the front door itself
@pytest.fixture(scope="module")
def api_result(models_dir, photo_gray):
    from patchcolor import colorize

    return colorize(photo_gray, saturation=1.2)


def test_colorize_accepts_a_path_a_pil_image_and_an_array_alike(models_dir, photo_gray, tmp_path, api_result):
    from patchcolor import colorize

    Image.fromarray(photo_gray).save(tmp_path / "p.png")
    from_path = colorize(tmp_path / "p.png", saturation=1.2)
    from_pil = colorize(Image.fromarray(photo_gray), saturation=1.2)
    np.testing.assert_array_equal(from_path.image, api_result.image)
    np.testing.assert_array_equal(from_pil.image, api_result.image)
    assert api_result.options.saturation == 1.2 and api_result.source.color is photo_gray


def test_models_load_once_per_folder_and_device(models_dir, api_result):
    from patchcolor import api

    assert api.pipeline(None, "auto") is api_result.pipeline
    assert api.pipeline(None, "cpu") is not api_result.pipeline


def test_internal_knobs_and_bad_inputs_are_one_sentence(models_dir, photo_gray):
    from patchcolor import Options, colorize

    with pytest.raises(ValueError, match="net_size: not a user option"):
        colorize(photo_gray, net_size=128)
    with pytest.raises(ValueError, match="saturation must be"):
        colorize(photo_gray, saturation=9.0)
    with pytest.raises(TypeError, match="uint8/uint16"):
        colorize(photo_gray.astype(np.float32))
    with pytest.raises(TypeError, match="give a path"):
        colorize(b"not an image")
    with pytest.raises(ValueError, match="either options"):
        colorize(photo_gray, options=Options(), saturation=1.0)
    with pytest.raises(ValueError, match="unknown colorizer 'nope'"):
        colorize(photo_gray, colorizer="nope")


def test_result_saves_16_bit_and_converts_to_pil(models_dir, photo_gray, tmp_path):
    from patchcolor import Options, colorize, load_image

    deep = photo_gray.astype(np.uint16) * 257
    res = colorize(deep, options=Options(detector="none", net_size=128))
    assert res.image.dtype == np.uint16 and not res.instances
    path = res.save(tmp_path / "deep.png")
    np.testing.assert_array_equal(load_image(path).color, res.image)
    pil = res.to_pil()
    assert pil.mode == "RGB" and np.abs(np.asarray(pil).astype(int) * 257 - res.image).max() <= 128


def test_recompose_equals_the_pipelines_and_needs_a_pipeline(api_result):
    import pickle

    masks = api_result.masks()
    masks[-1][:] = 0
    again = api_result.recompose(masks)
    direct = api_result.pipeline.recompose(api_result.source, api_result.state, masks, api_result.options)
    np.testing.assert_array_equal(again.image, direct.image)
    assert len(again.instances) == len(api_result.instances) - 1
    carried = pickle.loads(pickle.dumps(api_result))      # e.g. through Ray: the pipeline is not pickled
    assert carried.pipeline is None
    with pytest.raises(ValueError, match="carries no pipeline"):
        carried.recompose(masks)
