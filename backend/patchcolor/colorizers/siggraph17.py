"""Zhang et al., "Real-Time User-Guided Image Colorization" (SIGGRAPH 2017), automatic or with user hints.

Layer for layer as richzhang/colorization ``colorizers/siggraph17.py`` (the canonical list) so the official
state_dict loads strictly. Input (N, 1, H, W) raw L* in [0, 100] (H, W divisible by 8), optional hints
ab (N, 2, H, W) in raw Lab units (divided by 110 here) and mask (N, 1, H, W) in {0, 1}, not centred (the
Caffe-converted checkpoint's convention; no hints = zeros, as the reference's defaults); output (N, 2, H, W) a/b
(±110, tanh regression). ``hints.py`` makes the hint inputs. ``model_class`` (529-way head) is built only so
the checkpoint loads; forward does not use it (nor the reference's duplicated conv9/conv10 branch).
"""
from __future__ import annotations

import torch
from torch import nn

from .eccv16 import _block
from .inputs import LIGHTNESS


def _up(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.ConvTranspose2d(cin, cout, 4, 2, 1))


def _short(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, 1, 1))


class SIGGRAPHGenerator(nn.Module):
    input_spec = LIGHTNESS   # the paper's input: L* of the crop stretched to net_size²

    def __init__(self, classes: int = 529) -> None:
        super().__init__()
        self.model1 = _block([4, 64, 64], [1, 1])
        self.model2 = _block([64, 128, 128], [1, 1])
        self.model3 = _block([128, 256, 256, 256], [1, 1, 1])
        self.model4 = _block([256, 512, 512, 512], [1, 1, 1])
        self.model5 = _block([512] * 4, [1, 1, 1], dilation=2)
        self.model6 = _block([512] * 4, [1, 1, 1], dilation=2)
        self.model7 = _block([512] * 4, [1, 1, 1])
        self.model8up = _up(512, 256)
        self.model8 = nn.Sequential(nn.ReLU(True), nn.Conv2d(256, 256, 3, 1, 1), nn.ReLU(True),
                                    nn.Conv2d(256, 256, 3, 1, 1), nn.ReLU(True), nn.BatchNorm2d(256))
        self.model9up = _up(256, 128)
        self.model9 = nn.Sequential(nn.ReLU(True), nn.Conv2d(128, 128, 3, 1, 1), nn.ReLU(True), nn.BatchNorm2d(128))
        self.model10up = _up(128, 128)
        self.model10 = nn.Sequential(nn.ReLU(True), nn.Conv2d(128, 128, 3, 1, 1), nn.LeakyReLU(0.2))
        self.model3short8 = _short(256, 256)
        self.model2short9 = _short(128, 128)
        self.model1short10 = _short(64, 128)
        self.model_class = nn.Sequential(nn.Conv2d(256, classes, 1))
        self.model_out = nn.Sequential(nn.Conv2d(128, 2, 1), nn.Tanh())

    def forward(self, l: torch.Tensor, hint_ab: torch.Tensor | None = None,
                hint_mask: torch.Tensor | None = None) -> torch.Tensor:
        zeros = l.new_zeros(l.shape[0], 1, *l.shape[2:])
        ab = hint_ab / 110.0 if hint_ab is not None else torch.cat([zeros, zeros], 1)
        mask = hint_mask if hint_mask is not None else zeros
        x = torch.cat(((l - 50.0) / 100.0, ab, mask), dim=1)
        conv1_2 = self.model1(x)
        conv2_2 = self.model2(conv1_2[:, :, ::2, ::2])
        conv3_3 = self.model3(conv2_2[:, :, ::2, ::2])
        x = self.model4(conv3_3[:, :, ::2, ::2])
        x = self.model7(self.model6(self.model5(x)))
        x = self.model8(self.model8up(x) + self.model3short8(conv3_3))
        x = self.model9(self.model9up(x) + self.model2short9(conv2_2))
        x = self.model10(self.model10up(x) + self.model1short10(conv1_2))
        return self.model_out(x) * 110.0
