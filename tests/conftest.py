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


@pytest.fixture(params=models_zoo.list_models())
def zoo_name(request) -> str:
    return request.param
