"""ATen converters for layout ops: views, permutes, expand, cat/stack/split/slice/roll, gather/scatter, padding."""

from __future__ import annotations

import re

import torch

from graphopt.errors import GraphoptError
from graphopt.frontends.torch import RaggedPiece, register_torch_op, source_location
from graphopt.frontends.torch_ops._common import as_list, cast_to, clamp_range, same_dim, schema_arg
from graphopt.ir import dims as D
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


@register_torch_op("aten.repeat", "aten.tile")
def _repeat(ctx, node):
    # repeat = expand on an interleaved view, then flatten: x[a, b] * (r, s) -> [r, a, s, b] -> [r*a, s*b]
    x = ctx.value(node.args[0])
    reps = ctx.dims(node.args[1])
    reps = [1] * (x.rank - len(reps)) + list(reps)  # tile repeats the last axes when given fewer than x has
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
    pieces = [ctx._values.get(v) for v in node.args[0]]
    if any(isinstance(p, RaggedPiece) for p in pieces):
        joined = _ragged_cat(ctx, node, pieces) if int(schema_arg(node, 1, "dim", 0)) == 0 else None
        if joined is None:
            raise GraphoptError(f"node '{node.name}' ({node.target}) from {source_location(node)}: rows split by "
                                "sizes read from tensor values are only supported as one linear per piece, "
                                "concatenated back in order (a grouped matmul)")
        return joined
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
    unbacked = sorted({str(s) for d in sizes for s in D.free_symbols(d) if re.fullmatch(r"u\d+", str(s))})
    ragged = _ragged_pieces(ctx, node, x, axis) if unbacked else None
    if ragged is not None:
        return ragged
    if unbacked:  # JetMoE: inputs.split(expert_size.tolist())
        raise GraphoptError(f"node '{node.name}' ({node.target}) from {source_location(node)}: split sizes "
                            f"{sizes} are computed from tensor values ({', '.join(unbacked)} are data-dependent, "
                            "e.g. a .tolist() of token counts); graphopt's graph needs sizes that follow from "
                            "the input shapes")
    return _split_values(ctx, x, sizes, axis)


def _ragged_pieces(ctx, node, x: Value, axis: int) -> list | None:
    """x.split(sizes.tolist()) along axis 0, each size an item() of a 0-d tensor: pieces a later cat of
    their linears turns into one grouped_mm (JetMoE's experts); None when the sizes are not so read."""
    sizes = schema_arg(node, 1, "split_sizes")
    if axis % max(x.rank, 1) != 0 or x.rank != 2 or not isinstance(sizes, (list, tuple)):
        return None
    parts = []
    for size in sizes:
        item = size if isinstance(size, torch.fx.Node) and "item" in str(size.target) else None
        found = ctx._values.get(item.args[0]) if item is not None else None
        if not isinstance(found, Value) or found.rank != 0:
            return None
        parts.append(ctx.emit1("reshape", [cast_to(ctx, found, torch.int64)], {"shape": [1]}))
    counts = parts[0] if len(parts) == 1 else ctx.emit1("concat", parts, {"axis": 0})
    offsets = ctx.emit1("cumsum", [counts], {"axis": 0})
    return [RaggedPiece(x, offsets, i, len(parts)) for i in range(len(parts))]


