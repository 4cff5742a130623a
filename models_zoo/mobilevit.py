"""MobileViT (timm style): MobileNetV2 inverted residuals, then MobileViT blocks mixing convs and transformers.

A MobileViT block runs a local 3x3 conv and a 1x1 projection, *unfolds* the
map into patches with reshapes that fold batch, channels and patch rows
together ((B*C*nh, ph, nw, pw) -> (B*P, N, C)), runs pre-norm transformer
blocks over the patches of each pixel position, *folds* them back into a map,
projects and fuses with the block input by concatenation and a 3x3 conv.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ._layers import ConvNormActivation, DropPath
from ._registry import ImageInputs, register, size


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand, 3x3 depthwise, 1x1 project (SiLU, as MobileViT uses)."""

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1, expand_ratio: float = 4.0) -> None:
        super().__init__()
        mid_chs = int(in_chs * expand_ratio)
        self.has_skip = stride == 1 and in_chs == out_chs
        self.conv_pw = ConvNormActivation(in_chs, mid_chs, 1, activation_layer=nn.SiLU)
        self.conv_dw = ConvNormActivation(mid_chs, mid_chs, 3, stride, groups=mid_chs, activation_layer=nn.SiLU)
        self.conv_pwl = ConvNormActivation(mid_chs, out_chs, 1, activation_layer=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.conv_pw(x)
        x = self.conv_dw(x)
        x = self.conv_pwl(x)
        if self.has_skip:
            x = x + shortcut
        return x


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        x = F.scaled_dot_product_attention(q, k, v)
        x = x.transpose(1, 2).reshape(B, N, C)
        return self.proj(x)


class TransformerBlock(nn.Module):
    """Pre-norm ViT block with a SiLU MLP."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 2.0, drop_path: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.SiLU(), nn.Linear(hidden, dim))
        self.drop_path2 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path1(self.attn(self.norm1(x)))
        x = x + self.drop_path2(self.mlp(self.norm2(x)))
        return x


class MobileVitBlock(nn.Module):
    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        transformer_dim: int,
        transformer_depth: int = 2,
        num_heads: int = 4,
        patch_size: int = 2,
        mlp_ratio: float = 2.0,
    ) -> None:
        super().__init__()
        self.conv_kxk = ConvNormActivation(in_chs, in_chs, 3, activation_layer=nn.SiLU)
        self.conv_1x1 = nn.Conv2d(in_chs, transformer_dim, kernel_size=1, bias=False)
        self.transformer = nn.Sequential(
            *[TransformerBlock(transformer_dim, num_heads, mlp_ratio) for _ in range(transformer_depth)]
        )
        self.norm = nn.LayerNorm(transformer_dim)
        self.conv_proj = ConvNormActivation(transformer_dim, out_chs, 1, activation_layer=nn.SiLU)
        self.conv_fusion = ConvNormActivation(in_chs + out_chs, out_chs, 3, activation_layer=nn.SiLU)
        self.patch_size = (patch_size, patch_size)
        self.patch_area = patch_size * patch_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x

        # Local representation
        x = self.conv_kxk(x)
        x = self.conv_1x1(x)

        # Unfold (feature map -> patches)
        patch_h, patch_w = self.patch_size
        B, C, H, W = x.shape
        new_h, new_w = math.ceil(H / patch_h) * patch_h, math.ceil(W / patch_w) * patch_w
        num_patch_h, num_patch_w = new_h // patch_h, new_w // patch_w  # n_h, n_w
        num_patches = num_patch_h * num_patch_w  # N
        interpolate = False
        if new_h != H or new_w != W:
            # Resize the map so that it splits into whole patches.
            x = F.interpolate(x, size=(new_h, new_w), mode="bilinear", align_corners=False)
            interpolate = True

        # [B, C, H, W] --> [B * C * n_h, n_w, p_h, p_w]
        x = x.reshape(B * C * num_patch_h, patch_h, num_patch_w, patch_w).transpose(1, 2)
        # [B * C * n_h, n_w, p_h, p_w] --> [BP, N, C] where P = p_h * p_w and N = n_h * n_w
        x = x.reshape(B, C, num_patches, self.patch_area).transpose(1, 3).reshape(B * self.patch_area, num_patches, -1)

        # Global representations
        x = self.transformer(x)
        x = self.norm(x)

        # Fold (patches -> feature map)
        # [B*P, N, C] --> [B, P, N, C]
        x = x.contiguous().view(B, self.patch_area, num_patches, -1)
        x = x.transpose(1, 3).reshape(B * C * num_patch_h, num_patch_w, patch_h, patch_w)
        # [B * C * n_h, n_w, p_h, p_w] --> [B, C, H, W]
        x = x.transpose(1, 2).reshape(B, C, num_patch_h * patch_h, num_patch_w * patch_w)
        if interpolate:
            x = F.interpolate(x, size=(H, W), mode="bilinear", align_corners=False)

        x = self.conv_proj(x)
        x = self.conv_fusion(torch.cat((shortcut, x), dim=1))
        return x


class MobileViT(nn.Module):
    """Stem, MobileNetV2 stages, then (downsampling inverted residual + MobileViT block) stages."""

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 1000,
        stem_chs: int = 16,
        mv2_chs: Sequence[int] = (32, 64, 64),
        mv2_strides: Sequence[int] = (1, 2, 1),
        vit_chs: Sequence[int] = (96, 128, 160),
        transformer_dims: Sequence[int] = (144, 192, 240),
        transformer_depths: Sequence[int] = (2, 4, 3),
        num_heads: int = 4,
        expand_ratio: float = 4.0,
        feat_mult: int = 4,
    ) -> None:
        super().__init__()
        self.stem = ConvNormActivation(in_chans, stem_chs, 3, stride=2, activation_layer=nn.SiLU)
        blocks: list[nn.Module] = []
        chs = stem_chs
        for out_chs, stride in zip(mv2_chs, mv2_strides):
            blocks.append(InvertedResidual(chs, out_chs, stride, expand_ratio))
            chs = out_chs
        for out_chs, dim, depth in zip(vit_chs, transformer_dims, transformer_depths):
            blocks.append(
                nn.Sequential(
                    InvertedResidual(chs, out_chs, 2, expand_ratio),
                    MobileVitBlock(out_chs, out_chs, dim, depth, num_heads=num_heads),
                )
            )
            chs = out_chs
        self.stages = nn.Sequential(*blocks)
        self.num_features = chs * feat_mult
        self.final_conv = ConvNormActivation(chs, self.num_features, 1, activation_layer=nn.SiLU)
        self.head = nn.Linear(self.num_features, num_classes)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.stages(x)
        x = self.final_conv(x)
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.head(x)


@register(
    "mobilevit",
    family="transformer",
    description=(
        "MobileViT-S: MobileNetV2 blocks, then MobileViT blocks (conv, patch unfold reshapes, transformer, "
        "fold, concat fusion) (tiny: chs 16-48, transformer dim 32, 32x32)."
    ),
    sizes={
        "tiny": size(
            ImageInputs(32, 32),
            stem_chs=16,
            mv2_chs=(16, 24),
            mv2_strides=(1, 2),
            vit_chs=(32,),
            transformer_dims=(32,),
            transformer_depths=(1,),
            num_heads=2,
            expand_ratio=2.0,
            feat_mult=2,
            num_classes=10,
        ),
        "base": size(ImageInputs(256, 256)),
    },
)
def mobilevit(**kwargs) -> MobileViT:
    return MobileViT(**kwargs)
