"""ATen converters for reductions: sum/mean/amax/..., argmax/argmin, max.dim, var, norms, logsumexp, bucketize."""

from __future__ import annotations

import math

from graphopt.errors import GraphoptError
from graphopt.frontends.torch import register_torch_op
from graphopt.frontends.torch_ops._common import as_list, cast_to, schema_arg


def _reduce(op: str):
    def convert(ctx, node):
        x = ctx.value(node.args[0])
        axes, keepdim = _axes_keepdim(node, x)
        out = ctx.emit1(op, [x], {"axes": axes, "keepdim": keepdim})
        return cast_to(ctx, out, ctx.out_dtype())

    return convert


def _axes_keepdim(node, x) -> tuple[list[int] | None, bool]:
    """The reduced axes (None: all) and keepdim, read by the overload's schema.

    Overloads without a `dim` argument (sum.default, any.default) reduce everything;
    amax.default does take `dim`, a list, where an empty one means every axis.
    """
    names = [a.name for a in node.target._schema.arguments] if hasattr(node.target, "_schema") else []
    if "dim" not in names:
        return None, False
    axes = schema_arg(node, names.index("dim"), "dim", None)
    keepdim = bool(schema_arg(node, names.index("keepdim"), "keepdim", False)) if "keepdim" in names else False
    if axes is not None:
        axes = [int(a) % max(x.rank, 1) for a in as_list(axes)] or None
    return axes, keepdim


for _aten, _op in {"mean": "mean", "sum": "sum", "amax": "amax", "amin": "amin", "any": "any", "all": "all"}.items():
    register_torch_op(f"aten.{_aten}")(_reduce(_op))


@register_torch_op("aten.prod")
def _prod(ctx, node):
    return _reduce("prod")(ctx, node)


@register_torch_op("aten.argmax", "aten.argmin")
def _argmax(ctx, node):
    op = "argmax" if "argmax" in str(node.target) else "argmin"
    x = ctx.value(node.args[0])
    axis = schema_arg(node, 1, "dim", None)
    return ctx.emit1(op, [x], {"axes": None if axis is None else [int(axis) % x.rank],
                               "keepdim": bool(schema_arg(node, 2, "keepdim", False))})


@register_torch_op("aten.max.dim", "aten.min.dim")
def _max_dim(ctx, node):
    op = "amax" if "max" in str(node.target) else "amin"
    x = ctx.value(node.args[0])
    axes = [int(node.args[1]) % x.rank]
    keep = bool(schema_arg(node, 2, "keepdim", False))
    values = ctx.emit1(op, [x], {"axes": axes, "keepdim": keep})
    indices = ctx.emit1("argmax" if op == "amax" else "argmin", [x], {"axes": axes, "keepdim": keep})
    return [values, indices]


@register_torch_op("aten.max.default", "aten.min.default")
def _max_all(ctx, node):
    op = "amax" if "max" in str(node.target) else "amin"
    return ctx.emit1(op, [ctx.value(node.args[0])], {"axes": None, "keepdim": False})


@register_torch_op("aten.var", "aten.var.correction")
def _var(ctx, node):
    x = ctx.value(node.args[0])
    axes, keepdim = _axes_keepdim(node, x)  # by schema: var.dim takes unbiased and keepdim positionally
    return ctx.emit1("var", [x], {"axes": axes, "keepdim": keepdim, "correction": _correction(node)})


def _correction(node) -> int:
    """var/std's Bessel correction, from whichever spelling the overload has (correction or unbiased)."""
    names = [a.name for a in node.target._schema.arguments]
    correction = schema_arg(node, names.index("correction"), "correction", 1) if "correction" in names else 1
    if "unbiased" in names:
        correction = 1 if schema_arg(node, names.index("unbiased"), "unbiased", True) else 0
    return 1 if correction is None else correction


@register_torch_op("aten.std", "aten.std.correction")
def _std(ctx, node):
    x = ctx.value(node.args[0])
    axes, keepdim = _axes_keepdim(node, x)
    return ctx.emit1("sqrt", [ctx.emit1("var", [x], {"axes": axes, "keepdim": keepdim,
                                                      "correction": _correction(node)})])


