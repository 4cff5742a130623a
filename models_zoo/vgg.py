"""VGG with BatchNorm: plain conv stacks, max pooling and a dropout MLP classifier."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ._registry import ImageInputs, register, size

# Integers are conv output widths, "M" a 2x2 max pool.
VGG11 = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


def make_layers(cfg: Sequence[int | str], batch_norm: bool = True, in_channels: int = 3) -> nn.Sequential:
    layers: list[nn.Module] = []
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            continue
        conv = nn.Conv2d(in_channels, int(v), kernel_size=3, padding=1)
        if batch_norm:
            layers += [conv, nn.BatchNorm2d(int(v)), nn.ReLU(inplace=True)]
        else:
            layers += [conv, nn.ReLU(inplace=True)]
        in_channels = int(v)
    return nn.Sequential(*layers)


class VGG(nn.Module):
    def __init__(
        self,
        features: nn.Module,
        out_channels: int,
        num_classes: int = 1000,
        pool_size: int = 7,
        hidden: int = 4096,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        self.features = features
        self.avgpool = nn.AdaptiveAvgPool2d((pool_size, pool_size))
        self.classifier = nn.Sequential(
            nn.Linear(out_channels * pool_size * pool_size, hidden),
            nn.ReLU(True),
            nn.Dropout(p=dropout),
            nn.Linear(hidden, hidden),
            nn.ReLU(True),
            nn.Dropout(p=dropout),
            nn.Linear(hidden, num_classes),
        )
        # Linears keep PyTorch's fan-in init: the reference N(0, 0.01) assumes
        # 4096-wide layers and would shrink narrow configs' logits to ~1e-3.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.constant_(m.bias, 0)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        x = self.classifier(x)
        return x


@register(
    "vgg_bn",
    family="cnn",
    description=(
        "VGG-11 with BatchNorm and a Linear/ReLU/Dropout classifier "
        "(tiny: 4 convs, 32x32)."
    ),
    sizes={
        "tiny": size(ImageInputs(32, 32), cfg=(16, "M", 32, "M", 64, 64, "M"), pool_size=2, hidden=64, num_classes=10),
        "base": size(ImageInputs(224, 224), cfg=VGG11),
    },
)
def vgg_bn(cfg: Sequence[int | str] = VGG11, **kwargs) -> VGG:
    out_channels = [v for v in cfg if v != "M"][-1]
    return VGG(make_layers(cfg, batch_norm=True), int(out_channels), **kwargs)
