"""Graph well-formedness checks: definitions before uses, consistent use lists, types and shapes."""

from __future__ import annotations

from graphopt.errors import GraphoptError, VerificationError
from graphopt.ir import dims as D
from graphopt.ir.graph import Graph, dtype_str


def _fmt(shape) -> str:
    return "[" + ",".join(D.dim_str(d) for d in shape) + "]"


def verify(graph: Graph) -> None:
    """Collect every problem, then raise one `VerificationError` that lists them all."""
    from graphopt.ir.ops import OPS, infer_types

    problems: list[str] = []
    defined: set[int] = set()
    names: dict[str, str] = {}

    def define(value, what: str) -> None:
        if value.name in names:
            problems.append(f"name %{value.name} is defined twice ({names[value.name]} and {what})")
        names[value.name] = what
        defined.add(id(value))
        if value.graph is not graph:
            problems.append(f"%{value.name} ({what}) belongs to another graph")

    for value in graph.inputs:
        define(value, "graph input")
        if value.kind != "input":
            problems.append(f"graph input %{value.name} has kind {value.kind!r}")
    for key, value in graph.weights.items():
        define(value, f"{value.kind}")
        if key != value.name:
            problems.append(f"weight registered as '{key}' is named %{value.name}")
        if value.data is None:
            problems.append(f"weight %{value.name} has no tensor")
        elif tuple(value.data.shape) != value.shape or value.data.dtype != value.dtype:
            problems.append(
                f"weight %{value.name} is typed {value.type_str()} but holds a "
                f"{dtype_str(value.data.dtype)}{list(value.data.shape)} tensor"
            )

    for node in graph.nodes:
        where = node.where()
        if node.graph is not graph:
            problems.append(f"{where} belongs to another graph")
        if node.op not in OPS:
            problems.append(f"{where}: op '{node.op}' is not registered")
        for i, value in enumerate(node.inputs):
            if value is None:
                continue
            if id(value) not in defined:
                problems.append(f"{where}: input {i} %{value.name} is used before it is defined (or not in the graph)")
            elif (node, i) not in value._uses:
                problems.append(f"{where}: input {i} %{value.name} does not list this use")
        for out in node.outputs:
            define(out, f"output of %{node.name}")
            if out.producer is not node:
                problems.append(f"{where}: output %{out.name} names another producer")
            for user, i in out._uses:
                if user.graph is not graph or i >= len(user.inputs) or user.inputs[i] is not out:
                    problems.append(f"%{out.name} lists a stale use by %{user.name} input {i}")
        if node.op not in OPS:
            continue
        try:
            types = infer_types(node)
        except GraphoptError as exc:
            problems.append(str(exc))
            continue
        if len(types) != len(node.outputs):
            problems.append(f"{where}: has {len(node.outputs)} outputs, its shape rule gives {len(types)}")
            continue
        for out, (shape, dtype) in zip(node.outputs, types):
            if not D.shapes_equal(out.shape, shape) or out.dtype != dtype:
                problems.append(
                    f"{where}: output %{out.name} is typed {out.type_str()} but the shape rule gives "
                    f"{dtype_str(dtype)}{_fmt(shape)}"
                )

    for value in graph.outputs:
        if id(value) not in defined:
            problems.append(f"graph output %{value.name} is not defined in the graph")
    if not graph.outputs:
        problems.append("graph has no outputs")
    if problems:
        raise VerificationError(graph.name, problems)
