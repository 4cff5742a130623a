"""The ResidualBlocks analysis: the blocks of every zoo model (and one dropped), nesting, projections, escapes, names."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import graphopt
from graphopt import models_zoo
from graphopt.analysis.residual_blocks import ResidualBlocks, find_blocks
from graphopt.backends.torch import to_module
from graphopt.passmanager import AnalysisManager, PassManager

# (attention, mlp, layer, conv) blocks per tiny zoo model; conv blocks include projection shortcuts.
EXPECTED = {
    "llama": (2, 2, 2, 0), "vit": (2, 2, 2, 0), "bert": (2, 2, 2, 0),
    "resnet18": (0, 0, 0, 4), "resnet50": (0, 0, 0, 4), "resnext": (0, 0, 0, 4), "convnext": (0, 0, 0, 5),
    "mobilenet_v2": (0, 0, 0, 2), "mobilenet_v3": (0, 0, 0, 1), "efficientnet": (0, 0, 0, 1), "regnet": (0, 0, 0, 5),
    "vgg_bn": (0, 0, 0, 0), "unet": (0, 0, 0, 0), "densenet": (0, 0, 0, 0),
    # issue 13's vision patterns: LeViT's attention-downsample stage keeps its MLP residual; a MobileViT block
    # is not residual (its input is concatenated), but its MobileNetV2 block and transformer layer are
    "swin": (4, 4, 0, 0), "mobilevit": (1, 1, 1, 1), "levit": (2, 3, 2, 0), "mlp_mixer": (0, 4, 0, 0),
    "gmlp": (0, 2, 0, 0), "nfnet": (0, 0, 0, 2),
}


def simplified(name: str, size: str = "tiny"):
    model, inputs = models_zoo.get(name, size)
    graph = graphopt.trace(model, inputs, dynamic=models_zoo.spec(name).dynamic_axes)
    graph, _ = PassManager.parse("simplify").run(graph, inputs)
    return graph, inputs


def test_every_zoo_model_is_covered():
    assert sorted(EXPECTED) == sorted(models_zoo.list_models())


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_zoo_block_counts(name):
    graph, inputs = simplified(name)
    found = find_blocks(graph)
    kinds = [b.kind for b in found]
    assert (kinds.count("attention"), kinds.count("mlp"), kinds.count("layer"), kinds.count("conv")) == EXPECTED[name]
    assert len(found) == sum(EXPECTED[name])
    assert all(b.droppable for b in found), found.table()
    # a block's params never exceed what the graph has, and its merge is an add
    for block in found:
        assert graph.node(block.merge).op == "add"
        assert 0 < block.params <= graph.num_params() and block.macs > 0
    if found.blocks:
        _check_drop(name, graph, inputs, found)


# one model per kind of block for the ONNX Runtime comparison (Llama and ResNet-18: tests/test_drop_layers.py)
ONNX_CHECKED = {"vit", "bert", "convnext", "mobilenet_v2", "regnet"}


def _check_drop(name, graph, inputs, found):
    """Drop the top-ranked block: params fall by its own, it runs at batch 3 (and matches ONNX Runtime)."""
    dropped, report = PassManager.parse("drop-layers{count=1}").run(graph, inputs)
    (stats,) = report.stats("drop-layers")
    assert graph.num_params() - dropped.num_params() == found.get(stats.dropped[0]).params
    wider = tuple(torch.cat([t, t[:1]]) for t in inputs)
    expected = to_module(dropped)(*wider)
    assert expected.shape[0] == 3
    if name not in ONNX_CHECKED:
        return
    pytest.importorskip("onnxruntime")
    from graphopt.backends import onnx as onnx_backend

    torch.testing.assert_close(onnx_backend.compile(dropped)(*wider), expected, rtol=1e-4, atol=1e-4)


def test_llama_layers_nest_attention_and_mlp():
    graph, _ = simplified("llama")
    found = find_blocks(graph)
    assert [b.name for b in found] == ["model.layers.0#attention", "model.layers.0", "model.layers.0#mlp",
                                       "model.layers.1#attention", "model.layers.1", "model.layers.1#mlp"]
    layer, attention, mlp = found.get("model.layers.0"), found.get("model.layers.0#attention"), found.get(
        "model.layers.0#mlp")
    assert layer.children == (attention.name, mlp.name) and attention.parent == mlp.parent == layer.name
    assert layer.params == attention.params + mlp.params  # pre-norm: nothing between the two adds
    assert layer.params == sum(graph.weights[f"model.layers.0.{w}.weight"].data.numel() for w in (
        "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
        "mlp.up_proj", "mlp.down_proj", "input_layernorm", "post_attention_layernorm"))
    assert layer.skip == "model.embed_tokens" and set(attention.nodes) | set(mlp.nodes) == set(layer.nodes)
    assert [b.name for b in found.select("layer")] == ["model.layers.0", "model.layers.1"]
    assert len(found.select("attention")) == 2 and len(found.select("any")) == 6


def test_bert_post_norm_layer_spans_the_norm_between():
    graph, _ = simplified("bert")
    found = find_blocks(graph)
    layer = found.get("bert.encoder.layer.0")
    parts = [found.get(name) for name in layer.children]
    norm = graph.weights["bert.encoder.layer.0.attention.output.LayerNorm.weight"].data.numel()
    assert [p.kind for p in parts] == ["attention", "mlp"]
    assert layer.params == parts[0].params + parts[1].params + 2 * norm  # the post-attention LayerNorm


def test_resnet50_has_16_bottlenecks_4_with_projection():
    graph, _ = simplified("resnet50", "base")
    found = find_blocks(graph)
    assert len(found) == 16 and all(b.kind == "conv" and b.droppable for b in found)
    assert [b.name for b in found if b.shortcut == "projection"] == ["layer1.0", "layer2.0", "layer3.0", "layer4.0"]
    # a projection block is its branch only: the shortcut conv stays when it is dropped
    block = found.get("layer2.0")
    assert "layer2.0.downsample.0" not in block.nodes and block.skip.startswith("layer2.0.downsample")


class _Block(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.fc = nn.Linear(width, width)

    def forward(self, x):
        return x + self.fc(torch.relu(x))


class _Escaping(nn.Module):
    """Two blocks; the first's branch output is also returned, so it cannot be dropped."""

    def __init__(self) -> None:
        super().__init__()
        self.first, self.second = _Block(8), _Block(8)

    def forward(self, x):
        branch = self.first.fc(torch.relu(x))
        y = x + branch
        return self.second(y), branch * 2


class _NotBlocks(nn.Module):
    """A tanh-GELU written out (x + c x^3) and a sum of two projections of x: neither is a residual block."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(8, 8), nn.Linear(8, 8)

    def forward(self, x):
        gelu = 0.5 * x * (1 + torch.tanh(0.79788 * (x + 0.044715 * x ** 3)))
        return self.a(gelu) + self.b(gelu) * torch.sigmoid(gelu)


def test_escaping_branch_is_reported_not_droppable():
    graph = graphopt.trace(_Escaping(), (torch.randn(2, 8),))
    found = find_blocks(graph)
    assert len(found) == 2
    first = next(b for b in found if not b.droppable)
    assert "is also read by" in first.why_not and found.get("second").droppable


def test_formulas_and_parallel_branches_are_not_blocks():
    graph = graphopt.trace(_NotBlocks(), (torch.randn(2, 8),))
    assert len(find_blocks(graph)) == 0


def test_analysis_is_cached_by_the_manager():
    graph = graphopt.trace(_Escaping(), (torch.randn(2, 8),))
    analyses = AnalysisManager()
    assert analyses.get(ResidualBlocks, graph) is analyses.get(ResidualBlocks, graph)
    assert analyses.computations[ResidualBlocks()] == 1
