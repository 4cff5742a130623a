"""Vision patterns from timm written as zoo models (issue 13): Swin, MobileViT, LeViT, gMLP, MLP-Mixer, NFNet.

For each model: the traced graph equals eager (batch 2, and batch 1/3 from a batch-1 example whose
batch axis stays symbolic); `optimize` prunes it (whole heads and within heads) into a model that
runs at batch 1 and 3 with the original output shape; the prune report says, per model, which
groups were pruned and why the others were not (a barrier reason from the channel analysis or a
safety-net exclusion naming the node); ONNX Runtime equals the torch back-end on the pruned graph.
"""

from __future__ import annotations

import functools

import pytest
import torch

import graphopt
from graphopt import models_zoo
from graphopt.analysis import channel_groups
from graphopt.backends.torch import to_module

MODELS = ["swin", "mobilevit", "levit", "gmlp", "mlp_mixer", "nfnet"]
ATOL = RTOL = 1e-4


@pytest.fixture(autouse=True, scope="module")
def _single_intra_op_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@functools.lru_cache(maxsize=None)
def _traced(name: str, batch_size: int):
    model, inputs = models_zoo.get(name, "tiny", batch_size=batch_size)
    graph = graphopt.trace(model, inputs)  # dynamic="batch": axis 0 stays symbolic even at batch 1
    return model, inputs, graph


@functools.lru_cache(maxsize=None)
def _optimized(name: str, heads: bool):
    model, inputs = models_zoo.get(name, "tiny")
    optimized = graphopt.optimize(model, inputs, prune={"ratio": 0.5, "heads": heads})
    return model, inputs, optimized


def _batch(name: str, batch_size: int) -> tuple[torch.Tensor, ...]:
    return models_zoo.get(name, "tiny", batch_size=batch_size, seed=1)[1]


def _prune_report(optimized):
    (report,) = optimized.report.prune
    return report


def _group_with(groups, param: str):
    return next(g for g in groups if any(p == param for p in g.params))


def _blocked(graph, heads: bool = True) -> list:
    return [g for g in channel_groups(graph, heads=heads) if not g.prunable]


def _params_of(group) -> set[str]:
    return {s.value.name for s in group.spaces if s.value.kind == "param"}


def _produced_by(groups, param: str):
    """The group of the channels `param` produces (its output axis), not the ones it reads."""
    return next(g for g in groups if any(s.value.name == param and s.role == "producer" for s in g.spaces))


# ------------------------------------------------------------------ tracing and round trips


