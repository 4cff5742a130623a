"""NFNet / NF-ResNet (timm style): normalizer-free ResNets with scaled weight-standardised convs.

There is no activation normalisation: every conv standardises its *weight* in
forward (per output channel, over fan-in), with a learned per-channel gain,
either through `F.batch_norm(weight.reshape(1, out, -1), None, None,
training=True, momentum=0.)` or through mean and var over fan-in; activations are
rescaled by a constant gamma (in place). Each residual block scales its
input by 1/expected_std (beta) and its branch by alpha (and a learned
skipinit gain) before adding the shortcut; SE attention has a gain of 2.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ._layers import DropPath
from ._registry import ImageInputs, register, size

# Per-activation gamma: 1 / std of act(x) for x ~ N(0, 1), so activations keep unit variance.
_NONLIN_GAMMA = {"relu": 1.7139588594436646, "gelu": 1.7015043497085571, "silu": 1.7881293296813965}


class ScaledStdConv2d(nn.Conv2d):
    """Conv2d whose weight is standardised per output channel in forward, then scaled by gain * gamma / sqrt(fan_in).

    `std_mode="batch_norm"` standardises with `F.batch_norm` over (1, out, fan_in), as timm does;
    `"mean_var"` with `Tensor.mean` and `Tensor.var` over fan-in, `"var_mean"` with one `torch.var_mean`
    (timm's earlier formulations). All three give the same weight.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int | None = None,
        groups: int = 1,
        bias: bool = True,
        gamma: float = 1.0,
        eps: float = 1e-6,
        gain_init: float = 1.0,
        std_mode: str = "batch_norm",
    ) -> None:
        if padding is None:
            padding = ((stride - 1) + (kernel_size - 1)) // 2
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, groups=groups, bias=bias)
        self.gain = nn.Parameter(torch.full((self.out_channels, 1, 1, 1), gain_init))
        self.scale = gamma * self.weight[0].numel() ** -0.5  # gamma * 1 / sqrt(fan-in)
        self.eps = eps
        if std_mode not in ("batch_norm", "mean_var", "var_mean"):
            raise ValueError(f"std_mode must be batch_norm, mean_var or var_mean, got {std_mode!r}")
        self.std_mode = std_mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.std_mode == "batch_norm":
            weight = F.batch_norm(
                self.weight.reshape(1, self.out_channels, -1),
                None,
                None,
                weight=(self.gain * self.scale).view(-1),
                training=True,
                momentum=0.0,
                eps=self.eps,
            ).reshape_as(self.weight)
        else:
            if self.std_mode == "mean_var":
                mean = self.weight.mean(dim=[1, 2, 3], keepdim=True)
                var = self.weight.var(dim=[1, 2, 3], keepdim=True, unbiased=False)
            else:
                var, mean = torch.var_mean(self.weight, dim=[1, 2, 3], keepdim=True, unbiased=False)
            weight = (self.weight - mean) * torch.rsqrt(var + self.eps) * (self.gain * self.scale)
        return F.conv2d(x, weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


class GammaAct(nn.Module):
    """act(x) * gamma, the multiply in place as timm does."""

    def __init__(self, act_type: str = "gelu", inplace: bool = False) -> None:
        super().__init__()
        self.act_fn = {"relu": F.relu, "gelu": F.gelu, "silu": F.silu}[act_type]
        self.gamma = _NONLIN_GAMMA[act_type]
        self.inplace = inplace

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.act_fn is F.gelu:
            return self.act_fn(x).mul_(self.gamma)
        return self.act_fn(x, inplace=self.inplace).mul_(self.gamma)


class SEModule(nn.Module):
    def __init__(self, channels: int, rd_ratio: float = 0.5) -> None:
        super().__init__()
        rd_channels = max(8, int(channels * rd_ratio))
        self.fc1 = nn.Conv2d(channels, rd_channels, kernel_size=1, bias=True)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(rd_channels, channels, kernel_size=1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_se = x.mean((2, 3), keepdim=True)
        x_se = self.fc2(self.act(self.fc1(x_se)))
        return x * x_se.sigmoid()


class DownsampleAvg(nn.Module):
    """AvgPool (stride) then a 1x1 ScaledStdConv: the projection shortcut."""

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1) -> None:
        super().__init__()
        if stride > 1:
            self.pool = nn.AvgPool2d(2, stride, ceil_mode=True, count_include_pad=False)
        else:
            self.pool = nn.Identity()
        self.conv = ScaledStdConv2d(in_chs, out_chs, 1, stride=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.pool(x))


class NormFreeBlock(nn.Module):
    """Pre-activation bottleneck: act(x) * beta -> 1x1 -> 3x3 grouped -> 3x3 grouped -> 1x1 -> SE * 2 -> * skipinit * alpha + shortcut."""

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        stride: int = 1,
        alpha: float = 0.2,
        beta: float = 1.0,
        bottle_ratio: float = 0.5,
        group_size: int = 8,
        attn_gain: float = 2.0,
        skipinit_init: float = 0.0,
        act_type: str = "gelu",
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        mid_chs = int(out_chs * bottle_ratio)
        groups = mid_chs // group_size
        self.alpha = alpha
        self.beta = beta
        self.attn_gain = attn_gain

        if in_chs != out_chs or stride != 1:
            self.downsample = DownsampleAvg(in_chs, out_chs, stride)
        else:
            self.downsample = None

        self.act1 = GammaAct(act_type)
        self.conv1 = ScaledStdConv2d(in_chs, mid_chs, 1)
        self.act2 = GammaAct(act_type, inplace=True)
        self.conv2 = ScaledStdConv2d(mid_chs, mid_chs, 3, stride=stride, groups=groups)
        self.act2b = GammaAct(act_type, inplace=True)
        self.conv2b = ScaledStdConv2d(mid_chs, mid_chs, 3, stride=1, groups=groups)
        self.act3 = GammaAct(act_type)
        self.conv3 = ScaledStdConv2d(mid_chs, out_chs, 1, gain_init=1.0)
        self.attn_last = SEModule(out_chs)
        self.drop_path = DropPath(drop_path_rate) if drop_path_rate > 0 else nn.Identity()
        self.skipinit_gain = nn.Parameter(torch.tensor(skipinit_init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(x) * self.beta

        # shortcut branch
        shortcut = x
        if self.downsample is not None:
            shortcut = self.downsample(out)

        # residual branch
        out = self.conv1(out)
        out = self.conv2(self.act2(out))
        out = self.conv2b(self.act2b(out))
        out = self.conv3(self.act3(out))
        out = self.attn_gain * self.attn_last(out)
        out = self.drop_path(out)
        out.mul_(self.skipinit_gain)
        out = out * self.alpha + shortcut
        return out


class NormFreeNet(nn.Module):
    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 1000,
        depths: Sequence[int] = (1, 2, 6, 3),
        channels: Sequence[int] = (256, 512, 1536, 1536),
        stem_chs: int = 128,
        group_size: int = 128,
        bottle_ratio: float = 0.5,
        alpha: float = 0.2,
        feat_mult: float = 2.0,
        act_type: str = "gelu",
        skipinit_init: float = 0.0,
        drop_path_rate: float = 0.0,
        stem_std_mode: str = "mean_var",
    ) -> None:
        super().__init__()
        # Deep "quad" stem: 3x3 s2, 3x3, 3x3, 3x3 s2; the first conv standardises with mean/var.
        self.stem = nn.Sequential(
            ScaledStdConv2d(in_chans, stem_chs // 8, 3, stride=2, std_mode=stem_std_mode),
            GammaAct(act_type, inplace=True),
            ScaledStdConv2d(stem_chs // 8, stem_chs // 4, 3, stride=1),
            GammaAct(act_type, inplace=True),
            ScaledStdConv2d(stem_chs // 4, stem_chs // 2, 3, stride=1),
            GammaAct(act_type, inplace=True),
            ScaledStdConv2d(stem_chs // 2, stem_chs, 3, stride=2),
        )
        dpr = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").split(list(depths))
        prev_chs = stem_chs
        stages = []
        for stage_idx, (depth, out_chs) in enumerate(zip(depths, channels)):
            stride = 1 if stage_idx == 0 else 2
            blocks = []
            expected_var = 1.0
            for block_idx in range(depth):
                blocks.append(
                    NormFreeBlock(
                        prev_chs, out_chs, stride=stride if block_idx == 0 else 1, alpha=alpha,
                        beta=1.0 / expected_var**0.5, bottle_ratio=bottle_ratio, group_size=group_size,
                        skipinit_init=skipinit_init, act_type=act_type,
                        drop_path_rate=float(dpr[stage_idx][block_idx]),
                    )
                )
                if block_idx == 0:
                    expected_var = 1.0  # the projection shortcut resets the variance
                expected_var += alpha**2
                prev_chs = out_chs
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.num_features = int(prev_chs * feat_mult)
        self.final_conv = ScaledStdConv2d(prev_chs, self.num_features, 1)
        self.final_act = GammaAct(act_type, inplace=True)
        self.head = nn.Linear(self.num_features, num_classes)
        nn.init.normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)
        for m in self.modules():
            if isinstance(m, ScaledStdConv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="linear")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.stages(x)
        x = self.final_act(self.final_conv(x))
        x = x.mean((2, 3))
        return self.head(x)


def _with_trained_gains(model: NormFreeNet) -> NormFreeNet:
    """Give the conv gains and skipinit gains values like trained ones (fresh ones are 1 and 0).

    NFNets have no norm layers for the zoo's `make_trained_looking` to randomise, and a zero
    skipinit gain would switch every residual branch off.
    """
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, ScaledStdConv2d):
                m.gain.uniform_(0.5, 1.5)
                if m.bias is not None:
                    m.bias.normal_(0.0, 0.1)
            elif isinstance(m, NormFreeBlock):
                m.skipinit_gain.uniform_(0.5, 1.5)
    return model


@register(
    "nfnet",
    family="cnn",
    description=(
        "NFNet-F0: normalizer-free ResNet, weight-standardised ScaledStdConv2d (F.batch_norm / mean+var on "
        "the weight), gamma-scaled GELU, alpha/beta skip gains, grouped 3x3, SE (tiny: chs 16-64, 32x32)."
    ),
    sizes={
        "tiny": size(
            ImageInputs(32, 32),
            depths=(1, 1),
            channels=(32, 64),
            stem_chs=16,
            group_size=8,
            num_classes=10,
        ),
        "base": size(ImageInputs(192, 192)),
    },
)
def nfnet(**kwargs) -> NormFreeNet:
    return _with_trained_gains(NormFreeNet(**kwargs))
