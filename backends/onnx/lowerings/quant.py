"""ONNX lowerings of the quantization ops: QuantizeLinear / DequantizeLinear (QDQ), DynamicQuantizeLinear,
and the weight-only `matmul_nbits` as ONNX Runtime's com.microsoft MatMulNBits.

The QDQ form is what ONNX Runtime's graph optimizer turns into integer kernels
(DQ -> Conv -> Q becomes QLinearConv, DQ -> MatMul becomes MatMulIntegerToFloat,
DynamicQuantizeLinear -> DQ -> MatMul becomes DynamicQuantizeMatMul), so these
lowerings spell each op literally and leave the fusion to the runtime.
"""

from __future__ import annotations

import torch

from graphopt.errors import GraphoptError
from graphopt.backends.onnx.builder import OnnxBuilder
from graphopt.backends.onnx.lowering import OpsetTooLow, lowering
from graphopt.backends.onnx.lowerings._common import out_of

MS_DOMAIN = "com.microsoft"
# accuracy_level 4: int8 compute on the activations. Measured on this machine: level 0 (fp32 compute)
# was slower than the fp32 model, level 4 faster.
ACCURACY_LEVEL = 4


def _axis_attrs(node) -> dict:
    scale = node.inputs[1]
    return {"axis": int(node.attrs.get("axis", 1))} if scale.rank > 0 else {}


@lowering("quantize_linear")
def _quantize_linear(b, node, ins):
    return b.op("QuantizeLinear", ins[:3], _axis_attrs(node), dtype=out_of(node).dtype)


@lowering("dequantize_linear")
def _dequantize_linear(b, node, ins):
    attrs = _axis_attrs(node)
    block = int(node.attrs.get("block_size", 0))
    if block:
        if b.opset < 21:  # an export that named no opset retries at 21
            raise OpsetTooLow(f"{node.where()}: a blocked dequantize_linear needs ONNX opset 21 or newer "
                              f"(exporting opset {b.opset})", 21)
        attrs["block_size"] = block
    return b.op("DequantizeLinear", [i for i in ins[:3] if i is not None], attrs, dtype=out_of(node).dtype)


@lowering("dynamic_quantize_linear")
def _dynamic_quantize_linear(b, node, ins):
    if node.inputs[0].dtype != torch.float32:
        raise GraphoptError(f"{node.where()}: ONNX DynamicQuantizeLinear takes float32, got {node.inputs[0].dtype}")
    names = b.op("DynamicQuantizeLinear", [ins[0]], outputs=3)
    for name, value in zip(names, node.outputs):
        b.dtypes[name] = value.dtype
    return names


def pack_weight(qweight: torch.Tensor, bits: int, block_size: int) -> torch.Tensor:
    """MatMulNBits' B: signed values shifted to unsigned (zero point 2^(bits-1)), K padded to whole blocks,
    `8 / bits` values per byte with the first in the low bits; shape [N, blocks, block_size * bits / 8]."""
    n, k = qweight.shape
    blocks = -(-k // block_size)
    unsigned = (qweight.to(torch.int16) + (1 << (bits - 1))).to(torch.uint8)
    padded = torch.full((n, blocks * block_size), 1 << (bits - 1), dtype=torch.uint8)
    padded[:, :k] = unsigned
    if bits == 4:
        pairs = padded.reshape(n, -1, 2)
        padded = pairs[..., 0] | (pairs[..., 1] << 4)
    elif bits != 8:
        raise GraphoptError(f"matmul_nbits: {bits}-bit weights are not supported (4 or 8)")
    return padded.reshape(n, blocks, block_size * bits // 8).contiguous()


@lowering("matmul_nbits")
def _matmul_nbits(b: OnnxBuilder, node, ins):
    x, qweight, scales = node.inputs[:3]
    bias = ins[3] if len(ins) > 3 else None
    bits, block = int(node.attrs["bits"]), int(node.attrs["block_size"])
    if qweight.data is None or not qweight.is_weight:
        raise GraphoptError(f"{node.where()}: MatMulNBits needs a constant weight")
    if x.dtype != torch.float32:
        raise GraphoptError(f"{node.where()}: the ONNX lowering of matmul_nbits takes float32, got {x.dtype}")
    packed = b.add_initializer(f"{qweight.name}.packed{bits}", pack_weight(qweight.data, bits, block))
    n, k = (int(d) for d in qweight.shape)
    attrs = {"K": k, "N": n, "bits": bits, "block_size": block, "accuracy_level": ACCURACY_LEVEL}
    # bias as MatMulNBits' own input is recent; a separate Add runs on every ONNX Runtime release
    y = b.op("MatMulNBits", [ins[0], packed, ins[2]], attrs, dtype=out_of(node).dtype, domain=MS_DOMAIN)
    return b.op("Add", [y, bias], dtype=out_of(node).dtype) if bias else y
