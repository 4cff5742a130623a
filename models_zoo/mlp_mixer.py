"""MLP-Mixer and gMLP (timm style): all-MLP vision models that mix along the token axis.

MLP-Mixer: each block runs a token-mixing MLP on the transposed (B, C, N)
tokens (Linear layers over the token axis) and a channel MLP on (B, N, C).
gMLP: each block runs a gated MLP whose spatial gating unit splits the
hidden channels in two (`chunk`), normalises one half, mixes it over the
token axis with a Linear on the transposed half, and multiplies the halves.
"""

from __future__ import annotations

import torch
from torch import nn

from ._layers import DropPath
from ._registry import ImageInputs, register, size


class PatchEmbed(nn.Module):
    def __init__(self, img_size: int, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.num_patches = (img_size // patch_size) ** 2
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # NCHW -> NLC


class Mlp(nn.Module):
    def __init__(self, in_features: int, hidden_features: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden_features, in_features)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop1(self.act(self.fc1(x)))
        return self.drop2(self.fc2(x))


class MixerBlock(nn.Module):
    """Token mixing over the transposed token axis, then channel mixing; both residual."""

    def __init__(
        self, dim: int, seq_len: int, mlp_ratio: tuple[float, float] = (0.5, 4.0), drop_path: float = 0.0
    ) -> None:
        super().__init__()
        tokens_dim, channels_dim = (int(r * dim) for r in mlp_ratio)
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp_tokens = Mlp(seq_len, tokens_dim)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp_channels = Mlp(dim, channels_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.mlp_tokens(self.norm1(x).transpose(1, 2)).transpose(1, 2))
        x = x + self.drop_path(self.mlp_channels(self.norm2(x)))
        return x


class SpatialGatingUnit(nn.Module):
    """u * proj_tokens(norm(v)) for the two halves u, v of the hidden channels."""

    def __init__(self, dim: int, seq_len: int) -> None:
        super().__init__()
        gate_dim = dim // 2
        self.norm = nn.LayerNorm(gate_dim, eps=1e-6)
        self.proj = nn.Linear(seq_len, seq_len)

    def init_weights(self) -> None:
        # gMLP starts the gate near identity (weights ~0, bias 1); ours are the size of trained ones.
        nn.init.normal_(self.proj.weight, std=0.02)
        nn.init.ones_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u, v = x.chunk(2, dim=-1)
        v = self.norm(v)
        v = self.proj(v.transpose(-1, -2))
        return u * v.transpose(-1, -2)


class GatedMlp(nn.Module):
    def __init__(self, in_features: int, hidden_features: int, seq_len: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.gate = SpatialGatingUnit(hidden_features, seq_len)
        self.fc2 = nn.Linear(hidden_features // 2, in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fc1(x)
        x = self.act(x)
        x = self.gate(x)
        x = self.fc2(x)
        return x


class SpatialGatingBlock(nn.Module):
    def __init__(self, dim: int, seq_len: int, mlp_ratio: float = 6.0, drop_path: float = 0.0) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.mlp_channels = GatedMlp(dim, int(dim * mlp_ratio), seq_len)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop_path(self.mlp_channels(self.norm(x)))


class MlpMixer(nn.Module):
    """Patch embedding, a stack of Mixer (or gMLP) blocks, LayerNorm, mean over tokens, linear head."""

    def __init__(
        self,
        num_classes: int = 1000,
        img_size: int = 224,
        in_chans: int = 3,
        patch_size: int = 16,
        num_blocks: int = 8,
        embed_dim: int = 512,
        mlp_ratio: float | tuple[float, float] = (0.5, 4.0),
        block: str = "mixer",
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self.stem = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        seq_len = self.stem.num_patches
        dpr = torch.linspace(0, drop_path_rate, num_blocks, device="cpu").tolist()
        if block == "mixer":
            blocks = [MixerBlock(embed_dim, seq_len, mlp_ratio, drop_path=p) for p in dpr]  # type: ignore[arg-type]
        elif block == "gmlp":
            blocks = [SpatialGatingBlock(embed_dim, seq_len, mlp_ratio, drop_path=p) for p in dpr]  # type: ignore[arg-type]
        else:
            raise ValueError(f"block must be 'mixer' or 'gmlp', got {block!r}")
        self.blocks = nn.Sequential(*blocks)
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head = nn.Linear(embed_dim, num_classes)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.normal_(m.bias, std=1e-6)
        elif hasattr(m, "init_weights"):
            m.init_weights()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.blocks(x)
        return self.norm(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_features(x)
        x = x.mean(dim=1)
        return self.head(x)


@register(
    "mlp_mixer",
    family="transformer",
    description=(
        "MLP-Mixer-B/16: token-mixing MLP over the transposed token axis, channel MLP "
        "(tiny: dim 32, 2 blocks, 32x32/4)."
    ),
    sizes={
        "tiny": size(ImageInputs(32, 32), img_size=32, patch_size=4, num_blocks=2, embed_dim=32, num_classes=10),
        "base": size(ImageInputs(224, 224), num_blocks=12, embed_dim=768),
    },
)
def mlp_mixer(**kwargs) -> MlpMixer:
    return MlpMixer(block="mixer", **kwargs)


@register(
    "gmlp",
    family="transformer",
    description=(
        "gMLP-S/16: gated MLP whose spatial gating unit splits the channels, normalises one half and mixes "
        "it over the token axis (tiny: dim 32, 2 blocks, 32x32/4)."
    ),
    sizes={
        "tiny": size(
            ImageInputs(32, 32), img_size=32, patch_size=4, num_blocks=2, embed_dim=32, mlp_ratio=6.0, num_classes=10
        ),
        "base": size(ImageInputs(224, 224), num_blocks=30, embed_dim=256, mlp_ratio=6.0),
    },
)
def gmlp(**kwargs) -> MlpMixer:
    return MlpMixer(block="gmlp", **kwargs)
