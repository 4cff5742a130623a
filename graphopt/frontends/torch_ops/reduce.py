"""ATen converters for reductions: sum/mean/amax/..., argmax/argmin, max.dim, var."""

from __future__ import annotations

from graphopt.frontends.torch import register_torch_op
from graphopt.frontends.torch_ops._common import as_list, cast_to, schema_arg


def _reduce(op: str):
    def convert(ctx, node):
        x = ctx.value(node.args[0])
        whole = str(node.target).endswith(".default")  # e.g. sum(x, dtype=None): reduce everything
        axes = None if whole else schema_arg(node, 1, "dim", None)
        keepdim = False if whole else bool(schema_arg(node, 2, "keepdim", False))
        if axes is not None:
            axes = [int(a) % max(x.rank, 1) for a in as_list(axes)]
            if not axes:
                axes = None
        out = ctx.emit1(op, [x], {"axes": axes, "keepdim": keepdim})
        return cast_to(ctx, out, ctx.out_dtype())

    return convert


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
    axes = schema_arg(node, 1, "dim", None)
    correction = node.kwargs.get("correction", 1)
    if "unbiased" in node.kwargs:
        correction = 1 if node.kwargs["unbiased"] else 0
    return ctx.emit1("var", [x], {"axes": None if axes is None else [int(a) % x.rank for a in as_list(axes)],
                                  "keepdim": bool(node.kwargs.get("keepdim", False)), "correction": correction})
