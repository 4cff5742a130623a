"""Ops batch 3 on model code: mixture-of-experts token counts and grouped experts, Fourier transforms, x[idx] = v.

- `histc` and `grouped_mm`: transformers' default ("grouped_mm") experts sort the token-expert pairs by
  expert, count them per expert with `torch.histc`, run each expert on its rows with a grouped matmul
  (`torch.ops.transformers.grouped_mm_fallback` on CPU) and undo the sort with `inv[perm] = arange(S)`
  (`index_put`). Both ops are channel barriers: which rows meet which expert depends on the data.
- FFT: the IR has no complex dtype; `.real` / `.imag` / `view_as_real` of a DFT of a real (or DFT'd)
  input become matmuls with constant cos/sin matrices (FNet's `fftn(x, dim=(1, 2)).real`); complex
  rotary embeddings (`polar`, `view_as_complex`, complex `mul`, layout ops) work on the two parts.
- Negative constant indices (Falcon's `fused_qkv[..., [-2], :]`) and `x[mask] = v`.

Every model is traced, run back on torch from the graph and on ONNX Runtime, on the example and on
another batch size, against the eager model.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import graphopt
from graphopt.errors import GraphoptError
from graphopt.ir import Graph

pytest.importorskip("onnxruntime")
from graphopt.backends import onnx as gonnx  # noqa: E402
from roundtrip import check_round_trip  # noqa: E402


def _ops(graph: Graph) -> set[str]:
    return {node.op for node in graph.nodes}


# ------------------------------------------------------------------ histc
class Histogram(nn.Module):
    def __init__(self, bins: int, low: float, high: float) -> None:
        super().__init__()
        self.bins, self.low, self.high = bins, low, high

    def forward(self, x):
        return torch.histc(x, bins=self.bins, min=self.low, max=self.high) + x.sum() * 0


def test_histc_counts_like_torch_with_edges_and_outliers():
    # values on every bin edge, at max (counted in the last bin), below min and above max (not counted)
    x = torch.tensor([[-1.0, 0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.0, 7.0]])
    other = torch.randn(3, 10) * 2 + 1
    graph = check_round_trip(Histogram(6, 0.0, 3.0), (x,), (other,), atol=0)
    assert "histc" in _ops(graph)


def test_histc_counts_expert_ids():
    # what transformers' experts count: integer expert ids as floats, bins = experts, [0, experts - 1]
    ids = torch.randint(0, 4, (2, 16, 2)).float()
    check_round_trip(Histogram(4, 0, 3), (ids,), (torch.randint(0, 4, (5, 16, 2)).float(),), atol=0)


def test_histc_with_range_from_the_data_is_refused():
    with pytest.raises(GraphoptError, match="histc needs bins, min and max"):
        graphopt.trace(Histogram(4, 0, 0), (torch.randn(2, 8),))


# ------------------------------------------------------------------ grouped experts
class GroupedExperts(nn.Module):
    """transformers' grouped_mm_experts_forward, written out: route, sort, count, grouped matmuls, unsort."""

    def __init__(self, dim: int = 8, hidden: int = 12, experts: int = 4, k: int = 2) -> None:
        super().__init__()
        import transformers.integrations.moe  # noqa: F401 - registers torch.ops.transformers.grouped_mm_fallback

        self.k, self.experts = k, experts
        self.gate = nn.Linear(dim, experts, bias=False)
        self.up = nn.Parameter(torch.randn(experts, dim, hidden) * 0.3)
        self.down = nn.Parameter(torch.randn(experts, hidden, dim) * 0.3)

    def forward(self, x):
        tokens = x.reshape(-1, x.shape[-1])
        weights, chosen = torch.topk(torch.softmax(self.gate(tokens), -1), self.k, dim=-1)
        ids, perm = torch.sort(chosen.reshape(-1))
        rows = tokens[perm // self.k]
        counts = torch.histc(ids.float(), bins=self.experts, min=0, max=self.experts - 1)
        offsets = torch.cumsum(counts, dim=0, dtype=torch.int32)
        hidden = torch.relu(torch.ops.transformers.grouped_mm_fallback(rows, self.up, offsets))
        out = torch.ops.transformers.grouped_mm_fallback(hidden, self.down, offsets)
        out = out * weights.reshape(-1)[perm].unsqueeze(-1)
        inverse = torch.empty_like(perm)
        inverse[perm] = torch.arange(perm.shape[0])
        return out[inverse].view(*x.shape[:-1], self.k, -1).sum(-2)


def test_grouped_experts_trace_and_run_on_onnx_runtime():
    pytest.importorskip("transformers")
    torch.manual_seed(0)
    graph = check_round_trip(GroupedExperts(), (torch.randn(2, 6, 8),), (torch.randn(3, 6, 8),))
    assert {"histc", "grouped_mm", "scatter"} <= _ops(graph)
    assert set(graph.symbols()) == {"batch"}


def test_grouped_mm_rows_past_the_last_offset_are_zero():
    from graphopt.ir.ops.nn import grouped_mm

    x, w = torch.randn(5, 3), torch.randn(2, 3, 4)
    out = grouped_mm(x, w, torch.tensor([1, 3], dtype=torch.int32))
    torch.testing.assert_close(out[:1], x[:1] @ w[0])
    torch.testing.assert_close(out[1:3], x[1:3] @ w[1])
    assert out[3:].abs().max() == 0


def test_grouped_experts_prune_soundly():
    """The experts are a barrier: pruning keeps the model runnable with its output shape."""
    pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 8), GroupedExperts()).eval()
    x = torch.randn(2, 6, 8)
    optimized = graphopt.optimize(model, (x,), prune={"ratio": 0.5})
    assert optimized.report.params_after < optimized.report.params_before  # the Linear pair is pruned
    with torch.no_grad():
        assert optimized(torch.randn(3, 6, 8)).shape == (3, 6, 8)


