"""ONNX tensors: torch tensors -> ONNX initializers and back.

The dtype tables live in the neutral `graphopt.dtypes` (the ONNX front-end
reads them too, without importing this back-end); they are re-exported here
for the back-end's callers.
"""

from __future__ import annotations

import numpy as np
import onnx
import torch

from graphopt.dtypes import ONNX_TO_TORCH, TORCH_TO_ONNX, to_onnx_dtype, to_torch_dtype, to_torch_tensor
from graphopt.errors import GraphoptError

__all__ = ["TORCH_TO_ONNX", "ONNX_TO_TORCH", "to_onnx_dtype", "to_torch_dtype", "tensor_proto",
           "fill_tensor_proto", "to_torch_tensor"]


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
