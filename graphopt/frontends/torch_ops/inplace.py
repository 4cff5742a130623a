"""ATen converters for functionalised in-place writes: copy, fill, slice_scatter (strided too), select_scatter."""

from __future__ import annotations

import torch

from graphopt.errors import GraphoptError
from graphopt.frontends.torch import register_torch_op
from graphopt.frontends.torch_ops._common import cast_to, clamp_range, full_node, same_dim, schema_arg
from graphopt.ir.graph import Value


# ------------------------------------------------- functionalised in-place writes
# `x[:, 0] = y` reaches us as select_scatter/slice_scatter (plus a `copy`); rebuilding the
# result with slices and a concat keeps the canonical op set small and the channel
# analysis exact (concat offsets are something it already understands).
@register_torch_op("aten.copy", "aten.copy_")
def _copy(ctx, node):
    dst, src = ctx.value(node.args[0]), ctx.value(node.args[1])
    out = cast_to(ctx, src, dst.dtype)
    if tuple(out.shape) != tuple(dst.shape):
        out = ctx.emit1("expand", [out], {"shape": list(dst.shape)})
    return out


@register_torch_op("aten.fill", "aten.fill_")
def _fill(ctx, node):
    value = node.args[1]
    if isinstance(value, torch.fx.Node):
        x = ctx.value(node.args[0])
        filled = cast_to(ctx, ctx.value(value), x.dtype)
        return ctx.emit1("expand", [filled], {"shape": list(x.shape)})
    return full_node(ctx, value)


def _scatter_range(ctx, x: Value, src: Value, axis: int, start, end) -> Value:
    pieces = []
    size = x.shape[axis]
    if not (isinstance(start, int) and start == 0):
        pieces.append(ctx.emit1("slice", [x], {"axis": axis, "start": 0, "end": start, "step": 1}))
    pieces.append(cast_to(ctx, src, x.dtype))
    if not same_dim(end, size):
        pieces.append(ctx.emit1("slice", [x], {"axis": axis, "start": end, "end": size, "step": 1}))
    return pieces[0] if len(pieces) == 1 else ctx.emit1("concat", pieces, {"axis": axis})


@register_torch_op("aten.slice_scatter")
def _slice_scatter(ctx, node):
    x, src = ctx.value(node.args[0]), ctx.value(node.args[1])
    axis = int(schema_arg(node, 2, "dim", 0)) % x.rank
    step = int(schema_arg(node, 5, "step", 1))
    size = x.shape[axis]
    start = ctx.dim(schema_arg(node, 3, "start", 0) or 0)
    end = schema_arg(node, 4, "end", None)
    start, end = clamp_range(start, size if end is None else ctx.dim(end), size)
    if step != 1:
        return _scatter_strided(ctx, node, x, src, axis, range(start, end, step) if isinstance(end, int) else None)
    return _scatter_range(ctx, x, src, axis, start, end)


def _scatter_strided(ctx, node, x: Value, src: Value, axis: int, positions: range | None) -> Value:
    """x[..., start:end:step, ...] = src (interleaved rotary halves, x[..., ::2] = a), as a select by a constant mask.

    Position i of the axis takes src[k] where i is the k-th written position, else x[i]:
    where(mask, index_select(src, axis, k of i), x), all with constants, so it is exact.
    """
    size = x.shape[axis]
    if positions is None or not isinstance(size, int):
        raise GraphoptError(f"node '{node.name}': strided slice assignment on the dynamic axis {axis} is not "
                            "supported; export with that axis static")
    if not positions:  # an empty range writes nothing (and there is nothing in src to select from)
        return x
    which = torch.zeros(size, dtype=torch.int64)
    which[list(positions)] = torch.arange(len(positions))
    mask = torch.zeros(size, dtype=torch.bool)
    mask[list(positions)] = True
    shape = [1] * x.rank
    shape[axis] = size
    picked = ctx.emit1("index_select", [cast_to(ctx, src, x.dtype), ctx.graph.add_const(which, name="scatter_index")],
                       {"axis": axis})
    written = ctx.graph.add_const(mask.reshape(shape), name="scatter_mask")
    return ctx.emit1("where", [written, picked, x])


@register_torch_op("aten.select_scatter")
def _select_scatter(ctx, node):
    x, src = ctx.value(node.args[0]), ctx.value(node.args[1])
    axis = int(node.args[2]) % x.rank
    index = int(node.args[3])
    if index < 0:
        index += x.shape[axis]
    shape = list(x.shape)
    shape[axis] = 1
    src = ctx.emit1("reshape", [src], {"shape": shape})
    return _scatter_range(ctx, x, src, axis, index, index + 1)