@pytest.mark.parametrize("name", MODELS)
def test_round_trip_equals_eager_at_batch_2(name):
    model, inputs, graph = _traced(name, 2)
    graph.verify()
    with torch.no_grad():
        torch.testing.assert_close(to_module(graph)(*inputs), model(*inputs), atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("name", MODELS)
def test_batch_axis_is_dynamic_from_a_batch_1_example(name):
    model, inputs, graph = _traced(name, 1)
    assert graph.symbols(), "the batch axis of a batch-1 example must stay symbolic"
    module = to_module(graph)
    with torch.no_grad():
        torch.testing.assert_close(module(*inputs), model(*inputs), atol=ATOL, rtol=RTOL)
        other = _batch(name, 3)
        torch.testing.assert_close(module(*other), model(*other), atol=ATOL, rtol=RTOL)


def test_nfnet_var_mean_weight_standardisation_traces():
    """ScaledStdConv2d written with one `torch.var_mean` (timm's earlier form) instead of mean + var."""
    from graphopt.models_zoo.nfnet import NormFreeNet

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = NormFreeNet(depths=(1,), channels=(32,), stem_chs=16, group_size=8, num_classes=10,
                            stem_std_mode="var_mean").eval()
    graph = graphopt.trace(model, (torch.randn(1, 3, 32, 32),))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(to_module(graph)(x), model(x), atol=ATOL, rtol=RTOL)




# ------------------------------------------------------------------ pruning


@pytest.mark.parametrize("heads", [True, False], ids=["heads", "within_heads"])
@pytest.mark.parametrize("name", MODELS)
def test_pruned_model_runs_at_other_batch_sizes(name, heads):
    model, inputs, optimized = _optimized(name, heads)
    report = optimized.report
    assert report.params_after < report.params_before
    assert _prune_report(optimized).decisions
    with torch.no_grad():
        for batch_size in (1, 3):
            x = _batch(name, batch_size)
            out = optimized(*x)
            assert out.shape == model(*x).shape == (batch_size, 10)
            assert torch.isfinite(out).all()


def test_swin_prunes_heads_with_their_relative_position_bias():
    model, inputs, graph = _traced("swin", 2)
    # The analysis puts each block's relative position bias table (gathered by the index buffer,
    # heads on axis 1) into the heads group of its qkv/proj: in plain and in shifted-window blocks.
    for block in ("layers.0.blocks.0", "layers.0.blocks.1", "layers.1.blocks.0", "layers.1.blocks.1"):
        group = _produced_by(channel_groups(graph), f"{block}.attn.qkv.weight")
        assert group.prunable and group.kind == "heads"
        assert f"{block}.attn.relative_position_bias_table" in _params_of(group)

    _, _, optimized = _optimized("swin", True)
    report = _prune_report(optimized)
    assert not report.safety.excluded
    # `optimize` folds the table gather into a (1, heads, N, N) constant first; heads are removed
    # from it with q/k/v/proj. In shifted blocks, where the window mask is expanded over heads, the
    # folded group counts a whole head as one channel (kind "channels", width 1).
    for block, kind, kept, total in (("layers.0.blocks.0", "heads", 1, 2), ("layers.0.blocks.1", "channels", 1, 2),
                                     ("layers.1.blocks.0", "heads", 2, 4), ("layers.1.blocks.1", "channels", 2, 4)):
        decision = _group_with(report.decisions, f"{block}.attn.qkv.bias")
        assert (decision.kind, decision.kept, decision.total) == (kind, kept, total)
        assert any(p.endswith("_folded") for p in decision.params), decision.params  # the folded bias
        mlp = _group_with(report.decisions, f"{block}.mlp.fc1.bias")
        assert mlp.kept * 2 == mlp.total
    # The stage-2 residual stream (64) is pruned through patch merging, window partition and the head.
    stream = _group_with(report.decisions, "norm.bias")
    assert (stream.kept, stream.total) == (32, 64)
    assert "head.weight" in stream.params
    assert "layers.1.downsample.reduction.weight" in stream.params

    # The stage-1 residual stream (32) is pruned too, through the window partition's view
    # (batch, 4, 4, 4, 4, 32) -> (16*batch, 4, 4, 32): the channel axis stays whole there.
    stage1 = _group_with(report.decisions, "patch_embed.proj.weight")
    assert (stage1.kept, stage1.total) == (16, 32)
    assert len(_blocked(graph)) == 2  # only the colour channels and the classes


def test_swin_within_heads_keeps_the_bias_table_whole():
    _, _, optimized = _optimized("swin", False)
    report = _prune_report(optimized)
    assert not report.safety.excluded
    for block in ("layers.0.blocks.0", "layers.0.blocks.1", "layers.1.blocks.0", "layers.1.blocks.1"):
        decision = _group_with(report.decisions, f"{block}.attn.qkv.bias")
        assert (decision.kind, decision.kept, decision.total) == ("head dims", 8, 16)
        assert not any(p.endswith("_folded") for p in decision.params)  # one bias per head, all heads kept


def test_mobilevit_prunes_convs_heads_and_mlp_but_not_the_unfolded_channels():
    _, _, graph = _traced("mobilevit", 2)
    _, _, optimized = _optimized("mobilevit", True)
    report = _prune_report(optimized)
    assert not report.safety.excluded
    heads = _group_with(report.decisions, "stages.2.1.transformer.0.attn.qkv.bias")
    assert (heads.kind, heads.kept, heads.total) == ("heads", 1, 2)
    mlp = _group_with(report.decisions, "stages.2.1.transformer.0.mlp.0.bias")
    assert (mlp.kept, mlp.total) == (32, 64)
    for bn in ("stages.0.conv_pw.1.bias", "stages.2.0.conv_dw.1.bias", "final_conv.1.bias"):  # conv+BN
        decision = _group_with(report.decisions, bn)
        assert decision.kept < decision.total
    # The transformer width (32) is not pruned: the patch unfold/fold reshapes fold the channels
    # into the batch axis ((B, C, H, W) -> (B*C*nh, ph, nw, pw)), and the analysis says so.
    blocked = [g for g in _blocked(graph) if g.num_channels == 32]
    assert len(blocked) == 3
    for group in blocked:
        assert any("merges channel axes with a dynamic axis" in r for r in group.reasons), group.reasons
    assert not any("stages.2.1.norm.weight" in d.params for d in report.decisions)


def test_levit_prunes_heads_with_their_attention_biases():
    _, _, graph = _traced("levit", 2)
    # Each attention's (heads, H*W) bias table, indexed by the bias index buffer, joins its heads group
    # (the q/k/v split of different widths per head, and the subsampling attention too).
    for attn, heads in (("stages.0.0.attn", 2), ("stages.1.0.attn_downsample", 4), ("stages.1.1.attn", 3)):
        group = next(g for g in channel_groups(graph) if f"{attn}.attention_biases" in _params_of(g))
        assert group.prunable and group.kind == "heads" and group.num_channels == heads

    _, _, optimized = _optimized("levit", True)
    report = _prune_report(optimized)
    assert not report.safety.excluded
    # After `optimize` folds the bias gather into a constant, a head is one channel of the group.
    for attn, kept, total in (("stages.0.0.attn", 1, 2), ("stages.1.0.attn_downsample", 2, 4), ("stages.1.1.attn", 2, 3)):
        qkv_norm = f"{attn}.kv.bn.bias" if attn.endswith("downsample") else f"{attn}.qkv.bn.bias"
        decision = _group_with(report.decisions, qkv_norm)
        assert (decision.kept, decision.total) == (kept, total)
    # MLP hidden channels (Linear + BatchNorm1d), the stem convs and the residual streams.
    assert _group_with(report.decisions, "stages.0.0.mlp.ln1.bn.bias").kept == 32
    assert _group_with(report.decisions, "stem.conv1.bn.bias").total == 4
    stream = _group_with(report.decisions, "head.bn.bias")
    assert (stream.kept, stream.total) == (32, 48)
    assert {r for g in _blocked(graph) for r in g.reasons} == {
        "reaches graph input %x", "no parameter produces these channels", "reaches graph output %head.linear"}


def test_levit_within_heads_prunes_query_key_and_value_dims():
    _, _, optimized = _optimized("levit", False)
    report = _prune_report(optimized)
    assert not report.safety.excluded
    decision = _group_with(report.decisions, "stages.0.0.attn.qkv.bn.bias")
    assert (decision.kind, decision.kept, decision.total) == ("head dims", 16, 24)  # key_dim 8 (q, k) + val 16


@pytest.mark.parametrize("name, gate_node", [("mlp_mixer", "blocks.0.mlp_tokens.fc2"),
                                              ("gmlp", "blocks.0.mlp_channels.gate.proj")])
def test_token_mixing_models_prune_hidden_channels_and_exclude_the_token_axis(name, gate_node):
    _, _, optimized = _optimized(name, True)
    report = _prune_report(optimized)
    stream = _group_with(report.decisions, "blocks.0.norm1.bias" if name == "mlp_mixer" else "blocks.0.norm.bias")
    assert (stream.kept, stream.total) == (16, 32)  # the residual stream (embed dim)
    if name == "mlp_mixer":
        # token-mixing MLP: its hidden units (a Linear over the transposed token axis) ...
        tokens = _group_with(report.decisions, "blocks.0.mlp_tokens.fc1.bias")
        assert (tokens.kept, tokens.total) == (8, 16)
        # ... and the channel MLP's
        channels = _group_with(report.decisions, "blocks.1.mlp_channels.fc1.bias")
        assert (channels.kept, channels.total) == (64, 128)
    else:
        # spatial gating unit: the two halves u, v of the hidden channels are pruned as pairs
        # (u * gate(norm(v))), so fc1 keeps 96 of 192 outputs and fc2 48 of 96 inputs.
        hidden = _group_with(report.decisions, "blocks.0.mlp_channels.fc1.bias")
        assert (hidden.kept, hidden.total) == (48, 96)
        assert "blocks.0.mlp_channels.gate.norm.weight" in hidden.params
    # The token axis (64 patches) is the patch conv's spatial positions: the conv's channel rule makes it a
    # barrier ("slides over these positions"), so no group is left for the safety net to exclude.
    assert not report.safety.excluded, report.summary()
    assert not any(gate_node + ".weight" in d.params and d.total == 64 for d in report.decisions)


def test_nfnet_prunes_weight_standardised_convs_groups_and_se():
    _, _, optimized = _optimized("nfnet", True)
    report = _prune_report(optimized)
    assert not report.safety.excluded
    kinds = {d.kind for d in report.decisions}
    assert kinds == {"channels", "conv groups"}  # the grouped 3x3 convs lose whole groups
    se = _group_with(report.decisions, "stages.0.0.attn_last.fc1.bias")
    assert (se.kept, se.total) == (8, 16)
    final = _group_with(report.decisions, "final_conv.bias")
    assert (final.kept, final.total) == (64, 128)
    # `optimize` folds each standardised weight (batch_norm / mean-var over the weight and its gain)
    # into a constant before pruning, so the pruned groups hold the folded weights.
    assert sum(p.endswith("_folded") for d in report.decisions for p in d.params) >= 10
    assert not any(p.endswith(".gain") for d in report.decisions for p in d.params)


def test_nfnet_analysis_couples_weight_standardisation_with_the_conv():
    """On the traced graph (weights standardised in forward): the weight's output axis and the gain are one
    group (the next grouped conv makes its units conv groups); its input axis is in an inexact group,
    as standardising over fan-in reduces over those channels."""
    _, _, graph = _traced("nfnet", 2)
    groups = channel_groups(graph)

    def axis_group(param, axis):
        return next(g for g in groups if any(s.value.name == param and s.axes == (axis,) for s in g.spaces))

    out_channels = axis_group("stages.0.0.conv1.weight", 0)
    assert out_channels.prunable and out_channels.kind == "conv groups"
    assert "stages.0.0.conv1.gain" in _params_of(out_channels)
    in_channels = axis_group("stages.0.0.conv1.weight", 1)
    assert in_channels.prunable and not in_channels.exact
    assert any("reduces over the channels" in r for r in in_channels.inexact)
    assert [g.reasons for g in groups if not g.prunable] == [["reaches graph input %x"], ["reaches graph output %head"]]


# ------------------------------------------------------------------ ONNX Runtime


@pytest.mark.parametrize("name", MODELS)
def test_onnx_runtime_equals_torch_on_the_pruned_graph(name):
    from graphopt.backends.onnx import runtime

    _, _, optimized = _optimized(name, True)
    session = runtime.compile(optimized.graph, threads=1)
    module = to_module(optimized.graph)
    with torch.no_grad():
        for batch_size in (1, 2):
            x = _batch(name, batch_size)
            torch.testing.assert_close(torch.as_tensor(session(*x)), module(*x), atol=ATOL, rtol=RTOL)
