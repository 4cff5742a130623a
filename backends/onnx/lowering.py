"""The ONNX lowering column of the op table: how each canonical op is spelled in ONNX operators.

A lowering is `fn(b, node, ins) -> output tensor name(s)`: `b` is the
`OnnxBuilder`, `node` the IR node (its attrs and typed inputs/outputs), `ins`
the ONNX names of its inputs (None for an absent optional input). Lowerings
are attached to their op as the op-table column "onnx_lowering", so a custom
op's lowering sits next to its other columns (`graphopt.define_op`) and the
coverage table in docs/ir.md is read off the same table. The built-in
lowerings, by op family, are in the `lowerings` package.
"""

from __future__ import annotations

from typing import Callable, Sequence

from graphopt.errors import GraphoptError
from graphopt.ir import op_table
from graphopt.ir.graph import Node
from graphopt.registry import Registry
from graphopt.backends.onnx.builder import OnnxBuilder


class OpsetTooLow(GraphoptError):
    """A lowering needs a newer ONNX opset than the export was asked for (`needs`).

    An export that did not name an opset retries at `needs`; one that did gets this error.
    """

    def __init__(self, message: str, needs: int) -> None:
        super().__init__(message)
        self.needs = needs

Lowering = Callable[[OnnxBuilder, Node, list], "str | Sequence[str]"]

COLUMN = op_table.ONNX_LOWERING
LOWERINGS: Registry[Lowering] = op_table.column(
    COLUMN, "ONNX lowering: fn(builder, node, input_names) -> output name(s) (graphopt.backends.onnx)")


def lowering(*ops: str, replace: bool = False) -> Callable[[Lowering], Lowering]:
    """`@lowering("relu", ...)` attaches the decorated function as the ONNX lowering of each op."""

    def wrap(fn: Lowering) -> Lowering:
        for op in ops:
            op_table.register_op_attr(op, COLUMN, fn, replace=replace)
        return fn

    return wrap


def register_lowering(op: str, fn: Lowering, *, replace: bool = False) -> Lowering:
    """Teach the ONNX exporter an op: `fn(builder, node, input_names) -> output name(s)`.

    A second lowering for the same op raises `GraphoptError` unless `replace=True`.
    """
    return op_table.register_op_attr(op, COLUMN, fn, replace=replace)


def lowering_for(op: str) -> Lowering | None:
    """The ONNX lowering of `op`, or None when it has none."""
    return op_table.get_op_attr(op, COLUMN)
