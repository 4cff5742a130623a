"""Import-time folding: evaluate ONNX ops over known values (shape arithmetic, small constants).

Exporters compute dynamic shapes in the graph (Shape -> Gather -> Concat ->
Reshape). Each folder here evaluates one ONNX op over known values (numbers,
or ints and sympy dims in object arrays), so such chains collapse into the
shapes the converters need; raising `NotFoldable` hands the node to its
converter instead.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import sympy
import torch

from graphopt.dtypes import to_torch_dtype
from graphopt.errors import GraphoptError
from graphopt.frontends.onnx import (FOLD_LIMIT, Known, NotFoldable, OnnxImportContext, numpy_dtype, folder, known,
                                     tensor_scalar)
from graphopt.ir import dims as D


def _arr(k: Known) -> np.ndarray:
    return k.array


def _dims_of(ctx: OnnxImportContext, name: str) -> list:
    return [D.canon(d) for d in ctx.shape_of(name)]


def _bounded(shape: Any) -> tuple[int, ...]:
    """`shape` if a folded value of that shape is small (at most FOLD_LIMIT elements), else NotFoldable.

    Every folder whose output can outgrow its inputs (broadcasting, Range, Gather, Concat) checks its
    output shape first, so a tiny file cannot make the importer allocate gigabytes; the node is then
    converted as a graph op instead, whose size only matters when the model runs.
    """
    shape = tuple(int(d) for d in shape)
    if math.prod(shape) > FOLD_LIMIT:
        raise NotFoldable
    return shape


def _broadcast(*arrays: np.ndarray) -> tuple[int, ...]:
    """The bounded broadcast shape of `arrays` (see `_bounded`)."""
    return _bounded(np.broadcast_shapes(*(a.shape for a in arrays)))


def _elementwise(fn, *arrays: np.ndarray) -> np.ndarray:
    """Apply a Python function elementwise with numpy broadcasting (object arrays welcome)."""
    ufunc = np.frompyfunc(fn, len(arrays), 1)
    return np.asarray(ufunc(*arrays), dtype=object)


def _is_sym(v: Any) -> bool:
    return isinstance(v, sympy.Basic) and not v.is_Number


def _to_python(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    return v


@folder("Constant")
def _f_constant(ctx, node, ins):
    for attr in node.attribute:
        if attr.name == "value":
            t = attr.t
            return [Known(to_torch_dtype(t.data_type), proto=t, base_dir=ctx.base_dir)]
        if attr.name == "value_float":
            return [known(np.float32(attr.f), torch.float32)]
        if attr.name == "value_floats":
            return [known(np.array(attr.floats, dtype=np.float32), torch.float32)]
        if attr.name == "value_int":
            return [known(np.int64(attr.i), torch.int64)]
        if attr.name == "value_ints":
            return [known(np.array(attr.ints, dtype=np.int64), torch.int64)]
    raise GraphoptError(f"{ctx.where()}: Constant with {[a.name for a in node.attribute]} is not supported "
                        "(sparse and string constants have no tensor in graphopt)")


@folder("Shape")
def _f_shape(ctx, node, ins):
    dims = _dims_of(ctx, node.input[0])
    rank = len(dims)
    start = OnnxImportContext.attr(node, "start", 0)
    end = OnnxImportContext.attr(node, "end", rank)
    start, end = (max(0, min(rank, v + rank if v < 0 else v)) for v in (start, end))
    return [known(np.array(dims[start:end], dtype=object), torch.int64)]


@folder("Size")
def _f_size(ctx, node, ins):
    return [known(np.array(D.prod(_dims_of(ctx, node.input[0])), dtype=object), torch.int64)]


@folder("Identity")
def _f_identity(ctx, node, ins):
    return [ins[0]]


@folder("Cast")
def _f_cast(ctx, node, ins):
    dtype = to_torch_dtype(OnnxImportContext.attr(node, "to"))
    a = _arr(ins[0])
    if a.dtype == object:
        if dtype.is_floating_point or dtype in (torch.int64, torch.int32):
            return [known(_elementwise(lambda v: v if dtype.is_floating_point or not _is_sym(v) or v.is_integer
                                       else sympy.floor(v), a), dtype)]
        raise NotFoldable
    return [known(a.astype(numpy_dtype(dtype)), dtype)]


@folder("Gather")
def _f_gather(ctx, node, ins):
    axis = OnnxImportContext.attr(node, "axis", 0)
    data, indices = _arr(ins[0]), _arr(ins[1])
    at = axis % max(data.ndim, 1)
    _bounded(data.shape[:at] + indices.shape + data.shape[at + 1:])
    return [known(np.take(data, indices.astype(np.int64), axis=axis), ins[0].dtype)]


@folder("Unsqueeze")
def _f_unsqueeze(ctx, node, ins):
    a = _arr(ins[0])
    axes = OnnxImportContext.attr(node, "axes") if ctx.opset < 13 else [int(v) for v in _arr(ins[1]).ravel()]
    rank = a.ndim + len(axes)
    for axis in sorted(int(x) % rank for x in axes):
        a = np.expand_dims(a, axis)
    return [known(a, ins[0].dtype)]


@folder("Squeeze")
def _f_squeeze(ctx, node, ins):
    a = _arr(ins[0])
    axes = OnnxImportContext.attr(node, "axes") if ctx.opset < 13 else (
        None if len(ins) < 2 or ins[1] is None else [int(v) for v in _arr(ins[1]).ravel()])
    if axes is None:
        return [known(np.squeeze(a), ins[0].dtype)]
    return [known(np.squeeze(a, axis=tuple(int(x) % a.ndim for x in axes)), ins[0].dtype)]


@folder("Concat")
def _f_concat(ctx, node, ins):
    arrays = [_arr(k) for k in ins]
    _bounded([sum(a.size for a in arrays)])
    if any(a.dtype == object for a in arrays):
        arrays = [a.astype(object) for a in arrays]
    return [known(np.concatenate(arrays, axis=OnnxImportContext.attr(node, "axis")), ins[0].dtype)]


@folder("Slice")
def _f_slice(ctx, node, ins):
    a = _arr(ins[0])
    if ctx.opset < 10:
        starts, ends = OnnxImportContext.attr(node, "starts"), OnnxImportContext.attr(node, "ends")
        axes, steps = OnnxImportContext.attr(node, "axes"), None
    else:
        starts, ends = _ints_of(ins[1]), _ints_of(ins[2])
        axes = _ints_of(ins[3]) if len(ins) > 3 and ins[3] is not None else None
        steps = _ints_of(ins[4]) if len(ins) > 4 and ins[4] is not None else None
    axes = axes or list(range(len(starts)))
    steps = steps or [1] * len(starts)
    index = [slice(None)] * a.ndim
    for s, e, ax, st in zip(starts, ends, axes, steps):
        index[int(ax) % a.ndim] = slice(int(s), int(e), int(st))
    return [known(a[tuple(index)], ins[0].dtype)]


def _ints_of(k: Known) -> list[int]:
    values = [_to_python(v) for v in _arr(k).ravel()]
    if any(_is_sym(v) for v in values):
        raise NotFoldable
    return [int(v) for v in values]


@folder("Reshape")
def _f_reshape(ctx, node, ins):
    a = _arr(ins[0])
    target = _ints_of(ins[1])
    allowzero = OnnxImportContext.attr(node, "allowzero", 0)
    shape = [a.shape[i] if d == 0 and not allowzero else d for i, d in enumerate(target)]
    return [known(a.reshape(shape), ins[0].dtype)]


@folder("Transpose")
def _f_transpose(ctx, node, ins):
    return [known(np.transpose(_arr(ins[0]), OnnxImportContext.attr(node, "perm")), ins[0].dtype)]


def _arith(fn_num, fn_sym):
    def fold(ctx, node, ins):
        a, b = _arr(ins[0]), _arr(ins[1])
        _broadcast(a, b)
        dtype = ins[0].dtype
        if a.dtype != object and b.dtype != object:
            return [known(fn_num(a, b, dtype), dtype)]

        def one(x, y):
            r = fn_sym(_to_python(x), _to_python(y), dtype)
            return r if isinstance(r, float) else D.canon(r)

        return [known(_elementwise(one, a, b), dtype)]

    return fold


def _trunc_div_num(a, b, dtype):
    if dtype.is_floating_point:
        return a / b
    q = np.abs(a) // np.abs(b)
    return (q * np.sign(a) * np.sign(b)).astype(a.dtype)


def _div_sym(x, y, dtype):
    if dtype.is_floating_point:
        return sympy.nsimplify(x) / sympy.nsimplify(y) if _is_sym(x) or _is_sym(y) else x / y
    if isinstance(x, int) and isinstance(y, int):
        q = abs(x) // abs(y)
        return q if (x >= 0) == (y >= 0) else -q
    return D.floordiv(x, y)  # dims are non-negative: truncation is floor


folder("Add")(_arith(lambda a, b, t: a + b, lambda x, y, t: x + y))
folder("Sub")(_arith(lambda a, b, t: a - b, lambda x, y, t: x - y))
folder("Mul")(_arith(lambda a, b, t: a * b, lambda x, y, t: x * y))
folder("Div")(_arith(_trunc_div_num, _div_sym))
folder("Mod")(_arith(lambda a, b, t: np.mod(a, b) if not t.is_floating_point else np.fmod(a, b),
                     lambda x, y, t: sympy.Mod(x, y)))


@folder("Max", "Min")
def _f_maxmin(ctx, node, ins):
    arrays = [_arr(k) for k in ins]
    _broadcast(*arrays)
    if all(a.dtype != object for a in arrays):
        fn = np.maximum if node.op_type == "Max" else np.minimum
        out = arrays[0]
        for a in arrays[1:]:
            out = fn(out, a)
        return [known(out, ins[0].dtype)]
    fn = sympy.Max if node.op_type == "Max" else sympy.Min
    out = arrays[0]
    for a in arrays[1:]:
        out = _elementwise(lambda x, y: D.canon(fn(_to_python(x), _to_python(y))), out, a)
    return [known(out, ins[0].dtype)]


@folder("Neg", "Abs", "Floor", "Ceil", "Sqrt", "Not")
def _f_unary(ctx, node, ins):
    a = _arr(ins[0])
    op = node.op_type
    if a.dtype != object:
        fn = {"Neg": np.negative, "Abs": np.abs, "Floor": np.floor, "Ceil": np.ceil, "Sqrt": np.sqrt,
              "Not": np.logical_not}[op]
        return [known(fn(a), ins[0].dtype)]
    if op in ("Sqrt", "Not"):
        raise NotFoldable
    fn = {"Neg": lambda v: -v, "Abs": lambda v: v if _is_sym(v) else abs(v), "Floor": sympy.floor,
          "Ceil": sympy.ceiling}[op]

    def one(v):
        r = fn(_to_python(v))
        return r if isinstance(r, float) else D.canon(r)

    return [known(_elementwise(one, a), ins[0].dtype)]


def _compare_fold(np_fn, relation=None):
    """Comparisons fold when decidable: `batch == -1` is False (dims are positive), `batch == 1` is not known."""

    def fold(ctx, node, ins):
        a, b = _arr(ins[0]), _arr(ins[1])
        _broadcast(a, b)
        if a.dtype != object and b.dtype != object:
            return [known(np_fn(a, b), torch.bool)]
        if relation is None:
            raise NotFoldable

        def one(x, y):
            x, y = _to_python(x), _to_python(y)
            r = relation(sympy.sympify(x), sympy.sympify(y))
            if r is sympy.true or r is True:
                return True
            if r is sympy.false or r is False:
                return False
            raise NotFoldable

        return [known(_elementwise(one, a, b).astype(bool), torch.bool)]

    return fold


folder("Equal")(_compare_fold(np.equal, sympy.Eq))
folder("Less")(_compare_fold(np.less, sympy.Lt))
folder("Greater")(_compare_fold(np.greater, sympy.Gt))
folder("LessOrEqual")(_compare_fold(np.less_equal, sympy.Le))
folder("GreaterOrEqual")(_compare_fold(np.greater_equal, sympy.Ge))
folder("And")(_compare_fold(np.logical_and))
folder("Or")(_compare_fold(np.logical_or))


@folder("Where")
def _f_where(ctx, node, ins):
    cond = _arr(ins[0])
    if cond.dtype == object:
        raise NotFoldable
    a, b = _arr(ins[1]), _arr(ins[2])
    _broadcast(cond, a, b)
    out = np.where(cond.astype(bool), a.astype(object) if b.dtype == object else a,
                   b.astype(object) if a.dtype == object else b)
    return [known(out, ins[1].dtype)]


@folder("Expand")
def _f_expand(ctx, node, ins):
    a = _arr(ins[0])
    shape = _ints_of(ins[1])
    target = _bounded(np.broadcast_shapes(a.shape, tuple(shape)))
    return [known(np.broadcast_to(a, target).copy(), ins[0].dtype)]


@folder("ConstantOfShape")
def _f_constant_of_shape(ctx, node, ins):
    shape = [_to_python(v) for v in _arr(ins[0]).ravel()]
    if any(_is_sym(v) for v in shape):
        raise NotFoldable  # becomes a `full` node
    _bounded(shape)
    value = OnnxImportContext.attr(node, "value")
    dtype, fill = (torch.float32, 0.0) if value is None else tensor_scalar(value)
    return [known(np.full(shape, fill, dtype=numpy_dtype(dtype)), dtype)]


@folder("Range")
def _f_range(ctx, node, ins):
    values = [_to_python(_arr(k).ravel()[0]) for k in ins]
    if any(_is_sym(v) for v in values):
        raise NotFoldable  # becomes an `arange` node
    start, limit, delta = values
    if delta == 0:
        raise GraphoptError(f"{ctx.where()}: Range with delta 0 never reaches its limit")
    _bounded([max(math.ceil((limit - start) / delta), 0)])  # its length, before numpy allocates it
    out = np.arange(start, limit, delta)
    return [known(out.astype(numpy_dtype(ins[0].dtype)), ins[0].dtype)]


@folder("ReduceProd", "ReduceSum")
def _f_reduce(ctx, node, ins):
    a = _arr(ins[0])
    axes = OnnxImportContext.attr(node, "axes")
    if axes is None and len(ins) > 1 and ins[1] is not None:
        axes = _ints_of(ins[1])
    keep = bool(OnnxImportContext.attr(node, "keepdims", 1))
    fn = np.prod if node.op_type == "ReduceProd" else np.sum
    out = fn(a, axis=None if not axes else tuple(axes), keepdims=keep)
    return [known(np.asarray(out, dtype=a.dtype), ins[0].dtype)]
