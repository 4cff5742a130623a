"""ATen ops real model code uses trace, run on torch and ONNX Runtime as eager does, and keep channels sound.

The ops: gather, scatter, bitwise ops on masks, stack, roll, binary min/max, tensor clamp bounds, addcmul,
meshgrid, vector norms, amax over several axes, advanced indexing, sign/floor/ceil, .... Tiny transformers models
that use them (BERT, DeBERTa-v2, Mistral, BLOOM, T5, ConvNeXt-V2, Swin) round-trip.

Each op case is a small module written the way model code writes it; the check is numeric (the traced graph
on torch and on ONNX Runtime, at the example batch and another one) plus which canonical ops it became, so a
case cannot pass by being skipped or by tracing something else.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import pytest
import torch
from torch import nn

import graphopt
from graphopt.analysis import channel_groups, mask_channels, remove_channels
from graphopt.backends.torch import to_module
from graphopt.errors import GraphoptError

gonnx = pytest.importorskip("graphopt.backends.onnx")
pytest.importorskip("onnxruntime")


class Fn(nn.Module):
    """A module computing `fn(*inputs)` with optional weights, so a case reads like the model line it copies."""

    def __init__(self, fn: Callable[..., Any], **weights: torch.Tensor) -> None:
        super().__init__()
        self.fn = fn
        for name, value in weights.items():
            self.register_buffer(name, value)

    def forward(self, x, y=None):  # named inputs: torch.export keeps the batch of each dynamic
        return self.fn(self, x) if y is None else self.fn(self, x, y)


class StridedWrite(nn.Module):
    def forward(self, x):
        y = x.clone()
        y[..., ::2] = x[..., 1::2] * 2
        y[:, 1:4:2] = -x[:, :2]
        y[..., 7::2] = x[..., 7::2] * 3  # an empty range (qwen3.5's rotary recomposition writes such)
        return y


@dataclass
class OpCase:
    id: str
    module: nn.Module
    inputs: tuple
    expect: set[str]  # canonical ops the trace must contain
    other_batch: int | None = 3
    dynamic: Any = "batch"


torch.manual_seed(0)
X = torch.randn(2, 4, 6)
MASK_A, MASK_B = torch.rand(2, 4, 6) > 0.5, torch.rand(2, 4, 6) > 0.5

OP_CASES = [
    # BERT-family embeddings: the token-type-id buffer gathered at the position ids
    OpCase("gather-token-type-buffer",
           Fn(lambda m, ids: ids + torch.gather(m.buf.expand(ids.shape[0], -1), 1, m.pos.expand(ids.shape[0], -1)),
              buf=torch.arange(10).reshape(1, 10) % 3, pos=torch.tensor([[3, 1, 4, 1, 5]])),
           (torch.randint(0, 9, (2, 5)),), {"gather"}),
    OpCase("gather-along-channels", Fn(lambda m, x, i: torch.gather(x, 2, i)), (X, torch.randint(0, 6, (2, 4, 3))),
           {"gather"}),
    # the causal/sliding-window mask functions of Mistral, Gemma, OPT, BLOOM
    OpCase("mask-and", Fn(lambda m, a, b: a & b), (MASK_A, MASK_B), {"logical_and"}),
    OpCase("mask-or", Fn(lambda m, a, b: a | b), (MASK_A, MASK_B), {"logical_or"}),
    OpCase("mask-xor", Fn(lambda m, a, b: a ^ b), (MASK_A, MASK_B), {"logical_xor"}),
    OpCase("mask-bitwise", Fn(lambda m, a, b: torch.bitwise_xor(torch.bitwise_or(a, ~b), torch.bitwise_and(a, b))),
           (MASK_A, MASK_B), {"logical_xor", "logical_or", "logical_and", "logical_not"}),
    OpCase("sliding-window-mask",
           Fn(lambda m, x: x.masked_fill(~((m.q[:, None] >= m.k[None, :]) & (m.q[:, None] - m.k[None, :] < 3)), -1e4),
              q=torch.arange(6), k=torch.arange(6)),
           (torch.randn(2, 6, 6),), {"logical_and", "where"}),
    OpCase("stack", Fn(lambda m, x: torch.stack([x, x * 2, x.relu()], dim=-2)), (X,), {"concat", "reshape"}),
    OpCase("stack-first", Fn(lambda m, x: torch.stack([x, -x]).sum(0)), (X,), {"concat"}),
    # shifted windows (Swin): roll over the spatial axes and back
    OpCase("roll", Fn(lambda m, x: torch.roll(x, shifts=(-1, 2), dims=(1, 2))), (X,), {"slice", "concat"}),
    OpCase("roll-flat", Fn(lambda m, x: torch.roll(x, 5)), (X,), {"slice", "concat"}, dynamic=None,
           other_batch=None),
    # T5 / MPNet relative position buckets
    OpCase("min-max-other", Fn(lambda m, x: torch.min(x, torch.full_like(x, 0.3)) + torch.max(x, -x)), (X,),
           {"minimum", "maximum"}),
    OpCase("clamp-tensor-bounds", Fn(lambda m, x: torch.clamp(x, min=m.lo, max=m.hi) + torch.clamp_min(x, m.lo),
                                     lo=torch.full((6,), -0.5), hi=torch.linspace(0, 1, 6)), (X,),
           {"maximum", "minimum"}),
    OpCase("addcmul", Fn(lambda m, x: torch.addcmul(m.b, x, m.s, value=0.5) + torch.addcdiv(x, x, m.s + 2),
                         b=torch.randn(6), s=torch.randn(6)), (X,), {"mul", "add", "div"}),
    # relative position tables (Swin, BEiT)
    OpCase("meshgrid", Fn(lambda m, x: x + torch.stack(torch.meshgrid(torch.arange(4), torch.arange(6), indexing="ij"))
                          .sum(0).float()), (X,), {"expand"}),
    OpCase("meshgrid-xy", Fn(lambda m, x: x + torch.meshgrid(m.a, m.b, indexing="xy")[0],
                             a=torch.randn(6), b=torch.randn(4)), (X,), {"expand"}),
    # ConvNeXt-V2 GRN, cosine attention
    OpCase("vector-norm-grn",
           Fn(lambda m, x: x / (torch.linalg.vector_norm(x, ord=2, dim=(1, 2), keepdim=True) + 1e-6)),
           (X,), {"sqrt", "sum"}),
    OpCase("vector-norm-orders", Fn(lambda m, x: torch.linalg.vector_norm(x, 1, dim=-1)
                                    + torch.linalg.vector_norm(x, float("inf"), dim=1).sum(-1, keepdim=True)
                                    + torch.linalg.vector_norm(x, 3, dim=-1) + torch.linalg.vector_norm(x, 0, dim=-1)),
           (X,), {"amax", "pow", "abs", "ne"}),
    OpCase("cosine-normalize", Fn(lambda m, x: nn.functional.normalize(x, dim=-1) @ nn.functional.normalize(x, dim=-1)
                                  .transpose(-1, -2)), (X,), {"sqrt", "matmul"}),
    # one converter returned the wrong shape for these
    OpCase("amax-amin-several-axes", Fn(lambda m, x: torch.amax(x, dim=(1, 2)) + torch.amin(x, dim=(0, 2), keepdim=True)
                                        .sum()), (X,), {"amax", "amin"}),
    # DeBERTa's log-bucketed relative positions
    OpCase("sign-floor-ceil", Fn(lambda m, x: torch.sign(x) * torch.ceil(torch.abs(x * 3)) + torch.floor(x * 2)
                                 + torch.sign(m.pos - 3) * torch.ceil(m.pos), pos=torch.arange(6)),
           (X,), {"sign", "ceil", "floor"}),
    # activations and helpers of recent decoders (relu², xIELU, sliding-window softcapping, hash embeddings)
    OpCase("square-expm1-log1p", Fn(lambda m, x: torch.square(x) + torch.expm1(x * 1e-3) + torch.log1p(x.abs())),
           (X,), {"mul", "expm1", "log1p"}),
    OpCase("log-sigmoid", Fn(lambda m, x: nn.functional.logsigmoid(x * 30)), (X,), {"softplus"}),
    OpCase("logsumexp", Fn(lambda m, x: torch.logsumexp(x, dim=-1) + torch.logsumexp(x.masked_fill(x > 0, -torch.inf),
                                                                                     dim=(1, 2), keepdim=True).sum()),
           (X,), {"amax", "exp", "log"}),
    # glm5-style sparse-attention indexers clean a softmax over fully masked rows with nan_to_num
    OpCase("nan-to-num", Fn(lambda m, x: torch.nan_to_num(torch.softmax(x.masked_fill(x > 0.5, -torch.inf), -1))
                            + torch.nan_to_num(torch.log(x), nan=-1.0, posinf=9.0, neginf=-9.0)
                            + torch.nan_to_num(x / (x - x)).clamp(-1, 1)), (X,), {"where", "ne", "eq"}),
    # the rest of Core ATen's elementwise math (hyperbolic, log bases, trunc, fmod, isnan/isinf)
    OpCase("hyperbolic-log-bases", Fn(lambda m, x: torch.tan(x * 0.5) + torch.sinh(x) + torch.cosh(x * 0.3)
                                      + torch.asinh(x) + torch.acosh(x.abs() + 1.5) + torch.atanh(x.clamp(-0.9, 0.9))
                                      + torch.log2(x.abs() + 0.1) + torch.log10(x.abs() + 0.1)),
           (X,), {"tan", "sinh", "cosh", "asinh", "acosh", "atanh", "log2", "log10"}),
    OpCase("trunc-fmod-isnan", Fn(lambda m, x: torch.trunc(x * 3) + torch.fmod(x * 5, 1.5) + torch.fmod(-m.ids, 4)
                                  + torch.isnan(torch.log(x)).float() + torch.isinf(1 / (x - x)).float()
                                  + torch.isinf(m.ids).float(), ids=torch.arange(6) - 2),
           (X,), {"trunc", "div", "ne", "eq"}),
    OpCase("atan2", Fn(lambda m, x: torch.atan2(x, x.flip(-1)) + torch.atan2(x, m.axis) + torch.atan2(m.axis, x),
                       axis=torch.tensor([0.0, 1.0, -1.0, 0.0, 2.0, -3.0])), (X,), {"atan", "where"}),
    OpCase("alias-spellings", Fn(lambda m, x: torch.multiply(x, 2).divide(3).subtract(x).true_divide(2)
                                 * torch.greater(x, 0) * torch.less_equal(x, 0.5) * torch.not_equal(x, 0.1)), (X,),
           {"mul", "div", "sub", "gt", "le", "ne"}),
    OpCase("remainder", Fn(lambda m, x: (m.ids * 7 + 1) % 5 + torch.remainder(x * 4, -1.5)
                           + torch.remainder(-m.ids, 4), ids=torch.arange(6) - 2), (X,), {"div", "sub"}),
    OpCase("tile", Fn(lambda m, x: torch.tile(x, (1, 3)).sum(-1, keepdim=True) + torch.tile(x, (1, 2, 1))[:, :4]),
           (X,), {"expand"}),
    OpCase("unary-on-integers", Fn(lambda m, x: torch.reciprocal(m.n + 1) * x + torch.logical_not(m.n - 2) * x,
                                   n=torch.arange(6)), (X,), {"reciprocal", "logical_not"}),
    OpCase("eye", Fn(lambda m, x: x @ (torch.eye(6) * 2) + torch.eye(4, 6, dtype=torch.bool)), (X,), {"eq"}),
    # interleaved rotary halves written back in place (x[..., ::2] = a)
    OpCase("strided-slice-assignment", StridedWrite(), (X,), {"index_select", "where"}),
    # DeepSeek-style group routing marks the top-k groups with scatter_; scatter_add accumulates
    OpCase("scatter-group-mask", Fn(lambda m, x: x * torch.zeros_like(x).scatter_(2, x.topk(2, dim=-1)[1], 1)),
           (X,), {"scatter", "topk"}),
    OpCase("scatter-src-add", Fn(lambda m, x: torch.scatter(x, 1, m.i, x * 2) + x.scatter_add(1, m.i[:, :2], x),
                                 i=torch.argsort(torch.rand(1, 4, 6), 1)[:, :3].expand(2, 3, 6)),
           (X,), {"scatter"}, dynamic=None, other_batch=None),
    # idefics3's patch position buckets
    OpCase("bucketize", Fn(lambda m, x: torch.bucketize(x, m.b) + torch.bucketize(x.round(), m.b, right=True,
                                                                                  out_int32=True),
                           b=torch.tensor([-1.0, 0.0, 0.5, 2.0])), (X,), {"gt", "ge", "sum"}),
    # yoso's angle of hashed vectors; xlstm's var(x, -1, unbiased, keepdim) with every argument positional
    OpCase("inverse-trig", Fn(lambda m, x: torch.acos(torch.tanh(x)) + torch.asin(torch.tanh(x)) + torch.atan(x)),
           (X,), {"acos", "asin", "atan"}),
    OpCase("var-positional", Fn(lambda m, x: torch.ops.aten.var.dim(x, [-1], False, True) + x.var(1, keepdim=True)),
           (X,), {"var"}),
    # transformers' mask indexing
    OpCase("advanced-index", Fn(lambda m, x: x[m.b[:, None, None], m.q[None, :, None]].sum((-1, -2))
                                + x[:, m.q[:, None], m.r].sum(-1), b=torch.tensor([1, 0]), q=torch.tensor([3, 0, 1]),
                                r=torch.tensor([5, 2])), (X,), {"index_select"}, dynamic=None, other_batch=None),
    OpCase("advanced-index-negative", Fn(lambda m, x, i: x[i, i - 2] + x[:, m.r[None, :], i[:, None]].sum(),
                                         r=torch.tensor([-1, 2])), (X, torch.tensor([-1, 1, 0])),
           {"index_select", "where"}, dynamic=None, other_batch=None),
    OpCase("advanced-index-dynamic-batch", Fn(lambda m, x: x[m.b[:, None], m.q[None, :]], b=torch.tensor([-1, 0]),
                                              q=torch.tensor([-1, 2, 0])), (X,), {"index_select", "full"}),
]


def _batched(inputs: tuple, n: int) -> tuple:
    return tuple(t[torch.arange(n) % t.shape[0]] for t in inputs)


def _trace(module: nn.Module, inputs: tuple, dynamic: Any = "batch"):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return graphopt.trace(module, inputs, dynamic=dynamic)


@pytest.mark.parametrize("case", OP_CASES, ids=[c.id for c in OP_CASES])
def test_op_traces_and_runs_on_torch_and_onnxruntime(case: OpCase):
    graph = _trace(case.module, case.inputs, case.dynamic)
    graph.verify()
    ops = {n.op for n in graph.nodes}
    assert case.expect <= ops, f"expected {case.expect} in {sorted(ops)}"
    module, run = to_module(graph), gonnx.compile(graph, threads=1)
    batches = [case.inputs] + ([_batched(case.inputs, case.other_batch)] if case.other_batch else [])
    for inputs in batches:
        with torch.no_grad():
            want = case.module(*inputs)
            got_torch, got_ort = module(*inputs), run(*inputs)
        for got in (got_torch, got_ort):
            assert got.shape == want.shape and got.dtype == want.dtype
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_bitwise_ops_on_integers_stay_bitwise():
    """cpmant ORs an int32 context with a bool mask: bits, not truth values (opset 18 has the ONNX ops)."""
    ints, mask = torch.randint(-9, 9, (2, 3), dtype=torch.int32), torch.rand(2, 3) > 0.5
    module = Fn(lambda m, a, b: (a | b) + (a & 6) + (a ^ ~a) * (~b).int())
    graph = _trace(module, (ints, mask))
    assert {"bitwise_or", "bitwise_and", "bitwise_xor", "bitwise_not", "logical_not"} <= {n.op for n in graph.nodes}
    with torch.no_grad():
        want = module(ints, mask)
        # no opset asked for: the export takes 18, the first with BitwiseOr/And/Xor/Not
        for got in (to_module(graph)(ints, mask), gonnx.compile(graph, threads=1)(ints, mask)):
            assert got.dtype == want.dtype
            torch.testing.assert_close(got, want)
    with pytest.raises(GraphoptError, match="opset 18"):
        gonnx.compile(graph, opset=17)


def test_roll_along_a_dynamic_axis_says_so():
    with pytest.raises(GraphoptError, match="roll along axis 0 of dynamic size"):
        _trace(Fn(lambda m, x: torch.roll(x, 1, 0)), (X,))


# ------------------------------------------------------------------ channels
class ChannelNet(nn.Module):
    """conv -> relu -> `mix` -> conv: the group of the first conv's channels meets the op under test."""

    def __init__(self, mix: Callable[..., torch.Tensor], **buffers: torch.Tensor) -> None:
        super().__init__()
        self.mix = mix
        self.a, self.c, self.b = nn.Conv1d(3, 8, 1), nn.Conv1d(3, 8, 1), nn.Conv1d(8, 4, 1)
        for name, value in buffers.items():
            self.register_buffer(name, value)

    def forward(self, x):
        return self.b(self.mix(self, self.a(x).relu(), self.c(x)))


