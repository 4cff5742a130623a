"""Exception types that graphopt raises, each carrying the context a user needs to act."""

from __future__ import annotations


class GraphoptError(Exception):
    """Base class of every error graphopt raises on purpose."""


class UnsupportedOpError(GraphoptError):
    """A front-end met an operator it has no mapping for.

    The message names the operator, the node, the user's source line when known,
    and how to register a mapping, so the user can fix it without reading graphopt.
    """

    def __init__(self, op: str, node: str, *, source: str | None = None, hint: str = "") -> None:
        self.op = op
        self.node = node
        self.source = source
        where = f" from {source}" if source else ""
        super().__init__(f"unsupported operator '{op}' (node '{node}'){where}.\n{hint}".rstrip())


class VerificationError(GraphoptError):
    """`Graph.verify()` found the graph ill-formed; `problems` lists every finding."""

    def __init__(self, graph_name: str, problems: list[str]) -> None:
        self.problems = problems
        listing = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"graph '{graph_name}' failed verification ({len(problems)} problem(s)):\n{listing}")


class ShapeError(GraphoptError):
    """An op's shape rule rejected its inputs."""


class BindError(GraphoptError):
    """Sizes given for a graph's symbolic axes (`bind=`) are not usable: an unknown symbol, or not a size >= 1."""


class InputError(GraphoptError):
    """Inputs given to a graph (to call a model, or as calibration data) do not match its inputs."""

