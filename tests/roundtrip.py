"""The round-trip check the op tests share: a traced graph, run on torch and on ONNX Runtime, equals eager."""

from __future__ import annotations

import torch
import torch.nn as nn

import graphopt
from graphopt.backends.torch import to_module
from graphopt.ir import Graph


def first(out):
    """The tensor a model's output leads with (a tuple's first item, a ModelOutput's last_hidden_state)."""
    if isinstance(out, (tuple, list)):
        return out[0]
    return getattr(out, "last_hidden_state", out)


def tensors_of(out) -> list[torch.Tensor]:
    """A model's outputs as a flat list of tensors (tuples and lists flattened, a ModelOutput by its first)."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (tuple, list)):
        return [t for item in out for t in tensors_of(item)]
    return [first(out)]


def check_round_trip(model: nn.Module, inputs: tuple, other: tuple | None = None, *, atol: float = 1e-5,
                     **trace_kwargs) -> Graph:
    """The traced graph on torch and on ONNX Runtime equals the eager model, on `inputs` and on `other`:
    same shapes, dtypes and values (rtol 1e-4, `atol`). Returns the graph."""
    from graphopt.backends import onnx as gonnx

    model.eval()
    graph = graphopt.trace(model, inputs, **trace_kwargs)
    module, run = to_module(graph), gonnx.compile(graph, threads=1)
    for feed in [inputs] + ([other] if other is not None else []):
        with torch.no_grad():
            want = tensors_of(model(*feed))
            back = tensors_of(module(*feed))
        onnx_out = tensors_of(run(*feed))
        for got in (back, onnx_out[:len(want)]):
            assert len(got) >= 1
            for g, w in zip(got, want):
                assert g.shape == w.shape and g.dtype == w.dtype, (g.shape, w.shape, g.dtype, w.dtype)
                torch.testing.assert_close(g, w, atol=atol, rtol=1e-4)
    return graph