# ------------------------------------------------------------------ Fourier transforms
class Fourier(nn.Module):
    def __init__(self, fn) -> None:
        super().__init__()
        self.proj = nn.Linear(16, 16)
        self.fn = fn

    def forward(self, x):
        return self.fn(self.proj(x))


FOURIER = {
    "fnet_fftn_real": lambda x: torch.fft.fftn(x, dim=(1, 2)).real,
    "fft2_ortho_imag": lambda x: torch.fft.fft2(x, norm="ortho").imag,
    "fft_last_view_as_real": lambda x: torch.view_as_real(torch.fft.fft(x, dim=-1, norm="forward")),
    "fft_middle_axis_real": lambda x: torch.fft.fft(x, dim=1).real,
    # FNet's TPU path: one 1-D fft per axis, the second on a complex input
    "fft_of_fft_real": lambda x: torch.fft.fft(torch.fft.fft(x, dim=2), dim=1).real,
    "rfft_view_as_real": lambda x: torch.view_as_real(torch.fft.rfft(x, dim=-1)),
    "ifft_of_fft_real": lambda x: torch.fft.ifft(torch.fft.fft(x, dim=1), dim=1).real,
}


@pytest.mark.parametrize("name", sorted(FOURIER))
def test_fourier_transforms_match_torch_fft(name):
    torch.manual_seed(0)
    graph = check_round_trip(Fourier(FOURIER[name]), (torch.randn(2, 8, 16),), (torch.randn(3, 8, 16),),
                             atol=1e-4)
    assert "matmul" in _ops(graph)


def test_fft_over_a_dynamic_axis_names_the_op_and_line():
    model = Fourier(FOURIER["fnet_fftn_real"]).eval()
    with pytest.raises(GraphoptError, match=r"(?s)fft_fftn.*test_real_ops_3\.py:\d+.*run-time size"):
        graphopt.trace(model, (torch.randn(2, 8, 16),), dynamic={0: {0: "batch", 1: "seq"}})


def test_complex_tensor_read_by_another_op_is_refused_with_the_line():
    model = Fourier(lambda x: torch.fft.fft(x).abs()).eval()
    with pytest.raises(GraphoptError, match=r"(?s)complex tensor.*fft_fft.*test_real_ops_3\.py:\d+.*no complex"):
        graphopt.trace(model, (torch.randn(2, 8, 16),))


