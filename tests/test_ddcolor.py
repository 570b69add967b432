"""DDColor as a colorizer of the pipeline: parity with the authors' inference pipeline, every published weight
format, strict and safe loading, the random test weights, and the pipeline paths (instances, recompose, preview, CLI)
on random DDColor-T weights (conftest ``ddcolor_state`` / ``ddcolor_models``)."""
from __future__ import annotations

import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("spandrel_extra_arches")

from fake_colorizers import DDCOLOR_FILES, write_ddcolor  # noqa: E402
from patchcolor.colorizers import input_spec, load_colorizer, predict_ab  # noqa: E402
from patchcolor.colorizers.ddcolor import DDColorColorizer, random_gray_batch  # noqa: E402
from patchcolor.errors import PatchColorError, WeightsCorrupt, WeightsMissing  # noqa: E402
from patchcolor.options import make_options  # noqa: E402
from patchcolor.pipeline import Pipeline  # noqa: E402
from patchcolor.prepare import SourceImage  # noqa: E402

CPU = torch.device("cpu")


def authors_network(state: dict[str, torch.Tensor]) -> torch.nn.Module:
    """The authors' network on these weights, unmodified: spandrel-extra-arches' DDColor (bit-identical to the
    authors' class on identical weights) with its spectral-norm hooks and feature hooks, eval mode."""
    from spandrel_extra_arches.architectures.DDColor import DDColorArch

    return DDColorArch().load(dict(state)).model.eval()


def authors_process(net: torch.nn.Module, bgr: np.ndarray, input_size: int = 512):
    """The authors' ``ColorizationPipeline.process`` (their inference script), written from its steps: BGR uint8
    -> /255 float32 -> resize to input_size² (cv2 bilinear) -> Lab L (cv2, float32) -> Lab (L, 0, 0) -> RGB (cv2)
    -> network -> a/b -> F.interpolate to the image size (torch's default, nearest). Returns the network input
    (1, 3, n, n), the raw a/b (1, 2, n, n) and the resized a/b (1, 2, H, W)."""
    height, width = bgr.shape[:2]
    img = (bgr / 255.0).astype(np.float32)
    img = cv2.resize(img, (input_size, input_size))
    img_l = cv2.cvtColor(img, cv2.COLOR_BGR2Lab)[:, :, :1]
    img_gray_lab = np.concatenate((img_l, np.zeros_like(img_l), np.zeros_like(img_l)), axis=-1)
    img_gray_rgb = cv2.cvtColor(img_gray_lab, cv2.COLOR_LAB2RGB)
    tensor = torch.from_numpy(img_gray_rgb.transpose((2, 0, 1))).float().unsqueeze(0)
    with torch.inference_mode():
        ab = net(tensor)
    return tensor, ab, F.interpolate(ab, size=(height, width))


class Recorder:
    """Forward hook keeping every (input, output) of a module."""

    def __init__(self, module: torch.nn.Module):
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.handle = module.register_forward_hook(lambda m, i, o: self.calls.append((i[0].clone(), o.clone())))

    def __enter__(self) -> "Recorder":
        return self

    def __exit__(self, *exc) -> None:
        self.handle.remove()


@pytest.fixture(scope="module")
def ddpipe(ddcolor_models) -> Pipeline:
    return Pipeline(ddcolor_models, device="cpu")


