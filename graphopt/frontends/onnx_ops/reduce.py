"""ONNX converters for reductions and scans: Reduce*, ArgMax/ArgMin, CumSum, Trilu."""

from __future__ import annotations

from graphopt.errors import GraphoptError
from graphopt.frontends.onnx import register_onnx_op
from graphopt.frontends.onnx_ops._common import attr, value_at


_REDUCE = {"ReduceMean": "mean", "ReduceSum": "sum", "ReduceMax": "amax", "ReduceMin": "amin", "ReduceProd": "prod"}


def _reduce_axes(ctx, node) -> list[int] | None:
    axes_in_input = ctx.opset >= 18 or (node.op_type == "ReduceSum" and ctx.opset >= 13)
    axes = ctx.ints(ctx.input(node, 1), "axes") if axes_in_input else attr(node, "axes")
    if not axes:
        if attr(node, "noop_with_empty_axes", 0):
            return []
        return None
    return [int(a) for a in axes]


def _reduce(op: str):
    def convert(ctx, node):
        x = value_at(ctx, node, 0)
        axes = _reduce_axes(ctx, node)
        if axes == []:
            return x
        if axes is not None:
            axes = sorted(a % x.rank for a in axes)
        return ctx.emit1(op, [x], {"axes": axes, "keepdim": bool(attr(node, "keepdims", 1))})

    return convert


for _onnx_op, _op in _REDUCE.items():
    register_onnx_op(_onnx_op)(_reduce(_op))


@register_onnx_op("ReduceSumSquare", "ReduceL2", "ReduceL1")
def _reduce_norms(ctx, node):
    x = value_at(ctx, node, 0)
    axes = _reduce_axes(ctx, node)
    axes = None if axes is None else sorted(a % x.rank for a in axes)
    keep = bool(attr(node, "keepdims", 1))
    y = ctx.emit1("abs", [x]) if node.op_type == "ReduceL1" else ctx.emit1("mul", [x, x])
    y = ctx.emit1("sum", [y], {"axes": axes, "keepdim": keep})
    return ctx.emit1("sqrt", [y]) if node.op_type == "ReduceL2" else y


@register_onnx_op("ArgMax", "ArgMin")
def _argmax(ctx, node):
    if attr(node, "select_last_index", 0):
        raise GraphoptError(f"{ctx.where()}: {node.op_type} with select_last_index=1 is not supported")
    x = value_at(ctx, node, 0)
    op = "argmax" if node.op_type == "ArgMax" else "argmin"
    return ctx.emit1(op, [x], {"axes": [int(attr(node, "axis", 0)) % x.rank],
                               "keepdim": bool(attr(node, "keepdims", 1))})


@register_onnx_op("CumSum")
def _cumsum(ctx, node):
    if attr(node, "exclusive", 0) or attr(node, "reverse", 0):
        raise GraphoptError(f"{ctx.where()}: exclusive or reverse CumSum is not supported")
    x = value_at(ctx, node, 0)
    axis = ctx.ints(node.input[1], "axis")[0]
    return ctx.emit1("cumsum", [x], {"axis": int(axis) % x.rank})


@register_onnx_op("Trilu")
def _trilu(ctx, node):
    x = value_at(ctx, node, 0)
    k = ctx.ints(ctx.input(node, 1), "k")
    op = "triu" if attr(node, "upper", 1) else "tril"
    return ctx.emit1(op, [x], {"diagonal": int(k[0]) if k else 0})
