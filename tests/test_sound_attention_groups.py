"""Attention patterns of real model code prune soundly: fused projections and per-head biases.

GPT-2's Conv1D flattens (batch, seq, heads, d) to (batch*seq, heads*d) before its matmul, and Phi-3
slices one qkv_proj output into q, k, v and runs a partial rotary embedding whose pass-through part is
empty. Both used to form groups the safety net had to leave unpruned (a reshape target that removal did
not rewrite, an empty slice whose heads no rule followed); the checks here are that the fused weight is
pruned and the net finds every group sound, i.e. removal equals masking on the example inputs.
Swin's and BEiT's relative position bias is a per-head additive mask of the attention: head h of the
bias goes with query head h, so removing a head slices the bias as well.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import graphopt
from graphopt.analysis.channels import analyse
from graphopt.passmanager import PassManager

TOLERANCE = 1e-4


def _prune(graph, inputs, heads: bool):
    pruned, runs = PassManager.parse(f"prune{{ratio=0.5,heads={str(heads).lower()}}}").run(graph, inputs)
    return pruned, runs.stats("prune")[-1]


def _group_of(graph, weight: str):
    (group,) = [g for g in analyse(graph, heads=True) if any(s.value.name == weight for s in g.spaces)
                and g.kind != "channels"] or [None]
    return group


class FlattenedProjection(nn.Module):
    """Heads merged with the batch and sequence before a plain matmul, as GPT-2's Conv1D does."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(16, 48)
        self.out = nn.Parameter(torch.randn(16, 16) / 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, _ = x.shape
        q, k, v = self.qkv(x).split(16, dim=-1)
        q, k, v = (t.view(b, s, 4, 4).transpose(1, 2) for t in (q, k, v))
        y = torch.nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2)
        return (y.reshape(b * s, 16) @ self.out).view(b, s, 16)


class ChannelsIntoBatch(nn.Module):
    """Channels folded into a dynamic axis: no rule can follow them, so the group must be a barrier."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(8, 8)
        self.b = nn.Linear(1, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x)
        return self.b(y.reshape(-1, 1)).reshape(x.shape[0], -1)


def test_a_flattening_reshape_keeps_the_heads_of_a_fused_projection():
    torch.manual_seed(0)
    x = torch.randn(2, 6, 16)
    graph = graphopt.trace(FlattenedProjection().eval(), (x,))
    group = _group_of(graph, "out")
    assert group is not None and group.prunable and group.num_channels == 4  # four heads, through the reshape
    pruned, report = _prune(graph, (x,), heads=True)
    assert not report.safety.excluded and pruned.weights["out"].shape == (8, 16)
    assert report.decisions and pruned.weights["qkv.weight"].shape == (24, 16)


def test_channels_merged_with_a_dynamic_axis_are_a_barrier_with_the_reason():
    x = torch.randn(2, 8)
    graph = graphopt.trace(ChannelsIntoBatch().eval(), (x,))
    (group,) = [g for g in analyse(graph) if any(s.value.name == "a.weight" and tuple(s.axes) == (0,)
                                                 for s in g.spaces)]  # a's output channels
    assert not group.prunable
    assert any("merges channel axes with a dynamic axis" in reason for reason in group.reasons), group.reasons


def test_an_empty_concat_operand_is_dropped_exactly():
    class PartialRotary(nn.Module):
        def forward(self, x):
            rot, rest = x[..., :8], x[..., 8:]  # rotary over the whole head: `rest` is empty
            return torch.cat((torch.cat((-rot[..., 4:], rot[..., :4]), dim=-1), rest), dim=-1)

    x = torch.randn(2, 3, 8)
    graph = graphopt.trace(PartialRotary().eval(), (x,))
    simplified, _ = PassManager.parse("remove-identity,eliminate-dead-code").run(graph, (x,))
    assert all(all(v.shape[n.attrs["axis"]] != 0 for v in n.inputs) for n in simplified.find_nodes("concat"))
    from graphopt.backends.torch import to_module

    torch.testing.assert_close(to_module(simplified)(x), PartialRotary()(x), rtol=0, atol=0)


transformers = pytest.importorskip("transformers")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import bench_sweep  # noqa: E402 - after the skip


@pytest.mark.parametrize("family, kind, weight", [
    ("gpt2", "text", "model.h.0.attn.c_attn.weight"),  # Conv1D: fused qkv behind a flattening reshape
    ("phi3", "text", "model.layers.0.self_attn.qkv_proj.weight"),  # fused qkv sliced, partial rotary
    ("swin", "vision", "model.encoder.layers.0.blocks.0.attention.q_proj.weight"),  # window bias + shift mask
])
@pytest.mark.parametrize("heads", [True, False], ids=["heads", "within_heads"])
def test_hugging_face_attention_prunes_soundly(family, kind, weight, heads):
    model, x1, x2 = bench_sweep.build(family, kind)
    graph = graphopt.trace(model, x2)
    simplified, _ = PassManager.parse("simplify").run(graph, x2)
    pruned, report = _prune(simplified, x2, heads)
    assert not report.safety.excluded, report.summary()
    assert pruned.weights[weight].data.numel() < simplified.weights[weight].data.numel()  # it is pruned
    with torch.no_grad():
        out = graphopt.backends.torch.to_module(pruned)(*x1)
    assert out.shape == model(*x1).shape  # and the pruned graph runs at batch 1 too


class BiasedWindowAttention(nn.Module):
    """Attention with a learned per-head bias added to the scores, as Swin's relative position bias is."""

    def __init__(self, heads: int = 4, dim: int = 16, tokens: int = 9) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.table = nn.Parameter(torch.randn((2 * 3 - 1) ** 2, heads))
        coords = torch.stack(torch.meshgrid(torch.arange(3), torch.arange(3), indexing="ij")).flatten(1)
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + 2
        self.register_buffer("index", rel[..., 0] * 5 + rel[..., 1], persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        bias = self.table[self.index.view(-1)].view(n, n, -1).permute(2, 0, 1).unsqueeze(0)
        y = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.proj(y.transpose(1, 2).reshape(b, n, c))


def test_a_per_head_attention_bias_is_pruned_with_its_heads():
    """Traced as written, the bias table (positions, heads) loses the heads; simplified, the folded bias does."""
    torch.manual_seed(0)
    x = torch.randn(2, 9, 16)
    graph = graphopt.trace(BiasedWindowAttention().eval(), (x,))
    pruned, report = _prune(graph, (x,), heads=True)
    assert not report.safety.excluded, report.summary()
    assert pruned.weights["table"].shape == (25, 2) and pruned.weights["qkv.weight"].shape == (24, 16)
    simplified, _ = PassManager.parse("simplify").run(graph, (x,))
    (folded,) = [name for name in simplified.weights if name.endswith("_folded")]
    assert simplified.weights[folded].shape == (1, 4, 9, 9)
    pruned, report = _prune(simplified, (x,), heads=True)
    assert not report.safety.excluded and pruned.weights[folded].shape == (1, 2, 9, 9)
