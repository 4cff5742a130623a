"""ONNX converters for layout ops: Reshape and its spellings, Transpose, Concat/Split/Slice, Gather, Expand, Pad."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import sympy
import torch

from graphopt.errors import GraphoptError
from graphopt.frontends.onnx import register_onnx_op
from graphopt.frontends.onnx_ops._common import attr, reshape_to, value_at
from graphopt.ir import dims as D

_HUGE = 2**62  # slice bounds at or past this mean "to the end"


def resolve_reshape(ctx, in_shape: Sequence, target: Sequence, allowzero: bool) -> list:
    """ONNX Reshape's 0 (copy) and -1 (infer) resolved against the input shape, symbolically."""
    out = [in_shape[i] if (d == 0 and not allowzero and i < len(in_shape)) else d for i, d in enumerate(target)]
    if sum(1 for d in out if isinstance(d, int) and d == -1) > 1:
        raise GraphoptError(f"{ctx.where()}: Reshape target {list(target)} has more than one -1")
    if any(isinstance(d, int) and d == -1 for d in out):
        known_part = D.prod(d for d in out if not (isinstance(d, int) and d == -1))
        inferred = D.canon(sympy.simplify(sympy.sympify(D.prod(in_shape)) / known_part))
        if not isinstance(inferred, int) and any(isinstance(a, sympy.Rational) and not a.is_Integer
                                                 for a in sympy.preorder_traversal(inferred)):
            raise GraphoptError(f"{ctx.where()}: cannot infer the -1 of Reshape {list(target)} from {list(in_shape)}")
        out = [inferred if isinstance(d, int) and d == -1 else d for d in out]
    return [D.canon(d) for d in out]


@register_onnx_op("Reshape")
def _reshape_op(ctx, node):
    x = value_at(ctx, node, 0)
    target = ctx.ints(node.input[1], "shape") if ctx.opset >= 5 else list(attr(node, "shape"))
    return reshape_to(ctx, x, resolve_reshape(ctx, x.shape, target, bool(attr(node, "allowzero", 0))))


@register_onnx_op("Flatten")
def _flatten(ctx, node):
    x = value_at(ctx, node, 0)
    axis = int(attr(node, "axis", 1)) % (x.rank + 1) if x.rank else 0
    return reshape_to(ctx, x, [D.prod(x.shape[:axis]), D.prod(x.shape[axis:])])


@register_onnx_op("Squeeze")
def _squeeze(ctx, node):
    x = value_at(ctx, node, 0)
    axes = attr(node, "axes") if ctx.opset < 13 else ctx.ints(ctx.input(node, 1), "axes")
    if axes is None:
        axes = [i for i, d in enumerate(x.shape) if isinstance(d, int) and d == 1]
    drop = {int(a) % x.rank for a in axes}
    return reshape_to(ctx, x, [d for i, d in enumerate(x.shape) if i not in drop])


@register_onnx_op("Unsqueeze")
def _unsqueeze(ctx, node):
    x = value_at(ctx, node, 0)
    axes = attr(node, "axes") if ctx.opset < 13 else ctx.ints(node.input[1], "axes")
    rank = x.rank + len(axes)
    shape = list(x.shape)
    for axis in sorted(int(a) % rank for a in axes):
        shape.insert(axis, 1)
    return reshape_to(ctx, x, shape)


@register_onnx_op("Transpose")
def _transpose(ctx, node):
    k = ctx.known(node.input[0])
    reader = ctx.only_consumer(node.output[0])
    if (k is not None and k.is_initializer and len(k.shape) == 2 and list(attr(node, "perm") or [1, 0]) == [1, 0]
            and reader is not None and reader.op_type == "MatMul" and reader.input[1] == node.output[0]):
        # x @ W^T (graphopt's own export of a linear): the MatMul becomes linear(x, W), W keeps its name
        ctx.transposed_weights[node.output[0]] = node.input[0]
        return None
    x = value_at(ctx, node, 0)
    perm = attr(node, "perm") or list(range(x.rank))[::-1]
    if list(perm) == list(range(x.rank)):
        return x
    return ctx.emit1("permute", [x], {"dims": [int(p) for p in perm]})


@register_onnx_op("Concat")
def _concat(ctx, node):
    xs = [ctx.value(n) for n in node.input if n]
    xs = [x for x in xs if not (x.rank == 1 and x.shape[0] == 0)] or xs[:1]
    if len(xs) == 1:
        return xs[0]
    return ctx.emit1("concat", xs, {"axis": int(attr(node, "axis")) % xs[0].rank})


