"""The op attribute table: every layer attaches what it knows about an op as a column of that op.

TVM keeps one table per op and lets each layer add an attribute to it
(`register_op_attr(op_name, attr_key, value)`); graphopt does the same, so an
op's shape rule, torch kernel, channel rule, MAC rule and ONNX lowering are
found under one name, a custom op is defined in one place
(`graphopt.define_op`), and `docs/ir.md`'s coverage table is read off this table.

Columns are declared once with `column(key, doc)`; each is a `Registry` with
graphopt's one duplicate policy (a second registration raises unless
`replace=True`). This module imports nothing above `graphopt.errors`, so any
layer may attach a column without importing another layer.
"""

from __future__ import annotations

from typing import Any

from graphopt.errors import GraphoptError
from graphopt.registry import Registry

# The columns graphopt's own layers attach, named here, in the table's one home, so that a layer (or a
# user's `define_op`) can fill another layer's column without importing it: defining an op's ONNX
# lowering must not need onnx installed.
TORCH_KERNEL = "torch_kernel"  # ir: the reference torch implementation
CHANNEL_RULE = "channel_rule"  # analysis: how channel positions correspond across the op
MAC_RULE = "mac_rule"  # analysis: multiply-accumulates the op performs
ONNX_LOWERING = "onnx_lowering"  # backends/onnx: how the op is spelled in ONNX operators

_COLUMNS: dict[str, Registry[Any]] = {}
_COLUMN_DOCS: dict[str, str] = {}


def column(key: str, doc: str = "") -> Registry[Any]:
    """The column `key` (declared on first use, with a one-line `doc` for the coverage table)."""
    table = _COLUMNS.get(key)
    if table is None:  # setdefault: two threads declaring the column get the same table
        table = _COLUMNS.setdefault(key, Registry(key.replace("_", " ")))
    if doc:
        _COLUMN_DOCS[key] = doc
    return table


def register_op_attr(op: str, key: str, value: Any, *, replace: bool = False) -> Any:
    """Attach `value` to `op` under column `key`; twice raises `GraphoptError` unless `replace=True`."""
    return column(key).register(op, value, replace=replace)


def get_op_attr(op: str, key: str, default: Any = None) -> Any:
    """The value of column `key` for `op`, or `default` when the op has none."""
    table = _COLUMNS.get(key)
    return default if table is None else table.get(op, default)


def require_op_attr(op: str, key: str) -> Any:
    """The value of column `key` for `op`, or a `GraphoptError` naming the op and the column."""
    table = _COLUMNS.get(key)
    if table is None or op not in table:
        raise GraphoptError(f"op '{op}' has no {key.replace('_', ' ')}; attach one with "
                            f"graphopt.ir.op_table.register_op_attr({op!r}, {key!r}, ...) or graphopt.define_op")
    return table.get(op)


def columns() -> dict[str, str]:
    """Every declared column and its one-line description."""
    return {key: _COLUMN_DOCS.get(key, "") for key in _COLUMNS}

