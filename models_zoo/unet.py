"""U-Net: encoder-decoder segmentation network with concatenated skip connections.

The decoder mixes the two upsampling styles seen in practice: learned
`ConvTranspose2d` in the deep stages and `F.interpolate(mode="bilinear")` in
the shallow ones.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ._registry import ImageInputs, register, size


class DoubleConv(nn.Module):
    """(conv3x3 -> BN -> ReLU) x 2."""

    def __init__(self, in_channels: int, out_channels: int, mid_channels: int | None = None) -> None:
        super().__init__()
        if not mid_channels:
            mid_channels = out_channels
        self.double_conv = nn.Sequential(
            nn.Conv2d(in_channels, mid_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(mid_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.double_conv(x)


class Down(nn.Module):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.maxpool_conv = nn.Sequential(nn.MaxPool2d(2), DoubleConv(in_channels, out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool_conv(x)


class Up(nn.Module):
    """Upsample the deeper map, concatenate the skip, then DoubleConv."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int, mode: str) -> None:
        super().__init__()
        if mode not in ("transpose", "bilinear"):
            raise ValueError(f"unknown upsampling mode {mode!r}")
        self.mode = mode
        if mode == "transpose":
            self.up = nn.ConvTranspose2d(in_channels, in_channels // 2, kernel_size=2, stride=2)
            self.conv = DoubleConv(in_channels // 2 + skip_channels, out_channels)
        else:
            self.up = None
            cat_channels = in_channels + skip_channels
            self.conv = DoubleConv(cat_channels, out_channels, cat_channels // 2)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        if self.up is not None:
            x1 = self.up(x1)
        else:
            x1 = F.interpolate(x1, scale_factor=2, mode="bilinear", align_corners=True)
        # Odd input sizes leave the upsampled map a pixel short of the skip.
        diff_y = x2.size()[2] - x1.size()[2]
        diff_x = x2.size()[3] - x1.size()[3]
        x1 = F.pad(x1, [diff_x // 2, diff_x - diff_x // 2, diff_y // 2, diff_y - diff_y // 2])
        x = torch.cat([x2, x1], dim=1)
        return self.conv(x)


class UNet(nn.Module):
    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 2,
        widths: Sequence[int] = (64, 128, 256, 512, 1024),
        up_modes: Sequence[str] = ("transpose", "transpose", "bilinear", "bilinear"),
    ) -> None:
        super().__init__()
        if len(widths) != 5 or len(up_modes) != 4:
            raise ValueError("UNet expects 5 widths and 4 upsampling modes")
        w = widths
        self.inc = DoubleConv(in_channels, w[0])
        self.down1 = Down(w[0], w[1])
        self.down2 = Down(w[1], w[2])
        self.down3 = Down(w[2], w[3])
        self.down4 = Down(w[3], w[4])
        self.up1 = Up(w[4], w[3], w[3], up_modes[0])
        self.up2 = Up(w[3], w[2], w[2], up_modes[1])
        self.up3 = Up(w[2], w[1], w[1], up_modes[2])
        self.up4 = Up(w[1], w[0], w[0], up_modes[3])
        self.outc = nn.Conv2d(w[0], num_classes, kernel_size=1)

        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        # A plain kaiming head would make logits O(10); keep them O(1).
        nn.init.normal_(self.outc.weight, std=(1.0 / w[0]) ** 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.inc(x)
        x2 = self.down1(x1)
        x3 = self.down2(x2)
        x4 = self.down3(x3)
        x5 = self.down4(x4)
        x = self.up1(x5, x4)
        x = self.up2(x, x3)
        x = self.up3(x, x2)
        x = self.up4(x, x1)
        logits = self.outc(x)
        return logits


@register(
    "unet",
    family="segmentation",
    description=(
        "U-Net (widths 64-1024) with ConvTranspose2d and bilinear upsampling, per-pixel logits "
        "(tiny: widths 8-128, 32x32)."
    ),
    sizes={
        "tiny": size(ImageInputs(32, 32), widths=(8, 16, 32, 64, 128), num_classes=3),
        "base": size(ImageInputs(256, 256), num_classes=2),
    },
)
def unet(**kwargs) -> UNet:
    return UNet(**kwargs)
