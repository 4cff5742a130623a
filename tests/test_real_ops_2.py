"""Ops batch 2 on model code: top-k routing, unfold/fold, batch norm without statistics, LSTM/GRU.

Each model is traced, run back on torch from the graph, and exported to ONNX
Runtime, on the example and on another batch size, against the eager model.
The real-model checks build tiny random transformers configs (never a
download): Mixtral's and Qwen2-MoE's top-k routers, BiT's weight-standardised
convs, MobileViT-v2's unfold/fold attention, PatchTST's and PatchTSMixer's
Tensor.unfold patching and EnCodec's LSTM block. The new ops are channel
barriers on purpose; pruning around them stays sound.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import graphopt
from graphopt.analysis import channel_groups
from graphopt.backends.torch import to_module
from graphopt.ir import Graph
from graphopt.ir import dims as D

pytest.importorskip("onnxruntime")
from graphopt.backends import onnx as gonnx  # noqa: E402
from roundtrip import check_round_trip  # noqa: E402


# ------------------------------------------------------------------ top-k
class MoERouter(nn.Module):
    """A mixture-of-experts layer written the dense way: softmax -> topk -> one_hot / gather / index."""

    def __init__(self, dim: int = 16, experts: int = 4, k: int = 2) -> None:
        super().__init__()
        self.k = k
        self.gate = nn.Linear(dim, experts, bias=False)
        self.experts = nn.Parameter(torch.randn(experts, dim, dim) * 0.2)
        self.bias = nn.Parameter(torch.randn(experts, dim))

    def forward(self, x):
        probs = torch.softmax(self.gate(x), dim=-1)
        weights, chosen = torch.topk(probs, self.k, dim=-1)  # [N, T, k]
        weights = weights / weights.sum(-1, keepdim=True)
        dispatch = F.one_hot(chosen, self.experts.shape[0]).to(x.dtype)  # [N, T, k, E]
        per_expert = torch.einsum("ntd,edf->ntef", x, self.experts)  # [N, T, E, D]
        picked = torch.einsum("ntke,ntef->ntkf", dispatch, per_expert)
        gate_of_first = torch.gather(probs, -1, chosen[..., :1])  # [N, T, 1]
        bias = self.bias[chosen[:, 0, 0]]  # first token's top expert per sample: [N, D]
        return (picked * weights[..., None]).sum(2) * gate_of_first + bias[:, None], chosen


def test_moe_router_traces_runs_and_exports():
    torch.manual_seed(0)
    graph = check_round_trip(MoERouter(), (torch.randn(2, 5, 16),), (torch.randn(3, 5, 16),))
    topk = graph.find_nodes("topk")
    assert len(topk) == 1 and [v.dtype for v in topk[0].outputs] == [torch.float32, torch.int64]
    assert graph.outputs[1].dtype == torch.int64  # the expert indices leave the graph as they are


def test_topk_is_a_channel_barrier_with_its_reason():
    torch.manual_seed(0)
    graph = graphopt.trace(MoERouter().eval(), (torch.randn(2, 5, 16),))
    expert_groups = [g for g in channel_groups(graph) if any("topk" in r for r in g.reasons)]
    assert expert_groups and all(not g.prunable for g in expert_groups)
    assert all("BARRIER" in r for g in expert_groups for r in g.reasons if "topk" in r)


class Sorting(nn.Module):
    def forward(self, x):
        values, order = torch.sort(x, dim=-1, descending=True)
        ranks = torch.argsort(x, dim=1)
        stable, _ = torch.sort((x > 0).to(x.dtype), dim=-1, stable=True)  # ties everywhere
        return values * 2, order, ranks, stable


def test_sort_and_argsort_trace_and_export():
    torch.manual_seed(0)
    graph = check_round_trip(Sorting(), (torch.randn(2, 4, 6),), (torch.randn(5, 4, 6),))
    assert len(graph.find_nodes("sort")) == 3


_MOE_CONFIGS = {
    "mixtral": ("MixtralConfig", "MixtralModel", {"num_local_experts": 4}),
    "qwen2_moe": ("Qwen2MoeConfig", "Qwen2MoeModel", {"num_experts": 4, "moe_intermediate_size": 24,
                                                       "shared_expert_intermediate_size": 40}),
}


@pytest.mark.parametrize("family", sorted(_MOE_CONFIGS))
def test_moe_decoders_route_with_topk(family):
    """Mixtral's and Qwen2-MoE's top-k routers with the batched experts (repeat_interleave, index, bmm)."""
    transformers = pytest.importorskip("transformers")
    config_name, model_name, experts = _MOE_CONFIGS[family]
    config = getattr(transformers, config_name)(
        vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2, num_experts_per_tok=2, max_position_embeddings=64, use_cache=False, **experts)
    config._experts_implementation = "batched_mm"  # the default grouped_mm calls a custom op with histc
    torch.manual_seed(0)
    graph = check_round_trip(getattr(transformers, model_name)(config), (torch.randint(0, 64, (2, 7)),),
                             (torch.randint(0, 64, (3, 7)),))
    assert graph.find_nodes("topk")


# ---------------------------------------------------------------- patches
class PatchMixer(nn.Module):
    """MobileViT-style: unfold into patches, mix them, fold back (overlapping windows add up)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.mix = nn.Linear(4 * 9, 4 * 9)

    def forward(self, x):
        y = self.conv(x)
        cols = F.unfold(y, 3, padding=1, stride=2)  # [N, 36, L]
        cols = self.mix(cols.transpose(1, 2)).transpose(1, 2)
        return F.fold(cols, y.shape[-2:], 3, padding=1, stride=2) + y, F.unfold(x[0], 2, stride=2)