def _ragged_cat(ctx, node, pieces: list) -> Value | None:
    """cat of every piece's linear, in order: grouped_mm of the rows with the pieces' weights stacked."""
    first = pieces[0]
    if not all(isinstance(p, RaggedPiece) and p.weight is not None and p.x is first.x and p.offsets is first.offsets
               and p.index == i for i, p in enumerate(pieces)) or len(pieces) != first.count:
        return None
    weights = [p.weight for p in pieces]
    sources = [w.producer for w in weights]
    if all(n is not None and n.op == "select" and n.attrs["axis"] == 0 and n.attrs["index"] == i
           and n.inputs[0] is sources[0].inputs[0] for i, n in enumerate(sources)) \
            and sources[0].inputs[0].shape[0] == len(pieces):
        stacked = sources[0].inputs[0]  # weight[i] of one [experts, out, in] parameter: that parameter
    else:
        stacked = ctx.emit1("concat", [ctx.emit1("reshape", [w], {"shape": [1, *w.shape]}) for w in weights],
                            {"axis": 0})
    transposed = ctx.emit1("permute", [stacked], {"dims": [0, 2, 1]})  # [experts, in, out]
    return ctx.emit1("grouped_mm", [first.x, transposed, first.offsets])


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
    used = {i: ctx.value(idx) for i, idx in enumerate(node.args[1]) if idx is not None}
    if any(v.dtype == torch.bool for v in used.values()):
        raise GraphoptError(f"node '{node.name}': indexing with a boolean mask has a data-dependent shape; "
                            "use torch.where or masked_fill instead")
    if len(used) == 1 and next(iter(used.values())).rank == 1:  # x[..., idx, ...]: one gather of whole slices
        (axis, idx), = used.items()
        return ctx.emit1("index_select", [x, _wrap_negative(ctx, idx, x.shape[axis])], {"axis": axis})
    return _advanced_index(ctx, node, x, used)


def _advanced_index(ctx, node, x: Value, used: dict[int, Value]) -> Value:
    """x[i0, i1, ...] with several or n-d index tensors, as one index_select over the merged indexed axes.

    transformers' mask functions index `mask[batch_idx, kv_idx]` with broadcasting
    index tensors. The indexed axes are moved together and merged, the indices
    combined into one flat row-major index, and whole slices gathered at once.
    """
    axes = sorted(used)
    adjacent = axes == list(range(axes[0], axes[-1] + 1))
    first = axes[0] if adjacent else 0
    if not adjacent:  # torch puts the broadcast index dims first then; so does moving the axes to the front
        x = ctx.emit1("permute", [x], {"dims": axes + [a for a in range(x.rank) if a not in used]})
    sizes = [x.shape[first + k] for k in range(len(axes))]
    terms = []
    for k, axis in enumerate(axes):
        stride = D.prod(sizes[k + 1:])
        if not isinstance(stride, int):
            raise GraphoptError(f"node '{node.name}': advanced indexing needs static sizes after the first "
                                f"indexed axis, not {sizes[k + 1:]}")
        # a negative index counts from its own axis' end (index_select rejects it; ONNX would count from the
        # merged axis' end)
        term = _wrap_negative(ctx, cast_to(ctx, used[axis], torch.int64), sizes[k])
        terms.append(term if stride == 1 else ctx.emit1("mul", [term, ctx.scalar(stride)]))
    flat = terms[0]
    for term in terms[1:]:
        flat = ctx.emit1("add", [flat, term])
    merged = list(x.shape[:first]) + [D.prod(sizes)] + list(x.shape[first + len(axes):])
    x = ctx.emit1("reshape", [x], {"shape": merged})
    flat = ctx.emit1("reshape", [flat], {"shape": [D.prod(flat.shape)]}) if flat.rank != 1 else flat
    picked = ctx.emit1("index_select", [x, flat], {"axis": first})
    return ctx.emit1("reshape", [picked], {"shape": list(ctx.out_shape())})


@register_torch_op("aten.gather")
def _gather(ctx, node):
    x = ctx.value(node.args[0])
    axis = int(schema_arg(node, 1, "dim", 0)) % max(x.rank, 1)
    return ctx.emit1("gather", [x, ctx.value(schema_arg(node, 2, "index"))], {"axis": axis})


