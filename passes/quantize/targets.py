"""Which layers a quantization mode applies to, and why the others stay float.

A layer is a conv, linear or matmul whose weight is a constant of the graph.
The mode decides the rest, from what each back-end turns into a faster kernel:

- int8 (static): convs and linear/matmul layers;
- int8-dynamic: linear/matmul only. ONNX Runtime runs a dynamically quantized
  conv as ConvInteger, measured 3x slower than the fp32 conv on this machine;
  and a 2-d linear with a bias (a classifier) becomes a Gemm on a weight it
  dequantizes on every call, so those stay float too;
- int8-weight / int4-weight: linear/matmul only (ONNX Runtime's MatMulNBits).
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Sequence

import torch

from graphopt.ir.graph import Graph, Node

MODES = ("int8", "int8-dynamic", "int8-weight", "int4-weight")
WEIGHT_ONLY = ("int8-weight", "int4-weight")


@dataclass(frozen=True)
class Layer:
    """A quantizable node: its weight's input index and the axis of its output channels in that weight."""

    node: Node
    weight_index: int
    channel_axis: int

    @property
    def name(self) -> str:
        return self.node.name


def gemm_like(node: Node) -> bool:
    """A linear ONNX Runtime runs as Gemm: 2-d input and a bias."""
    return node.op == "linear" and node.inputs[0].rank == 2 and len(node.inputs) > 2 and node.inputs[2] is not None


def names_of(node: Node) -> list[str]:
    """What a skip pattern is matched against: the node name and the module it came from."""
    names = [node.name]
    source = node.meta.get("source")
    module = getattr(source, "module", "")
    if module:
        names.append(module)
    return names


def _layer(node: Node, mode: str) -> tuple[Layer | None, str]:
    """The node as a layer for `mode`, or None and why not ("" for ops that are never layers)."""
    inputs = node.inputs
    if node.op not in ("conv", "linear", "matmul") or len(inputs) < 2:
        return None, ""
    weight_index = 1
    weight = inputs[weight_index]
    if weight is None or not weight.is_weight or weight.data is None or not weight.dtype.is_floating_point:
        return None, "its weight is computed, not a constant"
    if inputs[0] is None or inputs[0].dtype != torch.float32:
        return None, "its input is not float32"
    if node.op == "conv":
        if mode != "int8":
            return None, ("convs stay float in this mode (ONNX Runtime runs a dynamic int8 conv as "
                          "ConvInteger, measured 3x slower than fp32)")
        return Layer(node, weight_index, 0), ""
    if node.op == "matmul" and weight.rank != 2:
        return None, "a batched weight"
    if mode == "int8-dynamic" and gemm_like(node):
        return None, ("ONNX Runtime fuses a 2-d linear and its bias into Gemm before its dynamic int8 fusion, "
                      "and a Gemm that dequantizes its weight on every call is slower than fp32")
    # linear: weight [N, K], output channels on axis 0; matmul: weight [K, N], on axis 1
    return Layer(node, weight_index, 0 if node.op == "linear" else 1), ""


def find_layers(graph: Graph, mode: str, skip: Sequence[str]) -> tuple[list[Layer], dict[str, str]]:
    """The layers to quantize, in graph order, and the layers left float with the reason."""
    layers: list[Layer] = []
    left: dict[str, str] = {}
    for node in graph.nodes:
        layer, why = _layer(node, mode)
        if layer is None:
            if why:
                left[node.name] = why
            continue
        matched = next((p for p in skip for n in names_of(node) if fnmatch.fnmatch(n, p)), None)
        if matched is not None:
            left[node.name] = f"skipped by pattern {matched!r}"
            continue
        layers.append(layer)
    return layers, left
