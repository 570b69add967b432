"""Random colorizer weights written in the official file formats (torch state_dict .pth, official keys/shapes).

Built from the project's own network classes — the loader's strict key/shape check against the reference
tables is tested separately (tests/test_colorize.py) so these files are not trusted blindly.
"""
from __future__ import annotations

from pathlib import Path

import torch

from patchcolor.colorize import ARCHITECTURES

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
