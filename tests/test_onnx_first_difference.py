"""`first_difference`: the first node where ONNX Runtime and the torch kernels disagree, and why."""

from __future__ import annotations

import torch

import graphopt
from graphopt.backends.onnx import compile as ort_compile, first_difference, register_lowering
from graphopt.backends.onnx.lowering import LOWERINGS
from graphopt.backends.torch import to_module


class Indexer(torch.nn.Module):
    """A sparse-attention indexer: each query keeps its top-8 causal keys, on a sequence of 16.

    Early rows have fewer than 8 unmasked keys, so top-k picks among equal `-inf` scores; which masked
    keys it picks is up to the implementation, and the output depends on it (the selection is used as a
    mask that the causal mask does not repeat).
    """

    def __init__(self) -> None:
        super().__init__()
        self.q = torch.nn.Linear(8, 8)
        self.k = torch.nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores = self.q(x) @ self.k(x).transpose(-1, -2)
        causal = torch.ones(x.shape[1], x.shape[1], dtype=torch.bool).triu(1)
        scores = scores.masked_fill(causal, float("-inf"))
        chosen = scores.topk(8, dim=-1).indices
        keep = torch.full_like(scores, float("-inf")).scatter(-1, chosen, 0.0)
        return torch.softmax(self.q(x) @ self.k(x).transpose(-1, -2) + keep, dim=-1) @ x


class Small(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = torch.nn.Linear(8, 8), torch.nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


def test_a_faithful_lowering_has_no_difference():
    torch.manual_seed(0)
    x = torch.randn(2, 8)
    assert first_difference(graphopt.trace(Small().eval(), (x,)), (x,)) is None


def test_a_wrong_lowering_is_named_at_its_node():
    torch.manual_seed(0)
    x = torch.randn(2, 8)
    graph = graphopt.trace(Small().eval(), (x,))
    right = LOWERINGS.get("relu")
    register_lowering("relu", lambda b, node, ins: b.op("Sigmoid", ins[:1], dtype=node.outputs[0].dtype),
                      replace=True)
    try:
        found = first_difference(graph, (x,))
    finally:
        register_lowering("relu", right, replace=True)
    assert found is not None and found.node.op == "relu" and not found.tie_order
    assert "max error" in found.detail and "relu" in str(found)
    assert first_difference(graph, (x,)) is None  # the right lowering is back


def test_top_k_over_ties_is_diagnosed_as_the_model_depending_on_tie_order():
    torch.manual_seed(0)
    x = torch.randn(2, 16, 8)
    model = Indexer().eval()
    graph = graphopt.trace(model, (x,))
    with torch.no_grad():
        torch_out, ort_out = to_module(graph)(x), ort_compile(graph, threads=1)(x)
    # the premise: torch 2.13's CPU top-k orders these ties unlike ONNX Runtime, so the outputs differ
    assert not torch.allclose(torch_out, ort_out, rtol=1e-4, atol=1e-4)
    found = first_difference(graph, (x,))
    assert found is not None and found.node.op == "topk" and found.tie_order
    assert "equal" in found.detail and "ties" in found.detail
