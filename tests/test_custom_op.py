"""A custom op defined in one place (`graphopt.define_op`) is traced, analysed, pruned and run on torch and ORT.

Everything goes through the public API: a user model calls a `torch.library`
custom op graphopt does not know; one `define_op` call gives it a shape rule,
kernel, converter, channel rule and ONNX lowering.
"""

from __future__ import annotations


import pytest
import torch
from torch import nn

import graphopt
from graphopt.analysis import channel_groups
from graphopt.backends.torch import to_module
from graphopt.frontends.torch import CONVERTERS
from graphopt.ir import op_table
from graphopt.ir.ops import OPS

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from graphopt.backends import onnx as gonnx  # noqa: E402
from graphopt.custom_ops import CustomNode  # noqa: E402

COLUMNS = ("torch_kernel", "channel_rule", "mac_rule", "onnx_lowering")


@torch.library.custom_op("graphopt_test::scaled_swish", mutates_args=())
def _scaled_swish(x: torch.Tensor, scale: float) -> torch.Tensor:
    return x * torch.sigmoid(x) * scale


@_scaled_swish.register_fake
def _(x, scale):
    return torch.empty_like(x)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = torch.ops.graphopt_test.scaled_swish(self.conv1(x), 1.5)
        x = torch.relu(self.conv2(x))
        return self.fc(x.mean(dim=(2, 3)))


def _lower(b, node, ins):
    dtype = node.outputs[0].dtype
    gated = b.op("Mul", [ins[0], b.op("Sigmoid", ins[:1], dtype=dtype)], dtype=dtype)
    return b.op("Mul", [gated, b.const(float(node.attrs["scale"]), dtype)], dtype=dtype)


def _define(channel_rule="elementwise", **overrides):
    options = dict(inputs="x", attrs={"scale": "output scale"}, shape="same",
                   kernel=lambda x, *, scale: x * torch.sigmoid(x) * scale,
                   torch_targets=["graphopt_test::scaled_swish"], channel_rule=channel_rule, onnx=_lower)
    options.update(overrides)
    return graphopt.define_op("scaled_swish", **options)


@pytest.fixture(autouse=True)
def _clean_registries():
    """Each test defines the op afresh; the op and its columns are removed after it."""
    tables = [OPS, CONVERTERS, *(op_table.column(key) for key in COLUMNS)]
    saved = [table.snapshot() for table in tables]
    yield
    for table, snapshot in zip(tables, saved):
        table.restore(snapshot)


def _model_with_dead_channels() -> Net:
    """Half of conv1's and conv2's channels are all zero, so pruning half of each changes nothing."""
    torch.manual_seed(0)
    model = Net().eval()
    with torch.no_grad():
        for conv, consumer, keep in ((model.conv1, model.conv2.weight, 8), (model.conv2, model.fc.weight, 4)):
            conv.weight[keep:] = 0
            conv.bias[keep:] = 0
            consumer[:, keep:] = 0
    return model


def _group_of(graph, param: str):
    return next(g for g in channel_groups(graph) if any(s.value.name == param for s, _ in g.producers()))


def test_traced_model_runs_on_torch_and_onnxruntime():
    _define()
    model, x = Net().eval(), torch.randn(2, 3, 8, 8)
    graph = graphopt.trace(model, (x,))
    node = graph.find_nodes("scaled_swish")[0]
    assert node.attrs == {"scale": 1.5} and node.meta["torch_op"] == "graphopt_test.scaled_swish.default"
    torch.testing.assert_close(to_module(graph)(x), model(x))
    torch.testing.assert_close(gonnx.compile(graph)(x), model(x), atol=1e-5, rtol=1e-4)


def test_elementwise_channel_rule_makes_the_op_prunable():
    _define("elementwise")
    model, x = _model_with_dead_channels(), torch.randn(2, 3, 8, 8)
    graph = graphopt.trace(model, (x,))
    group = _group_of(graph, "conv1.weight")
    assert group.prunable, group.summary()
    assert any(s.value.name == "scaled_swish" for s in group.spaces)  # the group runs through the custom op

    optimized = graphopt.optimize(model, (x,), prune=0.5, backend="onnx")
    pruned = optimized.torch_module(trainable=False)
    assert pruned.state_dict()["conv1.weight"].shape[0] == 8
    assert pruned.state_dict()["conv2.weight"].shape[:2] == (4, 8)
    expected = model(x)
    torch.testing.assert_close(pruned(x), expected, atol=1e-5, rtol=1e-4)          # torch
    torch.testing.assert_close(optimized(x), expected, atol=1e-5, rtol=1e-4)       # ONNX Runtime


