"""Creation ops (full, arange): tensors made from attributes alone, on the device of the graph's inputs."""

from __future__ import annotations

import torch

from graphopt.ir import dims as D
from graphopt.ir.graph import Node
from graphopt.ir.ops._core import CREATION, TensorType, kernel, op


@op("full", "", attrs={"shape": "output shape (dims may be symbolic)", "value": "fill value", "dtype": "element type"},
    shape="the shape attr", category="creation", doc="a tensor filled with value", traits={CREATION})
def _full(node: Node) -> list[TensorType]:
    return [(tuple(node.attrs["shape"]), node.attrs["dtype"])]


@kernel("full")
def full(*, shape, value, dtype, device=None):
    return torch.full(shape, value, dtype=dtype, device=device)


@op("arange", "", attrs={"start": "first value", "end": "bound (may be symbolic)", "step": "increment",
                         "dtype": "element type"}, shape="[ceil((end - start) / step)]", category="creation",
    doc="torch.arange", traits={CREATION})
def _arange(node: Node) -> list[TensorType]:
    a = node.attrs
    return [((D.ceildiv(a["end"] - a["start"], a.get("step", 1)),), a["dtype"])]


@kernel("arange")
def arange(*, start, end, step, dtype, device=None):
    return torch.arange(start, end, step, dtype=dtype, device=device)