@register_torch_op("aten.scatter", "aten.scatter_", "aten.scatter_add", "aten.scatter_add_")
def _scatter(ctx, node):
    # MoE group routing: zeros_like(scores).scatter_(1, topk_idx, 1) marks the chosen groups
    x = ctx.value(node.args[0])
    axis = int(schema_arg(node, 1, "dim", 0)) % max(x.rank, 1)
    index = ctx.value(schema_arg(node, 2, "index"))
    src = schema_arg(node, 3, "src", schema_arg(node, 3, "value"))
    if "reduce" in node.kwargs:
        raise GraphoptError(f"node '{node.name}': scatter with reduce={node.kwargs['reduce']!r} is not supported")
    if isinstance(src, torch.fx.Node):  # torch reads src only where index reaches
        src = cast_to(ctx, ctx.value(src), x.dtype)
        for a, (have, want) in enumerate(zip(src.shape, index.shape)):
            if not same_dim(have, want):
                src = ctx.emit1("slice", [src], {"axis": a, "start": 0, "end": want, "step": 1})
    else:
        src = ctx.emit1("full", [], {"shape": list(index.shape), "value": src, "dtype": x.dtype})
    reduce = "add" if "scatter_add" in str(node.target) else "none"
    return ctx.emit1("scatter", [x, index, src], {"axis": axis, "reduce": reduce})


_SCATTER_REDUCE = {"sum": "add", "prod": "mul", "amax": "amax", "amin": "amin", "mean": "add"}
_IDENTITY = {"sum": 0.0, "prod": 1.0, "amax": float("-inf"), "amin": float("inf"), "mean": 0.0}


@register_torch_op("aten.scatter_reduce", "aten.scatter_reduce_")
def _scatter_reduce(ctx, node):
    """x.scatter_reduce(dim, index, src, reduce, include_self): a combining scatter. Without include_self the
    reached positions are first set to the reduction's identity; "mean" is a sum divided by a count.

    BLT pools its patches with amax, TAPAS its segments with sum/mean/amax/amin (both include_self=False).
    """
    x = ctx.value(node.args[0])
    axis = int(node.args[1]) % max(x.rank, 1)
    index = ctx.value(node.args[2])
    src = cast_to(ctx, ctx.value(node.args[3]), x.dtype)
    how = str(node.args[4])
    include_self = bool(schema_arg(node, 5, "include_self", True))
    if how not in _SCATTER_REDUCE:
        raise GraphoptError(f"node '{node.name}': scatter_reduce with reduce={how!r} is not supported")
    for a, (have, want) in enumerate(zip(src.shape, index.shape)):  # torch reads src only where index reaches
        if not same_dim(have, want):
            src = ctx.emit1("slice", [src], {"axis": a, "start": 0, "end": want, "step": 1})
    identity = _IDENTITY[how]
    if not x.dtype.is_floating_point and how in ("amax", "amin"):
        info = torch.iinfo(x.dtype)
        identity = info.min if how == "amax" else info.max
    start = x
    if not include_self:
        fill = ctx.emit1("full", [], {"shape": list(index.shape), "value": identity, "dtype": x.dtype})
        start = ctx.emit1("scatter", [x, index, fill], {"axis": axis, "reduce": "none"})
    out = ctx.emit1("scatter", [start, index, src], {"axis": axis, "reduce": _SCATTER_REDUCE[how]})
    if how != "mean":
        return out
    ones = ctx.emit1("full", [], {"shape": list(index.shape), "value": 1, "dtype": x.dtype})
    base = ctx.emit1("full", [], {"shape": list(x.shape), "value": 1 if include_self else 0, "dtype": x.dtype})
    count = ctx.emit1("scatter", [base, index, ones], {"axis": axis, "reduce": "add"})
    if include_self:
        return ctx.emit1("div", [out, count], {} if x.dtype.is_floating_point else {"rounding_mode": "floor"})
    reached = ctx.emit1("gt", [count, ctx.scalar(0)])
    safe = ctx.emit1("maximum", [count, ctx.emit1("full", [], {"shape": [], "value": 1, "dtype": x.dtype})])
    mean = ctx.emit1("div", [out, safe], {} if x.dtype.is_floating_point else {"rounding_mode": "floor"})
    return ctx.emit1("where", [reached, mean, x])


