"""ONNX lowerings of reductions: Reduce* (bool through int32), any/all, argmax/argmin, var."""

from __future__ import annotations

import torch

from graphopt.ir import dims as D
from graphopt.backends.onnx.lowering import Lowering, lowering
from graphopt.backends.onnx.lowerings._common import axes_list, out_of, reduce


_REDUCE = {"mean": "ReduceMean", "sum": "ReduceSum", "amax": "ReduceMax", "amin": "ReduceMin", "prod": "ReduceProd"}


def _reduce_lowering(op_type: str) -> Lowering:
    def lower(b, node, ins):
        dt = out_of(node).dtype
        x_v = node.inputs[0]
        work = dt if dt != torch.bool else torch.int32
        x = b.cast(ins[0], work, x_v.dtype)
        axes = node.attrs.get("axes")
        axes = None if axes is None else axes_list(axes, x_v.rank)
        out = reduce(b, op_type, x, axes, bool(node.attrs.get("keepdim", False)), work)
        return b.cast(out, dt, work)

    return lower


for _op, _onnx in _REDUCE.items():
    lowering(_op)(_reduce_lowering(_onnx))


@lowering("any", "all")
def _any_all(b, node, ins):
    x = b.cast(b.cast(ins[0], torch.bool, node.inputs[0].dtype), torch.int32, torch.bool)
    axes = node.attrs.get("axes")
    axes = None if axes is None else axes_list(axes, node.inputs[0].rank)
    out = reduce(b, "ReduceMax" if node.op == "any" else "ReduceMin", x, axes,
                 bool(node.attrs.get("keepdim", False)), torch.int32)
    return b.cast(out, torch.bool, torch.int32)


@lowering("argmax", "argmin")
def _argmax(b, node, ins):
    op_type = "ArgMax" if node.op == "argmax" else "ArgMin"
    axes = node.attrs.get("axes")
    x = ins[0]
    if axes is None:
        x = b.op("Reshape", [x, b.i64([-1])], dtype=node.inputs[0].dtype)
        return b.op(op_type, [x], {"axis": 0, "keepdims": 0}, dtype=torch.int64)
    axis = axes_list(axes, node.inputs[0].rank)[0]
    return b.op(op_type, [x], {"axis": axis, "keepdims": int(bool(node.attrs.get("keepdim", False)))},
                dtype=torch.int64)


@lowering("var")
def _var(b, node, ins):
    dt = out_of(node).dtype
    x_v = node.inputs[0]
    axes = node.attrs.get("axes")
    axes = list(range(x_v.rank)) if axes is None else axes_list(axes, x_v.rank)
    keep = bool(node.attrs.get("keepdim", False))
    correction = node.attrs.get("correction", 1)
    correction = 1 if correction is None else correction
    mean = reduce(b, "ReduceMean", ins[0], axes, True, dt)
    diff = b.op("Sub", [ins[0], mean], dtype=dt)
    total = reduce(b, "ReduceSum", b.op("Mul", [diff, diff], dtype=dt), axes, keep, dt)
    count = D.prod(x_v.shape[a] for a in axes) - correction
    denom = b.cast(b.scalar_dim(count), dt, torch.int64)
    return b.op("Div", [total, denom], dtype=dt)
