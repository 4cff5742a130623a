"""Deterministic, human-readable text for a Graph (golden-text tests compare it)."""

from __future__ import annotations

import os
from typing import Any

import sympy
import torch

from graphopt.ir import dims as D
from graphopt.ir.graph import Graph, Node, Value, dtype_str


def format_attr(value: Any) -> str:
    if isinstance(value, torch.dtype):
        return dtype_str(value)
    if isinstance(value, sympy.Basic):
        return D.dim_str(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(format_attr(v) for v in value) + "]"
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _ref(value: Value | None) -> str:
    return "None" if value is None else f"%{value.name}"


def _weight_line(value: Value) -> str:
    text = f"  %{value.name}: {value.type_str()} = {value.kind}"
    if value.kind == "const" and value.data is not None and value.data.numel() <= 4 and value.data.device.type != "meta":
        items = value.data.flatten().tolist()
        text += " " + (format_attr(items[0]) if value.data.dim() == 0 else format_attr(items))
    return text


def format_node(node: Node, *, source: bool = False) -> str:
    outs = ", ".join(f"%{o.name}: {o.type_str()}" for o in node.outputs)
    args = ", ".join(_ref(v) for v in node.inputs)
    text = f"  {outs} = {node.op}({args})"
    if node.attrs:
        text += " {" + ", ".join(f"{k}={format_attr(v)}" for k, v in sorted(node.attrs.items())) + "}"
    loc = node.source
    if source and loc is not None:
        where = []
        if loc.module:
            where.append(loc.module)
        if loc.file:
            where.append(f"{os.path.basename(loc.file)}:{loc.line}")
        if where:
            text += "  # " + " @ ".join(where)
    return text


def format_graph(graph: Graph, *, source: bool = False, weights: bool = True) -> str:
    ins = ", ".join(f"%{v.name}: {v.type_str()}" for v in graph.inputs)
    lines = [f"graph {graph.name}({ins}) {{"]
    if weights:
        lines += [_weight_line(v) for v in graph.weights.values()]
    lines += [format_node(n, source=source) for n in graph.nodes]
    lines.append("  return " + ", ".join(_ref(v) for v in graph.outputs))
    lines.append("}")
    return "\n".join(lines)
