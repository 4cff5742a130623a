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

from dataclasses import dataclass
from typing import Any, Callable, Sequence

from graphopt.errors import GraphoptError
from graphopt.ir import op_table
from graphopt.ir.graph import Node
from graphopt.registry import Registry
from graphopt.backends.onnx.builder import OnnxBuilder

Lowering = Callable[[OnnxBuilder, Node, list], "str | Sequence[str]"]

COLUMN = "onnx_lowering"
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


@dataclass(frozen=True)
class CustomNode:
    """A lowering to one node of a custom ONNX domain, for a runtime that has a kernel for it.

    The node takes the op's inputs and attributes as they are in the IR (None
    attributes are left out) and the model imports `domain` at `version`.
    ONNX Runtime runs such a node only with a custom-op library registered in
    its session; to run anywhere, lower to standard ONNX ops instead.
    """

    op_type: str
    domain: str
    version: int = 1

    def __post_init__(self) -> None:
        if not self.domain or self.domain in ("ai.onnx", "ai.onnx.ml"):
            raise GraphoptError(f"CustomNode('{self.op_type}') needs a custom domain such as 'com.example', "
                                f"not {self.domain!r}: the standard domains' operators are fixed by ONNX")

    def __call__(self, b: OnnxBuilder, node: Node, ins: list) -> Any:
        attrs = {key: _attribute(node, key, value) for key, value in node.attrs.items()}
        b.domains[self.domain] = self.version
        outputs = len(node.outputs)
        return b.op(self.op_type, ins, attrs, outputs=outputs, dtype=node.outputs[0].dtype, domain=self.domain)


def _attribute(node: Node, key: str, value: Any) -> Any:
    """An IR attribute as an ONNX attribute value (numbers, strings and lists of them)."""
    items = value if isinstance(value, (list, tuple)) else [value]
    if value is None or all(isinstance(v, (bool, int, float, str)) for v in items):
        return [int(v) if isinstance(v, bool) else v for v in value] if isinstance(value, (list, tuple)) \
            else (int(value) if isinstance(value, bool) else value)
    raise GraphoptError(f"{node.where()}: attribute {key}={value!r} has no ONNX attribute form for a custom node "
                        "(numbers, strings and lists of them have)")
