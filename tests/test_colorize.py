"""The colorizer networks against the reference key/shape tables, and the strict loader."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from fake_colorizers import random_state_dict, write_colorizer_pth
from patchcolor.colorizers import ARCHITECTURES, load_colorizer, predict_ab
from patchcolor.errors import WeightsCorrupt, WeightsMissing


def _bn(prefix: str, c: int) -> dict[str, list[int]]:
    return {f"{prefix}.{k}": [c] for k in ("weight", "bias", "running_mean", "running_var")}


def _conv(prefix: str, shape: list[int], bias: bool = True) -> dict[str, list[int]]:
    return {f"{prefix}.weight": shape, f"{prefix}.bias": [shape[0]]} if bias else {f"{prefix}.weight": shape}


def _trunk(first_in: int) -> dict[str, list[int]]:
    """model1..model7, shared by both networks (first conv: 1 input channel for ECCV16, 4 for SIGGRAPH17)."""
    t: dict[str, list[int]] = {}
    blocks = {1: [(64, first_in), (64, 64)], 2: [(128, 64), (128, 128)], 3: [(256, 128), (256, 256), (256, 256)],
              4: [(512, 256), (512, 512), (512, 512)], 5: [(512, 512)] * 3, 6: [(512, 512)] * 3, 7: [(512, 512)] * 3}
    for b, convs in blocks.items():
        for i, (o, c) in enumerate(convs):
            t |= _conv(f"model{b}.{2 * i}", [o, c, 3, 3])
        t |= _bn(f"model{b}.{2 * len(convs)}", convs[-1][0])
    return t


def eccv16_table() -> dict[str, list[int]]:
    """Reference doc §2.3, typed in independently of the network code."""
    t = _trunk(1)
    t |= {"model8.0.weight": [512, 256, 4, 4], "model8.0.bias": [256]}
    t |= _conv("model8.2", [256, 256, 3, 3]) | _conv("model8.4", [256, 256, 3, 3]) | _conv("model8.6", [313, 256, 1, 1])
    t["model_out.weight"] = [2, 313, 1, 1]
    return t


def siggraph17_table() -> dict[str, list[int]]:
    """Reference doc §2.5."""
    t = _trunk(4)
    t |= {"model8up.0.weight": [512, 256, 4, 4], "model8up.0.bias": [256]}
    t |= _conv("model8.1", [256, 256, 3, 3]) | _conv("model8.3", [256, 256, 3, 3]) | _bn("model8.5", 256)
    t |= {"model9up.0.weight": [256, 128, 4, 4], "model9up.0.bias": [128]}
    t |= _conv("model9.1", [128, 128, 3, 3]) | _bn("model9.3", 128)
    t |= {"model10up.0.weight": [128, 128, 4, 4], "model10up.0.bias": [128]}
    t |= _conv("model10.1", [128, 128, 3, 3])
    t |= _conv("model3short8.0", [256, 256, 3, 3]) | _conv("model2short9.0", [128, 128, 3, 3])
    t |= _conv("model1short10.0", [128, 64, 3, 3]) | _conv("model_class.0", [529, 256, 1, 1])
    t |= _conv("model_out.0", [2, 128, 1, 1])
    return t


@pytest.mark.parametrize("name,table,n_entries,n_params", [
    ("eccv16", eccv16_table, 75, 32_236_011), ("siggraph17", siggraph17_table, 98, 34_187_027)])
def test_network_matches_reference_tables(name, table, n_entries, n_params):
    model = ARCHITECTURES[name]()
    got = {k: list(v.shape) for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    ref = table()
    assert len(ref) == n_entries
    assert got == ref
    assert sum(p.numel() for p in model.parameters()) == n_params


def test_layer_details_from_the_reference():
    e = ARCHITECTURES["eccv16"]()
    assert e.model1[2].stride == (2, 2) and e.model3[4].stride == (2, 2) and e.model4[0].stride == (1, 1)
    assert e.model5[0].dilation == (2, 2) and e.model5[0].padding == (2, 2)
    assert e.model_out.bias is None and e.upsample4.mode == "bilinear"
    s = ARCHITECTURES["siggraph17"]()
    assert isinstance(s.model10[2], torch.nn.LeakyReLU) and s.model10[2].negative_slope == 0.2
    assert isinstance(s.model_out[1], torch.nn.Tanh)


@pytest.mark.parametrize("with_nbt", [True, False])
@pytest.mark.parametrize("name", ["eccv16", "siggraph17"])
def test_loads_official_format_with_or_without_num_batches_tracked(tmp_path, name, with_nbt):
    path = write_colorizer_pth(name, tmp_path, seed=5, with_num_batches_tracked=with_nbt)
    model = load_colorizer(name, path, torch.device("cpu"))
    ref = random_state_dict(name, seed=5)
    for k, v in model.state_dict().items():
        if not k.endswith("num_batches_tracked"):
            assert torch.equal(v, ref[k]), k
    assert not model.training and not any(p.requires_grad for p in model.parameters())


def test_loader_rejects_wrong_files(tmp_path):
    state = random_state_dict("eccv16")
    bad = dict(state)
    bad["model8.6.weight"] = torch.zeros(300, 256, 1, 1)
    torch.save(bad, tmp_path / "shape.pth")
    with pytest.raises(WeightsCorrupt) as ei:
        load_colorizer("eccv16", tmp_path / "shape.pth", torch.device("cpu"))
    assert "wrong shape: model8.6.weight" in ei.value.details                 # the log's detail; the sentence:
    assert ei.value.message.startswith(f"The eccv16 colorizer weights file {tmp_path / 'shape.pth'} is damaged")
    missing = {k: v for k, v in state.items() if k != "model_out.weight"}
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(WeightsCorrupt) as ei:
        load_colorizer("eccv16", tmp_path / "missing.pth", torch.device("cpu"))
    assert "missing: model_out.weight" in ei.value.details
    (tmp_path / "trunc.pth").write_bytes((tmp_path / "shape.pth").read_bytes()[:1000])
    with pytest.raises(WeightsCorrupt, match="weights fetch"):
        load_colorizer("eccv16", tmp_path / "trunc.pth", torch.device("cpu"))
    with pytest.raises(WeightsMissing, match="weights fetch"):
        load_colorizer("eccv16", tmp_path / "absent.pth", torch.device("cpu"))


class _Evil:
    """Unpickles as a call that creates the file ``marker`` (what a loader that runs pickled code would do)."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_loader_never_runs_pickled_code(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"model1.0.weight": _Evil(str(marker))}, tmp_path / "evil.pth", _use_new_zipfile_serialization=True,
               pickle_module=pickle)
    with pytest.raises(WeightsCorrupt):
        load_colorizer("eccv16", tmp_path / "evil.pth", torch.device("cpu"))
    assert not marker.exists(), "the loader ran the pickled call"
    torch.load(tmp_path / "evil.pth", weights_only=False)     # the payload works where pickled code may run
    assert marker.exists()