@register_onnx_op("Split")
def _split(ctx, node):
    x = value_at(ctx, node, 0)
    axis = int(attr(node, "axis", 0)) % x.rank
    size = x.shape[axis]
    sizes = attr(node, "split") if ctx.opset < 13 else ctx.ints(ctx.input(node, 1), "split")
    n_out = len(node.output)
    if not sizes:
        n = int(attr(node, "num_outputs", n_out))
        if isinstance(size, int):
            chunk = -(-size // n)
            sizes = [min(chunk, size - i * chunk) for i in range(n)]
        else:
            sizes = [D.canon(sympy.sympify(size) / n)] * n
    if len(sizes) == 1:
        return [x]
    return list(ctx.emit("split", [x], {"sizes": list(sizes), "axis": axis}).outputs)


def _clamp_index(v, size):
    """ONNX Slice bounds: negatives count from the end, then clamp to [0, size]."""
    if isinstance(v, int):
        if v >= _HUGE:
            return size
        if v < 0:
            v = v + size if isinstance(size, int) else D.canon(size + v)
            if isinstance(v, int):
                v = max(v, 0)
        if isinstance(v, int) and isinstance(size, int):
            v = min(v, size)
        return v
    return v  # symbolic bound, as the exporter computed it from the shapes


@register_onnx_op("Slice")
def _slice(ctx, node):
    x = value_at(ctx, node, 0)
    if ctx.opset < 10:
        starts, ends, axes, steps = attr(node, "starts"), attr(node, "ends"), attr(node, "axes"), None
    else:
        starts, ends = ctx.ints(node.input[1], "starts"), ctx.ints(node.input[2], "ends")
        axes, steps = ctx.ints(ctx.input(node, 3), "axes"), ctx.ints(ctx.input(node, 4), "steps")
    axes = axes or list(range(len(starts)))
    steps = steps or [1] * len(starts)
    y = x
    for s, e, axis, step in zip(starts, ends, axes, steps):
        axis = int(axis) % x.rank
        if not isinstance(step, int) or step < 1:
            raise GraphoptError(f"{ctx.where()}: Slice with step {step} is not supported (only positive steps)")
        size = y.shape[axis]
        start, end = _clamp_index(s, size), _clamp_index(e, size)
        if start == 0 and step == 1 and D.dims_equal(end, size):
            continue
        y = ctx.emit1("slice", [y], {"axis": axis, "start": start, "end": end, "step": int(step)})
    return y


@register_onnx_op("Gather")
def _gather(ctx, node):
    data_name, idx_name = node.input[0], node.input[1]
    axis = int(attr(node, "axis", 0))
    data_known = ctx.known(data_name)
    idx_known = ctx.known(idx_name)
    x = ctx.value(data_name)
    axis %= x.rank
    if idx_known is not None and not idx_known.symbolic and idx_known.numel == 1 and len(idx_known.shape) == 0:
        index = int(np.ravel(idx_known.array)[0])
        if index < 0:
            size = x.shape[axis]
            if not isinstance(size, int):
                raise GraphoptError(f"{ctx.where()}: negative index into a symbolic axis")
            index += size
        return ctx.emit1("select", [x], {"axis": axis, "index": index})
    idx = ctx.value(idx_name)
    if idx_known is not None and not idx_known.symbolic and (np.asarray(idx_known.array) < 0).any():
        size = x.shape[axis]
        if not isinstance(size, int):
            raise GraphoptError(f"{ctx.where()}: negative indices into a symbolic axis")
        idx = ctx.weight(f"{idx_name}", torch.from_numpy(np.asarray(idx_known.array) % size).long(), kind="const")
    if axis == 0 and x.rank == 2 and data_known is not None and data_known.is_initializer:
        return ctx.emit1("embedding", [idx, x], {"padding_idx": None})
    if idx.rank == 1:
        return ctx.emit1("index_select", [x, idx], {"axis": axis})
    flat = reshape_to(ctx, idx, [D.prod(idx.shape)])
    picked = ctx.emit1("index_select", [x, flat], {"axis": axis})
    return reshape_to(ctx, picked, [*x.shape[:axis], *idx.shape, *x.shape[axis + 1:]])


@register_onnx_op("Expand")
def _expand(ctx, node):
    x = value_at(ctx, node, 0)
    shape = ctx.ints(node.input[1], "shape")
    rank = max(x.rank, len(shape))
    xs = [1] * (rank - x.rank) + list(x.shape)
    ts = [1] * (rank - len(shape)) + list(shape)
    out = [a if isinstance(b, int) and b == 1 else b for a, b in zip(xs, ts)]
    if D.shapes_equal(out, x.shape):
        return x
    return ctx.emit1("expand", [x], {"shape": out})


@register_onnx_op("Tile")
def _tile(ctx, node):
    # tile = expand an interleaved view, then merge: x[a, b] * (r, s) -> [r, a, s, b] -> [r*a, s*b]
    x = value_at(ctx, node, 0)
    reps = ctx.ints(node.input[1], "repeats")
    inter, expanded, merged = [], [], []
    for r, d in zip(reps, x.shape):
        inter += [1, d]
        expanded += [r, d]
        merged.append(D.canon(r * d))
    y = reshape_to(ctx, x, inter)
    y = ctx.emit1("expand", [y], {"shape": expanded})
    return reshape_to(ctx, y, merged)


_PAD_MODES = {"constant": "constant", "reflect": "reflect", "edge": "replicate", "wrap": "circular"}


@register_onnx_op("Pad")
def _pad(ctx, node):
    x = value_at(ctx, node, 0)
    mode = attr(node, "mode", "constant")
    if mode not in _PAD_MODES:
        raise GraphoptError(f"{ctx.where()}: Pad mode '{mode}' is not supported")
    if ctx.opset < 11:
        pads, value = list(attr(node, "pads")), float(attr(node, "value", 0.0))
        axes = None
    else:
        pads = ctx.ints(node.input[1], "pads")
        value = ctx.scalar_const(ctx.input(node, 2))
        if ctx.input(node, 2) and value is None:
            raise GraphoptError(f"{ctx.where()}: Pad's constant_value must be a constant")
        value = float(value or 0.0)
        axes = ctx.ints(ctx.input(node, 3), "axes")
    axes = [int(a) % x.rank for a in axes] if axes else list(range(x.rank))
    n = len(axes)
    per_axis = {a: (int(pads[i]), int(pads[i + n])) for i, a in enumerate(axes)}
    if not any(lo or hi for lo, hi in per_axis.values()):
        return x
    first = min(a for a, (lo, hi) in per_axis.items() if lo or hi)
    torch_pad: list[int] = []
    for axis in range(x.rank - 1, first - 1, -1):
        lo, hi = per_axis.get(axis, (0, 0))
        torch_pad += [lo, hi]
    return ctx.emit1("pad", [x], {"pad": torch_pad, "mode": _PAD_MODES[mode], "value": value})