@register_torch_op("aten.var_mean", "aten.std_mean")
def _var_mean(ctx, node):
    """(variance or standard deviation, mean) in one call, as timm's older weight standardisation computes
    them: two reductions in the graph."""
    x = ctx.value(node.args[0])
    axes, keepdim = _axes_keepdim(node, x)
    spread = ctx.emit1("var", [x], {"axes": axes, "keepdim": keepdim, "correction": _correction(node)})
    if "std_mean" in str(node.target):
        spread = ctx.emit1("sqrt", [spread])
    return [spread, ctx.emit1("mean", [x], {"axes": axes, "keepdim": keepdim})]


@register_torch_op("aten.linalg_vector_norm")
def _vector_norm(ctx, node):
    """||x||_ord over dim, decomposed: ord 2 (the common one) is sqrt(sum(x * x))."""
    x = ctx.value(node.args[0])
    order = float(schema_arg(node, 1, "ord", 2))
    axes, keepdim = _axes_keepdim(node, x)
    dtype = ctx.out_dtype()
    x = cast_to(ctx, x, dtype)
    reduce = {"axes": axes, "keepdim": keepdim}
    if order == 0:  # the number of non-zero entries
        nonzero = cast_to(ctx, ctx.emit1("ne", [x, ctx.scalar(0.0, dtype=dtype)]), dtype)
        return ctx.emit1("sum", [nonzero], reduce)
    if order == 2:
        return ctx.emit1("sqrt", [ctx.emit1("sum", [ctx.emit1("mul", [x, x])], reduce)])
    size = ctx.emit1("abs", [x])
    if order in (math.inf, -math.inf):
        return ctx.emit1("amax" if order > 0 else "amin", [size], reduce)
    if order == 1:
        return ctx.emit1("sum", [size], reduce)
    powered = ctx.emit1("pow", [size, ctx.scalar(order, dtype=dtype)])
    total = ctx.emit1("sum", [powered], reduce)
    return ctx.emit1("pow", [total, ctx.scalar(1.0 / order, dtype=dtype)])


@register_torch_op("aten.logsumexp")
def _logsumexp(ctx, node):
    """log(sum(exp(x))) over dim, shifted by the maximum as torch does (an infinite maximum shifts by 0)."""
    x = cast_to(ctx, ctx.value(node.args[0]), ctx.out_dtype())
    axes, keepdim = _axes_keepdim(node, x)
    top = ctx.emit1("amax", [x], {"axes": axes, "keepdim": True})
    infinite = ctx.emit1("eq", [ctx.emit1("abs", [top]), ctx.scalar(math.inf, dtype=x.dtype)])
    shift = ctx.emit1("where", [infinite, ctx.scalar(0.0, dtype=x.dtype), top])
    total = ctx.emit1("sum", [ctx.emit1("exp", [ctx.emit1("sub", [x, shift])])], {"axes": axes, "keepdim": keepdim})
    if not keepdim:
        shift = ctx.emit1("reshape", [shift], {"shape": list(total.shape)})
    return ctx.emit1("add", [ctx.emit1("log", [total]), shift])


@register_torch_op("aten.bucketize.Tensor")
def _bucketize(ctx, node):
    """The bucket of each x among sorted 1-d boundaries: how many boundaries lie below it (or at it, right=True)."""
    x, bounds = ctx.value(node.args[0]), ctx.value(node.args[1])
    if bounds.rank != 1:
        raise GraphoptError(f"node '{node.name}': bucketize needs 1-d boundaries, not {list(bounds.shape)}")
    column = ctx.emit1("reshape", [x], {"shape": [*x.shape, 1]})
    below = ctx.emit1("ge" if node.kwargs.get("right", False) else "gt", [column, bounds])
    count = ctx.emit1("sum", [below], {"axes": [x.rank], "keepdim": False})
    return cast_to(ctx, count, ctx.out_dtype())
