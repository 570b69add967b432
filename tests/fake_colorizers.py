"""Random colorizer weights written in the official file formats (torch state_dict .pth, official keys/shapes).

Built from the project's own network classes — the loader's strict key/shape check against the reference
tables is tested separately (tests/test_colorize.py) so these files are not trusted blindly.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from patchcolor.colorizers import ARCHITECTURES

FILE_NAMES = {"eccv16": "colorization_release_v2-9b330a0b.pth", "siggraph17": "siggraph17-df00044c.pth"}


def random_state_dict(name: str, seed: int = 0, with_num_batches_tracked: bool = True) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    model = ARCHITECTURES[name]()
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
                # He init, zero bias: the input still shapes the output after 20+ random layers, so colours
                # differ between the full image and each crop (PyTorch's default init washes the input out)
                torch.nn.init.kaiming_normal_(mod.weight, nonlinearity="relu")
                if mod.bias is not None:
                    mod.bias.zero_()
            if isinstance(mod, torch.nn.BatchNorm2d):   # non-trivial BN statistics
                mod.running_mean.uniform_(-0.1, 0.1)
                mod.running_var.uniform_(0.5, 2.0)
                mod.weight.uniform_(0.5, 1.5)
        if name == "eccv16":   # bin centres (÷110) spread over the a/b plane, like the real expectation layer
            model.model_out.weight.uniform_(-0.5, 0.5)
    state = model.state_dict()
    if not with_num_batches_tracked:
        state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    return state


def write_colorizer_pth(name: str, folder: Path, seed: int = 0, with_num_batches_tracked: bool = True) -> Path:
    path = Path(folder) / FILE_NAMES[name]
    torch.save(random_state_dict(name, seed, with_num_batches_tracked), path)
    return path


# --------------------------------------------------------------------------------------------------- DDColor
#: the authors' model-zoo file of each registry name (Hugging Face piddnad/DDColor-models)
DDCOLOR_FILES = {"ddcolor": "ddcolor_modelscope.pth", "ddcolor-artistic": "ddcolor_artistic.pth",
                 "ddcolor-paper": "ddcolor_paper.pth", "ddcolor-tiny": "ddcolor_paper_tiny.pth"}
#: the authors' build_ddcolor_model arguments (also what their Hugging Face repos' config.json holds)
DDCOLOR_CONFIG = {"decoder_name": "MultiScaleColorDecoder", "input_size": [512, 512], "num_output_channels": 2,
                  "last_norm": "Spectral", "do_normalize": False, "num_queries": 100, "num_scales": 3,
                  "dec_layers": 9}


def top_singular_vectors(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(u, v) with uᵀ w v = the largest singular value of the 2-D ``w``, as spectral norm's power iteration
    converges to them. In float64 on the smaller Gram matrix G: repeated squaring (G^(2^20) leaves only the top
    eigenvector even where the top two singular values are close), then power iterations to polish."""
    w = w.double()
    gram = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w
    g = gram / gram.norm()
    for _ in range(20):
        g = g @ g
        g = g / g.norm()
    x = g[:, int(g.diagonal().argmax())]
    for _ in range(10):
        x = gram @ x
        x = x / x.norm()
    if w.shape[0] <= w.shape[1]:
        u, v = x, w.T @ x
    else:
        u = w @ x
        u = u / u.norm()
        v = w.T @ u
    return u.float(), (v / v.norm()).float()


def random_ddcolor_state_dict(encoder: str = "convnext-t", seed: int = 0, gamma: tuple[float, float] = (1.0, 2.0),
                              embed_gain: float = 900.0) -> dict[str, torch.Tensor]:
    """Random DDColor weights as a trained file has them: the spectral-norm u/v are the converged top singular
    vectors of each weight (exact SVD in float64; a trained network's power iteration has converged, and
    un-iterated vectors give σ ≈ 0.01–0.1 instead of the top singular value, hence a/b ~1e12), and the ConvNeXt
    layer-scale gammas are visible (uniform in ``gamma``, not the init's 1e-6, or the encoder is invisible); the
    colour-embedding head is scaled by ``embed_gain`` so that a/b spans tens of units."""
    from spandrel_extra_arches.architectures.DDColor import DDColor

    torch.manual_seed(seed)
    cfg = {k: v for k, v in DDCOLOR_CONFIG.items() if k != "input_size"}
    model = DDColor(encoder_name=encoder, input_size=(64, 64), nf=512, num_input_channels=3, **cfg).eval()
    with torch.no_grad():
        for name, mod in model.named_modules():
            if hasattr(mod, "weight_orig") and hasattr(mod, "weight_u"):
                u, v = top_singular_vectors(mod.weight_orig.detach().reshape(mod.weight_orig.shape[0], -1))
                mod.weight_u.copy_(u)
                mod.weight_v.copy_(v)
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.1, 0.1)
                mod.running_var.uniform_(0.5, 2.0)
            if getattr(mod, "gamma", None) is not None and name.startswith("encoder.arch.stages"):
                mod.gamma.uniform_(*gamma)
        # colour embeddings large enough that a/b spans tens of Lab units (a trained network's range), not ~1
        last = model.decoder.color_decoder.color_embed.layers[-1]
        last.weight.mul_(embed_gain)
        last.bias.mul_(embed_gain)
    return {k: v.clone() for k, v in model.state_dict().items()}


def write_ddcolor(folder: Path, fmt: str = "pth", encoder: str = "convnext-t", seed: int = 0,
                  name: str = "ddcolor-tiny", state: dict[str, torch.Tensor] | None = None) -> Path:
    """Random DDColor weights in one of the formats users have; returns the file or folder to point at.

    fmt: ``pth`` (model zoo: plain state dict, named as the registry's ``name``), ``params`` (model zoo
    ``{"params": sd}`` plus the ConvNeXt head the authors' files may carry), ``hf-safetensors`` / ``hf-bin``
    (a Hugging Face model folder: model.safetensors / pytorch_model.bin + config.json), ``modelscope``
    (a folder with pytorch_model.pt)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    sd = state if state is not None else random_ddcolor_state_dict(encoder, seed)
    if fmt in ("pth", "params"):
        path = folder / DDCOLOR_FILES[name]
        if fmt == "params":
            head = {"encoder.arch.head_cls.weight": torch.zeros(4, sd["encoder.arch.norm.weight"].shape[0]),
                    "encoder.arch.head_cls.bias": torch.zeros(4)}
            torch.save({"params": {**sd, **head}}, path)
        else:
            torch.save(sd, path)
        return path
    sub = folder / f"{fmt}-{encoder}-{seed}"
    sub.mkdir(exist_ok=True)
    if fmt == "modelscope":
        torch.save(sd, sub / "pytorch_model.pt")
        return sub
    (sub / "config.json").write_text(json.dumps({"encoder_name": encoder, **DDCOLOR_CONFIG}))
    if fmt == "hf-safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in sd.items()}, str(sub / "model.safetensors"))
    elif fmt == "hf-bin":
        torch.save(sd, sub / "pytorch_model.bin")
    else:
        raise ValueError(f"unknown DDColor test format {fmt!r}")
    return sub
