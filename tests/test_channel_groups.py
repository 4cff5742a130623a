"""Channel-group analysis on every zoo model: removal equals masking, heads stay consistent,
and only the groups a user expects are reported not prunable."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import graphopt
from graphopt.analysis import channel_groups, mask_channels, remove_channels, register_channel_rule
from graphopt.analysis.channels import ChannelAnalysisError, analyse
from graphopt.analysis.removal import RemovalError
from graphopt.backends.torch import to_module
from graphopt.ir.ops import OpDef, OPS, register_op
from graphopt import models_zoo

from conftest import resize_inputs, traced_zoo_model


def _pick_units(group, rng, fraction=0.5) -> np.ndarray:
    units = group.units
    k = min(len(units) - 1, max(1, int(len(units) * fraction)))
    chosen = rng.choice(len(units), size=k, replace=False)
    return np.concatenate([units[i] for i in chosen])


def _removed_and_masked(graph, group, channels):
    removed = remove_channels(graph.clone(), group, channels)
    masked = mask_channels(graph.clone(), group, channels)
    return removed, masked


# gMLP's prunable groups all pass a LayerNorm over their channels (the embedding, and the gate's v half,
# normalised before the token projection): removing channels changes the norm's statistics, so none is
# exact; their removal is still checked to run and keep the output shape.
ALL_GROUPS_INEXACT = {"gmlp"}


def test_removal_equals_masking_for_every_prunable_group(zoo_name):
    """For exact groups the pruned model equals the masked one (fp32 defaults, looser for deep stacks)."""
    model, inputs, graph = traced_zoo_model(zoo_name)
    rng = np.random.default_rng(0)
    checked = 0
    with torch.no_grad():
        original = to_module(graph)(*inputs)
        for group in channel_groups(graph):
            if not group.prunable:
                continue
            channels = _pick_units(group, rng)
            removed, masked = _removed_and_masked(graph, group, channels)
            removed.verify()
            assert removed.num_params() < graph.num_params(), group.summary()
            got, want = to_module(removed)(*inputs), to_module(masked)(*inputs)
            assert got.shape == original.shape
            if group.exact:
                torch.testing.assert_close(got, want, msg=lambda m: f"{zoo_name} {group.summary()}\n{m}")
                checked += 1
    assert checked > 0 or zoo_name in ALL_GROUPS_INEXACT


# Groups a user expects to stay whole: the image's colour channels, the classes/vocabulary at the
# output, and Llama's rotary tables (they follow head dims, which head pruning never removes).
EXPECTED_NOT_PRUNABLE = {
    "bert": ["reaches graph output %classifier"],
    "llama": ["broadcasts into the channels of group", "reaches graph output %lm_head"],
    # image models: the colour channels at the input and the classes at the head
    **{model: ["reaches graph input %x", f"reaches graph output %{head}"] for model, head in {
        "convnext": "head", "densenet": "classifier", "efficientnet": "classifier.1", "mobilenet_v2": "classifier.1",
        "mobilenet_v3": "classifier.3", "regnet": "fc", "resnet18": "fc", "resnet50": "fc", "resnext": "fc",
        "unet": "outc", "vgg_bn": "classifier.6", "vit": "head", "nfnet": "head"}.items()},
    # MLP-Mixer and gMLP: also the token axis (a Linear over the transposed tokens), whose positions are
    # the patch conv's spatial positions
    **{model: ["reaches graph input %x", "reaches graph output %head", "conv %stem.proj slides over these positions"]
       for model in ("mlp_mixer", "gmlp")},
    "levit": ["reaches graph input %x", "reaches graph output %head.linear"],
    # MobileViT: the transformer width, whose patch unfold/fold reshapes fold the channels into the batch
    # axis (the conv_1x1 output, the transformer's stream, the fold output).
    "swin": ["reaches graph input %x", "reaches graph output %head"],
    "mobilevit": ["reaches graph input %x", "reaches graph output %head", *["reshape %reshape"] * 3],
}


def test_only_expected_groups_are_not_prunable(zoo_name):
    _, _, graph = traced_zoo_model(zoo_name)
    blocked = [g for g in channel_groups(graph) if not g.prunable]
    expected = list(EXPECTED_NOT_PRUNABLE[zoo_name])
    assert len(blocked) == len(expected), "\n".join(g.summary() for g in blocked)
    for group in blocked:
        match = next((want for want in expected if any(r.startswith(want) for r in group.reasons)), None)
        assert match is not None, group.summary()
        expected.remove(match)


ATTENTION = {"vit": ("blocks.{}.attn.qkv.weight", 4), "bert": ("bert.encoder.layer.{}.attention.self.query.weight", 4),
             "llama": ("model.layers.{}.self_attn.q_proj.weight", 2)}


@pytest.mark.parametrize("name", sorted(ATTENTION))
def test_attention_heads_prune_as_whole_heads(name):
    """Each layer's attention is one group whose units are (kv-)heads; q/k/v/o stay consistent."""
    model, inputs, graph = traced_zoo_model(name)
    pattern, units = ATTENTION[name]
    heads = [g for g in channel_groups(graph) if any(s.value.name == pattern.format(0) and s.role == "producer"
                                                       for s in g.spaces)]
    assert len(heads) == 1 and heads[0].prunable and heads[0].exact
    group = heads[0]
    assert group.num_units == units, group.summary()
    pruned = remove_channels(graph.clone(), group, group.units[0])
    pruned.verify()
    q = pruned.weights[pattern.format(0)]
    before = graph.weights[pattern.format(0)]
    assert q.shape[0] < before.shape[0] and q.shape[1:] == before.shape[1:]
    module = to_module(pruned)
    with torch.no_grad():
        assert module(*inputs).shape == model(*inputs).shape
        other = resize_inputs(inputs, models_zoo.spec(name).dynamic_axes, {"batch": 3, "seq": 7})
        assert module(*other).shape == model(*other).shape


