"""Reductions, pooling and resizing: ops that shrink or resample axes, with their shape rules and torch kernels."""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F

from graphopt.ir import dims as D
from graphopt.ir.graph import Node
from graphopt.ir.ops._core import REDUCTION, TensorType, in_, kernel, norm_axis, op, pair_list

# ----------------------------------------------------------------- pooling
_POOL_ATTRS = {"kernel": "per spatial axis", "stride": "per spatial axis", "padding": "per spatial axis",
               "ceil_mode": "round the output size up"}


def _pool_len(L, k, s, p, d, ceil_mode):
    num = L + 2 * p - d * (k - 1) - 1
    out = (D.ceildiv(num, s) if ceil_mode else D.floordiv(num, s)) + 1
    if ceil_mode and isinstance(out, int) and isinstance(L, int) and (out - 1) * s >= L + p:
        out -= 1
    return out


def _pool(node: Node) -> list[TensorType]:
    x = in_(node, 0)
    window = node.attrs["kernel"]
    n = len(window)
    stride = pair_list(node.attrs.get("stride") or window, n)
    pad = pair_list(node.attrs.get("padding", 0), n)
    dil = pair_list(node.attrs.get("dilation", 1), n)
    spatial = [
        _pool_len(L, k, s, p, d, node.attrs.get("ceil_mode", False))
        for L, k, s, p, d in zip(x.shape[-n:], window, stride, pad, dil)
    ]
    return [((*x.shape[:-n], *spatial), x.dtype)]


op("max_pool", "x", attrs={**_POOL_ATTRS, "dilation": "per spatial axis"}, shape="pooled spatial axes",
   category="pool", doc="max pooling")(_pool)
op("avg_pool", "x", attrs={**_POOL_ATTRS, "count_include_pad": "divide by the full window",
                           "divisor_override": "fixed divisor or None"},
   shape="pooled spatial axes", category="pool", doc="average pooling")(_pool)

_MAX_POOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
_AVG_POOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}
_ADAPTIVE_AVG = {1: F.adaptive_avg_pool1d, 2: F.adaptive_avg_pool2d, 3: F.adaptive_avg_pool3d}
_ADAPTIVE_MAX = {1: F.adaptive_max_pool1d, 2: F.adaptive_max_pool2d, 3: F.adaptive_max_pool3d}


@kernel("max_pool")
def max_pool(x, *, kernel, stride, padding, dilation, ceil_mode):
    return _MAX_POOL[len(kernel)](x, kernel, stride, padding, dilation, ceil_mode)


@kernel("avg_pool")
def avg_pool(x, *, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override=None):
    if len(kernel) == 1:
        return F.avg_pool1d(x, kernel, stride, padding, ceil_mode, count_include_pad)
    return _AVG_POOL[len(kernel)](x, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override)


def _adaptive(node: Node) -> list[TensorType]:
    x = in_(node, 0)
    size = list(node.attrs["output_size"])
    n = len(size)
    spatial = [x.shape[x.rank - n + i] if s is None else s for i, s in enumerate(size)]
    return [((*x.shape[:-n], *spatial), x.dtype)]


op("adaptive_avg_pool", "x", attrs={"output_size": "per spatial axis"}, shape="spatial axes become output_size",
   category="pool", doc="adaptive average pooling")(_adaptive)
op("adaptive_max_pool", "x", attrs={"output_size": "per spatial axis"}, shape="spatial axes become output_size",
   category="pool", doc="adaptive max pooling")(_adaptive)


@kernel("adaptive_avg_pool")
def adaptive_avg_pool(x, *, output_size):
    return _ADAPTIVE_AVG[len(output_size)](x, output_size)


@kernel("adaptive_max_pool")
def adaptive_max_pool(x, *, output_size):
    return _ADAPTIVE_MAX[len(output_size)](x, output_size)


# ------------------------------------------------------------------ resize
@op("resize", "x", attrs={"size": "output spatial size or None", "scale_factor": "per spatial axis or None",
                          "mode": "nearest|bilinear|bicubic|linear", "align_corners": "bool or None"},
    shape="[N, C, size...] or [N, C, floor(L * scale)...]", category="pool", doc="F.interpolate")
