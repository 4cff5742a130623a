"""Helpers every ONNX converter family uses: reading inputs and attributes, reshaping, spatial padding."""

from __future__ import annotations

from typing import Any, Sequence

from graphopt.errors import GraphoptError
from graphopt.frontends.onnx import OnnxImportContext
from graphopt.ir import dims as D
from graphopt.ir.graph import Value


def value_at(ctx: OnnxImportContext, node, i: int) -> Value | None:
    name = ctx.input(node, i)
    return ctx.value(name) if name else None


def attr(node, name: str, default: Any = None) -> Any:
    return OnnxImportContext.attr(node, name, default)


def reshape_to(ctx: OnnxImportContext, x: Value, shape: Sequence) -> Value:
    shape = [D.canon(d) for d in shape]
    if D.shapes_equal(shape, x.shape):
        return x
    return ctx.emit1("reshape", [x], {"shape": shape})

def spatial_pads(ctx, node, x: Value, kernel: Sequence[int], strides, dilations) -> tuple[list[int], list[int]]:
    """(begin, end) padding per spatial axis from `pads` or `auto_pad`."""
    n = len(kernel)
    auto = attr(node, "auto_pad", "NOTSET")
    if auto in ("NOTSET", "", None):
        pads = list(attr(node, "pads", [0] * (2 * n)))
        return [int(p) for p in pads[:n]], [int(p) for p in pads[n:]]
    if auto == "VALID":
        return [0] * n, [0] * n
    begins, ends = [], []
    for L, k, s, d in zip(x.shape[2:], kernel, strides, dilations):
        if not isinstance(L, int):
            raise GraphoptError(f"{ctx.where()}: auto_pad={auto} over a symbolic spatial dim is not supported")
        total = max(0, (-(-L // s) - 1) * s + (k - 1) * d + 1 - L)
        small = total // 2
        begins.append(small if auto == "SAME_UPPER" else total - small)
        ends.append(total - small if auto == "SAME_UPPER" else small)
    return begins, ends


def pad_asymmetric(ctx, x: Value, begins, ends, value: float = 0.0) -> tuple[Value, list[int]]:
    """Symmetric padding for the op itself, plus a pad node for the uneven rest."""
    sym = [min(b, e) for b, e in zip(begins, ends)]
    extra = [(b - s, e - s) for b, e, s in zip(begins, ends, sym)]
    if any(lo or hi for lo, hi in extra):
        torch_pad: list[int] = []
        for lo, hi in reversed(extra):
            torch_pad += [lo, hi]
        x = ctx.emit1("pad", [x], {"pad": torch_pad, "mode": "constant", "value": value})
    return x, sym
