"""ATen converters for layout ops: views, permutes, expand/repeat, cat/split/slice/select, indexing, padding."""

from __future__ import annotations

import torch

from graphopt.errors import GraphoptError
from graphopt.frontends.torch import register_torch_op
from graphopt.frontends.torch_ops._common import cast_to, clamp_range, same_dim, schema_arg
from graphopt.ir.graph import Value


@register_torch_op("aten.view", "aten.reshape", "aten._unsafe_view", "aten.flatten", "aten.unflatten",
                   "aten.squeeze", "aten.unsqueeze", "aten.view_copy", "aten.squeeze_copy", "aten.unsqueeze_copy",
                   "aten._reshape_alias", "aten.reshape_as", "aten.view_as")
def _reshape(ctx, node):
    x = ctx.value(node.args[0])
    shape = ctx.out_shape()
    if len(shape) == x.rank and all(a == b for a, b in zip(shape, x.shape)):
        return x  # a no-op view: keep the graph free of it
    return ctx.emit1("reshape", [x], {"shape": list(shape)})


@register_torch_op("aten.permute", "aten.permute_copy")
def _permute(ctx, node):
    x = ctx.value(node.args[0])
    dims = [int(d) % max(x.rank, 1) for d in node.args[1]]
    return ctx.emit1("permute", [x], {"dims": dims})


@register_torch_op("aten.transpose", "aten.transpose_copy", "aten.swapaxes", "aten.swapdims")
def _transpose(ctx, node):
    x = ctx.value(node.args[0])
    a, b = int(node.args[1]) % max(x.rank, 1), int(node.args[2]) % max(x.rank, 1)
    dims = list(range(x.rank))
    dims[a], dims[b] = dims[b], dims[a]
    return ctx.emit1("permute", [x], {"dims": dims})


@register_torch_op("aten.t", "aten.numpy_T")
def _t(ctx, node):
    x = ctx.value(node.args[0])
    if x.rank < 2:
        return x
    return ctx.emit1("permute", [x], {"dims": list(range(x.rank))[::-1]})


@register_torch_op("aten.expand", "aten.expand_copy", "aten.expand_as", "aten.broadcast_to")
def _expand(ctx, node):
    x = ctx.value(node.args[0])
    shape = ctx.out_shape()
    if tuple(shape) == tuple(x.shape):
        return x
    return ctx.emit1("expand", [x], {"shape": list(shape)})


@register_torch_op("aten.repeat")
def _repeat(ctx, node):
    # repeat = expand on an interleaved view, then flatten: x[a, b] * (r, s) -> [r, a, s, b] -> [r*a, s*b]
    x = ctx.value(node.args[0])
    reps = ctx.dims(node.args[1])
    shape = [1] * (len(reps) - x.rank) + list(x.shape)
    inter, expanded = [], []
    for r, d in zip(reps, shape):
        inter += [1, d]
        expanded += [r, d]
    y = ctx.emit1("reshape", [x], {"shape": inter})
    y = ctx.emit1("expand", [y], {"shape": expanded})
    return ctx.emit1("reshape", [y], {"shape": list(ctx.out_shape())})


@register_torch_op("aten.cat", "aten.concat", "aten.concatenate")
def _cat(ctx, node):
    xs = [ctx.value(v) for v in node.args[0]]
    xs = [x for x in xs if not (x.rank == 1 and x.shape[0] == 0)]  # torch.cat skips empty 1-d tensors
    axis = int(schema_arg(node, 1, "dim", 0))
    if len(xs) == 1:
        return xs[0]
    dtype = ctx.out_dtype()
    return ctx.emit1("concat", [cast_to(ctx, x, dtype) for x in xs], {"axis": axis % xs[0].rank})


def _split_values(ctx, x: Value, sizes: list, axis: int) -> list[Value]:
    if len(sizes) == 1:
        return [x]
    return list(ctx.emit("split", [x], {"sizes": sizes, "axis": axis % x.rank}).outputs)


