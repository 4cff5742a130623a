"""Helpers the ONNX lowerings share: typed casts, per-axis attributes, and Reduce/Reshape/Expand written the
way every opset and dynamic shape wants them."""

from __future__ import annotations

from typing import Sequence

import torch

from graphopt.ir import dims as D
from graphopt.ir.graph import Node
from graphopt.backends.onnx.builder import OnnxBuilder


def out_of(node: Node, i: int = 0):
    return node.outputs[i]


def casted(b: OnnxBuilder, node: Node, ins: list, dtype: torch.dtype) -> list[str]:
    return [b.cast(name, dtype, value.dtype) for name, value in zip(ins, node.inputs)]


def scalar(b: OnnxBuilder, number, dtype: torch.dtype) -> str:
    return b.const(number, dtype)


def per_axis(value, n: int) -> list:
    """An attribute given once or per spatial axis, as one entry per axis."""
    if isinstance(value, (list, tuple)):
        return list(value) if len(value) == n else list(value) * (n // max(len(value), 1))
    return [value] * n


def axes_list(axes, rank: int) -> list[int]:
    return [int(a) % max(rank, 1) for a in axes]


def reduce(b: OnnxBuilder, op_type: str, x: str, axes: Sequence[int] | None, keepdims: bool,
           dtype: torch.dtype) -> str:
    """Reduce* with `axes` as an attribute or an input, whichever the opset wants (None: all axes)."""
    axes_as_input = op_type == "ReduceSum" and b.opset >= 13 or b.opset >= 18
    attrs: dict = {"keepdims": int(keepdims)}
    inputs = [x]
    if axes is not None:
        if axes_as_input:
            inputs.append(b.i64(list(axes)))
        else:
            attrs["axes"] = list(axes)
    return b.op(op_type, inputs, attrs, dtype=dtype)


def reshape(b: OnnxBuilder, x: str, in_shape: Sequence[D.Dim], out_shape: Sequence[D.Dim],
            dtype: torch.dtype) -> str:
    """Reshape to `out_shape`, keeping the shape tensor constant whenever possible.

    A target dim equal to the input dim at the same position is written 0
    ("copy"), and one remaining unknown dim is written -1, so typical dynamic
    reshapes ([batch, seq, 4, 16] from [batch, seq, 64]) need no run-time shape
    arithmetic. A literal 0 in the target needs allowzero, and then every dim
    is given explicitly.
    """
    in_shape = [b.resolve(d) for d in in_shape]
    out_shape = [b.resolve(d) for d in out_shape]
    if D.shapes_equal(in_shape, out_shape):
        return x
    if any(isinstance(d, int) and d == 0 for d in out_shape):
        return b.op("Reshape", [x, b.shape(out_shape)], {"allowzero": 1}, dtype=dtype)
    spec: list = []
    unknown: list[int] = []
    for i, d in enumerate(out_shape):
        if isinstance(d, int):
            spec.append(d)
        elif i < len(in_shape) and D.dims_equal(in_shape[i], d):
            spec.append(0)
        else:
            spec.append(d)
            unknown.append(i)
    if unknown:
        # the most complex unknown dim is the one left for ONNX to infer
        spec[max(unknown, key=lambda i: len(str(spec[i])))] = -1
    return b.op("Reshape", [x, b.shape(spec)], dtype=dtype)


def expand(b: OnnxBuilder, x: str, in_shape: Sequence[D.Dim], out_shape: Sequence[D.Dim], dtype: torch.dtype) -> str:
    """Expand, writing 1 for every target dim the input already has (ONNX Expand broadcasts both ways)."""
    in_shape = [b.resolve(d) for d in in_shape]
    out_shape = [b.resolve(d) for d in out_shape]
    offset = len(out_shape) - len(in_shape)
    spec: list = []
    for i, d in enumerate(out_shape):
        j = i - offset
        spec.append(1 if j >= 0 and D.dims_equal(in_shape[j], d) else d)
    if all(isinstance(d, int) and d == 1 for d in spec) and offset == 0:
        return x
    return b.op("Expand", [x, b.shape(spec)], dtype=dtype)


def neg_inf(b: OnnxBuilder, dtype: torch.dtype) -> str:
    return b.const(float("-inf"), dtype)