def test_gqa_removes_kv_head_with_its_query_heads():
    _, _, graph = traced_zoo_model("llama")
    group = next(g for g in channel_groups(graph)
                 if any(s.value.name == "model.layers.0.self_attn.k_proj.weight" and s.role == "producer"
                        for s in g.spaces))
    pruned = remove_channels(graph.clone(), group, group.units[1])
    w = {k: pruned.weights[f"model.layers.0.self_attn.{k}_proj.weight"].shape for k in "qkvo"}
    # tiny llama: 4 query heads share 2 kv heads, head_dim 16 -> one kv head and its 2 query heads go
    assert w["q"][0] == 32 and w["k"][0] == 16 and w["v"][0] == 16 and w["o"][1] == 32


def _head_split_graph() -> graphopt.Graph:
    """linear -> reshape into 4 x 8 -> gelu -> reshape back -> linear: a joint (4, 8) channel space."""
    g = graphopt.Graph("heads")
    x = g.add_input("x", (2, 16), torch.float32)
    fc1 = g.create_node("linear", [x, g.add_weight("fc1.weight", torch.randn(32, 16)), None])
    split = g.create_node("reshape", [fc1.output], {"shape": [2, 4, 8]})
    act = g.create_node("gelu", [split.output], {"approximate": "none"})
    merge = g.create_node("reshape", [act.output], {"shape": [2, 32]})
    fc2 = g.create_node("linear", [merge.output, g.add_weight("fc2.weight", torch.randn(5, 32)), None])
    g.outputs = [fc2.output]
    return g


def test_joint_spaces_remove_whole_slabs_only():
    graph = _head_split_graph()
    group = next(g for g in channel_groups(graph) if g.num_channels == 32)
    assert group.prunable and group.num_units in (4, 8) and group.unit_size * group.num_units == 32
    with pytest.raises(RemovalError, match="one unit"):
        remove_channels(graph.clone(), group, [int(group.units[0][0])])
    pruned = remove_channels(graph.clone(), group, group.units[0])
    pruned.verify()
    masked = mask_channels(graph.clone(), group, group.units[0])
    x = torch.randn(2, 16)
    torch.testing.assert_close(to_module(pruned)(x), to_module(masked)(x))


def test_grouped_and_depthwise_conv_units():
    """A grouped conv's channel is a whole conv group: removing it lowers `groups`."""
    _, inputs, graph = traced_zoo_model("resnext")
    conv = next(n for n in graph.nodes if n.op == "conv" and n.attrs["groups"] > 1)
    weight = conv.inputs[1]
    group = next(g for g in channel_groups(graph)
                 if any(s.value is weight and s.axes == (0,) for s in g.spaces) and g.prunable)
    per_group = weight.shape[0] // conv.attrs["groups"]
    assert group.num_channels * per_group == weight.shape[0]
    pruned = remove_channels(graph.clone(), group, [0, 1])
    assert pruned.node(conv.name).attrs["groups"] == conv.attrs["groups"] - 2
    to_module(pruned)(*inputs)
    _, _, mbv2 = traced_zoo_model("mobilenet_v2")
    depthwise = [g for g in channel_groups(mbv2)
                 if any(s.value.name.endswith("conv.1.0.weight") for s in g.spaces) and g.prunable]
    assert depthwise and all(g.unit_size == 1 for g in depthwise)


def test_layer_norm_groups_are_prunable_but_reported_inexact():
    _, _, graph = traced_zoo_model("vit")
    residual = channel_groups(graph)[0]
    assert residual.prunable and not residual.exact
    assert any("layer_norm" in reason for reason in residual.inexact)