# --------------------------------------------------------------------------------------------------- parity
def test_full_image_equals_the_authors_pipeline(ddpipe, ddcolor_state):
    """``--detector none``: our 512² network input and raw a/b equal the authors' pipeline on the same weights
    (float32 rounding only); our a/b at the image size is their raw a/b resized bilinearly."""
    from skimage import data

    rgb = data.coffee()                                   # 400×600 colour photo: the working copy is the image
    model = ddpipe.colorizer("ddcolor-tiny")
    with Recorder(model) as rec:
        res = ddpipe.run(SourceImage(rgb), make_options("default", colorizer="ddcolor-tiny", detector="none"))
    assert len(rec.calls) == 1
    ours_in, ours_ab = rec.calls[0]
    ref_in, ref_ab, ref_resized = authors_process(authors_network(ddcolor_state), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ours_in.shape == ref_in.shape == (1, 3, 512, 512)
    assert torch.equal(ours_in, ref_in)                   # the same OpenCV float32 steps
    scale = ref_ab.abs().max().item()
    assert 10 < scale < 500                               # the random weights give a/b in a trained range
    assert (ours_ab - ref_ab).abs().max().item() <= 1e-3 * scale
    full_ab = torch.from_numpy(res.state.full_ab)[None]
    bilinear = F.interpolate(ref_ab, size=rgb.shape[:2], mode="bilinear", align_corners=False)
    assert (full_ab - bilinear).abs().max().item() <= 1e-3 * scale
    assert ref_resized.shape == full_ab.shape             # (the authors resize with nearest: see docs/ddcolor.md)


def test_optimised_forward_equals_the_library_forward(ddcolor_state):
    """Folded spectral norm, folded tail, cached positions, fused attention, channels-last: the output of
    spandrel's own forward within float rounding, at several sizes and in a batch; each change alone too."""
    ref = authors_network(ddcolor_state)
    fast, plain = load_weights(ddcolor_state), load_weights(ddcolor_state, channels_last=False)
    flags = ("fold_tail", "cache_positions", "fast_attention")
    for side, n in ((128, 2), (64, 1)):
        x = random_gray_batch(n, side, seed=side)
        with torch.inference_mode():
            want = ref(x)
            scale = want.abs().max().item()
            for model, on in ((fast, flags), (plain, ()), *((plain, (f,)) for f in flags)):
                for f in flags:
                    setattr(model, f, f in on)
                got = model(x)
                assert got.shape == want.shape and got.is_contiguous()
                assert (got - want).abs().max().item() <= 1e-4 * scale, (side, model.channels_last, on)
            one = fast(x[:1])                            # batching does not change an input's output
            assert (one - want[:1]).abs().max().item() <= 1e-4 * scale


def load_weights(state: dict[str, torch.Tensor], **flags) -> DDColorColorizer:
    from patchcolor.colorizers.ddcolor import build_network, fold_spectral_norm

    net = build_network(dict(state)).eval().requires_grad_(False)
    assert fold_spectral_norm(net) == 8                  # every spectral-norm layer of the decoder and refine net
    return DDColorColorizer(net, **flags).eval()


def test_random_weights_exercise_the_whole_network(ddcolor_state):
    """The test weights are not degenerate: a/b in tens of units (converged u/v, not ~1e12), and the encoder's
    blocks matter (visible layer scales, not the init's 1e-6): removing one stage-2 block changes the a/b far above
    float rounding, removing every block changes it a lot."""
    x = random_gray_batch(1, 64)
    model = load_weights(ddcolor_state)
    gammas = [b.gamma for stage in model.net.encoder.arch.stages for b in stage]
    with torch.inference_mode():
        ab = model(x)
        assert 10 < ab.abs().max().item() < 500 and ab.std().item() > 2
        size = ab.abs().mean().item()
        kept = gammas[10].clone()
        gammas[10].zero_()                               # stage 2, block 4
        one = (model(x) - ab).abs().mean().item()
        gammas[10].copy_(kept)
        for g in gammas:
            g.zero_()
        every = (model(x) - ab).abs().mean().item()
    assert one > 2e-3 * size and every > 0.1 * size, (one, every, size)


# --------------------------------------------------------------------------------------------------- formats
@pytest.mark.parametrize("fmt", ["pth", "params", "hf-safetensors", "hf-bin", "modelscope"])
def test_every_published_format_loads_the_same_network(tmp_path, ddcolor_state, fmt):
    path = write_ddcolor(tmp_path, fmt, state=ddcolor_state)
    model = load_colorizer("ddcolor-tiny", path, CPU)
    assert isinstance(model, DDColorColorizer) and model.encoder_name == "convnext-t"
    ref = load_weights(ddcolor_state)
    x = random_gray_batch(1, 64, seed=3)
    with torch.inference_mode():
        assert torch.equal(model(x), ref(x))


def _corrupt(tmp_path: Path, what: str, state: dict[str, torch.Tensor]) -> Path:
    """A damaged or wrong DDColor file (or folder) of kind ``what``."""
    path = tmp_path / DDCOLOR_FILES["ddcolor-tiny"]
    if what == "truncated":
        torch.save(state, path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif what == "missing-key":
        torch.save({k: v for k, v in state.items() if k != "decoder.color_decoder.query_feat.weight"}, path)
    elif what == "wrong-shape":
        bad = dict(state)
        bad["decoder.color_decoder.level_embed.weight"] = torch.zeros(3, 128)
        torch.save(bad, path)
    elif what == "extra-key":
        torch.save({**state, "decoder.extra.weight": torch.zeros(3)}, path)
    elif what == "other-network":
        from fake_colorizers import random_state_dict

        torch.save(random_state_dict("eccv16"), path)
    elif what == "pickled-object":
        with open(path, "wb") as f:
            pickle.dump({"params": Path("/")}, f)
    elif what == "config-mismatch":
        folder = write_ddcolor(tmp_path, "hf-safetensors", state=state)
        cfg = (folder / "config.json").read_text().replace("convnext-t", "convnext-l")
        (folder / "config.json").write_text(cfg)
        return folder
    elif what == "empty-folder":
        (tmp_path / "empty").mkdir()
        return tmp_path / "empty"
    return path


@pytest.mark.parametrize("what,reason", [
    ("truncated", "cannot be read"), ("missing-key", "missing: decoder.color_decoder.query_feat.weight"),
    ("wrong-shape", "wrong shape: decoder.color_decoder.level_embed.weight"), ("extra-key", "unexpected"),
    ("other-network", "not a DDColor state dict"), ("pickled-object", "refused for safety"),
    ("config-mismatch", "config.json says encoder_name='convnext-l'"), ("empty-folder", "none of model.safetensors")])
def test_a_wrong_or_damaged_file_is_one_sentence_naming_it(tmp_path, ddcolor_state, what, reason):
    path = _corrupt(tmp_path, what, ddcolor_state)
    with pytest.raises(WeightsCorrupt) as ei:
        load_colorizer("ddcolor-tiny", path, CPU)
    text = ei.value.message + " " + ei.value.details
    assert "\n" not in ei.value.message
    assert str(path) in text and reason in text, text


def test_missing_file_and_missing_package(tmp_path, monkeypatch):
    with pytest.raises(WeightsMissing):
        load_colorizer("ddcolor", tmp_path / DDCOLOR_FILES["ddcolor"], CPU)
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda n, *a: None if n == "spandrel_extra_arches" else real(n, *a))
    with pytest.raises(PatchColorError) as ei:
        load_colorizer("ddcolor", tmp_path / DDCOLOR_FILES["ddcolor"], CPU)
    assert "patchcolor[ddcolor]" in ei.value.message and "\n" not in ei.value.message


# --------------------------------------------------------------------------------------------------- pipeline
def test_input_spec_sizes():
    spec = input_spec("ddcolor")
    assert (spec.side(256, True), spec.side(256, False)) == (512, 256)     # the authors' 512 for the full image
    assert (spec.side(64, True), spec.side(72, False)) == (128, 96)        # multiples of 32 (the encoder stride)
    assert input_spec("eccv16").side(256, True) == input_spec("siggraph17").side(256, False) == 256


def test_crops_are_batched_at_their_own_size(ddpipe, photo_gray):
    """With objects: one forward for the full image at 2×net_size, the crops together at net_size; the result
    keeps the input's lightness and the crops' colours differ from the full image's."""
    model = ddpipe.colorizer("ddcolor")
    opts = make_options("default", colorizer="ddcolor", net_size=64, max_instances=3, max_side=256)
    with Recorder(model) as rec:
        res = ddpipe.run(SourceImage(photo_gray), opts)
    k = len(res.instances)
    assert 1 <= k <= 3
    assert [tuple(x.shape) for x, _ in rec.calls] == [(1, 3, 128, 128), (k, 3, 64, 64)]
    assert res.image.shape == (512, 512, 3)
    state = res.state
    x0, y0, x1, y1 = state.inst_boxes[0]
    assert np.abs(state.inst_ab[0] - state.full_ab[:, y0:y1, x0:x1]).mean() > 1.0


def test_recompose_recolorizes_a_moved_mask_with_ddcolor(ddpipe, photo_gray):
    opts = make_options("default", colorizer="ddcolor", net_size=64, max_instances=2, max_side=256)
    src = SourceImage(photo_gray)
    first = ddpipe.run(src, opts)
    x0, y0, x1, y1 = first.state.inst_boxes[0]                  # working pixels (256²; the output is 512²)
    masks = [i.full_mask(512, 512) > 0 for i in first.instances]
    corner = next((cx, cy) for cx, cy in ((0, 0), (236, 0), (0, 236), (236, 236))
                  if cx + 20 <= x0 or cx >= x1 or cy + 20 <= y0 or cy >= y1)
    masks[0] = np.zeros_like(masks[0])
    masks[0][2 * corner[1]:2 * corner[1] + 40, 2 * corner[0]:2 * corner[0] + 40] = True   # outside its crop box
    model = ddpipe.colorizer("ddcolor")
    with Recorder(model) as rec:
        again = ddpipe.recompose(src, first.state, masks, opts)
    assert [tuple(x.shape) for x, _ in rec.calls] == [(1, 3, 64, 64)]      # only that crop, at the crop size
    assert len(again.instances) == len(first.instances)
    assert again.state.inst_boxes[0] != first.state.inst_boxes[0]


def test_preview_draft_and_exact_with_ddcolor(ddpipe, photo_gray):
    """The draft runs DDColor at the draft size (full image 2×64), the exact preview at the options' (2×96); an
    unchanged exact refresh runs no network."""
    from patchcolor.preview import DRAFT_NET_SIZE, PreviewSession

    opts = make_options("default", colorizer="ddcolor", net_size=96, detector="none")
    session = PreviewSession(ddpipe, SourceImage(photo_gray))
    model = ddpipe.colorizer("ddcolor")
    with Recorder(model) as rec:
        draft = session.render(opts, draft=True)
        exact = session.render(opts)
        again = session.render(opts)
    assert draft.draft and not exact.draft and exact.image.shape[:2] == (384, 384)
    assert [tuple(x.shape) for x, _ in rec.calls] == [(1, 3, 2 * DRAFT_NET_SIZE, 2 * DRAFT_NET_SIZE),
                                                      (1, 3, 192, 192)]
    assert again.computed == 0 and np.array_equal(again.image, exact.image)


def test_predict_ab_keeps_order_across_sizes(ddpipe):
    model = ddpipe.colorizer("ddcolor-tiny")
    x64, x128 = random_gray_batch(2, 64, seed=1).numpy(), random_gray_batch(1, 128, seed=2).numpy()
    inputs = [x64[0], x128[0], x64[1]]
    out = predict_ab(model, inputs, [(64, 64), (128, 128), (30, 20)], batch_size=8)
    alone = [predict_ab(model, [x], [s])[0] for x, s in zip(inputs, [(64, 64), (128, 128), (30, 20)])]
    assert [o.shape for o in out] == [(2, 64, 64), (2, 128, 128), (2, 30, 20)]
    for a, b in zip(out, alone):
        assert np.abs(a - b).max() <= 1e-4 * np.abs(b).max()


def test_cli_colorize_with_ddcolor_masks_and_a_pointed_folder(ddcolor_models, ddcolor_state, tmp_path, capsys):
    """``patchcolor colorize --colorizer ddcolor --masks`` end to end; a Hugging Face folder given with
    ``--colorizer-weights`` gives the same image as the model-zoo file holding the same weights."""
    from PIL import Image
    from skimage import data

    from patchcolor.cli import main

    photo = tmp_path / "cat.png"
    Image.fromarray(data.chelsea()[::3, ::3]).save(photo)
    common = ["colorize", str(photo), "--models", str(ddcolor_models), "--max-side", "160"]
    assert main(common + ["-o", str(tmp_path / "a"), "--colorizer", "ddcolor", "--masks", "--max-instances", "2"]) == 0
    masks = sorted((tmp_path / "a" / "cat_masks").glob("*.png"))
    assert 1 <= len(masks) <= 2 and (tmp_path / "a" / "cat.png").is_file()
    folder = write_ddcolor(tmp_path / "hf", "hf-safetensors", state=ddcolor_state)
    zoo = ["--detector", "none", "--colorizer", "ddcolor-tiny"]
    assert main(common + ["-o", str(tmp_path / "b")] + zoo) == 0
    assert main(common + ["-o", str(tmp_path / "c"), "--colorizer-weights", str(folder)] + zoo) == 0
    b, c = (np.asarray(Image.open(tmp_path / d / "cat.png")) for d in ("b", "c"))
    assert np.array_equal(b, c)
    assert main(common + ["-o", str(tmp_path / "d"), "--colorizer-weights", str(tmp_path / "nope")] + zoo) == 1
    assert "does not exist" in capsys.readouterr().err


def test_weights_status_names_every_ddcolor_model(ddcolor_models, monkeypatch):
    """What the service's info and the GIMP dialog read: each DDColor name with its label and status."""
    import importlib.util

    from patchcolor.models import weights_status

    status = weights_status(ddcolor_models)
    assert status["colorizers"]["ddcolor"] == status["colorizers"]["ddcolor-tiny"] == "ok"
    assert status["colorizers"]["ddcolor-paper"] == "missing"
    labels = {m["name"]: m["label"] for m in status["models"]}
    assert "slow on CPU" in labels["ddcolor"] and "DDColor-T" in labels["ddcolor-tiny"]
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda n, *a: None if n == "spandrel_extra_arches" else real(n, *a))
    assert weights_status(ddcolor_models)["colorizers"]["ddcolor"] == "unavailable"