@register_torch_op("aten.index_put", "aten.index_put_")
def _index_put(ctx, node):
    """x[..., idx, ...] = values with one integer index tensor (a scatter along its axis), or x[mask] = v.

    transformers' grouped experts invert their sort permutation so: `inv[perm] = arange(S)`.
    """
    x = ctx.value(node.args[0])
    used = {i: idx for i, idx in enumerate(node.args[1]) if idx is not None}
    values = cast_to(ctx, ctx.value(node.args[2]), x.dtype)
    accumulate = bool(schema_arg(node, 3, "accumulate", False))
    if len(used) == 1 and ctx.value(next(iter(used.values()))).dtype == torch.bool and not accumulate:
        (axis, mask), = used.items()
        mask = ctx.value(mask)
        if axis == 0 and D.prod(values.shape) == 1:  # x[mask] = v: a where over the masked leading axes
            mask = ctx.emit1("reshape", [mask], {"shape": list(mask.shape) + [1] * (x.rank - mask.rank)})
            value = ctx.emit1("reshape", [values], {"shape": []})
            return ctx.emit1("where", [mask, value, x])
    if len(used) != 1 or ctx.value(next(iter(used.values()))).dtype == torch.bool:
        raise GraphoptError(f"node '{node.name}': index_put (x[index] = values) is supported with one integer "
                            "index tensor, or one boolean mask over the leading axes and a single value")
    (axis, idx), = used.items()
    idx = _wrap_negative(ctx, cast_to(ctx, ctx.value(idx), torch.int64), x.shape[axis])
    count = D.prod(idx.shape)
    lead, rest = list(x.shape[:axis]), list(x.shape[axis + 1:])
    target = lead + [count] + rest  # the written slices, the index flattened
    values = ctx.emit1("expand", [values], {"shape": lead + list(idx.shape) + rest})
    values = ctx.emit1("reshape", [values], {"shape": target})
    idx = ctx.emit1("reshape", [idx], {"shape": [1] * len(lead) + [count] + [1] * len(rest)})
    idx = ctx.emit1("expand", [idx], {"shape": target})
    return ctx.emit1("scatter", [x, idx, values], {"axis": axis, "reduce": "add" if accumulate else "none"})


@register_torch_op("aten.index_add", "aten.index_add_")
def _index_add(ctx, node):
    """x.index_add(dim, idx, src, alpha): src's slices added at x's positions idx (JetMoE combines its experts so)."""
    x = ctx.value(node.args[0])
    axis = int(node.args[1]) % max(x.rank, 1)
    idx = _wrap_negative(ctx, cast_to(ctx, ctx.value(node.args[2]), torch.int64), x.shape[axis])
    src = cast_to(ctx, ctx.value(node.args[3]), x.dtype)
    alpha = schema_arg(node, 4, "alpha", 1)
    if alpha != 1:
        src = ctx.emit1("mul", [src, ctx.scalar(alpha, x.dtype)])
    shape = [1] * x.rank
    shape[axis] = D.prod(idx.shape)
    idx = ctx.emit1("expand", [ctx.emit1("reshape", [idx], {"shape": shape})], {"shape": list(src.shape)})
    return ctx.emit1("scatter", [x, idx, src], {"axis": axis, "reduce": "add"})


@register_torch_op("aten.flip")
def _flip(ctx, node):
    """x reversed along each of `dims`: an index_select with the reversed positions of each axis."""
    x = ctx.value(node.args[0])
    for axis in sorted({int(a) % max(x.rank, 1) for a in as_list(schema_arg(node, 1, "dims"))}):
        size = x.shape[axis]
        if isinstance(size, int):
            reversed_positions = ctx.graph.add_const(torch.arange(size - 1, -1, -1, dtype=torch.int64), name="flip")
        else:  # (size - 1) - arange(size) at run time
            last = ctx.emit1("full", [], {"shape": [], "value": size - 1, "dtype": torch.int64})
            positions = ctx.emit1("arange", [], {"start": 0, "end": size, "step": 1, "dtype": torch.int64})
            reversed_positions = ctx.emit1("sub", [last, positions])
        x = ctx.emit1("index_select", [x, reversed_positions], {"axis": axis})
    return x


