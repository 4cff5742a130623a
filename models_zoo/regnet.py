"""RegNetY: residual bottlenecks with fixed group width and ReLU/sigmoid squeeze-excitation."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ._layers import ConvNormActivation
from ._registry import ImageInputs, register, size


class SqueezeExcitation(nn.Module):
    def __init__(self, input_channels: int, squeeze_channels: int) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(input_channels, squeeze_channels, 1)
        self.activation = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(squeeze_channels, input_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.avgpool(x)
        scale = self.fc2(self.activation(self.fc1(scale)))
        return x * torch.sigmoid(scale)


class BottleneckTransform(nn.Sequential):
    """1x1 -> grouped 3x3 (carries the stride) -> SE -> 1x1 (no activation)."""

    def __init__(
        self,
        width_in: int,
        width_out: int,
        stride: int,
        group_width: int,
        bottleneck_multiplier: float,
        se_ratio: float,
    ) -> None:
        w_b = int(round(width_out * bottleneck_multiplier))
        groups = w_b // group_width
        layers: dict[str, nn.Module] = {
            "a": ConvNormActivation(width_in, w_b, kernel_size=1),
            "b": ConvNormActivation(w_b, w_b, kernel_size=3, stride=stride, groups=groups),
        }
        if se_ratio:
            # SE width is relative to the block input, as in the RegNet paper.
            layers["se"] = SqueezeExcitation(w_b, int(round(se_ratio * width_in)))
        layers["c"] = ConvNormActivation(w_b, width_out, kernel_size=1, activation_layer=None)
        super().__init__()
        for name, layer in layers.items():
            self.add_module(name, layer)


class ResBottleneckBlock(nn.Module):
    def __init__(
        self,
        width_in: int,
        width_out: int,
        stride: int,
        group_width: int = 8,
        bottleneck_multiplier: float = 1.0,
        se_ratio: float = 0.25,
    ) -> None:
        super().__init__()
        self.proj = None
        if width_in != width_out or stride != 1:
            self.proj = ConvNormActivation(width_in, width_out, kernel_size=1, stride=stride, activation_layer=None)
        self.f = BottleneckTransform(width_in, width_out, stride, group_width, bottleneck_multiplier, se_ratio)
        self.activation = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.proj is not None:
            x = self.proj(x) + self.f(x)
        else:
            x = x + self.f(x)
        return self.activation(x)


class RegNet(nn.Module):
    def __init__(
        self,
        depths: Sequence[int] = (1, 3, 6, 6),
        widths: Sequence[int] = (48, 104, 208, 440),
        group_width: int = 8,
        stem_width: int = 32,
        se_ratio: float = 0.25,
        num_classes: int = 1000,
    ) -> None:
        super().__init__()
        self.stem = ConvNormActivation(3, stem_width, kernel_size=3, stride=2)

        blocks: list[tuple[str, nn.Module]] = []
        current_width = stem_width
        for i, (depth, width) in enumerate(zip(depths, widths)):
            stage = nn.Sequential(
                *[
                    ResBottleneckBlock(
                        current_width if j == 0 else width,
                        width,
                        stride=2 if j == 0 else 1,
                        group_width=group_width,
                        se_ratio=se_ratio,
                    )
                    for j in range(depth)
                ]
            )
            blocks.append((f"block{i + 1}", stage))
            current_width = width
        self.trunk_output = nn.Sequential()
        for name, stage in blocks:
            self.trunk_output.add_module(name, stage)

        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(current_width, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                # Kaiming with fan_out, as in the pycls reference code.
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, mean=0.0, std=(2.0 / fan_out) ** 0.5)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, mean=0.0, std=0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.trunk_output(x)
        x = self.avgpool(x)
        x = x.flatten(start_dim=1)
        x = self.fc(x)
        return x


@register(
    "regnet",
    family="cnn",
    description=(
        "RegNetY-400MF: grouped bottlenecks (group width 8) with SE "
        "(tiny: widths 16-64, 32x32)."
    ),
    sizes={
        "tiny": size(ImageInputs(32, 32), depths=(1, 1, 2, 1), widths=(16, 32, 48, 64), stem_width=16, num_classes=10),
        "base": size(ImageInputs(224, 224)),
    },
)
def regnet(**kwargs) -> RegNet:
    return RegNet(**kwargs)
