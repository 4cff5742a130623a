"""ATen converters for data-dependent selection: topk, sort, argsort (the second output of sort), one_hot."""

from __future__ import annotations

from graphopt.errors import GraphoptError
from graphopt.frontends.torch import register_torch_op
from graphopt.frontends.torch_ops._common import schema_arg


def _axis(node, x, index: int) -> int:
    return int(schema_arg(node, index, "dim", -1)) % max(x.rank, 1)


@register_torch_op("aten.topk")
def _topk(ctx, node):
    x = ctx.value(node.args[0])
    k = schema_arg(node, 1, "k")
    if not isinstance(k, int):
        raise GraphoptError(f"node '{node.name}': topk with a k computed at run time is not supported; "
                            "k must be a Python int when the model is traced")
    attrs = {"k": k, "axis": _axis(node, x, 2), "largest": bool(schema_arg(node, 3, "largest", True)),
             "sorted": bool(schema_arg(node, 4, "sorted", True))}
    return list(ctx.emit("topk", [x], attrs).outputs)


def _sort_attrs(node, x) -> dict:
    # sort(x, dim, descending) and sort.stable(x, *, stable, dim, descending) put dim in different places
    stable_overload = "stable" in node.kwargs
    return {"axis": _axis(node, x, 99 if stable_overload else 1),
            "descending": bool(schema_arg(node, 99 if stable_overload else 2, "descending", False)),
            "stable": bool(node.kwargs.get("stable") or False)}


@register_torch_op("aten.sort")
def _sort(ctx, node):
    x = ctx.value(node.args[0])
    return list(ctx.emit("sort", [x], _sort_attrs(node, x)).outputs)


@register_torch_op("aten.argsort")
def _argsort(ctx, node):
    x = ctx.value(node.args[0])
    return ctx.emit("sort", [x], _sort_attrs(node, x)).outputs[1]


@register_torch_op("aten.one_hot")
def _one_hot(ctx, node):
    # one_hot(i, C) == (i[..., None] == arange(C)), as int64: MoE dispatch masks are built this way
    idx = ctx.value(node.args[0])
    classes = ctx.out_shape()[-1]
    column = ctx.emit1("reshape", [idx], {"shape": [*idx.shape, 1]})
    positions = ctx.emit1("arange", [], {"start": 0, "end": classes, "step": 1, "dtype": idx.dtype})
    hits = ctx.emit1("eq", [column, positions])
    return ctx.emit1("cast", [hits], {"dtype": ctx.out_dtype()})


@register_torch_op("aten.histc")
def _histc(ctx, node):
    x = ctx.value(node.args[0])
    bins, low, high = (schema_arg(node, 1, "bins", 100), schema_arg(node, 2, "min", 0), schema_arg(node, 3, "max", 0))
    if not all(isinstance(a, (int, float)) for a in (bins, low, high)) or not float(low) < float(high):
        raise GraphoptError(f"node '{node.name}': histc needs bins, min and max known when the model is traced, "
                            f"with min < max (min == max takes the range from the data); got {bins}, {low}, {high}")
    return ctx.emit1("histc", [x], {"bins": int(bins), "min": float(low), "max": float(high)})
