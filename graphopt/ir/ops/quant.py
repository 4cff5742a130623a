"""Quantization ops in the ONNX QDQ convention: quantize, dequantize, run-time quantize, weight-only matmul.

Why explicit ops rather than fused "int8 conv" ops: a quantized graph stays a
float graph with quantize -> dequantize pairs on the tensors that are stored or
computed in integers (ONNX's QDQ form). Every pass, the cost analysis and every
back-end read it without knowing about integer kernels; a back-end that has
them (ONNX Runtime) fuses DQ -> conv -> Q into an integer conv itself, and one
that has not (the torch back-end) runs exactly what the graph says, which is
the quantized model's arithmetic.

The exception is the weight-only product `matmul_nbits`: its weight is stored
in 4 or 8 bits and dequantized inside the kernel (ONNX Runtime's MatMulNBits),
so it is one op. Its weight tensor is int8 holding values in
[-2^(bits-1), 2^(bits-1) - 1] (int4 values unpacked, one per byte); the ONNX
lowering packs two int4 values per byte.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from graphopt.errors import ShapeError
from graphopt.ir.graph import Node
from graphopt.ir.ops._core import TensorType, in_, kernel, op

# Trait: constant folding must leave the op alone. A dequantize_linear of a stored int8 weight reads only
# weights, so folding would turn the weight back into float and undo the quantization.
NO_FOLD = "no_fold"

_AXIS = {"axis": "axis along which a 1-d scale / zero_point applies (per-channel); ignored for 0-d ones"}


def along(param: torch.Tensor, x: torch.Tensor, axis: int) -> torch.Tensor:
    """A 0-d or 1-d quantization parameter shaped to broadcast against `x` along `axis`."""
    if param.dim() == 0:
        return param
    shape = [1] * x.dim()
    shape[axis % x.dim()] = -1
    return param.reshape(shape)


def blocked(param: torch.Tensor, x: torch.Tensor, axis: int, block_size: int) -> torch.Tensor:
    """A per-block parameter (one entry per `block_size` elements along `axis`) expanded to `x`'s shape."""
    axis = axis % x.dim()
    full = param.repeat_interleave(block_size, dim=axis)
    return full.narrow(axis, 0, x.shape[axis])


@op("quantize_linear", "x, scale, zero_point", attrs=_AXIS,
    shape="same as x; element type of zero_point (int8, uint8, int32)", category="quantization",
    doc="saturate(round_half_even(x / scale) + zero_point) (ONNX QuantizeLinear)")
def _quantize_linear(node: Node) -> list[TensorType]:
    return [(in_(node, 0).shape, in_(node, 2).dtype)]


@kernel("quantize_linear")
def quantize_linear(x, scale, zero_point, *, axis=1):
    info = torch.iinfo(zero_point.dtype)
    q = torch.round(x / along(scale, x, axis)) + along(zero_point, x, axis).to(x.dtype)
    return q.clamp(info.min, info.max).to(zero_point.dtype)


@op("dequantize_linear", "q, scale, zero_point?",
    attrs={**_AXIS, "block_size": "0: per tensor or per axis; n > 0: one scale per n elements along axis"},
    shape="same as q; element type of scale", category="quantization", traits={NO_FOLD},
    doc="(q - zero_point) * scale (ONNX DequantizeLinear, blocked from opset 21)")
def _dequantize_linear(node: Node) -> list[TensorType]:
    q, scale = in_(node, 0), in_(node, 1)
    if node.attrs.get("block_size", 0) and scale.rank != q.rank:
        raise ShapeError(f"{node.where()}: a blocked scale must have the rank of q ({q.rank}), got {scale.rank}")
    return [(q.shape, scale.dtype)]


@kernel("dequantize_linear")
def dequantize_linear(q, scale, zero_point=None, *, axis=1, block_size=0):
    expand = (lambda p: blocked(p, q, axis, block_size)) if block_size else (lambda p: along(p, q, axis))
    x = q.to(scale.dtype)
    if zero_point is not None:
        x = x - expand(zero_point).to(scale.dtype)
    return x * expand(scale)


@op("dynamic_quantize_linear", "x", shape="[x.shape uint8, scale 0-d, zero_point 0-d uint8]",
    category="quantization",
    doc="uint8 quantization with the scale and zero point of this x's range (with 0), computed at run time "
        "(ONNX DynamicQuantizeLinear)")
def _dynamic_quantize_linear(node: Node) -> list[TensorType]:
    x = in_(node, 0)
    return [(x.shape, torch.uint8), ((), x.dtype), ((), torch.uint8)]


@kernel("dynamic_quantize_linear")
def dynamic_quantize_linear(x):
    lo = torch.clamp(x.min(), max=0.0)
    hi = torch.clamp(x.max(), min=0.0)
    scale = (hi - lo) / 255.0
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))  # an all-zero x: any scale reproduces it
    zero_point = torch.round(-lo / safe).clamp(0, 255)
    q = (torch.round(x / safe) + zero_point).clamp(0, 255)
    return q.to(torch.uint8), scale.to(x.dtype), zero_point.to(torch.uint8)


@op("matmul_nbits", "x, qweight, scales, bias?",
    attrs={"bits": "4 or 8: the weight's width", "block_size": "input features sharing one scale"},
    shape="[..., N] with qweight [N, K] and scales [N, ceil(K / block_size)]", category="quantization",
    doc="x @ (qweight * scales per block)^T + bias: a weight-only quantized linear (ONNX Runtime MatMulNBits)")
def _matmul_nbits(node: Node) -> list[TensorType]:
    x, w, s = in_(node, 0), in_(node, 1), in_(node, 2)
    bs = node.attrs["block_size"]
    if isinstance(x.shape[-1], int) and x.shape[-1] != w.shape[1]:
        raise ShapeError(f"{node.where()}: input features {x.shape[-1]} != weight in-features {w.shape[1]}")
    if tuple(s.shape) != (w.shape[0], -(-w.shape[1] // bs)):
        raise ShapeError(f"{node.where()}: scales {list(s.shape)} do not fit weight {list(w.shape)} "
                         f"in blocks of {bs}")
    return [((*x.shape[:-1], w.shape[0]), x.dtype)]


@kernel("matmul_nbits")
def matmul_nbits(x, qweight, scales, bias=None, *, bits, block_size):
    weight = qweight.to(scales.dtype) * blocked(scales, qweight, 1, block_size)
    return F.linear(x, weight.to(x.dtype), bias)
