"""Quantization in the torch back-end: a quantize -> dequantize pair runs as fake-quant with straight-through
gradients, so a quantized graph's module can be fine-tuned (quantization-aware training).

The op kernels compute the pair exactly (the interpreter's reference), but the
integer tensor between them stops gradients. Here the pair becomes one call
whose forward is the same rounding and clamping and whose backward passes the
gradient to the float input unchanged, as if rounding were the identity.
Integer weights (dequantize_linear of an int8 parameter) keep their values;
their float scales, the biases and every float layer train.
"""

from __future__ import annotations

import torch

from graphopt.ir.graph import Node
from graphopt.ir.ops.quant import along


def fake_quantize(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, *, axis: int = 1) -> torch.Tensor:
    """Quantize-dequantize `x` in float (forward exact), with a straight-through gradient to `x`."""
    info = torch.iinfo(zero_point.dtype)
    s, z = along(scale, x, axis), along(zero_point, x, axis).to(x.dtype)
    q = torch.clamp(torch.round(x / s) + z, info.min, info.max)
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