def _through_custom_op(op: str):
    """fc1 -> `op` -> fc2, with `op` an elementwise op defined here; returns the 16-channel hidden group."""
    if op not in OPS:
        register_op(OpDef(op, lambda node: [(node.inputs[0].shape, node.inputs[0].dtype)], "x"))
    g = graphopt.Graph("custom")
    x = g.add_input("x", (2, 8), torch.float32)
    fc1 = g.create_node("linear", [x, g.add_weight("fc1.weight", torch.randn(16, 8)), None])
    odd = g.create_node(op, [fc1.output])
    fc2 = g.create_node("linear", [odd.output, g.add_weight("fc2.weight", torch.randn(4, 16)), None])
    g.outputs = [fc2.output]
    return next(gr for gr in channel_groups(g) if gr.num_channels == 16)


def test_unknown_op_is_a_barrier_with_a_clear_reason():
    hidden = _through_custom_op("mystery_scale")
    assert not hidden.prunable
    assert "op 'mystery_scale'" in hidden.reasons[0] and "register_channel_rule" in hidden.reasons[0]


def test_registering_a_rule_makes_the_op_transparent():
    @register_channel_rule("mystery_scale2", replace=True)
    def elementwise(builder, node):
        builder.identity(node.inputs[0], node.output, range(node.output.rank), range(node.output.rank))

    assert _through_custom_op("mystery_scale2").prunable


def test_an_op_registered_as_barrier_blocks_and_says_it_is_on_purpose():
    from graphopt.analysis import BARRIER
    from graphopt.analysis.channel_rules import is_barrier, rule_for

    register_channel_rule("mystery_wall")(BARRIER)
    assert rule_for("mystery_wall") is BARRIER and is_barrier("mystery_wall") and not is_barrier("linear")
    hidden = _through_custom_op("mystery_wall")
    assert not hidden.prunable
    assert "op 'mystery_wall'" in hidden.reasons[0] and "BARRIER" in hidden.reasons[0]
    assert "register_channel_rule" not in hidden.reasons[0]  # not the "no rule yet" message


def test_a_second_channel_rule_for_an_op_raises_unless_replace():
    from graphopt.analysis import BARRIER
    from graphopt.analysis.channel_rules import rule_for
    from graphopt.errors import GraphoptError

    with pytest.raises(GraphoptError, match="channel rule for 'linear' is already registered"):
        register_channel_rule("linear")(BARRIER)
    assert rule_for("linear") is not BARRIER

    def identity(builder, node):
        builder.identity(node.inputs[0], node.output, range(node.output.rank), range(node.output.rank))

    register_channel_rule("mystery_wall2")(BARRIER)
    register_channel_rule("mystery_wall2", replace=True)(identity)
    assert _through_custom_op("mystery_wall2").prunable


def test_analysis_is_bounded():
    _, _, graph = traced_zoo_model("resnet18")
    with pytest.raises(ChannelAnalysisError, match="stopped at node"):
        analyse(graph, max_atoms=1000)


def test_channel_groups_is_a_cached_pass_analysis():
    from graphopt.analysis import ChannelGroups
    from graphopt.passmanager.analysis import AnalysisManager

    _, _, graph = traced_zoo_model("resnet18")
    analyses = AnalysisManager()
    first = analyses.get(ChannelGroups, graph)
    assert analyses.get(ChannelGroups, graph) is first


def test_docs_analysis_examples_run():
    from docblocks import run_blocks

    run_blocks("docs/analysis.md", minimum=2)


def test_picture_and_table(tmp_path):
    from graphopt.analysis.channel_view import group_rows, to_dot, write_picture

    _, _, graph = traced_zoo_model("resnet18")
    groups = channel_groups(graph)
    rows = group_rows(groups)
    assert [r["group"] for r in rows] == [str(g.id) for g in groups]
    assert any(r["status"].startswith("kept: reaches graph input") for r in rows)
    dot = to_dot(graph, groups)
    assert dot.startswith("digraph") and "layer1.0.conv1" in dot and "fillcolor=\"#" in dot
    path = write_picture(graph, groups, tmp_path / "graph.dot")
    assert path.read_text() == dot
    assert [p.name for p in tmp_path.iterdir()] == ["graph.dot"]  # no temporary file left behind


@pytest.mark.parametrize("name,width", [("vit", 16), ("bert", 16), ("llama", 16)])
def test_head_groups_report_head_width(name, width):
    _, _, graph = traced_zoo_model(name)
    heads = [g for g in channel_groups(graph) if g.kind == "heads"]
    assert heads and all(g.width == width for g in heads), [g.summary() for g in heads]
