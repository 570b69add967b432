"""Zhang et al., "Colorful Image Colorization" (ECCV 2016): the released ``colorization_release_v2`` network.

Layer for layer as richzhang/colorization ``colorizers/eccv16.py`` so the official state_dict loads strictly.
Input (N, 1, H, W) raw L* in [0, 100]; output (N, 2, H, W) Lab a/b (about ±110) — the 313-bin distribution
at H/4 × W/4, its expectation (``model_out``), ×110, bilinear ×4.
"""
from __future__ import annotations

import torch
from torch import nn

from .inputs import LIGHTNESS


def _block(chans: list[int], strides: list[int], dilation: int = 1, bn: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = []
    for cin, cout, s in zip(chans[:-1], chans[1:], strides):
        layers += [nn.Conv2d(cin, cout, 3, s, padding=dilation, dilation=dilation), nn.ReLU(True)]
    if bn:
        layers.append(nn.BatchNorm2d(chans[-1]))
    return nn.Sequential(*layers)


class ECCVGenerator(nn.Module):
    input_spec = LIGHTNESS   # the paper's input: L* of the crop stretched to net_size²

    def __init__(self) -> None:
        super().__init__()
        self.model1 = _block([1, 64, 64], [1, 2])
        self.model2 = _block([64, 128, 128], [1, 2])
        self.model3 = _block([128, 256, 256, 256], [1, 1, 2])
        self.model4 = _block([256, 512, 512, 512], [1, 1, 1])
        self.model5 = _block([512] * 4, [1, 1, 1], dilation=2)
        self.model6 = _block([512] * 4, [1, 1, 1], dilation=2)
        self.model7 = _block([512] * 4, [1, 1, 1])
        self.model8 = nn.Sequential(
            nn.ConvTranspose2d(512, 256, 4, 2, 1), nn.ReLU(True),
            nn.Conv2d(256, 256, 3, 1, 1), nn.ReLU(True),
            nn.Conv2d(256, 256, 3, 1, 1), nn.ReLU(True),
            nn.Conv2d(256, 313, 1),
        )
        self.softmax = nn.Softmax(dim=1)
        self.model_out = nn.Conv2d(313, 2, 1, bias=False)
        self.upsample4 = nn.Upsample(scale_factor=4, mode="bilinear")

    def forward(self, l: torch.Tensor) -> torch.Tensor:
        x = (l - 50.0) / 100.0
        for m in (self.model1, self.model2, self.model3, self.model4, self.model5, self.model6, self.model7,
                  self.model8):
            x = m(x)
        return self.upsample4(self.model_out(self.softmax(x)) * 110.0)
