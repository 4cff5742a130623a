"""In-place ops on fresh activations are renamed into functional ops instead of re-tracing the program."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import graphopt
from graphopt.backends.torch import to_module
from graphopt.frontends import torch as torch_frontend
from graphopt.frontends.torch_inplace import functional_twin, rewrite_local_inplace


class ResidualInplace(nn.Module):
    """ReLU(inplace=True) after a norm and `out += identity`: the patterns of ResNet-style code."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.conv2, self.bn2 = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += x
        return self.relu(out)


class ReadBeforeWrite(nn.Module):
    """A reader before the write must see the old value, a reader after it the new one."""

    def forward(self, x):
        a = x * 2
        before = a + 1
        a.relu_()
        return before * a


class WriteThroughView(nn.Module):
    def forward(self, x):
        a = x * 2
        a.view(-1).relu_()  # writes `a` through a view
        return a + 1


class WriteToInput(nn.Module):
    def forward(self, x):
        x.add_(1)
        return x * 2


def exported(model, *inputs):
    return torch.export.export(model.eval(), inputs, strict=False)


def test_functional_twin():
    assert functional_twin(torch.ops.aten.relu_.default) is torch.ops.aten.relu.default
    assert functional_twin(torch.ops.aten.add_.Tensor) is torch.ops.aten.add.Tensor
    assert functional_twin(torch.ops.aten.relu.default) is None
    assert functional_twin(torch.ops.aten.copy_.default) is torch.ops.aten.copy.default  # dst with src written in
    assert functional_twin(torch.ops.aten.add.Tensor) is None  # already functional


@pytest.mark.parametrize("model", [ResidualInplace(), ReadBeforeWrite()], ids=lambda m: type(m).__name__)
def test_local_writes_are_renamed_and_exact(model, monkeypatch):
    x = torch.randn(2, 4, 6, 6)
    program = exported(model, x)
    assert rewrite_local_inplace(program.graph)
    assert not any(getattr(n.target, "_schema", None) is not None and n.target._schema.is_mutable
                   for n in program.graph.nodes)
    fast = graphopt.trace(model, (x,))
    monkeypatch.setattr(torch_frontend, "rewrite_local_inplace", lambda graph: False)  # the functionalised path
    slow = graphopt.trace(model, (x,))
    assert str(fast) == str(slow)
    with torch.no_grad():
        expected = model(x.clone())
        torch.testing.assert_close(to_module(fast)(x), expected, rtol=0, atol=0)
        torch.testing.assert_close(to_module(fast)(torch.randn(5, 4, 6, 6)).shape, torch.Size([5, 4, 6, 6]))


@pytest.mark.parametrize("model", [WriteThroughView(), WriteToInput()], ids=lambda m: type(m).__name__)
def test_writes_that_others_can_see_are_left_to_functionalisation(model):
    x = torch.randn(2, 4)
    program = exported(model, x.clone())
    text = str(program.graph)
    assert not rewrite_local_inplace(program.graph)
    assert str(program.graph) == text  # all or nothing: nothing was rewritten
    graph = graphopt.trace(model, (x.clone(),))
    with torch.no_grad():
        torch.testing.assert_close(to_module(graph)(x.clone()), model(x.clone()))
