"""Helpers every ATen converter family uses: schema arguments, casts, slice bounds, `full` nodes."""

from __future__ import annotations

from typing import Any

import torch

from graphopt.ir import dims as D
from graphopt.ir.graph import Value


def schema_arg(node, index: int, name: str, default: Any = None) -> Any:
    """An argument by position or keyword, as the ATen schema names it."""
    if index < len(node.args):
        return node.args[index]
    return node.kwargs.get(name, default)


def as_list(value) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def cast_to(ctx, x: Value, dtype: torch.dtype) -> Value:
    return x if x.dtype == dtype else ctx.emit1("cast", [x], {"dtype": dtype})


def same_dim(a, b) -> bool:
    return D.dims_equal(a, b)


def clamp_range(start, end, size):
    """Python slice semantics on static values; symbolic bounds are kept as torch saw them."""
    if isinstance(start, int) and isinstance(size, int):
        start = max(0, min(start + size if start < 0 else start, size))
    if isinstance(end, int) and isinstance(size, int):
        end = max(0, min(end + size if end < 0 else end, size))
    elif isinstance(end, int) and end >= 2**62:
        end = size
    return start, end


def full_node(ctx, value, dtype=None):
    return ctx.emit1("full", [], {"shape": list(ctx.out_shape()), "value": value, "dtype": dtype or ctx.out_dtype()})
