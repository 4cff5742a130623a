"""ONNX lowerings of ops that create tensors: full (ConstantOfShape or Expand) and arange (Range)."""

from __future__ import annotations

import torch

from graphopt.backends.onnx.dtypes import tensor_proto
from graphopt.backends.onnx.lowering import lowering


@lowering("full")
def _full(b, node, ins):
    dt = node.attrs["dtype"]
    shape = b.shape(node.attrs["shape"])
    value = node.attrs["value"]
    if not isinstance(value, (bool, int, float)):  # a symbolic dim used as a value
        scalar = b.cast(b.scalar_dim(value), dt, torch.int64)
        return b.op("Expand", [scalar, shape], dtype=dt)
    fill = tensor_proto("value", torch.tensor([value], dtype=dt))
    return b.op("ConstantOfShape", [shape], {"value": fill}, dtype=dt)


@lowering("arange")
def _arange(b, node, ins):
    dt = node.attrs["dtype"]
    work = dt if dt in (torch.float32, torch.float64, torch.int16, torch.int32, torch.int64) else torch.float32
    parts = []
    for key, default in (("start", 0), ("end", None), ("step", 1)):
        v = node.attrs.get(key, default)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            parts.append(b.const(v, work))
        else:
            parts.append(b.cast(b.scalar_dim(v), work, torch.int64))
    return b.cast(b.op("Range", parts, dtype=work), dt, work)