class ComplexRotary(nn.Module):
    """Llama 4's rotary embedding: polar(1, angles), view_as_complex(x pairs) * freqs, view_as_real."""

    def forward(self, x):  # [batch, seq, heads, dim]
        seq, dim = x.shape[1], x.shape[-1]
        inv = 1.0 / (10000 ** (torch.arange(0, dim, 2).float() / dim))
        angles = torch.outer(torch.arange(seq).float(), inv)
        freqs = torch.polar(torch.ones_like(angles), angles) * 1.0
        pairs = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
        return torch.view_as_real(pairs * freqs[None, :, None, :]).flatten(3)


class ComplexSum(nn.Module):
    def forward(self, x):
        z = torch.view_as_complex(x.reshape(*x.shape[:-1], -1, 2))
        w = torch.fft.fft(x, dim=-1)[..., : z.shape[-1]]
        return torch.view_as_real(z + w - 2 * z)


def test_complex_add_and_sub():
    check_round_trip(ComplexSum(), (torch.randn(2, 3, 8),), (torch.randn(3, 3, 8),), atol=1e-5)


def test_complex_rotary_embedding():
    graph = check_round_trip(ComplexRotary(), (torch.randn(2, 5, 3, 8),), (torch.randn(3, 5, 3, 8),), atol=1e-5)
    assert {"cos", "sin", "select"} <= _ops(graph)


# ------------------------------------------------------------------ indexing
class NegativeIndex(nn.Module):
    """Falcon's multi-query split: fused[..., :-2, :], fused[..., [-2], :], fused[..., [-1], :]."""

    def forward(self, x):
        fused = x.view(x.shape[0], x.shape[1], 6, 4)
        return torch.cat([fused[..., [-2], :], fused[..., [-1], :], fused[..., :-2, :]], dim=2).flatten(2)


def test_negative_constant_index_keeps_the_batch_axis():
    graph = check_round_trip(NegativeIndex(), (torch.randn(1, 5, 24),), (torch.randn(3, 5, 24),), atol=0)
    assert set(graph.symbols()) == {"batch"}


class MaskedWrite(nn.Module):
    def forward(self, x):
        y = x.clone()
        y[x > 0.5] = -1.0
        return y * 2


def test_boolean_mask_write():
    check_round_trip(MaskedWrite(), (torch.randn(2, 4, 8),), (torch.randn(3, 4, 8),), atol=0)


class Flip(nn.Module):
    def __init__(self, dims) -> None:
        super().__init__()
        self.dims = dims

    def forward(self, x):
        return torch.flip(x * 2, self.dims) + x


@pytest.mark.parametrize("dims", [(1,), (1, -1), (0, 2)], ids=["seq", "seq-and-last", "batch-and-2"])
def test_flip(dims):
    graph = check_round_trip(Flip(dims), (torch.randn(2, 5, 6),), (torch.randn(3, 5, 6),), atol=0)
    assert set(graph.symbols()) == {"batch"}


class ScatterReduce(nn.Module):
    """BLT's patch pooling (amax into zeros, include_self=False) and TAPAS's segment means, on a batch."""

    def __init__(self, how: str, include_self: bool) -> None:
        super().__init__()
        self.how, self.include_self = how, include_self

    def forward(self, x):  # x [batch, T, D]; segments [batch, T] in [0, 4): segment 4 is never reached
        segments = (x[..., 0].abs() * 2).long().clamp(max=3)
        index = segments.unsqueeze(-1).expand(-1, -1, x.shape[-1])
        out = torch.full((x.shape[0], 5, x.shape[-1]), 0.5)
        return out.scatter_reduce(1, index, x, reduce=self.how, include_self=self.include_self)


