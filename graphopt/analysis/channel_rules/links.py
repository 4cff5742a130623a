"""Small couplings the channel rules of several op families share: a weight axis tied to a tensor axis."""

from __future__ import annotations

from graphopt.analysis.channels import Builder, Space
from graphopt.ir.graph import Value


def role_space(b: Builder, value: Value | None, axis: int, role: str) -> Space | None:
    """The space of `value` over `axis`, giving it `role` ("producer", "consumer", "stat")."""
    return b.space(value, (axis,), role) if value is not None else None


def link(b: Builder, w: Value | None, w_axis: int, v: Value | None, v_axis: int, role: str) -> None:
    """Tie a weight axis to a tensor axis, giving the weight the tensor's atoms when it has some.

    Rules run in topological order, so the tensor side usually has its space already;
    reusing its atoms saves a union per weight.
    """
    if w is None or v is None:
        return
    if b.spaces.get((id(v), (v_axis % v.rank,))) is not None:
        couple_axis(b, w, w_axis, v, v_axis)
        role_space(b, w, w_axis, role)
    else:
        role_space(b, w, w_axis, role)
        couple_axis(b, w, w_axis, v, v_axis)


def couple_axis(b: Builder, a: Value | None, axis_a: int, c: Value | None, axis_c: int) -> None:
    b.identity(a, c, [axis_a], [axis_c])


def head_dim_space(b: Builder, t: Value, axes: list[int]) -> None:
    """The space of `t` over `axes`, remembered as head_dim: its group reports "head dims"."""
    space = b.space(t, axes)
    if space is not None:
        b.head_dims.add(id(space))
