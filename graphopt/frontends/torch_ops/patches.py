"""ATen converters for patch extraction: im2col (F.unfold) and col2im (F.fold), batched or not."""

from __future__ import annotations

from graphopt.frontends.torch import register_torch_op
from graphopt.frontends.torch_ops._common import as_list


def _pair(v) -> list[int]:
    v = as_list(v)
    return [int(i) for i in (v * 2 if len(v) == 1 else v)]


def _window(args) -> dict:
    kernel, dilation, padding, stride = args
    return {"kernel": _pair(kernel), "dilation": _pair(dilation), "padding": _pair(padding), "stride": _pair(stride)}


def _batched(ctx, op: str, x, attrs: dict, batched_rank: int):
    """Run `op` on `x`; an unbatched input gets a batch axis of 1 for the op and loses it after."""
    if x.rank == batched_rank:
        return ctx.emit1(op, [x], attrs)
    x = ctx.emit1("reshape", [x], {"shape": [1, *x.shape]})
    out = ctx.emit1(op, [x], attrs)
    return ctx.emit1("reshape", [out], {"shape": list(out.shape[1:])})


@register_torch_op("aten.im2col")
def _im2col(ctx, node):
    return _batched(ctx, "im2col", ctx.value(node.args[0]), _window(node.args[1:5]), 4)


@register_torch_op("aten.col2im")
def _col2im(ctx, node):
    attrs = {"output_size": _pair(node.args[1]), **_window(node.args[2:6])}
    return _batched(ctx, "col2im", ctx.value(node.args[0]), attrs, 3)
