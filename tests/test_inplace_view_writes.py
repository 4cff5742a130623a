"""Writes into slices of a fresh tensor (Kimi-Linear's chunked delta rule) are rewritten without re-tracing.

`attn[..., i, :i] = row + ...` and `out[:, :, i] = ...` in a Python loop are `copy_` into slices
and selects: before, any such write made `trace` functionalise the whole program
(`run_decompositions`, 20 of Kimi-Linear's 26 s trace, four traces per sweep row), and the
sweep's prune-within-heads stage ran out of its 600 s. Now they become slice_scatter /
select_scatter in the fx graph, slices read across a write are taken again from the new
version, and only writes that other views (transpose, view, ...) would see, or that reach an
input, are left to functionalisation.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import graphopt
from graphopt.backends.torch import to_module
from graphopt.frontends import torch as torch_frontend
from graphopt.frontends.torch_inplace import rewrite_local_inplace


class ChunkedDeltaRule(nn.Module):
    """The chunked linear-attention loops of Kimi-Linear / Gated DeltaNet, small."""

    def __init__(self, dim: int = 16, heads: int = 2, chunk: int = 4) -> None:
        super().__init__()
        self.heads, self.chunk = heads, chunk
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x):
        b, n, dim = x.shape
        h, c = self.heads, self.chunk
        q, k, v = (f(x).view(b, n, h, -1).transpose(1, 2).reshape(b, h, n // c, c, dim // h)
                   for f in (self.q, self.k, self.v))
        mask = torch.triu(torch.ones(c, c, dtype=torch.bool), diagonal=0)
        attn = -(k @ k.transpose(-1, -2)).masked_fill(mask, 0)
        for i in range(1, c):  # reads of the old rows, then a write into row i
            row = attn[..., i, :i].clone()
            sub = attn[..., :i, :i].clone()
            attn[..., i, :i] = row + (row.unsqueeze(-1) * sub).sum(-2)
        attn = attn + torch.eye(c)
        value = attn @ v
        out = torch.zeros_like(value)
        state = torch.zeros(b, h, dim // h, dim // h)
        for i in range(n // c):  # a write into chunk i through a select
            out[:, :, i] = q[:, :, i] @ state + value[:, :, i]
            state = state + k[:, :, i].transpose(-1, -2) @ value[:, :, i]
        return self.o(out.reshape(b, h, n, dim // h).transpose(1, 2).reshape(b, n, dim))


class ViewReadAfterWrite(nn.Module):
    """`first` is a slice taken before the write and read after it: it must see the write."""

    def forward(self, x):
        a = x * 2
        first = a[:, 0]
        a[:, 0] = 5.0
        return first + a.sum(1)


class WriteThroughOldView(nn.Module):
    """The view written through was taken before another write to the same tensor (and is read after)."""

    def forward(self, x):
        a = x * 2
        row = a[:, 0]
        a.add_(1)
        row[:, :2] = 0.0
        return a + row.unsqueeze(1)


class NamedViewWrites(nn.Module):
    """Qwen3.5's rotary recomposition: writes through a named view, which is read after them."""

    def forward(self, x):
        freq = x * 3
        thw = freq[0]
        for dim, offset in ((1, 1), (2, 2)):
            thw[..., offset::3] = freq[dim, ..., offset::3]
        return torch.cat((thw, freq.sum(0)), dim=-1)


class TransposeReadAfterWrite(nn.Module):
    """A transpose (not a slice/select, so not replayed) of the tensor, read after the write."""

    def forward(self, x):
        a = x * 2
        t = a.transpose(1, 2)
        a[:, 0] = 5.0
        return t + 1


def _mutates(program) -> bool:
    return any(getattr(n.target, "_schema", None) is not None and n.target._schema.is_mutable
               for n in program.graph.nodes)


def test_chunked_writes_are_rewritten_without_functionalising(monkeypatch):
    torch.manual_seed(0)
    model = ChunkedDeltaRule().eval()
    x = torch.randn(2, 8, 16)
    program = torch.export.export(model, (x,), strict=False)
    assert _mutates(program)
    assert rewrite_local_inplace(program.graph)
    assert not _mutates(program)

    def no_retrace(*_, **__):
        raise AssertionError("trace functionalised the program (re-traced it) instead of rewriting the writes")

    with monkeypatch.context() as patch:
        patch.setattr(torch.export.ExportedProgram, "run_decompositions", no_retrace)
        fast = graphopt.trace(model, (x,))
    monkeypatch.setattr(torch_frontend, "rewrite_local_inplace", lambda graph: False)  # the functionalised path
    slow = graphopt.trace(model, (x,))
    assert fast.symbols() == slow.symbols() == {"batch": (0, 0)}
    with torch.no_grad():
        for batch in (x, torch.randn(1, 8, 16), torch.randn(3, 8, 16)):
            want = model(batch)
            torch.testing.assert_close(to_module(fast)(batch), want, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(to_module(fast)(batch), to_module(slow)(batch), rtol=1e-6, atol=1e-6)


def test_chunked_writes_prune_within_heads():
    torch.manual_seed(0)
    model = ChunkedDeltaRule().eval()
    x = torch.randn(2, 8, 16)
    pruned = graphopt.optimize(model, x, prune={"ratio": 0.5, "heads": False})
    with torch.no_grad():
        for batch in (x, x[:1]):
            assert pruned(batch).shape == model(batch).shape


@pytest.mark.parametrize("model", [ViewReadAfterWrite(), WriteThroughOldView(), NamedViewWrites()],
                         ids=lambda m: type(m).__name__)
def test_slices_read_across_writes_are_taken_again(model):
    x = torch.randn(3, 4, 6)
    program = torch.export.export(model, (x,), strict=False)
    assert rewrite_local_inplace(program.graph)
    assert not _mutates(program)
    graph = graphopt.trace(model, (x,), dynamic=None)
    with torch.no_grad():
        torch.testing.assert_close(to_module(graph)(x), model(x), rtol=0, atol=0)


def test_views_that_are_not_slices_are_left_to_functionalisation():
    model, x = TransposeReadAfterWrite(), torch.randn(2, 4, 3)
    program = torch.export.export(model, (x,), strict=False)
    text = str(program.graph)
    assert not rewrite_local_inplace(program.graph)
    assert str(program.graph) == text  # all or nothing: nothing was rewritten
    graph = graphopt.trace(model, (x,))
    with torch.no_grad():
        torch.testing.assert_close(to_module(graph)(x), model(x))
        other = torch.randn(3, 4, 3)
        torch.testing.assert_close(to_module(graph)(other), model(other))