SOUND = {  # the op keeps the channels prunable, and removal equals masking
    "gather-positions": ChannelNet(lambda m, y, z: torch.gather(y, 2, m.index.expand(y.shape[0], -1, -1)),
                                   index=torch.randint(0, 5, (1, 8, 5))),
    "roll-channels": ChannelNet(lambda m, y, z: torch.roll(y, 3, 1)),  # slices + concat: the pieces move together
    "stack": ChannelNet(lambda m, y, z: torch.stack([y, z], 0).sum(0)),
}
BARRIER = {  # the op picks channels by value: not prunable, and the report names it
    "gather-channels": (ChannelNet(lambda m, y, z: torch.gather(y, 1, m.index.expand(y.shape[0], -1, -1)),
                                   index=torch.randint(0, 8, (1, 8, 5))), "gather %gather picks channels by position"),
    "scatter": (ChannelNet(lambda m, y, z: y.scatter(1, m.index.expand(y.shape[0], -1, -1), z),
                           index=torch.argsort(torch.rand(1, 8, 5), 1)), "op 'scatter' (node %scatter"),
}


def _first_conv_group(graph):
    name = next(n for n in graph.nodes if n.op == "conv").inputs[1].name
    return next(g for g in channel_groups(graph) if any(name in m for m in g.members()))


