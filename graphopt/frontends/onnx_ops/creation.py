"""ONNX converters for ops creating tensors from shapes: ConstantOfShape, Range (Shape and Size are folded)."""

from __future__ import annotations

import torch

from graphopt.errors import GraphoptError
from graphopt.frontends.onnx import register_onnx_op, tensor_scalar
from graphopt.frontends.onnx_ops._common import attr


@register_onnx_op("ConstantOfShape")
def _constant_of_shape(ctx, node):
    shape = ctx.ints(node.input[0], "shape")
    value = attr(node, "value")
    dtype, fill = (torch.float32, 0.0) if value is None else tensor_scalar(value)
    return ctx.emit1("full", [], {"shape": shape, "value": fill, "dtype": dtype})


@register_onnx_op("Range")
def _range(ctx, node):
    start, limit, delta = (ctx.ints(n, what) if not ctx.dtype_of(n).is_floating_point else ctx.floats(n)
                           for n, what in zip(node.input, ("start", "limit", "delta")))
    return ctx.emit1("arange", [], {"start": start[0], "end": limit[0], "step": delta[0],
                                    "dtype": ctx.dtype_of(node.input[0])})


@register_onnx_op("Shape", "Size")
def _shape_of_unknown(ctx, node):  # pragma: no cover - Shape is always folded
    raise GraphoptError(f"{ctx.where()}: the shape of '{node.input[0]}' is unknown")
