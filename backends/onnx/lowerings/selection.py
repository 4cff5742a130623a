"""ONNX lowerings of data-dependent selection: topk and sort, both as ONNX TopK (values and int64 indices).

ONNX TopK puts equal entries in index order, as torch's stable sort does;
torch's default (unstable) sort and topk may order ties differently.
"""

from __future__ import annotations

import torch

from graphopt.backends.onnx.lowering import lowering


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
