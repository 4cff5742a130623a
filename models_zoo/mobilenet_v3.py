"""MobileNetV3: inverted residuals with hard-sigmoid squeeze-excitation and Hardswish."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ._layers import ConvNormActivation, _make_divisible
from ._registry import ImageInputs, register, size

# BN as in the reference training recipe (eps 1e-3), so folding sees a non-default eps.
_BatchNorm = partial(nn.BatchNorm2d, eps=0.001, momentum=0.01)


class SqueezeExcitation(nn.Module):
    """Channel attention: global pool -> reduce -> ReLU -> expand -> hard sigmoid."""

    def __init__(self, input_channels: int, squeeze_factor: int = 4) -> None:
        super().__init__()
        squeeze_channels = _make_divisible(input_channels // squeeze_factor, 8)
        self.fc1 = nn.Conv2d(input_channels, squeeze_channels, 1)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(squeeze_channels, input_channels, 1)

    def _scale(self, x: torch.Tensor) -> torch.Tensor:
        scale = F.adaptive_avg_pool2d(x, 1)
        scale = self.fc1(scale)
        scale = self.relu(scale)
        scale = self.fc2(scale)
        return F.hardsigmoid(scale, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self._scale(x)
        return scale * x


@dataclass(frozen=True)
class BlockConfig:
    input_channels: int
    kernel: int
    expanded_channels: int
    out_channels: int
    use_se: bool
    activation: str  # "RE" (ReLU) or "HS" (Hardswish)
    stride: int


def _cfgs(rows: Sequence[tuple], width_mult: float) -> list[BlockConfig]:
    def adjust(c: int) -> int:
        return _make_divisible(c * width_mult, 8)

    return [
        BlockConfig(adjust(i), k, adjust(e), adjust(o), se, act, s) for i, k, e, o, se, act, s in rows
    ]


# (in, kernel, expanded, out, SE, activation, stride) from the MobileNetV3 paper.
LARGE = (
    (16, 3, 16, 16, False, "RE", 1),
    (16, 3, 64, 24, False, "RE", 2),
    (24, 3, 72, 24, False, "RE", 1),
    (24, 5, 72, 40, True, "RE", 2),
    (40, 5, 120, 40, True, "RE", 1),
    (40, 5, 120, 40, True, "RE", 1),
    (40, 3, 240, 80, False, "HS", 2),
    (80, 3, 200, 80, False, "HS", 1),
    (80, 3, 184, 80, False, "HS", 1),
    (80, 3, 184, 80, False, "HS", 1),
    (80, 3, 480, 112, True, "HS", 1),
    (112, 3, 672, 112, True, "HS", 1),
    (112, 5, 672, 160, True, "HS", 2),
    (160, 5, 960, 160, True, "HS", 1),
    (160, 5, 960, 160, True, "HS", 1),
)
SMALL = (
    (16, 3, 16, 16, True, "RE", 2),
    (16, 3, 72, 24, False, "RE", 2),
    (24, 3, 88, 24, False, "RE", 1),
    (24, 5, 96, 40, True, "HS", 2),
    (40, 5, 240, 40, True, "HS", 1),
    (40, 5, 240, 40, True, "HS", 1),
    (40, 5, 120, 48, True, "HS", 1),
    (48, 5, 144, 48, True, "HS", 1),
    (48, 5, 288, 96, True, "HS", 2),
    (96, 5, 576, 96, True, "HS", 1),
    (96, 5, 576, 96, True, "HS", 1),
)
TINY = (
    (16, 3, 16, 16, True, "RE", 2),
    (16, 3, 72, 24, False, "RE", 2),
    (24, 5, 96, 40, True, "HS", 2),
    (40, 5, 120, 40, True, "HS", 1),
)


class InvertedResidual(nn.Module):
    def __init__(self, cnf: BlockConfig) -> None:
        super().__init__()
        self.use_res_connect = cnf.stride == 1 and cnf.input_channels == cnf.out_channels
        activation_layer = nn.Hardswish if cnf.activation == "HS" else nn.ReLU

        layers: list[nn.Module] = []
        if cnf.expanded_channels != cnf.input_channels:
            layers.append(
                ConvNormActivation(
                    cnf.input_channels,
                    cnf.expanded_channels,
                    kernel_size=1,
                    norm_layer=_BatchNorm,
                    activation_layer=activation_layer,
                )
            )
        layers.append(
            ConvNormActivation(
                cnf.expanded_channels,
                cnf.expanded_channels,
                kernel_size=cnf.kernel,
                stride=cnf.stride,
                groups=cnf.expanded_channels,
                norm_layer=_BatchNorm,
                activation_layer=activation_layer,
            )
        )
        if cnf.use_se:
            layers.append(SqueezeExcitation(cnf.expanded_channels))
        layers.append(
            ConvNormActivation(
                cnf.expanded_channels, cnf.out_channels, kernel_size=1, norm_layer=_BatchNorm, activation_layer=None
            )
        )
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.block(x)
        if self.use_res_connect:
            result += x
        return result


class MobileNetV3(nn.Module):
    def __init__(
        self,
        setting: Sequence[tuple] = LARGE,
        last_channel: int = 1280,
        width_mult: float = 1.0,
        num_classes: int = 1000,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        cfgs = _cfgs(setting, width_mult)

        layers: list[nn.Module] = [
            ConvNormActivation(
                3, cfgs[0].input_channels, kernel_size=3, stride=2, norm_layer=_BatchNorm, activation_layer=nn.Hardswish
            )
        ]
        layers.extend(InvertedResidual(cnf) for cnf in cfgs)
        last_conv_out = 6 * cfgs[-1].out_channels
        layers.append(
            ConvNormActivation(
                cfgs[-1].out_channels,
                last_conv_out,
                kernel_size=1,
                norm_layer=_BatchNorm,
                activation_layer=nn.Hardswish,
            )
        )
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Linear(last_conv_out, last_channel),
            nn.Hardswish(inplace=True),
            nn.Dropout(p=dropout, inplace=True),
            nn.Linear(last_channel, num_classes),
        )

        # Linears keep PyTorch's fan-in init: the reference N(0, 0.01) assumes
        # 1000 classes and a 1280-wide head and would shrink narrow configs' logits.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        x = self.classifier(x)
        return x


@register(
    "mobilenet_v3",
    family="cnn",
    description=(
        "MobileNetV3-Large (small: V3-Small): hard-sigmoid SE, Hardswish, depthwise "
        "(tiny: 4 blocks, 32x32)."
    ),
    sizes={
        "tiny": size(ImageInputs(32, 32), setting=TINY, last_channel=128, num_classes=10),
        "small": size(ImageInputs(224, 224), setting=SMALL, last_channel=1024),
        "base": size(ImageInputs(224, 224), setting=LARGE, last_channel=1280),
    },
)
def mobilenet_v3(**kwargs) -> MobileNetV3:
    return MobileNetV3(**kwargs)
