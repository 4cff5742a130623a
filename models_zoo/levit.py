"""LeViT (timm style): conv stem with hardswish, attention with learned per-head attention biases.

Linear layers are followed by BatchNorm1d over the flattened (B*N, C) tokens
(`LinearNorm`); attention splits one projection into q/k/v of different widths
per head (`view(B, N, heads, -1).split([kd, kd, vd], dim=3)`), adds an
attention bias gathered from a (heads, H*W) table by an index buffer of
|dy| * W + |dx| offsets, and a hardswish before the output projection.
Stages are joined by attention that subsamples the queries (stride 2).
"""

from __future__ import annotations

import itertools
from typing import Sequence

import torch
from torch import nn

from ._layers import DropPath
from ._registry import ImageInputs, register, size


class ConvNorm(nn.Sequential):
    def __init__(self, in_chs: int, out_chs: int, kernel_size: int = 1, stride: int = 1, padding: int = 0) -> None:
        super().__init__()
        self.add_module("linear", nn.Conv2d(in_chs, out_chs, kernel_size, stride, padding, bias=False))
        self.add_module("bn", nn.BatchNorm2d(out_chs))


class LinearNorm(nn.Module):
    """Linear without bias, then BatchNorm1d over every token of the batch."""

    def __init__(self, in_features: int, out_features: int, bn_weight_init: float = 1.0) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, out_features, bias=False)
        self.bn = nn.BatchNorm1d(out_features)
        nn.init.constant_(self.bn.weight, bn_weight_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.linear(x)
        return self.bn(x.flatten(0, 1)).reshape_as(x)


class NormLinear(nn.Module):
    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(in_features)
        self.linear = nn.Linear(in_features, out_features)
        nn.init.trunc_normal_(self.linear.weight, std=0.02)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.bn(x))