def test_unfold_and_fold_trace_and_export():
    torch.manual_seed(0)
    graph = check_round_trip(PatchMixer(), (torch.randn(2, 3, 8, 8),), (torch.randn(4, 3, 8, 8),))
    assert len(graph.find_nodes("im2col")) == 2 and len(graph.find_nodes("col2im")) == 1


def test_mobilevitv2_unfold_fold_attention():
    transformers = pytest.importorskip("transformers")
    config = transformers.MobileViTV2Config(image_size=64, width_multiplier=0.25)
    torch.manual_seed(0)
    graph = check_round_trip(transformers.MobileViTV2Model(config), (torch.randn(2, 3, 64, 64),),
                             (torch.randn(3, 3, 64, 64),), atol=1e-4)
    assert graph.find_nodes("im2col") and graph.find_nodes("col2im")


class AxisWindows(nn.Module):
    """Tensor.unfold: overlapping windows, side-by-side windows (with and without a leftover)."""

    def forward(self, x):
        return x.unfold(-1, 4, 2), x.unfold(1, 3, 3), x.unfold(2, 3, 3) * 2, x.unfold(1, 2, 1)


def test_tensor_unfold_decomposes_exactly():
    torch.manual_seed(0)
    graph = check_round_trip(AxisWindows(), (torch.randn(2, 6, 10),), (torch.randn(3, 6, 10),), atol=0.0)
    assert len(graph.find_nodes("index_select")) == 2  # only the overlapping windows need a gather


@pytest.mark.parametrize("family", ["PatchTST", "PatchTSMixer"])
def test_time_series_patching_with_tensor_unfold(family):
    transformers = pytest.importorskip("transformers")
    sizes = {"PatchTST": {"num_hidden_layers": 1, "num_attention_heads": 2, "ffn_dim": 32},
             "PatchTSMixer": {"num_layers": 1}}[family]
    config = getattr(transformers, f"{family}Config")(context_length=32, patch_length=8, patch_stride=4,
                                                       num_input_channels=3, d_model=16, **sizes)
    torch.manual_seed(0)
    check_round_trip(getattr(transformers, f"{family}Model")(config), (torch.randn(2, 32, 3),),
                     (torch.randn(3, 32, 3),), atol=1e-5)


