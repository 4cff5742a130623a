"""Element types: torch dtypes <-> ONNX TensorProto types, and torch tensors -> ONNX initializers."""

from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import TensorProto

from graphopt.errors import GraphoptError

TORCH_TO_ONNX: dict[torch.dtype, int] = {
    torch.float32: TensorProto.FLOAT,
    torch.float16: TensorProto.FLOAT16,
    torch.bfloat16: TensorProto.BFLOAT16,
    torch.float64: TensorProto.DOUBLE,
    torch.int64: TensorProto.INT64,
    torch.int32: TensorProto.INT32,
    torch.int16: TensorProto.INT16,
    torch.int8: TensorProto.INT8,
    torch.uint8: TensorProto.UINT8,
    torch.bool: TensorProto.BOOL,
    torch.complex64: TensorProto.COMPLEX64,
    torch.complex128: TensorProto.COMPLEX128,
}
ONNX_TO_TORCH: dict[int, torch.dtype] = {v: k for k, v in TORCH_TO_ONNX.items()}


def to_onnx_dtype(dtype: torch.dtype) -> int:
    try:
        return TORCH_TO_ONNX[dtype]
    except KeyError:
        raise GraphoptError(f"dtype {dtype} has no ONNX element type") from None


def to_torch_dtype(elem_type: int) -> torch.dtype:
    try:
        return ONNX_TO_TORCH[elem_type]
    except KeyError:
        name = TensorProto.DataType.Name(elem_type) if elem_type in TensorProto.DataType.values() else elem_type
        raise GraphoptError(f"ONNX element type {name} has no torch dtype graphopt supports") from None


def tensor_proto(name: str, tensor: torch.Tensor) -> onnx.TensorProto:
    """An initializer holding `tensor`."""
    return fill_tensor_proto(onnx.TensorProto(), name, tensor)


def fill_tensor_proto(proto: onnx.TensorProto, name: str, tensor: torch.Tensor) -> onnx.TensorProto:
    """Write `tensor` into `proto` as raw bytes (one copy; exact for bf16, which numpy lacks)."""
    if tensor.device.type == "meta":
        raise GraphoptError(f"weight '{name}' lives on the meta device and has no data to export")
    t = tensor.detach().cpu().contiguous()
    proto.name = name
    proto.data_type = to_onnx_dtype(t.dtype)
    proto.dims.extend(t.shape)
    if t.dtype == torch.bfloat16:  # ship the bit pattern
        t = t.view(torch.int16)
    proto.raw_data = memoryview(np.ascontiguousarray(t.numpy())).cast("B").tobytes() if t.numel() else b""
    return proto


def to_torch_tensor(proto: onnx.TensorProto, base_dir: str | None = None) -> torch.Tensor:
    """A torch tensor with the data of an ONNX initializer (external data read from `base_dir`)."""
    array = onnx.numpy_helper.to_array(proto, base_dir or "")
    if proto.data_type == TensorProto.BFLOAT16:  # numpy (ml_dtypes) bfloat16: reinterpret the bits
        array = np.ascontiguousarray(array).view(np.int16)
    if not array.flags.writeable or not array.flags.c_contiguous:  # torch wants memory it may write
        array = np.array(array, copy=True)
    tensor = torch.from_numpy(array)
    return tensor.view(torch.bfloat16) if proto.data_type == TensorProto.BFLOAT16 else tensor
