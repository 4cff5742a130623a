"""Shape and layout predicates shared by the canonicalisation rules."""

from __future__ import annotations

from typing import Sequence

from graphopt.ir import dims as D
from graphopt.ir.graph import Value


def normalized_dims(dims: Sequence[int], rank: int) -> list[int]:
    """`dims` with negative axes made positive (a permutation written either way compares equal)."""
    return [d % max(rank, 1) for d in dims]


def same_shape(a: Value, b: Value) -> bool:
    return D.shapes_equal(a.shape, b.shape)
