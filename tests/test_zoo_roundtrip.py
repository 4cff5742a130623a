"""Every zoo model: trace -> IR -> torch module computes what the original model computes."""

from __future__ import annotations

import torch

from graphopt.backends.torch import to_module
from graphopt import models_zoo

from conftest import resize_inputs, traced_zoo_model


def test_round_trip_matches_eager(zoo_name):
    model, inputs, graph = traced_zoo_model(zoo_name)
    graph.verify()
    module = to_module(graph)
    with torch.no_grad():
        torch.testing.assert_close(module(*inputs), model(*inputs))


def test_round_trip_on_other_dynamic_sizes(zoo_name):
    model, inputs, graph = traced_zoo_model(zoo_name)
    axes = models_zoo.spec(zoo_name).dynamic_axes
    other = resize_inputs(inputs, axes, {"batch": 3, "seq": 11})
    assert any(o.shape != i.shape for o, i in zip(other, inputs))
    with torch.no_grad():
        torch.testing.assert_close(to_module(graph)(*other), model(*other))


def test_dynamic_axes_are_symbolic(zoo_name):
    _, _, graph = traced_zoo_model(zoo_name)
    names = {name for axes in models_zoo.spec(zoo_name).dynamic_axes.values() for name in axes.values()}
    assert set(graph.symbols()) == names