@register_torch_op("aten.split", "aten.split_with_sizes", "aten.chunk", "aten.tensor_split.sections",
                   "aten.split_copy", "aten.split_with_sizes_copy")
def _split(ctx, node):
    x = ctx.value(node.args[0])
    axis = int(schema_arg(node, 2, "dim", 0))
    sizes = [ctx.out_shape(index=i)[axis] for i in range(len(node.meta["val"]))]
    return _split_values(ctx, x, sizes, axis)


@register_torch_op("aten.unbind", "aten.unbind_copy")
def _unbind(ctx, node):
    x = ctx.value(node.args[0])
    axis = int(schema_arg(node, 1, "dim", 0)) % x.rank
    n = x.shape[axis]
    pieces = _split_values(ctx, x, [1] * n, axis)
    return [ctx.emit1("reshape", [p], {"shape": list(ctx.out_shape(index=i))}) for i, p in enumerate(pieces)]


@register_torch_op("aten.slice", "aten.slice_copy")
def _slice(ctx, node):
    x = ctx.value(node.args[0])
    axis = int(schema_arg(node, 1, "dim", 0)) % x.rank
    step = int(schema_arg(node, 4, "step", 1))
    size = x.shape[axis]
    start = ctx.dim(schema_arg(node, 2, "start", 0) or 0)
    end = schema_arg(node, 3, "end", None)
    end = size if end is None else ctx.dim(end)
    start, end = clamp_range(start, end, size)
    out_len = ctx.out_shape()[axis]
    if start == 0 and step == 1 and same_dim(out_len, size):
        return x
    return ctx.emit1("slice", [x], {"axis": axis, "start": start, "end": end, "step": step})


@register_torch_op("aten.narrow", "aten.narrow_copy")
def _narrow(ctx, node):
    x = ctx.value(node.args[0])
    axis = int(node.args[1]) % x.rank
    start = ctx.dim(node.args[2])
    length = ctx.dim(node.args[3])
    return ctx.emit1("slice", [x], {"axis": axis, "start": start, "end": start + length, "step": 1})


@register_torch_op("aten.select", "aten.select_copy")
def _select(ctx, node):
    x = ctx.value(node.args[0])
    axis = int(node.args[1]) % x.rank
    index = int(node.args[2])
    size = x.shape[axis]
    if index < 0:
        if not isinstance(size, int):
            raise GraphoptError(f"node '{node.name}': negative index on a dynamic axis")
        index += size
    return ctx.emit1("select", [x], {"axis": axis, "index": index})


@register_torch_op("aten.index_select")
def _index_select(ctx, node):
    x = ctx.value(node.args[0])
    return ctx.emit1("index_select", [x, ctx.value(node.args[2])], {"axis": int(node.args[1]) % x.rank})


@register_torch_op("aten.index.Tensor")
def _index(ctx, node):
    x = ctx.value(node.args[0])
    indices = node.args[1]
    used = [i for i, idx in enumerate(indices) if idx is not None]
    if len(used) != 1 or ctx.value(indices[used[0]]).rank != 1 or ctx.value(indices[used[0]]).dtype == torch.bool:
        raise GraphoptError(f"node '{node.name}': only x[..., idx, ...] with one 1-d integer index tensor is supported")
    return ctx.emit1("index_select", [x, ctx.value(indices[used[0]])], {"axis": used[0]})


@register_torch_op("aten.constant_pad_nd", "aten.pad")
def _pad(ctx, node):
    x = ctx.value(node.args[0])
    pad = [int(p) for p in node.args[1]]
    mode = "constant"
    value = schema_arg(node, 2, "value", 0.0)
    if "aten.pad" in str(node.target):
        mode = schema_arg(node, 2, "mode", "constant")
        value = schema_arg(node, 3, "value", 0.0)
    return ctx.emit1("pad", [x], {"pad": pad, "mode": mode, "value": float(value or 0.0)})