@register_torch_op("aten.stack")
def _stack(ctx, node):
    # stack = unsqueeze each at dim, then concat: the channel analysis already knows both
    dtype = ctx.out_dtype()
    out_rank = len(ctx.out_shape())
    axis = int(schema_arg(node, 1, "dim", 0)) % out_rank
    parts = []
    for arg in node.args[0]:
        x = cast_to(ctx, ctx.value(arg), dtype)
        shape = list(x.shape)
        parts.append(ctx.emit1("reshape", [x], {"shape": shape[:axis] + [1] + shape[axis:]}))
    return parts[0] if len(parts) == 1 else ctx.emit1("concat", parts, {"axis": axis})


@register_torch_op("aten.roll")
def _roll(ctx, node):
    # roll by s along an axis of size n = concat(x[n - s:], x[:n - s]); without dims, over the flattened tensor
    x = ctx.value(node.args[0])
    shifts = [int(s) for s in as_list(schema_arg(node, 1, "shifts"))]
    dims = [int(d) for d in as_list(schema_arg(node, 2, "dims", []))]
    if not dims:
        flat = ctx.emit1("reshape", [x], {"shape": [D.prod(x.shape)]}) if x.rank != 1 else x
        rolled = _roll_axis(ctx, node, flat, shifts[0], 0)
        return rolled if x.rank == 1 else ctx.emit1("reshape", [rolled], {"shape": list(x.shape)})
    if len(shifts) != len(dims):
        raise GraphoptError(f"node '{node.name}': roll got {len(shifts)} shifts for {len(dims)} dims")
    for shift, dim in zip(shifts, dims):
        x = _roll_axis(ctx, node, x, shift, dim % x.rank)
    return x


def _roll_axis(ctx, node, x: Value, shift: int, axis: int) -> Value:
    size = x.shape[axis]
    if not isinstance(size, int):
        raise GraphoptError(f"node '{node.name}': roll along axis {axis} of dynamic size {size} is not supported; "
                            "export with that axis static")
    cut = size - shift % size if size else 0
    if cut in (0, size):
        return x
    tail = ctx.emit1("slice", [x], {"axis": axis, "start": cut, "end": size, "step": 1})
    head = ctx.emit1("slice", [x], {"axis": axis, "start": 0, "end": cut, "step": 1})
    return ctx.emit1("concat", [tail, head], {"axis": axis})


@register_torch_op("aten.meshgrid")
def _meshgrid(ctx, node):
    # each output broadcasts one 1-d input along its own axis: a reshape and an expand
    xs = [ctx.value(a) for a in node.args[0]]
    indexing = schema_arg(node, 1, "indexing", "ij") or "ij"
    axes = list(range(len(xs)))
    if indexing == "xy" and len(xs) >= 2:
        axes[0], axes[1] = 1, 0
    outs = []
    for i, (x, axis) in enumerate(zip(xs, axes)):
        full = list(ctx.out_shape(index=i))
        line = [1] * len(full)
        line[axis] = full[axis]
        y = ctx.emit1("reshape", [x], {"shape": line}) if list(x.shape) != line else x
        outs.append(ctx.emit1("expand", [y], {"shape": full}) if line != full else y)
    return outs


def _wrap_negative(ctx, index: Value, size: D.Dim) -> Value:
    """index + size where index < 0; nothing to emit for constant indices that are all non-negative."""
    if index.data is not None and bool((index.data >= 0).all()):
        return index
    if index.data is not None and isinstance(size, int):  # Falcon's fused_qkv[..., [-2], :]: a constant
        return ctx.graph.add_const(torch.where(index.data < 0, index.data + size, index.data), name="index")
    if isinstance(size, int):
        total = ctx.scalar(size)
    else:  # a dynamic axis: its size at run time
        total = ctx.emit1("full", [], {"shape": [], "value": size, "dtype": torch.int64})
    negative = ctx.emit1("lt", [index, ctx.scalar(0)])
    return ctx.emit1("where", [negative, ctx.emit1("add", [index, total]), index])


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
