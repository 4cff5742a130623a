"""ONNX converters for data-dependent selection and element indexing: TopK, GatherElements, ScatterElements."""

from __future__ import annotations

import numpy as np
import torch

from graphopt.errors import GraphoptError
from graphopt.frontends.onnx import register_onnx_op
from graphopt.frontends.onnx_ops._common import attr, value_at
from graphopt.ir.graph import Value


@register_onnx_op("TopK")
def _topk(ctx, node):
    x = value_at(ctx, node, 0)
    if ctx.opset < 10:
        k = int(attr(node, "k"))
    else:
        (k,) = ctx.ints(ctx.input(node, 1), "k")
    attrs = {"k": k, "axis": int(attr(node, "axis", -1)) % x.rank, "largest": bool(attr(node, "largest", 1)),
             "sorted": bool(attr(node, "sorted", 1))}
    return ctx.emit("topk", [x], attrs).outputs


def _nonnegative(ctx, index_name: str, x: Value, axis: int) -> Value:
    """ONNX indices may count from the end; torch's gather and scatter take 0..size-1 only."""
    idx = ctx.value(index_name)
    known = ctx.known(index_name)
    if known is not None and not known.symbolic and not (np.asarray(known.array) < 0).any():
        return idx
    size = x.shape[axis]
    if not isinstance(size, int):
        raise GraphoptError(f"{ctx.where()}: indices that may be negative, into a symbolic axis, are not supported")
    negative = ctx.emit1("lt", [idx, ctx.scalar(0, idx.dtype)])
    return ctx.emit1("where", [negative, ctx.emit1("add", [idx, ctx.scalar(size, idx.dtype)]), idx])


@register_onnx_op("GatherElements")
def _gather_elements(ctx, node):
    x = value_at(ctx, node, 0)
    axis = int(attr(node, "axis", 0)) % x.rank
    idx = _nonnegative(ctx, node.input[1], x, axis)
    if idx.dtype != torch.int64:
        idx = ctx.emit1("cast", [idx], {"dtype": torch.int64})
    return ctx.emit1("gather", [x, idx], {"axis": axis})


_REDUCTION = {"none": "none", "add": "add", "mul": "mul", "max": "amax", "min": "amin"}


@register_onnx_op("ScatterElements", "Scatter")
def _scatter_elements(ctx, node):
    x, src = value_at(ctx, node, 0), value_at(ctx, node, 2)
    axis = int(attr(node, "axis", 0)) % x.rank
    reduction = attr(node, "reduction", "none")
    if reduction not in _REDUCTION:
        raise GraphoptError(f"{ctx.where()}: ScatterElements reduction {reduction!r} is not supported")
    idx = _nonnegative(ctx, node.input[1], x, axis)
    if idx.dtype != torch.int64:
        idx = ctx.emit1("cast", [idx], {"dtype": torch.int64})
    return ctx.emit1("scatter", [x, idx, src], {"axis": axis, "reduce": _REDUCTION[reduction]})
