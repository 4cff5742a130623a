"""Shared test helpers: zoo models traced once per session, and inputs resized along dynamic axes."""

from __future__ import annotations

import functools

import pytest
import torch

import graphopt
from graphopt import models_zoo


def resize_inputs(inputs: tuple, dynamic_axes: dict, sizes: dict[str, int]) -> tuple:
    """Inputs with each dynamic axis resized to `sizes[axis name]`, values repeated cyclically.

    Repeating the example values (rather than drawing new ones) keeps token ids in the
    vocabulary and attention masks well formed.
    """
    out = []
    for i, x in enumerate(inputs):
        for axis, name in dynamic_axes.get(i, {}).items():
            if name in sizes:
                index = torch.arange(sizes[name]) % x.shape[axis]
                x = x.index_select(axis, index)
        out.append(x)
    return tuple(out)


@functools.lru_cache(maxsize=None)
def traced_zoo_model(name: str):
    """(model, example_inputs, graph) for a tiny zoo model, traced with its dynamic axes."""
    model, inputs = models_zoo.get(name, "tiny")
    graph = graphopt.trace(model, inputs, dynamic=models_zoo.spec(name).dynamic_axes)
    return model, inputs, graph


@pytest.fixture(autouse=True)
def _restore_registries():
    """Ops, rules, converters, kernels and criteria a test registers do not leak into the tests after
    it (several tests check that every registered op is covered by a back-end)."""
    from graphopt.analysis import channel_rules
    from graphopt.backends.torch import kernels
    from graphopt.frontends import torch as torch_frontend
    from graphopt.frontends import torch_ops  # noqa: F401 - registers the built-in converters first
    from graphopt.ir import ops
    from graphopt.passes.prune import CRITERIA

    registries = [ops.OPS, channel_rules._RULES, torch_frontend._CONVERTERS, kernels.KERNELS, CRITERIA]
    saved = [dict(r) for r in registries]
    yield
    for registry, snapshot in zip(registries, saved):
        registry.clear()
        registry.update(snapshot)


@pytest.fixture(params=models_zoo.list_models())
def zoo_name(request) -> str:
    return request.param
