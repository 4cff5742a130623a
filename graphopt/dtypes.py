"""Element types shared by the ONNX front-end and back-end: torch dtypes <-> ONNX element types.

ONNX element types are plain ints here (the values of `onnx.TensorProto.DataType`,
fixed by the ONNX spec), so this module needs neither onnx nor a back-end: the
front-end that reads ONNX and the back-end that writes it take their tables from
one neutral place instead of one importing the other.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from graphopt.errors import GraphoptError

# onnx.TensorProto.DataType values (onnx/onnx.proto3)
ONNX_ELEMENT_TYPES: dict[str, int] = {
    "FLOAT": 1, "UINT8": 2, "INT8": 3, "UINT16": 4, "INT16": 5, "INT32": 6, "INT64": 7, "STRING": 8, "BOOL": 9,
    "FLOAT16": 10, "DOUBLE": 11, "UINT32": 12, "UINT64": 13, "COMPLEX64": 14, "COMPLEX128": 15, "BFLOAT16": 16,
    "FLOAT8E4M3FN": 17, "FLOAT8E4M3FNUZ": 18, "FLOAT8E5M2": 19, "FLOAT8E5M2FNUZ": 20, "UINT4": 21, "INT4": 22,
    "FLOAT4E2M1": 23,
}
_ELEMENT_NAMES = {v: k for k, v in ONNX_ELEMENT_TYPES.items()}
BFLOAT16 = ONNX_ELEMENT_TYPES["BFLOAT16"]

TORCH_TO_ONNX: dict[torch.dtype, int] = {
    torch.float32: ONNX_ELEMENT_TYPES["FLOAT"],
    torch.float16: ONNX_ELEMENT_TYPES["FLOAT16"],
    torch.bfloat16: BFLOAT16,
    torch.float64: ONNX_ELEMENT_TYPES["DOUBLE"],
    torch.int64: ONNX_ELEMENT_TYPES["INT64"],
    torch.int32: ONNX_ELEMENT_TYPES["INT32"],
    torch.int16: ONNX_ELEMENT_TYPES["INT16"],
    torch.int8: ONNX_ELEMENT_TYPES["INT8"],
    torch.uint8: ONNX_ELEMENT_TYPES["UINT8"],
    torch.bool: ONNX_ELEMENT_TYPES["BOOL"],
    torch.complex64: ONNX_ELEMENT_TYPES["COMPLEX64"],
    torch.complex128: ONNX_ELEMENT_TYPES["COMPLEX128"],
}
ONNX_TO_TORCH: dict[int, torch.dtype] = {v: k for k, v in TORCH_TO_ONNX.items()}


def to_onnx_dtype(dtype: torch.dtype) -> int:
    """The ONNX element type (a TensorProto.DataType value) of a torch dtype."""
    try:
        return TORCH_TO_ONNX[dtype]
    except KeyError:
        raise GraphoptError(f"dtype {dtype} has no ONNX element type") from None


def to_torch_dtype(elem_type: int) -> torch.dtype:
    """The torch dtype of an ONNX element type; a clear error for those graphopt has no dtype for."""
    try:
        return ONNX_TO_TORCH[elem_type]
    except KeyError:
        name = _ELEMENT_NAMES.get(elem_type, elem_type)
        raise GraphoptError(f"ONNX element type {name} has no torch dtype graphopt supports") from None


def to_torch_tensor(proto: Any, base_dir: str | None = None) -> torch.Tensor:
    """A torch tensor with the data of an ONNX TensorProto (external data read from `base_dir`).

    Shared by the ONNX front-end and back-end; onnx is imported here, on use, so this module
    stays importable without it.
    """
    from onnx import numpy_helper

    return array_to_torch(numpy_helper.to_array(proto, base_dir or ""), proto.data_type)


def array_to_torch(array: np.ndarray, elem_type: int) -> torch.Tensor:
    """A torch tensor from the numpy array of an ONNX tensor of `elem_type` (bf16 arrives as its bits' type)."""
    if elem_type == BFLOAT16:  # numpy (ml_dtypes) bfloat16: reinterpret the bits
        array = np.ascontiguousarray(array).view(np.int16)
    if not array.flags.writeable or not array.flags.c_contiguous:  # torch wants memory it may write
        array = np.array(array, copy=True)
    tensor = torch.from_numpy(array)
    return tensor.view(torch.bfloat16) if elem_type == BFLOAT16 else tensor