@pytest.mark.parametrize("name", sorted(SOUND))
def test_channels_through_the_op_are_prunable_and_removal_equals_masking(name):
    graph = _trace(SOUND[name], (torch.randn(2, 3, 5),))
    group = _first_conv_group(graph)
    assert group.prunable and group.exact, group.summary()
    channels = np.concatenate(group.units[:3])
    removed = remove_channels(graph.clone(), group, channels)
    assert removed.num_params() < graph.num_params()
    x = torch.randn(3, 3, 5)
    with torch.no_grad():
        got = to_module(removed)(x)
        want = to_module(mask_channels(graph.clone(), group, channels))(x)
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("name", sorted(BARRIER))
def test_channels_picked_by_value_are_a_barrier_with_a_reason(name):
    model, reason = BARRIER[name]
    group = _first_conv_group(_trace(model, (torch.randn(2, 3, 5),)))
    assert not group.prunable and reason in "; ".join(group.reasons), group.summary()


# ------------------------------------------------------------ real model code
def _tiny(name: str):
    """A transformers model from a tiny random config (never a download) and its example input."""
    transformers = pytest.importorskip("transformers")
    tokens = (torch.randint(2, 50, (2, 7)),)
    text = dict(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    configs = {
        "bert": (transformers.BertConfig, dict(text, max_position_embeddings=32), transformers.BertModel, tokens),
        "mistral": (transformers.MistralConfig, dict(text, num_key_value_heads=1, sliding_window=4, use_cache=False),
                    transformers.MistralModel, tokens),
        "t5": (transformers.T5Config, dict(vocab_size=50, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2,
                                           relative_attention_num_buckets=8, relative_attention_max_distance=16),
               transformers.T5EncoderModel, tokens),
        "convnextv2": (transformers.ConvNextV2Config, dict(hidden_sizes=[8, 16], depths=[1, 1], num_stages=2),
                       transformers.ConvNextV2Model, (torch.randn(2, 3, 32, 32),)),
        "deberta-v2": (transformers.DebertaV2Config, dict(text, relative_attention=True, pos_att_type=["p2c", "c2p"],
                                                          max_relative_positions=16, position_buckets=8),
                       transformers.DebertaV2Model, tokens),
        "bloom": (transformers.BloomConfig, dict(vocab_size=50, hidden_size=16, n_layer=1, n_head=2, use_cache=False),
                  transformers.BloomModel, tokens),
        "swin": (transformers.SwinConfig, dict(image_size=32, patch_size=4, embed_dim=8, depths=[2], num_heads=[2],
                                               window_size=2), transformers.SwinModel, (torch.randn(2, 3, 32, 32),)),
    }
    config_cls, kwargs, model_cls, inputs = configs[name]
    torch.manual_seed(0)
    return LastHiddenState(model_cls(config_cls(**kwargs))).eval(), inputs


class LastHiddenState(nn.Module):
    """A transformers model returning only its last hidden state (a tensor, not a ModelOutput)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x).last_hidden_state


# model -> (canonical op, the model's source code that stopped its trace before and now becomes that op)
# (torch.min in T5's bucket helper and torch.roll in Swin's cyclic_shift show their caller's line)
REAL = {
    "bert": ("gather", "torch.gather"),
    "bloom": ("matmul", "baddbmm("),
    "convnextv2": ("sqrt", "vector_norm"),
    "deberta-v2": ("gather", "disentangled_attention_bias("),  # and sign/ceil in its log-bucketed positions
    "mistral": ("logical_and", "mask_function("),
    "swin": ("concat", "cyclic_shift("),
    "t5": ("minimum", "compute_bias("),
}


@pytest.mark.parametrize("name", sorted(REAL))
def test_tiny_transformers_model_round_trips_on_torch_and_onnxruntime(name):
    model, inputs = _tiny(name)
    graph = _trace(model, inputs)
    op, code = REAL[name]
    assert any(n.op == op and code in n.source.code for n in graph.nodes if n.source), (op, code)
    assert set(graph.symbols()) == {"batch"}
    run = gonnx.compile(graph, threads=1)
    for batch in (inputs, _batched(inputs, 3)):
        with torch.no_grad():
            want = model(*batch)
            torch.testing.assert_close(to_module(graph)(*batch), want)
            torch.testing.assert_close(run(*batch), want, atol=1e-4, rtol=1e-4)