def test_predict_ab_batches_and_resizes(tmp_path):
    model = load_colorizer("eccv16", write_colorizer_pth("eccv16", tmp_path), torch.device("cpu"))
    rng = np.random.default_rng(0)
    inputs = [rng.uniform(0, 100, (64, 64)).astype(np.float32) for _ in range(3)]
    calls = []
    out = predict_ab(model, inputs, [(64, 64), (20, 30), (64, 64)], batch_size=2,
                     on_batch=lambda d, t: calls.append((d, t)))
    assert [o.shape for o in out] == [(2, 64, 64), (2, 20, 30), (2, 64, 64)]
    assert [c for c in calls if isinstance(c[0], int)] == [(2, 3), (3, 3)]     # after each chunk
    inside = [d for d, _ in calls]                # and inside each forward (progress): never backwards, within range
    assert inside == sorted(inside) and 0 <= inside[0] and inside[-1] == 3 and len(calls) > 2
    one = predict_ab(model, inputs[2:], [(64, 64)], batch_size=1)[0]
    np.testing.assert_allclose(out[2], one, atol=1e-4)   # batching does not change results
    assert all(o.dtype == np.float32 and np.isfinite(o).all() for o in out)


def test_zhang_networks_keep_the_papers_input():
    """ECCV16 / SIGGRAPH17 inputs stay the paper's: PIL BICUBIC stretch of the crop to n², skimage L*, bit for bit;
    DDColor's are its own (three channels, the full image at twice the crop side)."""
    from PIL import Image
    from skimage import data

    from patchcolor import lab
    from patchcolor.colorizers import input_spec
    from patchcolor.pipeline import net_input

    work = data.astronaut()[::2, ::2].copy()
    box = (10, 20, 150, 90)
    for name in ("eccv16", "siggraph17"):
        spec = input_spec(name)
        for b in (None, box):
            crop = work if b is None else work[b[1]:b[3], b[0]:b[2]]
            published = lab.lightness(np.asarray(Image.fromarray(crop).resize((128, 128), resample=Image.BICUBIC)))
            got = net_input(work, b, 128, spec)
            assert got.shape == (1, 128, 128) and np.array_equal(got[0], published)
    dd = input_spec("ddcolor")
    assert net_input(work, None, 128, dd).shape == (3, 256, 256)
    assert net_input(work, box, 128, dd).shape == (3, 128, 128)
