"""The canonical op set: each op's inputs, attributes, shape rule, traits and reference torch kernel.

Front-ends map framework operators onto these ops; passes and backends only
ever see these. An op is registered with `@op(...)` next to its shape rule and
its torch kernel (op-table column "torch_kernel"), one module per op family,
so the documentation in docs/ir.md is generated from the same table that the
verifier, `Graph.create_node` and the interpreter use (`python -m
graphopt.ir.ops` prints it). Users add ops for their own layers with `register_op`.
"""

from graphopt.ir.ops._core import (
    CREATION, ELEMENTWISE, LAYOUT, OPS, REDUCTION, SATURATING, TORCH_KERNEL, TRAINING_AWARE, OpDef, ShapeRule,
    TensorType, broadcast, get_op, has_trait, infer_types, kernel, op, ops_with, register_op, result_dtype,
)
# The family modules register their ops on import, in the order docs/ir.md lists them.
from graphopt.ir.ops import elementwise, nn, layout, reduce, creation  # noqa: F401,E402,I001
from graphopt.ir.ops import selection, patches, recurrent  # noqa: F401,E402,I001
from graphopt.ir.ops import quant  # noqa: F401,E402,I001
from graphopt.ir.ops.elementwise import ELEMENTWISE_BINARY, ELEMENTWISE_UNARY
from graphopt.ir.ops.docs import markdown

__all__ = [
    "OPS", "OpDef", "ShapeRule", "TensorType", "register_op", "get_op", "op", "kernel", "infer_types", "broadcast",
    "result_dtype", "markdown", "ops_with", "has_trait", "ELEMENTWISE_UNARY", "ELEMENTWISE_BINARY",
    "TORCH_KERNEL", "ELEMENTWISE", "TRAINING_AWARE", "SATURATING", "CREATION", "REDUCTION", "LAYOUT",
]
