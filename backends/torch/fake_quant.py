"""Quantization in the torch back-end: a quantize -> dequantize pair runs as fake-quant with straight-through
gradients, so a quantized graph's module can be fine-tuned (quantization-aware training).

The op kernels compute the pair exactly (the interpreter's reference), but the
integer tensor between them stops gradients. Here the pair becomes one call
whose forward is the same rounding and clamping and whose backward passes the
gradient to the float input unchanged, as if rounding were the identity.

Integer weights get the same treatment: an int8 parameter that only
`dequantize_linear` reads is installed in the module as its float value
(q * scale, under the weight's own name) and fake-quantized where it is read,
so it trains; `load_weights` rounds it back to int8 with the (trained) scale.
"""

from __future__ import annotations

import torch

from graphopt.ir.graph import Node
from graphopt.ir.ops.quant import along


def fake_quantize(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, *, axis: int = 1,
                  narrow: bool = False) -> torch.Tensor:
    """Quantize-dequantize `x` in float (forward exact), with a straight-through gradient to `x`.

    `narrow`: the symmetric range [-max, max] the quantizer gives weights (no -128)."""
    info = torch.iinfo(zero_point.dtype)
    s, z = along(scale, x, axis), along(zero_point, x, axis).to(x.dtype)
    q = torch.clamp(torch.round(x / s) + z, -info.max if narrow else info.min, info.max)
    return x + ((q - z) * s - x).detach()


def fused_pair(node: Node) -> Node | None:
    """The quantize_linear whose output this dequantize_linear reads (with the same scale), or None."""
    if node.op != "dequantize_linear" or node.attrs.get("block_size", 0):
        return None
    source = node.inputs[0].producer
    if source is None or source.op != "quantize_linear" or len(node.inputs) < 3:
        return None
    same = source.inputs[1] is node.inputs[1] and source.inputs[2] is node.inputs[2]
    return source if same else None


def shadowed_weights(graph) -> dict[str, Node]:
    """Int8 parameters read only by per-axis `dequantize_linear` nodes (input 0): weight name -> one such node.

    These are installed in the module as float (trainable) tensors."""
    found: dict[str, Node] = {}
    for value in graph.weights.values():
        uses = value.uses()
        if value.kind != "param" or value.dtype != torch.int8 or not uses or value.is_graph_output():
            continue
        if all(node.op == "dequantize_linear" and i == 0 and not node.attrs.get("block_size", 0)
               and len(node.inputs) > 2 and node.inputs[2] is not None for node, i in uses):
            found[value.name] = uses[0][0]
    return found


def dequantized(node: Node) -> torch.Tensor:
    """The float value of the weight a `dequantize_linear` node reads."""
    q, scale, zero_point = (v.data for v in node.inputs[:3])
    axis = node.attrs.get("axis", 1)
    return (q.to(scale.dtype) - along(zero_point, q, axis).to(scale.dtype)) * along(scale, q, axis)


def requantized(node: Node, weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """A trained float weight rounded back to the int8 values `node` dequantizes, with its (trained) scale."""
    zero_point = node.inputs[2].data
    axis = node.attrs.get("axis", 1)
    top = torch.iinfo(zero_point.dtype).max
    q = torch.round(weight.detach() / along(scale.detach(), weight, axis)) + along(zero_point, weight, axis)
    return q.clamp(-top, top).to(zero_point.dtype)
