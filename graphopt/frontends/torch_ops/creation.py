"""ATen converters for ops that create tensors: full/zeros/ones (and their _like forms), scalar_tensor, arange, eye."""

from __future__ import annotations

import torch

from graphopt.frontends.torch import register_torch_op
from graphopt.frontends.torch_ops._common import cast_to, full_node
from graphopt.ir import dims as D


@register_torch_op("aten.full", "aten.new_full")
def _full(ctx, node):
    fill = node.args[-1]
    return full_node(ctx, fill)


# empty/empty_like: their contents are unspecified, so zeros are as good (MoE inverse permutations fill them)
@register_torch_op("aten.zeros", "aten.new_zeros", "aten.zeros_like", "aten.empty", "aten.new_empty", "aten.empty_like")
def _zeros(ctx, node):
    return full_node(ctx, 0)


@register_torch_op("aten.ones", "aten.new_ones", "aten.ones_like")
def _ones(ctx, node):
    return full_node(ctx, 1)


@register_torch_op("aten.full_like")
def _full_like(ctx, node):
    return full_node(ctx, node.args[1])


@register_torch_op("aten.scalar_tensor")
def _scalar_tensor(ctx, node):
    return ctx.scalar(node.args[0], dtype=ctx.out_dtype())


@register_torch_op("aten.arange")
def _arange(ctx, node):
    args = [ctx.dim(a) if not isinstance(a, float) else a for a in node.args]
    start, end, step = 0, None, 1
    if len(args) == 1:
        end = args[0]
    elif len(args) == 2:
        start, end = args
    else:
        start, end, step = args[:3]
    return ctx.emit1("arange", [], {"start": start, "end": end, "step": step, "dtype": ctx.out_dtype()})


@register_torch_op("aten.eye")
def _eye(ctx, node):
    # eye(n, m) = arange(n)[:, None] == arange(m)[None, :], in the requested dtype (linear-attention decays)
    n, m = ctx.out_shape()
    rows = ctx.emit1("arange", [], {"start": 0, "end": n, "step": 1, "dtype": torch.int64})
    cols = rows if D.dims_equal(n, m) else ctx.emit1("arange", [], {"start": 0, "end": m, "step": 1,
                                                                      "dtype": torch.int64})
    rows = ctx.emit1("reshape", [rows], {"shape": [n, 1]})
    cols = ctx.emit1("reshape", [cols], {"shape": [1, m]})
    return cast_to(ctx, ctx.emit1("eq", [rows, cols]), ctx.out_dtype())
