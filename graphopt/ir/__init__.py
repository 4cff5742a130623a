"""The graphopt IR: Graph, Node, Value, the canonical op set, printer and verifier."""

from graphopt.ir import dims
from graphopt.ir.graph import Graph, Node, SourceLocation, Value, dtype_from_str, dtype_str
from graphopt.ir.ops import OPS, OpDef, get_op, infer_types, register_op

__all__ = [
    "Graph", "Node", "Value", "SourceLocation", "OpDef", "OPS", "get_op", "infer_types", "register_op",
    "dims", "dtype_str", "dtype_from_str",
]