def _resize(node: Node) -> list[TensorType]:
    x = in_(node, 0)
    size, scale = node.attrs.get("size"), node.attrs.get("scale_factor")
    n = x.rank - 2
    if size is not None:
        spatial = list(size)
    else:
        spatial = [D.canon(_floor_mul(L, s)) for L, s in zip(x.shape[2:], pair_list(scale, n))]
    return [((*x.shape[:2], *spatial), x.dtype)]


def _floor_mul(L, s):
    if isinstance(L, int):
        return int(L * s)
    import sympy

    return sympy.floor(L * sympy.nsimplify(s))


@kernel("resize")
def resize(x, *, size=None, scale_factor=None, mode="nearest", align_corners=None):
    return F.interpolate(x, size=size, scale_factor=scale_factor, mode=mode, align_corners=align_corners)


# -------------------------------------------------------------- reductions
_REDUCE_ATTRS = {"axes": "axes reduced (None: all)", "keepdim": "keep reduced axes as size 1"}


def _reduce(node: Node) -> list[TensorType]:
    x = in_(node, 0)
    axes = node.attrs.get("axes")
    axes = set(range(x.rank)) if axes is None else {norm_axis(a, x.rank) for a in axes}
    keep = node.attrs.get("keepdim", False)
    shape = tuple((1 if i in axes else d) for i, d in enumerate(x.shape) if keep or i not in axes)
    dtype = x.dtype
    if node.op == "sum" and (dtype == torch.bool or not (dtype.is_floating_point or dtype.is_complex)):
        dtype = torch.int64
    if node.op in ("argmax", "argmin"):
        dtype = torch.int64
    return [(shape, dtype)]


def _reduction(fn: Callable[..., Any], *, tuple_axes: bool = False) -> Callable[..., Any]:
    """A kernel reducing `axes` (all of them when None) with `fn`; torch.any/all want the axes as a tuple."""

    def run(x, *, axes=None, keepdim=False, **extra):
        if axes is None:
            out = fn(x, **extra)
            return out.reshape((1,) * x.dim()) if keepdim else out
        return fn(x, dim=tuple(axes) if tuple_axes else axes, keepdim=keepdim, **extra)

    run.__name__ = fn.__name__
    return run


def _arg_reduce(fn: Callable[..., Any]) -> Callable[..., Any]:
    def run(x, *, axes=None, keepdim=False):
        if axes is None:
            return fn(x)
        return fn(x, dim=axes[0], keepdim=keepdim)

    run.__name__ = fn.__name__
    return run


def prod(x, *, axes=None, keepdim=False):
    if axes is None:
        out = torch.prod(x)
        return out.reshape((1,) * x.dim()) if keepdim else out
    for axis in sorted(axes, reverse=True):  # descending, so earlier axes keep their index
        x = torch.prod(x, axis, keepdim=keepdim)
    return x


_REDUCTIONS = {
    "mean": ("mean", _reduction(torch.mean)),
    "sum": ("sum", _reduction(torch.sum)),
    "amax": ("maximum", _reduction(torch.amax)),
    "amin": ("minimum", _reduction(torch.amin)),
    "prod": ("product", prod),
    "argmax": ("index of the maximum (one axis)", _arg_reduce(torch.argmax)),
    "argmin": ("index of the minimum (one axis)", _arg_reduce(torch.argmin)),
    "any": ("logical or", _reduction(torch.any, tuple_axes=True)),
    "all": ("logical and", _reduction(torch.all, tuple_axes=True)),
}
for _name, (_doc, _kernel) in _REDUCTIONS.items():
    op(_name, "x", attrs=_REDUCE_ATTRS, shape="reduced axes removed (or 1 with keepdim)", category="reduce",
       doc=_doc, traits={REDUCTION})(_reduce)
    kernel(_name)(_kernel)
op("var", "x", attrs={**_REDUCE_ATTRS, "correction": "Bessel correction (0 or 1)"},
   shape="reduced axes removed (or 1 with keepdim)", category="reduce", doc="variance", traits={REDUCTION})(_reduce)
kernel("var")(_reduction(torch.var))
