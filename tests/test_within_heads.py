"""Within-head pruning (`channel_groups(graph, heads=False)`): attention loses the same head_dim
positions in every head, q/k keep equal dims, RoPE pairs d and d + D/2 go together, and removal
equals masking; heads=True stays as it was."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import graphopt
from graphopt import models_zoo
from graphopt.analysis import channel_groups, mask_channels, remove_channels
from graphopt.backends.torch import to_module
from graphopt.passmanager import PassManager, Verify

from conftest import resize_inputs, traced_zoo_model

ATTENTION_MODELS = ["vit", "bert", "llama"]
# per model: (query weight, key weight, query heads, key/value heads, head_dim) of layer 0
PROJECTIONS = {
    "bert": ("bert.encoder.layer.0.attention.self.query.weight", "bert.encoder.layer.0.attention.self.key.weight",
             4, 4, 16),
    "llama": ("model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.k_proj.weight", 4, 2, 16),
}


def _half_of_units(group, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    chosen = rng.choice(group.num_units, size=group.num_units // 2, replace=False)
    return np.concatenate([group.units[i] for i in chosen])


def _head_spaces(group):
    """The group's (heads, head_dim) tensors: joint spaces of values whose last axis is head_dim."""
    return [(s, lab) for s, lab in zip(group.spaces, group.labels)
            if not s.value.is_weight and len(s.axes) > 1 and s.axes[-1] == s.value.rank - 1]


def _removed_dims(space, labels, channels) -> np.ndarray:
    """Per (heads..., head_dim) position of the space: removed or not."""
    return np.isin(labels, channels).reshape(space.sizes)


@pytest.fixture(params=ATTENTION_MODELS)
def attention_model(request) -> str:
    return request.param


def test_attention_groups_have_head_dim_units(attention_model):
    _, _, graph = traced_zoo_model(attention_model)
    groups = [g for g in channel_groups(graph, heads=False) if g.within_heads]
    assert groups and all(g.prunable and g.exact and g.kind == "head dims" for g in groups), \
        "\n".join(g.summary() for g in groups)
    for group in groups:
        assert _head_spaces(group), group.summary()
        for space, labels in _head_spaces(group):
            grid = labels.reshape(space.sizes)
            # a channel is one head_dim position of every head: labels do not change along the heads
            heads_axes = tuple(range(len(space.sizes) - 1))
            assert (grid == grid[(0,) * len(heads_axes)]).all(), space.describe()


def test_removing_half_the_head_dims_equals_masking(attention_model):
    """Every within-head group: the pruned model runs, keeps shapes, runs at another length and equals
    masking; every head keeps the same head_dim positions."""
    model, inputs, graph = traced_zoo_model(attention_model)
    dynamic = models_zoo.spec(attention_model).dynamic_axes
    other = resize_inputs(inputs, dynamic, {"batch": 3, "seq": 9})
    checked = 0
    with torch.no_grad():
        want = model(*inputs).shape
        want_other = model(*other).shape
        for group in channel_groups(graph, heads=False):
            if not group.within_heads:
                continue
            channels = _half_of_units(group)
            for space, labels in _head_spaces(group):
                removed = _removed_dims(space, labels, channels)
                assert (removed == removed[(0,) * (removed.ndim - 1)]).all(), "heads lose different dims"
                assert 0 < removed[(0,) * (removed.ndim - 1)].sum() < space.sizes[-1]
            pruned = remove_channels(graph.clone(), group, channels)
            pruned.verify()
            masked = mask_channels(graph.clone(), group, channels)
            module = to_module(pruned)
            got = module(*inputs)
            assert got.shape == want
            assert module(*other).shape == want_other
            assert group.exact
            torch.testing.assert_close(got, to_module(masked)(*inputs),
                                       msg=lambda m: f"{attention_model} {group.summary()}\n{m}")
            checked += 1
    assert checked >= 2  # q/k and v/o of a layer at least


@pytest.mark.parametrize("name", sorted(PROJECTIONS))
def test_queries_and_keys_keep_equal_head_dims(name):
    """q/k lose the same dims in every head (GQA for llama: 4 query heads over 2 kv heads)."""
    _, _, graph = traced_zoo_model(name)
    q_name, k_name, hq, hkv, head_dim = PROJECTIONS[name]
    group = next(g for g in channel_groups(graph, heads=False)
                 if any(s.value.name == q_name and s.role == "producer" for s in g.spaces))
    assert group.within_heads and any(s.value.name == k_name for s in group.spaces)
    pruned = remove_channels(graph.clone(), group, _half_of_units(group))
    q_rows, k_rows = pruned.weights[q_name].shape[0], pruned.weights[k_name].shape[0]
    assert q_rows % hq == 0 and k_rows % hkv == 0
    assert q_rows // hq == k_rows // hkv == head_dim // 2


def test_vit_fused_qkv_keeps_one_head_dim():
    """ViT splits one qkv linear with a reshape into (3, heads, head_dim): q, k and v keep the same
    dims (the reshape needs one head_dim), so one group per layer covers qkv and proj."""
    _, _, graph = traced_zoo_model("vit")
    group = next(g for g in channel_groups(graph, heads=False)
                 if any(s.value.name == "blocks.0.attn.qkv.weight" and s.role == "producer" for s in g.spaces))
    assert group.within_heads and group.num_units == 16
    pruned = remove_channels(graph.clone(), group, _half_of_units(group))
    assert pruned.weights["blocks.0.attn.qkv.weight"].shape[0] == 3 * 4 * 8
    assert pruned.weights["blocks.0.attn.proj.weight"].shape[1] == 4 * 8
    sdpa = next(n for n in pruned.nodes if n.op == "sdpa")
    assert sdpa.attrs["scale"] == pytest.approx(16 ** -0.5)  # the original temperature