# --------------------------------------------- batch norm without statistics
class StdConv(nn.Module):
    """BiT/NFNet weight standardisation, a statistics-free BatchNorm, and an in-place ReLU (functionalised)."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(6, 3, 3, 3))
        self.norm = nn.BatchNorm2d(6, track_running_stats=False)
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        w = F.batch_norm(self.weight.reshape(1, 6, -1), None, None, training=True, momentum=0.0, eps=1e-6)
        y = F.relu(self.norm(F.conv2d(x, w.reshape_as(self.weight), padding=1)), inplace=True)
        return self.fc(y.mean((2, 3)))


def test_batch_norm_without_statistics_decomposes_exactly():
    torch.manual_seed(0)
    graph = check_round_trip(StdConv(), (torch.randn(2, 3, 8, 8),), (torch.randn(5, 3, 8, 8),))
    assert not graph.find_nodes("batch_norm") and len(graph.find_nodes("var")) == 2


class InstanceNorms(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.plain, self.affine = nn.InstanceNorm2d(3), nn.InstanceNorm2d(3, affine=True)
        self.tracked = nn.InstanceNorm2d(3, affine=True, track_running_stats=True)  # eval: running statistics
        self.seq = nn.InstanceNorm1d(3, eps=1e-3)
        for p in self.parameters():
            nn.init.normal_(p)
        self.tracked.running_mean.normal_()
        self.tracked.running_var.uniform_(0.5, 2.0)

    def forward(self, x):
        return self.plain(x) + self.affine(x) + self.tracked(x), self.seq(x.flatten(2))


def test_instance_norm_uses_per_sample_statistics():
    torch.manual_seed(0)
    graph = check_round_trip(InstanceNorms(), (torch.randn(2, 3, 5, 4),), (torch.randn(3, 3, 5, 4),))
    assert len(graph.find_nodes("batch_norm")) == 1 and len(graph.find_nodes("var")) == 3


def test_batch_norm_updating_running_statistics_is_refused():
    class Updates(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("mean", torch.zeros(3))
            self.register_buffer("var", torch.ones(3))

        def forward(self, x):
            return F.batch_norm(x, self.mean, self.var, training=True)

    with pytest.raises(graphopt.GraphoptError, match="running statistics"):
        graphopt.trace(Updates(), (torch.randn(2, 3, 4),))


def test_bit_weight_standardised_convs():
    transformers = pytest.importorskip("transformers")
    config = transformers.BitConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
                                    layer_type="preactivation", num_groups=4)
    torch.manual_seed(0)
    check_round_trip(transformers.BitModel(config), (torch.randn(2, 3, 32, 32),), (torch.randn(3, 3, 32, 32),),
                     atol=1e-4)


# ------------------------------------------------------------------ LSTM
class Tagger(nn.Module):
    def __init__(self, layers: int, bidirectional: bool, batch_first: bool, cell: type = nn.LSTM) -> None:
        super().__init__()
        self.embed = nn.Linear(5, 8)
        self.lstm = cell(8, 12, num_layers=layers, bidirectional=bidirectional, batch_first=batch_first)
        self.head = nn.Linear(12 * (2 if bidirectional else 1), 3)

    def forward(self, x):
        out, state = self.lstm(self.embed(x))
        return (self.head(out), *state) if isinstance(state, tuple) else (self.head(out), state)


@pytest.mark.parametrize("cell", [nn.LSTM, nn.GRU], ids=["lstm", "gru"])
@pytest.mark.parametrize("layers,bidirectional,batch_first", [(1, False, True), (2, True, True), (2, False, False)])
def test_recurrent_layers_trace_and_export_with_dynamic_batch(layers, bidirectional, batch_first, cell):
    # torch.export specialises the sequence length of nn.LSTM/nn.GRU (it warns), so only the batch stays dynamic
    torch.manual_seed(0)
    model = Tagger(layers, bidirectional, batch_first, cell)
    x, other = torch.randn(2, 6, 5), torch.randn(3, 6, 5)
    if not batch_first:
        x, other = x.transpose(0, 1).contiguous(), other.transpose(0, 1).contiguous()
    graph = check_round_trip(model, (x,), (other,), atol=1e-4, dynamic={0: {0 if batch_first else 1: "batch"}})
    (node,) = graph.find_nodes(cell.__name__.lower())
    assert node.attrs["num_layers"] == layers and node.attrs["bidirectional"] == bidirectional


def test_lstm_graph_runs_at_any_sequence_length():
    """The op and its ONNX lowering keep a symbolic length (torch.export fixes it when tracing nn.LSTM)."""
    torch.manual_seed(0)
    lstm = nn.LSTM(4, 6, num_layers=2, bidirectional=True, batch_first=True).eval()
    g = Graph("lstm")
    x = g.add_input("x", [D.symbol("batch"), D.symbol("seq"), 4], torch.float32)
    h0 = g.add_input("h0", [4, D.symbol("batch"), 6], torch.float32)
    weights = [g.add_weight(name, p.detach()) for name, p in lstm.named_parameters()]
    node = g.create_node("lstm", [x, h0, h0, *weights], {"hidden_size": 6, "num_layers": 2, "bidirectional": True,
                                                          "batch_first": True, "has_biases": True})
    g.outputs = list(node.outputs)
    module, run = to_module(g), gonnx.compile(g, threads=1)
    for batch, length in ((2, 5), (3, 9), (1, 1)):
        inputs = (torch.randn(batch, length, 4), torch.randn(4, batch, 6))
        with torch.no_grad():
            want = lstm(inputs[0], (inputs[1], inputs[1]))
            back = module(*inputs)
        for got in (back, run(*inputs)):
            for g_, w_ in zip(got, [want[0], *want[1]]):
                torch.testing.assert_close(g_, w_, atol=1e-5, rtol=1e-4)


def test_lstm_is_a_barrier_and_pruning_around_it_stays_sound():
    torch.manual_seed(0)
    model = Tagger(1, True, True).eval()
    x = torch.randn(2, 6, 5)
    graph = graphopt.trace(model, (x,))
    groups = channel_groups(graph)
    embed = [g for g in groups if any(s.value.name == "embed.weight" for s, _ in g.producers())]
    assert embed and not embed[0].prunable and "BARRIER" in " ".join(embed[0].reasons)
    result = graphopt.optimize(model, (x,), prune=0.5)  # nothing crosses the LSTM: the model stays whole
    with torch.no_grad():
        torch.testing.assert_close(result(x)[0], model(x)[0], atol=1e-5, rtol=1e-4)


def test_lstm_with_a_projection_is_refused_clearly():
    with pytest.raises(graphopt.GraphoptError, match="proj_size"):
        graphopt.trace(nn.LSTM(4, 6, proj_size=3, batch_first=True), (torch.randn(2, 3, 4),))


def test_encodec_lstm_block():
    """EnCodec's residual LSTM over [N, C, T] audio features (sequence-first inside)."""
    pytest.importorskip("transformers")
    from transformers import EncodecConfig
    from transformers.models.encodec.modeling_encodec import EncodecLSTM

    torch.manual_seed(0)
    block = EncodecLSTM(EncodecConfig(num_lstm_layers=2), 16)
    check_round_trip(block, (torch.randn(2, 16, 7),), (torch.randn(3, 16, 7),), atol=1e-4)


def test_recurrent_macs_count_both_products_per_step():
    from graphopt.analysis.rule_columns import mac_rule_for

    def numel(shape) -> int:  # the batch symbol counts 2, the traced example's batch
        return math.prod(d if isinstance(d, int) else 2 for d in shape)

    hidden, steps_batch = 12, 2 * 6
    torch.manual_seed(0)
    (lstm,) = graphopt.trace(Tagger(2, True, True).eval(), (torch.randn(2, 6, 5),)).find_nodes("lstm")
    assert mac_rule_for("lstm")(lstm, numel) == 2 * steps_batch * 4 * hidden * ((8 + hidden) + (2 * hidden + hidden))
    (gru,) = graphopt.trace(Tagger(1, False, True, nn.GRU).eval(), (torch.randn(2, 6, 5),)).find_nodes("gru")
    assert mac_rule_for("gru")(gru, numel) == steps_batch * 3 * hidden * (8 + hidden)
