"""Shared fixtures: random weights in the official file formats, generated once per test session."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from fake_colorizers import write_colorizer_pth

BIAS_CLASS = 0  # "person": the biased random detector labels what it finds as persons


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory) -> Path:
    """A models folder with random ECCV16 / SIGGRAPH17 .pth files and a biased random R101 .pkl."""
    folder = tmp_path_factory.mktemp("models")
    write_colorizer_pth("eccv16", folder, seed=1)
    write_colorizer_pth("siggraph17", folder, seed=2, with_num_batches_tracked=False)
    try:
        from fake_r101 import write_r101_pkl
    except ImportError:
        pass
    else:
        write_r101_pkl(folder / "model_final_a3ec72.pkl", seed=3, bias_class=BIAS_CLASS)
    os.environ["PATCHCOLOR_MODELS"] = str(folder)
    return folder


@pytest.fixture(scope="session")
def pipeline(models_dir):
    from patchcolor.pipeline import Pipeline

    return Pipeline(models_dir, device="cpu")


@pytest.fixture(scope="session")
def photo_gray() -> np.ndarray:
    """A real photograph (scikit-image's bundled 'astronaut', 512×512) as 8-bit gray."""
    from skimage import data
    from skimage.color import rgb2gray
    from skimage.util import img_as_ubyte

    return img_as_ubyte(rgb2gray(data.astronaut()))


@pytest.fixture(scope="session")
def ddcolor_state():
    """Random DDColor-T weights (converged spectral-norm u/v, visible layer scales; fake_colorizers), made once."""
    pytest.importorskip("spandrel_extra_arches")
    from fake_colorizers import random_ddcolor_state_dict

    return random_ddcolor_state_dict("convnext-t", seed=4)


@pytest.fixture(scope="session")
def ddcolor_models(models_dir, ddcolor_state) -> Path:
    """models_dir with those weights as the model zoo's ``ddcolor_paper_tiny.pth`` (a plain state dict) and as
    ``ddcolor_modelscope.pth`` (``{"params": ...}`` with the ConvNeXt head the authors' files may carry), so the
    names ``ddcolor-tiny`` and ``ddcolor`` load (the network is DDColor-T in both: the loader reads the variant
    from the file)."""
    from fake_colorizers import write_ddcolor

    write_ddcolor(models_dir, "pth", name="ddcolor-tiny", state=ddcolor_state)
    write_ddcolor(models_dir, "params", name="ddcolor", state=ddcolor_state)
    return models_dir
