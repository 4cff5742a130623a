"""Data-dependent selection ops (topk, sort, histc): what comes out depends on the values, not the shapes.

Both return the selected values and their int64 positions along one axis, as
two outputs, so mixture-of-experts routing (softmax -> topk -> gather by the
indices) is one node whose indices the graph can keep using.
"""

from __future__ import annotations

import torch

from graphopt.errors import ShapeError
from graphopt.ir.graph import Node
from graphopt.ir.ops._core import TensorType, in_, kernel, norm_axis, op


@op("topk", "x", attrs={"k": "how many to keep", "axis": "axis", "largest": "the largest (else the smallest) k",
                        "sorted": "return them in order"},
    shape="values and int64 indices: x.shape with axis = k", category="selection",
    doc="the k largest (or smallest) entries along axis and their positions")
def _topk(node: Node) -> list[TensorType]:
    x = in_(node, 0)
    axis = norm_axis(node.attrs["axis"], x.rank)
    k = node.attrs["k"]
    size = x.shape[axis] if x.rank else 1
    if isinstance(k, int) and isinstance(size, int) and not 0 <= k <= size:
        raise ShapeError(f"{node.where()}: k={k} is out of range for an axis of size {size}")
    shape = list(x.shape)
    if shape:
        shape[axis] = k
    return [(tuple(shape), x.dtype), (tuple(shape), torch.int64)]


@kernel("topk")
def topk(x, *, k, axis, largest=True, sorted=True):
    return tuple(torch.topk(x, k, axis, largest, sorted))


@op("sort", "x", attrs={"axis": "axis", "descending": "largest first", "stable": "equal entries keep their order"},
    shape="values and int64 indices, both x.shape", category="selection",
    doc="x sorted along axis and the permutation that sorts it (argsort is its second output)")
def _sort(node: Node) -> list[TensorType]:
    x = in_(node, 0)
    norm_axis(node.attrs["axis"], x.rank)
    return [(x.shape, x.dtype), (x.shape, torch.int64)]


@kernel("sort")
def sort(x, *, axis, descending=False, stable=False):
    return tuple(torch.sort(x, stable=stable, dim=axis, descending=descending))


@op("histc", "x", attrs={"bins": "number of equal-width bins", "min": "left edge of the first bin",
                         "max": "right edge of the last bin (min < max)"},
    shape="[bins], x.dtype", category="selection",
    doc="torch.histc: how many entries of x fall in each bin (entries outside [min, max] are not counted); "
        "mixture-of-experts blocks count their tokens per expert with it")
def _histc(node: Node) -> list[TensorType]:
    x = in_(node, 0)
    a = node.attrs
    if not x.dtype.is_floating_point:
        raise ShapeError(f"{node.where()}: histc wants a floating-point x, got {x.dtype}")
    if not (isinstance(a["bins"], int) and a["bins"] > 0 and float(a["min"]) < float(a["max"])):
        raise ShapeError(f"{node.where()}: histc wants bins > 0 and min < max, got {a['bins']}, {a['min']}, {a['max']}")
    return [((a["bins"],), x.dtype)]


@kernel("histc")
def histc(x, *, bins, min, max):  # noqa: A002 - torch's argument names
    return torch.histc(x, bins=bins, min=min, max=max)