class Stem16(nn.Module):
    """Four stride-2 3x3 ConvNorms with hardswish between them: 16x downsampling."""

    def __init__(self, in_chs: int, out_chs: int) -> None:
        super().__init__()
        self.conv1 = ConvNorm(in_chs, out_chs // 8, 3, stride=2, padding=1)
        self.act1 = nn.Hardswish()
        self.conv2 = ConvNorm(out_chs // 8, out_chs // 4, 3, stride=2, padding=1)
        self.act2 = nn.Hardswish()
        self.conv3 = ConvNorm(out_chs // 4, out_chs // 2, 3, stride=2, padding=1)
        self.act3 = nn.Hardswish()
        self.conv4 = ConvNorm(out_chs // 2, out_chs, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.conv1(x))
        x = self.act2(self.conv2(x))
        x = self.act3(self.conv3(x))
        return self.conv4(x)


def _attention_bias_idxs(resolution: int, stride: int = 1) -> torch.Tensor:
    """(queries, keys) index into a (heads, resolution**2) table: |dy| * resolution + |dx|."""
    k_pos = torch.stack(torch.meshgrid(torch.arange(resolution), torch.arange(resolution), indexing="ij")).flatten(1)
    q_pos = torch.stack(
        torch.meshgrid(torch.arange(0, resolution, step=stride), torch.arange(0, resolution, step=stride), indexing="ij")
    ).flatten(1)
    rel_pos = (q_pos[..., :, None] - k_pos[..., None, :]).abs()
    return (rel_pos[0] * resolution) + rel_pos[1]


class Attention(nn.Module):
    def __init__(self, dim: int, key_dim: int, num_heads: int = 8, attn_ratio: float = 4.0, resolution: int = 14) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = key_dim**-0.5
        self.key_dim = key_dim
        self.key_attn_dim = key_dim * num_heads
        self.val_dim = int(attn_ratio * key_dim)
        self.val_attn_dim = self.val_dim * num_heads

        self.qkv = LinearNorm(dim, self.val_attn_dim + self.key_attn_dim * 2)
        self.proj = nn.Sequential(nn.Hardswish(), LinearNorm(self.val_attn_dim, dim, bn_weight_init=0.0))

        self.attention_biases = nn.Parameter(torch.zeros(num_heads, resolution * resolution))
        self.register_buffer("attention_bias_idxs", _attention_bias_idxs(resolution), persistent=False)
        nn.init.trunc_normal_(self.attention_biases, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        q, k, v = self.qkv(x).view(B, N, self.num_heads, -1).split([self.key_dim, self.key_dim, self.val_dim], dim=3)
        q = q.permute(0, 2, 1, 3)
        k = k.permute(0, 2, 3, 1)
        v = v.permute(0, 2, 1, 3)

        attn = q @ k * self.scale + self.attention_biases[:, self.attention_bias_idxs]
        attn = attn.softmax(dim=-1)

        x = (attn @ v).transpose(1, 2).reshape(B, N, self.val_attn_dim)
        x = self.proj(x)
        return x


class Subsample(nn.Module):
    def __init__(self, stride: int, resolution: int) -> None:
        super().__init__()
        self.stride = stride
        self.resolution = resolution

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        x = x.view(B, self.resolution, self.resolution, C)[:, :: self.stride, :: self.stride]
        return x.reshape(B, -1, C)


class AttentionDownsample(nn.Module):
    """Attention whose queries come from a stride-2 subsample of the tokens: halves the resolution."""

    def __init__(
        self, in_dim: int, out_dim: int, key_dim: int, num_heads: int = 8, attn_ratio: float = 2.0,
        stride: int = 2, resolution: int = 14,
    ) -> None:
        super().__init__()
        self.stride = stride
        self.resolution = resolution
        self.num_heads = num_heads
        self.key_dim = key_dim
        self.key_attn_dim = key_dim * num_heads
        self.val_dim = int(attn_ratio * key_dim)
        self.val_attn_dim = self.val_dim * num_heads
        self.scale = key_dim**-0.5
        self.resolution_out = (resolution - 1) // stride + 1

        self.kv = LinearNorm(in_dim, self.val_attn_dim + self.key_attn_dim)
        self.q = nn.Sequential(Subsample(stride, resolution), LinearNorm(in_dim, self.key_attn_dim))
        self.proj = nn.Sequential(nn.Hardswish(), LinearNorm(self.val_attn_dim, out_dim))

        self.attention_biases = nn.Parameter(torch.zeros(num_heads, resolution * resolution))
        self.register_buffer("attention_bias_idxs", _attention_bias_idxs(resolution, stride), persistent=False)
        nn.init.trunc_normal_(self.attention_biases, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        k, v = self.kv(x).view(B, N, self.num_heads, -1).split([self.key_dim, self.val_dim], dim=3)
        k = k.permute(0, 2, 3, 1)  # B, H, C, N
        v = v.permute(0, 2, 1, 3)  # B, H, N, C
        q = self.q(x).view(B, -1, self.num_heads, self.key_dim).permute(0, 2, 1, 3)

        attn = q @ k * self.scale + self.attention_biases[:, self.attention_bias_idxs]
        attn = attn.softmax(dim=-1)

        x = (attn @ v).transpose(1, 2).reshape(B, -1, self.val_attn_dim)
        x = self.proj(x)
        return x


class LevitMlp(nn.Module):
    def __init__(self, in_features: int, hidden_features: int) -> None:
        super().__init__()
        self.ln1 = LinearNorm(in_features, hidden_features)
        self.act = nn.Hardswish()
        self.ln2 = LinearNorm(hidden_features, in_features, bn_weight_init=0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ln2(self.act(self.ln1(x)))


class LevitBlock(nn.Module):
    def __init__(
        self, dim: int, key_dim: int, num_heads: int, attn_ratio: float, mlp_ratio: float, resolution: int,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.attn = Attention(dim, key_dim, num_heads, attn_ratio, resolution)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.mlp = LevitMlp(dim, int(dim * mlp_ratio))
        self.drop_path2 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path1(self.attn(x))
        x = x + self.drop_path2(self.mlp(x))
        return x


class LevitDownsample(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, key_dim: int, resolution: int, mlp_ratio: float = 2.0) -> None:
        super().__init__()
        self.attn_downsample = AttentionDownsample(
            in_dim, out_dim, key_dim, num_heads=in_dim // key_dim, attn_ratio=4.0, resolution=resolution
        )
        self.mlp = LevitMlp(out_dim, int(out_dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.attn_downsample(x)
        x = x + self.mlp(x)
        return x


class Levit(nn.Module):
    def __init__(
        self,
        img_size: int = 224,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dim: Sequence[int] = (128, 256, 384),
        key_dim: int = 16,
        num_heads: Sequence[int] = (4, 6, 8),
        depth: Sequence[int] = (2, 3, 4),
        attn_ratio: float = 2.0,
        mlp_ratio: float = 2.0,
    ) -> None:
        super().__init__()
        self.stem = Stem16(in_chans, embed_dim[0])
        resolution = img_size // 16
        stages: list[nn.Module] = []
        for i, (dim, heads, blocks) in enumerate(zip(embed_dim, num_heads, depth)):
            layers: list[nn.Module] = []
            if i > 0:
                layers.append(LevitDownsample(embed_dim[i - 1], dim, key_dim, resolution, mlp_ratio))
                resolution = (resolution - 1) // 2 + 1
            layers += [LevitBlock(dim, key_dim, heads, attn_ratio, mlp_ratio, resolution) for _ in range(blocks)]
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.head = NormLinear(embed_dim[-1], num_classes)
        for m in self.modules():
            if isinstance(m, LinearNorm):
                nn.init.trunc_normal_(m.linear.weight, std=m.linear.in_features**-0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = x.flatten(2).transpose(1, 2)  # B, C, H, W -> B, N, C
        x = self.stages(x)
        x = x.mean(1)
        return self.head(x)


@register(
    "levit",
    family="transformer",
    description=(
        "LeViT-128S: conv stem with hardswish, Linear+BatchNorm1d, attention with q/k/v split per head and "
        "attention-bias tables, attention downsampling (tiny: dims 32-48, 64x64)."
    ),
    sizes={
        "tiny": size(
            ImageInputs(64, 64),
            img_size=64,
            embed_dim=(32, 48),
            key_dim=8,
            num_heads=(2, 3),
            depth=(1, 1),
            num_classes=10,
        ),
        "base": size(ImageInputs(224, 224)),
    },
)
def levit(**kwargs) -> Levit:
    return Levit(**kwargs)
