"""The core's interpreter: kernels from the op table, the same numbers as the torch back-end, gradients for Taylor."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import graphopt
from graphopt.backends.torch import KERNELS, register_kernel, to_module
from graphopt.errors import GraphoptError
from graphopt.ir import Graph, OpDef, op_table, register_op
from graphopt.ir.interpreter import (GraphInterpreter, run_graph, run_graph_float64, structured_outputs,
                                     trainable_weights)
from graphopt.ir.ops import CREATION, ELEMENTWISE, OPS, TORCH_KERNEL, TRAINING_AWARE, has_trait, ops_with


class TwoHeads(nn.Module):
    """Batch norm (training-aware), arange (creation) and a dict output: every kernel convention is run."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        h = torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3))
        positions = torch.arange(h.shape[0], dtype=h.dtype)
        return {"logits": self.fc(h), "shifted": h + positions[:, None]}


def _traced():
    torch.manual_seed(0)
    model = TwoHeads().eval()
    with torch.no_grad():  # non-trivial running statistics
        model.bn.running_mean.normal_()
        model.bn.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 3, 6, 6)
    return model, x, graphopt.trace(model, (x,))


def test_every_op_has_a_kernel_and_traits_replace_the_old_sets():
    kernels = op_table.column(TORCH_KERNEL)
    assert sorted(name for name in OPS if name not in kernels) == []
    assert ops_with(TRAINING_AWARE) == {"batch_norm", "dropout"}
    assert ops_with(CREATION) == {"full", "arange"}
    assert has_trait("relu", ELEMENTWISE) and has_trait("where", ELEMENTWISE) and not has_trait("triu", ELEMENTWISE)
    assert not has_trait("no_such_op", ELEMENTWISE)


def test_run_graph_is_the_torch_back_end_bit_for_bit():
    model, x, graph = _traced()
    module = to_module(graph, copy_weights=False)
    with torch.no_grad():
        expected = module(x)
    got = run_graph(graph, (x,))
    assert len(got) == 2
    assert torch.equal(got[0], expected["logits"]) and torch.equal(got[1], expected["shifted"])
    rebuilt = structured_outputs(graph, got)
    assert set(rebuilt) == {"logits", "shifted"} and torch.equal(rebuilt["logits"], model(x)["logits"])


def test_run_graph_float64_runs_every_floating_weight_in_float64():
    _, x, graph = _traced()
    module = to_module(graph).double()
    with torch.no_grad():
        expected = module(x.double())
    got = run_graph_float64(graph, (x,))
    assert all(t.dtype == torch.float64 for t in got)
    assert torch.equal(got[0], expected["logits"]) and torch.equal(got[1], expected["shifted"])
    assert all(v.data.dtype != torch.float64 for v in graph.weights.values())  # the graph is left alone


def test_gradients_through_trainable_weights_match_autograd_on_the_module():
    _, x, graph = _traced()
    weights = trainable_weights(graph)
    assert set(weights) == {n for n, v in graph.params().items() if v.data.is_floating_point()}
    out = structured_outputs(graph, run_graph(graph, (x,), weights=weights, grad=True))
    grads = torch.autograd.grad(out["logits"].pow(2).mean(), list(weights.values()), allow_unused=True)

    module = to_module(graph)
    module(x)["logits"].pow(2).mean().backward()
    paths = module.graphopt_weight_paths
    for name, grad in zip(weights, grads):
        assert torch.equal(grad, module.get_parameter(paths[name]).grad), name
    assert all(v.data.grad is None for v in graph.weights.values())  # gradients never land on the graph


def test_interpreter_checks_its_arguments():
    _, x, graph = _traced()
    with pytest.raises(GraphoptError, match="at least one batch"):
        GraphInterpreter(graph, [])
    with pytest.raises(GraphoptError, match="takes 1 inputs, a batch has 2"):
        GraphInterpreter(graph, [(x, x)])
    with pytest.raises(GraphoptError, match="no weight 'nope'"):
        run_graph(graph, (x,), weights={"nope": torch.zeros(1)})


def test_a_missing_kernel_names_the_op_and_the_node():
    register_op(OpDef("kernel_less", lambda node: [(node.inputs[0].shape, node.inputs[0].dtype)], "x"))
    g = Graph("custom")
    x = g.add_input("x", [2, 3], torch.float32)
    g.outputs = [g.create_node("kernel_less", [x], name="block.odd").output]
    with pytest.raises(GraphoptError, match=r"no torch kernel for op 'kernel_less' \(.*block\.odd.*register_kernel"):
        run_graph(g, (torch.randn(2, 3),))
    with pytest.raises(GraphoptError, match=r"no torch kernel for op 'kernel_less'.*block\.odd"):
        to_module(g)

    register_kernel("kernel_less", lambda t: t * 2)
    t = torch.randn(2, 3)
    torch.testing.assert_close(run_graph(g, (t,))[0], t * 2)
    torch.testing.assert_close(to_module(g)(t), t * 2)


def test_register_kernel_has_the_one_duplicate_policy_and_kernels_is_read_only():
    with pytest.raises(GraphoptError, match="already registered"):
        register_kernel("relu", torch.tanh)
    assert KERNELS["relu"] is torch.relu and "relu" in KERNELS and len(KERNELS) == len(OPS)
    with pytest.raises(TypeError):
        KERNELS["relu"] = torch.tanh  # type: ignore[index]
    register_kernel("relu", torch.tanh, replace=True)  # the conftest fixture puts relu back
    assert KERNELS["relu"] is torch.tanh
