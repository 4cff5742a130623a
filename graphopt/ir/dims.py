"""Tensor dimensions that are either concrete ints or symbolic (sympy) expressions.

Traced models keep dynamic axes (batch, sequence length) symbolic so the
lowered model runs on shapes other than the traced one. Shape rules do plain
arithmetic on dims; these helpers keep results canonical (an int whenever the
expression is a number) and printable.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Iterable, Union

import sympy

Dim = Union[int, sympy.Expr]
Shape = tuple  # tuple[Dim, ...]


def symbol(name: str) -> sympy.Symbol:
    """The symbol used for a dynamic axis called `name`."""
    return sympy.Symbol(name, integer=True, positive=True)


def canon(d) -> Dim:
    """Return `d` as an int when it is a number, else as a sympy expression."""
    if isinstance(d, bool):
        raise TypeError("a dimension cannot be a bool")
    if isinstance(d, int):
        return d
    if isinstance(d, sympy.Basic):
        if d.is_Integer:
            return int(d)
        return d
    if hasattr(d, "node") and hasattr(d.node, "expr"):  # torch.SymInt
        return canon(d.node.expr)
    return int(d)


def is_static(d: Dim) -> bool:
    return isinstance(d, int)


def shape_is_static(shape: Iterable[Dim]) -> bool:
    return all(isinstance(d, int) for d in shape)


def dims_equal(a: Dim, b: Dim) -> bool:
    if isinstance(a, int) and isinstance(b, int):
        return a == b
    if isinstance(a, int) != isinstance(b, int):
        return False
    return sympy.simplify(a - b) == 0


def shapes_equal(a: Iterable[Dim], b: Iterable[Dim]) -> bool:
    a, b = tuple(a), tuple(b)
    return len(a) == len(b) and all(dims_equal(x, y) for x, y in zip(a, b))


def prod(dims: Iterable[Dim]) -> Dim:
    out: Dim = 1
    for d in dims:
        out = out * d
    return canon(sympy.expand(out)) if not isinstance(out, int) else out


def floordiv(a: Dim, b: Dim) -> Dim:
    if isinstance(a, int) and isinstance(b, int):
        return a // b
    return canon(sympy.floor(sympy.sympify(a) / b))


def ceildiv(a: Dim, b: Dim) -> Dim:
    if isinstance(a, int) and isinstance(b, int):
        return -(-a // b)
    return canon(sympy.ceiling(sympy.sympify(a) / b))


def dim_str(d: Dim) -> str:
    return str(d) if isinstance(d, int) else str(d).replace(" ", "")


def free_symbols(obj) -> set:
    """All sympy symbols found anywhere in `obj` (dims, nested lists/tuples/dicts)."""
    found: set = set()
    if isinstance(obj, sympy.Basic):
        found |= obj.free_symbols
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            found |= free_symbols(item)
    elif isinstance(obj, dict):
        for item in obj.values():
            found |= free_symbols(item)
    return found


@lru_cache(maxsize=4096)
def _compile(expr_text: str):
    return compile(expr_text, "<graphopt dim>", "eval")


# Names sympy (and torch's sympy extensions) print for integer shape arithmetic.
_EVAL_NS = {
    "floor": math.floor,
    "ceiling": math.ceil,
    "Max": max,
    "Min": min,
    "Mod": lambda a, b: a % b,
    "PythonMod": lambda a, b: a % b,
    "FloorDiv": lambda a, b: a // b,
    "CeilDiv": lambda a, b: -(-a // b),
    "CleanDiv": lambda a, b: a // b,
    "IntTrueDiv": lambda a, b: a / b,
}


def evaluate(d: Dim, env: dict[str, int]) -> int:
    """The value of `d` once the symbols are bound to ints by `env`."""
    if isinstance(d, int):
        return d
    return evaluate_text(str(d), env)


def evaluate_text(text: str, env: dict[str, int]) -> int:
    """Evaluate a printed dim expression (as stored in generated code) with symbols bound by `env`."""
    return int(eval(_compile(text), dict(_EVAL_NS), dict(env)))  # noqa: S307 - expression built by sympy from trace