@pytest.mark.parametrize("how", ["sum", "prod", "mean", "amax", "amin"])
@pytest.mark.parametrize("include_self", [True, False], ids=["with-self", "without-self"])
def test_scatter_reduce(how, include_self):
    torch.manual_seed(0)
    x, other = torch.randn(2, 7, 3), torch.randn(3, 7, 3)
    graph = check_round_trip(ScatterReduce(how, include_self), (x,), (other,), atol=1e-5)
    if how in ("amax", "amin"):  # ScatterElements' own max/min from opset 18 (the default 17 spreads one-hot)
        with torch.no_grad():
            torch.testing.assert_close(gonnx.compile(graph, threads=1, opset=18)(other),
                                       ScatterReduce(how, include_self)(other))


class PaddingBranch(nn.Module):
    """FSMT's make_padding_mask: a Python branch on a tensor's values, which torch.export cannot trace."""

    def forward(self, ids):
        mask = ids.eq(1)
        if not mask.any():
            mask = None
        return ids * 2 if mask is None else ids.masked_fill(mask, 0)


def test_data_dependent_branch_names_the_line_and_torch_export():
    with pytest.raises(GraphoptError, match=r"(?s)^torch.export could not trace PaddingBranch: .*test_real_ops_3\.py:"
                                            r"\d+ in forward: `if not mask.any\(\):` branches on the values of a "
                                            r"tensor.*limit of torch.export, not of graphopt"):
        graphopt.trace(PaddingBranch(), (torch.randint(0, 5, (2, 6)),))


class RaggedExperts(nn.Module):
    """JetMoE's experts: rows sorted by expert, x.split(counts.tolist()), one linear per piece, cat, index_add."""

    def __init__(self, dim: int = 8, out: int = 6, experts: int = 3) -> None:
        super().__init__()
        self.experts = experts
        self.gate = nn.Linear(dim, experts)
        self.weight = nn.Parameter(torch.randn(experts, out, dim) * 0.3)

    def forward(self, x):
        tokens = x.reshape(-1, x.shape[-1])
        expert = self.gate(tokens).argmax(-1)
        counts = (expert.unsqueeze(-1) == torch.arange(self.experts)).long().sum(0)
        order = torch.sort(expert).indices
        pieces = tokens[order].split(counts.tolist(), dim=0)
        out = torch.cat([nn.functional.linear(p, self.weight[i]) for i, p in enumerate(pieces)], dim=0)
        combined = torch.zeros(tokens.shape[0], out.shape[-1]).index_add(0, order, out)
        return combined.view(*x.shape[:-1], -1)


def test_rows_split_by_counts_from_values_become_grouped_mm():
    torch.manual_seed(0)
    graph = check_round_trip(RaggedExperts(), (torch.randn(2, 5, 8),), (torch.randn(3, 5, 8),))
    assert "grouped_mm" in _ops(graph)


class RaggedRelu(RaggedExperts):
    def forward(self, x):
        tokens = x.reshape(-1, x.shape[-1])
        counts = (self.gate(tokens).argmax(-1).unsqueeze(-1) == torch.arange(self.experts)).long().sum(0)
        return torch.cat([torch.relu(p) for p in tokens.split(counts.tolist(), dim=0)], dim=0).sum(0)


def test_other_ops_on_ragged_pieces_are_refused_with_the_line():
    with pytest.raises(GraphoptError, match=r"(?s)rows split by sizes read from tensor values.*test_real_ops_3\.py:\d+"):
        graphopt.trace(RaggedRelu().eval(), (torch.randn(2, 5, 8),))


class Statistics(nn.Module):
    """torch.var_mean / std_mean (timm's older weight standardisation) and std, every spelling of the correction."""

    def forward(self, x):
        var, mean = torch.var_mean(x, dim=(1, 2), keepdim=True, unbiased=False)
        std, mean2 = torch.std_mean(x, dim=-1, correction=1)
        rows = (std + mean2 + x.std(-1)).unsqueeze(-1)  # (batch, 3, 1)
        return (x - mean) / (var + 1e-5).sqrt() + rows + torch.std(x, dim=0, correction=0)


def test_var_mean_std_mean_and_std():
    graph = check_round_trip(Statistics(), (torch.randn(2, 3, 4),), (torch.randn(5, 3, 4),))
    assert {"var", "mean", "sqrt"} <= _ops(graph)