@pytest.mark.parametrize("rule,reason", [("barrier", "registered as BARRIER"), (None, "has no channel rule")])
def test_barrier_stops_the_groups_at_the_op(rule, reason):
    _define(rule)
    model, x = _model_with_dead_channels(), torch.randn(2, 3, 8, 8)
    group = _group_of(graphopt.trace(model, (x,)), "conv1.weight")
    assert not group.prunable and any(reason in r and "scaled_swish" in r for r in group.reasons), group.reasons

    optimized = graphopt.optimize(model, (x,), prune=0.5, backend="onnx")
    pruned = optimized.torch_module(trainable=False)
    assert pruned.state_dict()["conv1.weight"].shape[0] == 16  # nothing crosses the barrier
    assert pruned.state_dict()["conv2.weight"].shape[0] == 4  # the group after it is still pruned
    torch.testing.assert_close(optimized(x), model(x), atol=1e-5, rtol=1e-4)


def test_defining_twice_raises_and_registers_nothing():
    _define()
    with pytest.raises(graphopt.GraphoptError, match="already registered"):
        _define()
    before = [table.snapshot() for table in (OPS, CONVERTERS)]
    clash = "torch converter for 'graphopt_test.scaled_swish' is already registered"
    with pytest.raises(graphopt.GraphoptError, match=clash):
        graphopt.define_op("other_swish", inputs="x", shape="same", kernel=torch.sigmoid,
                           torch_targets=["graphopt_test::scaled_swish"])
    assert "other_swish" not in OPS and op_table.get_op_attr("other_swish", "torch_kernel") is None
    assert [table.snapshot() for table in (OPS, CONVERTERS)] == before
    _define(kernel=torch.sigmoid, onnx=None, replace=True)  # replace=True redefines every column
    assert op_table.get_op_attr("scaled_swish", "torch_kernel") is torch.sigmoid
    assert op_table.get_op_attr("scaled_swish", "onnx_lowering") is None  # not kept from the old definition


@pytest.mark.parametrize("bad,match", [
    (dict(channel_rule="elementwize"), "channel_rule must be"),
    (dict(shape=42), "shape must be"),
    (dict(kernel="x * sigmoid(x)"), "kernel must be a function"),
    (dict(onnx="Mul"), "onnx must be"),
    (dict(torch_targets=(), convert=lambda ctx, node: None), "name them in torch_targets"),
])
def test_bad_definitions_are_refused_before_registering(bad, match):
    with pytest.raises(graphopt.GraphoptError, match=match):
        _define(**bad)
    assert "scaled_swish" not in OPS


def test_op_name_must_be_an_identifier():
    with pytest.raises(graphopt.GraphoptError, match="must be an identifier"):
        graphopt.define_op("scaled swish", inputs="x", shape="same", kernel=torch.sigmoid)


def test_custom_domain_node():
    with pytest.raises(graphopt.GraphoptError, match="custom domain"):
        CustomNode("ScaledSwish", "")
    _define(onnx=CustomNode("ScaledSwish", "com.example", version=2))
    model, x = Net().eval(), torch.randn(2, 3, 8, 8)
    exported = gonnx.to_onnx(graphopt.trace(model, (x,)))
    custom = [n for n in exported.graph.node if n.domain]
    assert [(n.op_type, n.domain) for n in custom] == [("ScaledSwish", "com.example")]
    assert onnx.helper.get_attribute_value(custom[0].attribute[0]) == pytest.approx(1.5)
    assert {(o.domain, o.version) for o in exported.opset_import} >= {("com.example", 2)}
    onnx.checker.check_model(exported)


def test_docs_custom_ops_md_runs(capsys):
    from docblocks import run_blocks

    run_blocks("docs/custom_ops.md", minimum=5)
    printed = capsys.readouterr().out
    assert "mylib.scaled_swish.default" in printed and "torch.Size([8, 3, 3, 3])" in printed
    assert "[('ScaledSwish', 'com.example')]" in printed and "already registered" in printed
