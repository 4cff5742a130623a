"""EfficientNet (B0 family): MBConv blocks with SiLU squeeze-excitation and stochastic depth."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from functools import partial
from typing import Sequence

import torch
from torch import nn

from ._layers import ConvNormActivation, DropPath, _make_divisible
from ._registry import ImageInputs, register, size

_BatchNorm = partial(nn.BatchNorm2d, eps=1e-3, momentum=0.01)


@dataclass
class MBConvConfig:
    expand_ratio: float
    kernel: int
    stride: int
    input_channels: int
    out_channels: int
    num_layers: int

    def scaled(self, width_mult: float, depth_mult: float) -> "MBConvConfig":
        return MBConvConfig(
            self.expand_ratio,
            self.kernel,
            self.stride,
            _make_divisible(self.input_channels * width_mult, 8),
            _make_divisible(self.out_channels * width_mult, 8),
            int(math.ceil(self.num_layers * depth_mult)),
        )


# (expand, kernel, stride, in, out, layers) for B0; other variants scale width/depth.
B0_STAGES = (
    (1, 3, 1, 32, 16, 1),
    (6, 3, 2, 16, 24, 2),
    (6, 5, 2, 24, 40, 2),
    (6, 3, 2, 40, 80, 3),
    (6, 5, 1, 80, 112, 3),
    (6, 5, 2, 112, 192, 4),
    (6, 3, 1, 192, 320, 1),
)


class SqueezeExcitation(nn.Module):
    def __init__(self, input_channels: int, squeeze_channels: int) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(input_channels, squeeze_channels, 1)
        self.fc2 = nn.Conv2d(squeeze_channels, input_channels, 1)
        self.activation = nn.SiLU()
        self.scale_activation = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.avgpool(x)
        scale = self.fc1(scale)
        scale = self.activation(scale)
        scale = self.fc2(scale)
        scale = self.scale_activation(scale)
        return x * scale


class MBConv(nn.Module):
    def __init__(self, cnf: MBConvConfig, stochastic_depth_prob: float) -> None:
        super().__init__()
        self.use_res_connect = cnf.stride == 1 and cnf.input_channels == cnf.out_channels

        layers: list[nn.Module] = []
        expanded = _make_divisible(cnf.input_channels * cnf.expand_ratio, 8)
        if expanded != cnf.input_channels:
            layers.append(
                ConvNormActivation(
                    cnf.input_channels, expanded, kernel_size=1, norm_layer=_BatchNorm, activation_layer=nn.SiLU
                )
            )
        layers.append(
            ConvNormActivation(
                expanded,
                expanded,
                kernel_size=cnf.kernel,
                stride=cnf.stride,
                groups=expanded,
                norm_layer=_BatchNorm,
                activation_layer=nn.SiLU,
            )
        )
        # The squeeze width follows the block input, not the expanded width.
        layers.append(SqueezeExcitation(expanded, max(1, cnf.input_channels // 4)))
        layers.append(
            ConvNormActivation(expanded, cnf.out_channels, kernel_size=1, norm_layer=_BatchNorm, activation_layer=None)
        )
        self.block = nn.Sequential(*layers)
        self.stochastic_depth = DropPath(stochastic_depth_prob)
        self.out_channels = cnf.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.block(x)
        if self.use_res_connect:
            result = self.stochastic_depth(result)
            result += x
        return result


class EfficientNet(nn.Module):
    def __init__(
        self,
        stages: Sequence[Sequence[float]] = B0_STAGES,
        width_mult: float = 1.0,
        depth_mult: float = 1.0,
        dropout: float = 0.2,
        stochastic_depth_prob: float = 0.2,
        num_classes: int = 1000,
        last_channel: int | None = None,
    ) -> None:
        super().__init__()
        settings = [MBConvConfig(*row).scaled(width_mult, depth_mult) for row in stages]

        layers: list[nn.Module] = [
            ConvNormActivation(
                3, settings[0].input_channels, kernel_size=3, stride=2, norm_layer=_BatchNorm, activation_layer=nn.SiLU
            )
        ]
        total_blocks = sum(cnf.num_layers for cnf in settings)
        block_id = 0
        for cnf in settings:
            stage: list[nn.Module] = []
            for _ in range(cnf.num_layers):
                block_cnf = copy.copy(cnf)
                if stage:
                    # Later blocks of a stage keep the resolution and width.
                    block_cnf.input_channels = block_cnf.out_channels
                    block_cnf.stride = 1
                # Drop probability grows linearly with depth.
                sd_prob = stochastic_depth_prob * float(block_id) / total_blocks
                stage.append(MBConv(block_cnf, sd_prob))
                block_id += 1
            layers.append(nn.Sequential(*stage))

        last_in = settings[-1].out_channels
        last_out = last_channel if last_channel is not None else 4 * last_in
        layers.append(
            ConvNormActivation(last_in, last_out, kernel_size=1, norm_layer=_BatchNorm, activation_layer=nn.SiLU)
        )
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout, inplace=True),
            nn.Linear(last_out, num_classes),
        )

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                # Fan-in (not the reference fan-out) keeps logits O(1) for any class count.
                init_range = 1.0 / math.sqrt(m.in_features)
                nn.init.uniform_(m.weight, -init_range, init_range)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        x = self.classifier(x)
        return x


@register(
    "efficientnet",
    family="cnn",
    description=(
        "EfficientNet-B0: MBConv with SiLU/sigmoid SE and stochastic depth "
        "(tiny: width/depth 0.25, 32x32)."
    ),
    sizes={
        "tiny": size(ImageInputs(32, 32), width_mult=0.25, depth_mult=0.25, num_classes=10, last_channel=128),
        "base": size(ImageInputs(224, 224)),
    },
)
def efficientnet(**kwargs) -> EfficientNet:
    return EfficientNet(**kwargs)
