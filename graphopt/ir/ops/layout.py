"""Layout ops (reshape, permute, expand, concat, split, slice, select, index_select, gather, scatter, pad).

Each op's definition and shape rule sit next to its torch kernel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from graphopt.errors import ShapeError
from graphopt.ir import dims as D
from graphopt.ir.graph import Node
from graphopt.ir.ops._core import LAYOUT, TensorType, in_, kernel, norm_axis, op, result_dtype


@op("reshape", "x", attrs={"shape": "target shape; dims may be symbolic, never -1"},
    shape="the shape attr (element counts must agree)", category="layout", doc="view/reshape/flatten/(un)squeeze",
    traits={LAYOUT})
def _reshape(node: Node) -> list[TensorType]:
    x = in_(node, 0)
    shape = tuple(node.attrs["shape"])
    if any(isinstance(d, int) and d < 0 for d in shape):
        raise ShapeError(f"{node.where()}: reshape target {list(shape)} has a negative dim; resolve it first")
    if D.shape_is_static(x.shape) and D.shape_is_static(shape) and D.prod(x.shape) != D.prod(shape):
        raise ShapeError(f"{node.where()}: cannot reshape {list(x.shape)} into {list(shape)}")
    return [(shape, x.dtype)]


kernel("reshape")(torch.reshape)


@op("permute", "x", attrs={"dims": "new order of the axes"}, shape="x.shape permuted by dims", category="layout",
    doc="permute/transpose", traits={LAYOUT})
def _permute(node: Node) -> list[TensorType]:
    x = in_(node, 0)
    dims = node.attrs["dims"]
    if sorted(d % max(x.rank, 1) for d in dims) != list(range(x.rank)):
        raise ShapeError(f"{node.where()}: dims {dims} are not a permutation of rank {x.rank}")
    return [(tuple(x.shape[d] for d in dims), x.dtype)]


kernel("permute")(torch.permute)


@op("expand", "x", attrs={"shape": "target shape (dims may be symbolic)"}, shape="the shape attr", category="layout",
    doc="broadcast x to shape without copying", traits={LAYOUT})
def _expand(node: Node) -> list[TensorType]:
    x = in_(node, 0)
    return [(tuple(node.attrs["shape"]), x.dtype)]


@kernel("expand")
def expand(x, *, shape):
    return x.expand(shape)


@op("concat", "*xs", attrs={"axis": "axis"}, shape="inputs agree except on axis, which adds up", category="layout",
    doc="torch.cat", traits={LAYOUT})
def _concat(node: Node) -> list[TensorType]:
    xs = [v for v in node.inputs]
    axis = norm_axis(node.attrs["axis"], xs[0].rank)
    total: D.Dim = 0
    for x in xs:
        total = total + x.shape[axis]
    shape = list(xs[0].shape)
    shape[axis] = D.canon(total)
    return [(tuple(shape), result_dtype(*xs))]


@kernel("concat")
def concat(*xs, axis):
    return torch.cat(xs, axis)


@op("split", "x", attrs={"sizes": "size of each piece", "axis": "axis"}, shape="one output per size",
    category="layout", doc="split/chunk/unbind (unbind adds reshapes)", traits={LAYOUT})
def _split(node: Node) -> list[TensorType]:
    x = in_(node, 0)
    axis = norm_axis(node.attrs["axis"], x.rank)
    out = []
    for size in node.attrs["sizes"]:
        shape = list(x.shape)
        shape[axis] = size
        out.append((tuple(shape), x.dtype))
    return out


@kernel("split")
def split(x, *, sizes, axis):
    return tuple(torch.split(x, list(sizes), axis))


@op("slice", "x", attrs={"axis": "axis", "start": "first index", "end": "one past the last index (may be symbolic)",
                         "step": "stride"}, shape="axis becomes ceil((end - start) / step)", category="layout",
    doc="x[start:end:step] along axis; start/end already clamped to the axis", traits={LAYOUT})
def _slice(node: Node) -> list[TensorType]:
    x = in_(node, 0)
    axis = norm_axis(node.attrs["axis"], x.rank)
    start, end, step = node.attrs["start"], node.attrs["end"], node.attrs.get("step", 1)
    shape = list(x.shape)
    shape[axis] = D.ceildiv(end - start, step)
    return [(tuple(shape), x.dtype)]


@kernel("slice")
def slice_(x, *, axis, start, end, step=1):
    return torch.narrow(x, axis, start, end - start) if step == 1 else x[(slice(None),) * axis + (slice(start, end, step),)]


@op("select", "x", attrs={"axis": "axis", "index": "position"}, shape="x.shape without axis", category="layout",
    doc="x[..., index, ...]: picks one position and drops the axis", traits={LAYOUT})
def _select(node: Node) -> list[TensorType]:
    x = in_(node, 0)
    axis = norm_axis(node.attrs["axis"], x.rank)
    return [(tuple(d for i, d in enumerate(x.shape) if i != axis), x.dtype)]


@kernel("select")
def select(x, *, axis, index):
    return torch.select(x, axis, index)


@op("index_select", "x, indices", attrs={"axis": "axis"}, shape="axis becomes len(indices)", category="layout",
    doc="gather whole slices along axis", traits={LAYOUT})
def _index_select(node: Node) -> list[TensorType]:
    x, idx = in_(node, 0), in_(node, 1)
    axis = norm_axis(node.attrs["axis"], x.rank)
    shape = list(x.shape)
    shape[axis] = idx.shape[0]
    return [(tuple(shape), x.dtype)]


@kernel("index_select")
def index_select(x, indices, *, axis):
    return torch.index_select(x, axis, indices)


@op("gather", "x, indices", attrs={"axis": "axis"}, shape="indices.shape (same rank as x), x's dtype",
    category="layout", doc="out[..., i, ...] = x[..., indices[..., i, ...], ...] along axis (torch.gather)",
    traits={LAYOUT})
def _gather(node: Node) -> list[TensorType]:
    x, idx = in_(node, 0), in_(node, 1)
    norm_axis(node.attrs["axis"], x.rank)
    if idx.rank != x.rank:
        raise ShapeError(f"{node.where()}: gather indices have rank {idx.rank}, the input rank {x.rank}")
    if idx.dtype.is_floating_point or idx.dtype.is_complex or idx.dtype == torch.bool:
        raise ShapeError(f"{node.where()}: gather indices must be integers, not {idx.dtype}")
    return [(idx.shape, x.dtype)]


@kernel("gather")
def gather(x, indices, *, axis):
    return torch.gather(x, axis, indices)


@op("scatter", "x, indices, src", attrs={"axis": "axis", "reduce": "'none' (write), or how to combine with what is "
                                                               "there: 'add', 'mul', 'amax', 'amin'"},
    shape="same as x; indices and src have one shape", category="layout",
    doc="x with x[..., indices[..., i, ...], ...] = src[..., i, ...] along axis, or combined with it "
        "(torch.scatter, scatter_add, scatter_reduce with include_self)",
    traits={LAYOUT})
def _scatter(node: Node) -> list[TensorType]:
    x, idx, src = in_(node, 0), in_(node, 1), in_(node, 2)
    norm_axis(node.attrs["axis"], x.rank)
    if not idx.rank == src.rank == x.rank or not D.shapes_equal(idx.shape, src.shape):
        raise ShapeError(f"{node.where()}: scatter wants indices and src of one shape and x's rank, got "
                         f"{list(idx.shape)} and {list(src.shape)} for rank {x.rank}")
    if node.attrs.get("reduce", "none") not in _SCATTER_REDUCE:
        raise ShapeError(f"{node.where()}: scatter reduce must be one of {sorted(_SCATTER_REDUCE)}, "
                         f"not {node.attrs['reduce']!r}")
    return [(x.shape, x.dtype)]


_SCATTER_REDUCE = {"none": None, "add": "sum", "mul": "prod", "amax": "amax", "amin": "amin"}  # -> scatter_reduce's


@kernel("scatter")
def scatter(x, indices, src, *, axis, reduce="none"):
    if reduce == "add":
        return torch.scatter_add(x, axis, indices, src)
    if reduce != "none":
        return torch.scatter_reduce(x, axis, indices, src, _SCATTER_REDUCE[reduce], include_self=True)
    return torch.scatter(x, axis, indices, src)


@op("pad", "x", attrs={"pad": "torch order: (last_lo, last_hi, prev_lo, prev_hi, ...)", "mode": "constant|reflect|replicate",
                       "value": "fill for constant mode"}, shape="padded axes grow by lo + hi", category="layout",
    doc="F.pad", traits={LAYOUT})
def _pad(node: Node) -> list[TensorType]:
    x = in_(node, 0)
    pad = node.attrs["pad"]
    shape = list(x.shape)
    for i in range(len(pad) // 2):
        axis = x.rank - 1 - i
        shape[axis] = shape[axis] + pad[2 * i] + pad[2 * i + 1]
    return [(tuple(shape), x.dtype)]


@kernel("pad")
def pad(x, *, pad, mode="constant", value=0.0):
    return F.pad(x, pad, mode, value if mode == "constant" else None)
