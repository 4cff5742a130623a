"""ONNX lowerings of data-dependent selection: topk and sort, both as ONNX TopK (values and int64 indices);
histc as one-hot bins summed.

ONNX TopK puts equal entries in index order, as torch's stable sort does;
torch's default (unstable) sort and topk may order ties differently.
"""

from __future__ import annotations

import torch

from graphopt.backends.onnx.lowering import lowering
from graphopt.backends.onnx.lowerings._common import reduce


def _top_k(b, node, x: str, k: str, largest: bool, sorted_: bool) -> list[str]:
    values, indices = b.op("TopK", [x, k], {"axis": int(node.attrs["axis"]) % node.inputs[0].rank,
                                            "largest": int(largest), "sorted": int(sorted_)},
                           outputs=2, dtype=node.outputs[0].dtype)
    b.dtypes[indices] = torch.int64
    return [values, indices]


@lowering("topk")
def _topk(b, node, ins):
    a = node.attrs
    return _top_k(b, node, ins[0], b.shape([a["k"]]), bool(a.get("largest", True)), bool(a.get("sorted", True)))


@lowering("sort")
def _sort(b, node, ins):
    # sorting is a top-k of the whole axis
    size = node.inputs[0].shape[int(node.attrs["axis"]) % node.inputs[0].rank]
    return _top_k(b, node, ins[0], b.dim(size), bool(node.attrs.get("descending", False)), True)


@lowering("histc")
def _histc(b, node, ins):
    """Each entry's bin floor((x - min) * bins / (max - min)) (x == max in the last bin), one-hot, summed."""
    dt = node.inputs[0].dtype
    bins, low, high = int(node.attrs["bins"]), float(node.attrs["min"]), float(node.attrs["max"])
    x = b.op("Reshape", [ins[0], b.i64([-1, 1])], dtype=dt)  # [M, 1]
    scaled = b.op("Div", [b.op("Mul", [b.op("Sub", [x, b.const(low, dt)], dtype=dt), b.const(float(bins), dt)],
                                dtype=dt), b.const(high - low, dt)], dtype=dt)
    where = b.op("Min", [b.op("Floor", [scaled], dtype=dt), b.const(float(bins - 1), dt)], dtype=dt)
    inside = b.op("And", [b.op("GreaterOrEqual", [x, b.const(low, dt)], dtype=torch.bool),
                          b.op("LessOrEqual", [x, b.const(high, dt)], dtype=torch.bool)], dtype=torch.bool)
    hit = b.op("And", [b.op("Equal", [where, b.const([float(i) for i in range(bins)], dt)], dtype=torch.bool),
                       inside], dtype=torch.bool)  # [M, bins]
    return reduce(b, "ReduceSum", b.cast(hit, dt, torch.bool), [0], False, dt)