def test_llama_rotary_pairs_and_tables_go_together():
    """RoPE: d and d + D/2 are one channel; the cos/sin tables and inv_freq lose the same positions."""
    _, inputs, graph = traced_zoo_model("llama")
    groups = channel_groups(graph, heads=False)
    assert not any("broadcasts into" in r for g in groups for r in g.reasons)
    group = next(g for g in groups if any(s.value.name == "model.rotary_emb.inv_freq" for s in g.spaces))
    assert group.prunable and group.exact and group.num_units == 8, group.summary()
    channels = _half_of_units(group, seed=3)
    for space, labels in _head_spaces(group):
        if space.sizes[-1] != 16:
            continue  # rotate_half's halves
        per_dim = _removed_dims(space, labels, channels)[(0,) * (len(space.sizes) - 1)]
        half = per_dim.size // 2
        assert (per_dim[:half] == per_dim[half:]).all(), space.describe()
    pruned = remove_channels(graph.clone(), group, channels)
    assert pruned.weights["model.rotary_emb.inv_freq"].shape == (4,)
    for node in pruned.nodes:
        if node.op == "sdpa":
            assert node.inputs[0].shape[-3] == 4 and node.inputs[0].shape[-1] == 8
            assert node.attrs["scale"] == pytest.approx(16 ** -0.5)
    # the table is shared by both layers: their q/k lose the same dims
    for layer in (0, 1):
        assert pruned.weights[f"model.layers.{layer}.self_attn.q_proj.weight"].shape[0] == 4 * 8


def test_heads_true_is_unchanged_and_default():
    _, _, graph = traced_zoo_model("llama")
    default, explicit = channel_groups(graph), channel_groups(graph, heads=True)
    assert [g.summary() for g in default] == [g.summary() for g in explicit]
    assert not any(g.within_heads for g in default)
    assert any(any(r.startswith("broadcasts into") for r in g.reasons) for g in default)


def test_heads_false_leaves_models_without_attention_alone():
    _, _, graph = traced_zoo_model("resnet18")
    within, whole = channel_groups(graph, heads=False), channel_groups(graph)
    assert [g.summary() for g in within] == [g.summary() for g in whole]


def _einsum_attention_graph() -> graphopt.Graph:
    """Attention written with einsum: 'bshd,bthd->bhst' then 'bhst,bthd->bshd', 2 heads of 8."""
    g = graphopt.Graph("einsum_attention")
    x = g.add_input("x", (2, 5, 16), torch.float32)
    # seeded, and scaled as a layer's init is (std 1/sqrt(fan_in)): unscaled randn weights gave
    # outputs near 30 whose fp32 rounding alone differed by 3e-5 between two orders of summation
    generator = torch.Generator().manual_seed(0)

    def weight(rows: int) -> torch.Tensor:
        return torch.randn(rows, 16, generator=generator) / 4

    def project(name: str) -> graphopt.ir.graph.Value:
        out = g.create_node("linear", [x, g.add_weight(f"{name}.weight", weight(16)), None])
        return g.create_node("reshape", [out.output], {"shape": [2, 5, 2, 8]}).output

    q, k, v = project("q"), project("k"), project("v")
    scores = g.create_node("einsum", [q, k], {"equation": "bshd,bthd->bhst"})
    probs = g.create_node("softmax", [scores.output], {"axis": -1})
    mixed = g.create_node("einsum", [probs.output, v], {"equation": "bhst,bthd->bshd"})
    merged = g.create_node("reshape", [mixed.output], {"shape": [2, 5, 16]})
    out = g.create_node("linear", [merged.output, g.add_weight("o.weight", weight(4)), None])
    g.outputs = [out.output]
    return g


def test_einsum_attention_prunes_within_heads():
    graph = _einsum_attention_graph()
    groups = [g for g in channel_groups(graph, heads=False) if g.within_heads]
    assert len(groups) == 2 and all(g.prunable and g.num_units == 8 for g in groups)
    x = torch.randn(2, 5, 16)
    for group in groups:
        channels = _half_of_units(group)
        pruned = remove_channels(graph.clone(), group, channels)
        pruned.verify()
        masked = mask_channels(graph.clone(), group, channels)
        torch.testing.assert_close(to_module(pruned)(x), to_module(masked)(x))
    whole = [g for g in channel_groups(graph) if g.prunable and g.kind == "heads"]
    assert whole and all(g.num_units == 2 for g in whole)


@pytest.mark.parametrize("name", ATTENTION_MODELS)
def test_prune_pass_with_heads_false_shrinks_head_dim(name):
    model, inputs, graph = traced_zoo_model(name)
    pipeline = PassManager.parse("prune{ratio=0.5,heads=false}", instruments=[Verify()])
    pruned, runs = pipeline.run(graph, inputs)
    before = {n.name: n for n in graph.nodes}
    attention = [n for n in pruned.nodes if n.op in ("sdpa", "matmul") and n.inputs[0].rank == 4
                 and isinstance(n.inputs[0].shape[-1], int)]  # not attention probabilities (seq, seq)
    assert attention
    shrunk = 0
    for node in attention:
        old = before[node.name].inputs[0].shape
        new = node.inputs[0].shape
        assert new[-3] == old[-3], f"{node.name}: heads {old[-3]} -> {new[-3]}"  # every head stays
        shrunk += new[-1] < old[-1]
    assert shrunk >= 2
    assert any(d.kind == "head dims" for d in runs.stats("prune")[-1].decisions)
    other = resize_inputs(inputs, models_zoo.spec(name).dynamic_axes, {"batch": 3, "seq": 9})
    with torch.no_grad():
        assert to_module(pruned)(*other).shape == model(*other).shape
