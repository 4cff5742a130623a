"""Converters from ONNX operators to graphopt's canonical ops, one per ONNX operator.

A converter reads an ONNX node (attributes by their ONNX names and defaults,
old-opset spellings included: axes as attributes before opset 13/18, Clip
bounds as attributes before 11, ...) and emits canonical nodes. Nodes whose
inputs are all known (shape arithmetic, small constants) never get here: the
importer folds them (graphopt/frontends/onnx.py).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import sympy
import torch

from graphopt.errors import GraphoptError
from graphopt.frontends.onnx import Known, OnnxImportContext, register_onnx_op, tensor_scalar
from graphopt.ir import dims as D
from graphopt.ir.graph import Value
from graphopt.backends.onnx.dtypes import to_torch_dtype

_HUGE = 2**62  # slice bounds at or past this mean "to the end"


# ============================================================= converters
def _v(ctx: OnnxImportContext, node, i: int) -> Value | None:
    name = ctx.input(node, i)
    return ctx.value(name) if name else None


def _attr(node, name: str, default: Any = None) -> Any:
    return OnnxImportContext.attr(node, name, default)


def _reshape(ctx: OnnxImportContext, x: Value, shape: Sequence) -> Value:
    shape = [D.canon(d) for d in shape]
    if D.shapes_equal(shape, x.shape):
        return x
    return ctx.emit1("reshape", [x], {"shape": shape})


# ----------------------------------------------------------- elementwise
_UNARY = {"Relu": "relu", "Sigmoid": "sigmoid", "Tanh": "tanh", "Erf": "erf", "Exp": "exp", "Log": "log",
          "Sqrt": "sqrt", "Neg": "neg", "Abs": "abs", "Sin": "sin", "Cos": "cos", "Reciprocal": "reciprocal",
          "Not": "logical_not", "HardSwish": "hardswish", "Mish": "mish"}


def _unary(op: str):
    def convert(ctx, node):
        return ctx.emit1(op, [_v(ctx, node, 0)])

    return convert


for _onnx_op, _op in _UNARY.items():
    register_onnx_op(_onnx_op)(_unary(_op))


@register_onnx_op("Identity", "Dropout")
def _identity(ctx, node):
    if node.op_type == "Dropout" and len(node.output) > 1 and node.output[1] and ctx.consumers.get(node.output[1]):
        raise GraphoptError(f"{ctx.where()}: the mask output of Dropout is not supported")
    if node.op_type == "Dropout" and _attr(node, "is_test", 1) == 0 and ctx.opset < 7:
        raise GraphoptError(f"{ctx.where()}: a training-mode Dropout has no inference meaning")
    k = ctx.known(node.input[0])
    return [k if k is not None else ctx.value(node.input[0]), None]


@register_onnx_op("Softplus")
def _softplus(ctx, node):
    return ctx.emit1("softplus", [_v(ctx, node, 0)], {"beta": 1.0, "threshold": 20.0})


@register_onnx_op("Gelu")
def _gelu(ctx, node):
    return ctx.emit1("gelu", [_v(ctx, node, 0)], {"approximate": _attr(node, "approximate", "none")})


@register_onnx_op("LeakyRelu")
def _leaky_relu(ctx, node):
    return ctx.emit1("leaky_relu", [_v(ctx, node, 0)], {"negative_slope": float(_attr(node, "alpha", 0.01))})


@register_onnx_op("Elu")
def _elu(ctx, node):
    return ctx.emit1("elu", [_v(ctx, node, 0)], {"alpha": float(_attr(node, "alpha", 1.0))})


@register_onnx_op("HardSigmoid")
def _hardsigmoid(ctx, node):
    x = _v(ctx, node, 0)
    alpha, beta = float(_attr(node, "alpha", 0.2)), float(_attr(node, "beta", 0.5))
    if math.isclose(alpha, 1 / 6, rel_tol=1e-6) and math.isclose(beta, 0.5):
        return ctx.emit1("hardsigmoid", [x])
    y = ctx.emit1("mul", [x, ctx.scalar(alpha, x.dtype)])
    y = ctx.emit1("add", [y, ctx.scalar(beta, x.dtype)])
    return ctx.emit1("clamp", [y], {"min": 0.0, "max": 1.0})


@register_onnx_op("PRelu")
def _prelu(ctx, node):
    x, slope = _v(ctx, node, 0), _v(ctx, node, 1)
    negative = ctx.emit1("mul", [x, slope])
    return ctx.emit1("where", [ctx.emit1("gt", [x, ctx.scalar(0.0, x.dtype)]), x, negative])


@register_onnx_op("Clip")
def _clip(ctx, node):
    x = _v(ctx, node, 0)
    if ctx.opset < 11:
        lo, hi = _attr(node, "min"), _attr(node, "max")
    else:
        lo_name, hi_name = ctx.input(node, 1), ctx.input(node, 2)
        lo, hi = ctx.scalar_const(lo_name), ctx.scalar_const(hi_name)
        if (lo_name and lo is None) or (hi_name and hi is None):  # bounds computed at run time
            y = x
            if lo_name:
                y = ctx.emit1("maximum", [y, ctx.value(lo_name)])
            if hi_name:
                y = ctx.emit1("minimum", [y, ctx.value(hi_name)])
            return y
    if lo is not None and hi is not None and x.dtype.is_floating_point:
        return ctx.emit1("hardtanh", [x], {"min_val": float(lo), "max_val": float(hi)})
    if lo is None and hi is None:
        return x
    return ctx.emit1("clamp", [x], {"min": lo, "max": hi})


# ---------------------------------------------------------------- binary
_BINARY = {"Add": "add", "Sub": "sub", "Mul": "mul", "Pow": "pow", "Equal": "eq", "Less": "lt",
           "LessOrEqual": "le", "Greater": "gt", "GreaterOrEqual": "ge", "And": "logical_and", "Or": "logical_or",
           "Xor": "ne"}


def _binary(op: str):
    def convert(ctx, node):
        return ctx.emit1(op, [_v(ctx, node, 0), _v(ctx, node, 1)])

    return convert


for _onnx_op, _op in _BINARY.items():
    register_onnx_op(_onnx_op)(_binary(_op))


@register_onnx_op("Div")
def _div(ctx, node):
    a, b = _v(ctx, node, 0), _v(ctx, node, 1)
    attrs = {} if a.dtype.is_floating_point else {"rounding_mode": "trunc"}  # ONNX integer Div truncates
    return ctx.emit1("div", [a, b], attrs)


@register_onnx_op("Max", "Min", "Sum", "Mean")
def _variadic(ctx, node):
    op = {"Max": "maximum", "Min": "minimum", "Sum": "add", "Mean": "add"}[node.op_type]
    xs = [ctx.value(n) for n in node.input if n]
    out = xs[0]
    for x in xs[1:]:
        out = ctx.emit1(op, [out, x])
    if node.op_type == "Mean" and len(xs) > 1:
        out = ctx.emit1("div", [out, ctx.scalar(float(len(xs)), out.dtype)])
    return out


@register_onnx_op("Where")
def _where(ctx, node):
    return ctx.emit1("where", [_v(ctx, node, 0), _v(ctx, node, 1), _v(ctx, node, 2)])


@register_onnx_op("Cast")
def _cast(ctx, node):
    x = _v(ctx, node, 0)
    dtype = to_torch_dtype(_attr(node, "to"))
    return x if x.dtype == dtype else ctx.emit1("cast", [x], {"dtype": dtype})


@register_onnx_op("CastLike")
def _cast_like(ctx, node):
    x = _v(ctx, node, 0)
    dtype = ctx.dtype_of(node.input[1])
    return x if x.dtype == dtype else ctx.emit1("cast", [x], {"dtype": dtype})


# ------------------------------------------------------------------ dense
def _spatial_pads(ctx, node, x: Value, kernel: Sequence[int], strides, dilations) -> tuple[list[int], list[int]]:
    """(begin, end) padding per spatial axis from `pads` or `auto_pad`."""
    n = len(kernel)
    auto = _attr(node, "auto_pad", "NOTSET")
    if auto in ("NOTSET", "", None):
        pads = list(_attr(node, "pads", [0] * (2 * n)))
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


def _pad_asymmetric(ctx, x: Value, begins, ends, value: float = 0.0) -> tuple[Value, list[int]]:
    """Symmetric padding for the op itself, plus a pad node for the uneven rest."""
    sym = [min(b, e) for b, e in zip(begins, ends)]
    extra = [(b - s, e - s) for b, e, s in zip(begins, ends, sym)]
    if any(lo or hi for lo, hi in extra):
        torch_pad: list[int] = []
        for lo, hi in reversed(extra):
            torch_pad += [lo, hi]
        x = ctx.emit1("pad", [x], {"pad": torch_pad, "mode": "constant", "value": value})
    return x, sym


@register_onnx_op("Conv")
def _conv(ctx, node):
    x, w, b = _v(ctx, node, 0), _v(ctx, node, 1), _v(ctx, node, 2)
    n = w.rank - 2
    kernel = [int(k) for k in w.shape[2:]]
    strides = [int(s) for s in _attr(node, "strides", [1] * n)]
    dilations = [int(d) for d in _attr(node, "dilations", [1] * n)]
    begins, ends = _spatial_pads(ctx, node, x, kernel, strides, dilations)
    x, pads = _pad_asymmetric(ctx, x, begins, ends)
    return ctx.emit1("conv", [x, w, b], {"stride": strides, "padding": pads, "dilation": dilations,
                                         "groups": int(_attr(node, "group", 1))})


@register_onnx_op("ConvTranspose")
def _conv_transpose(ctx, node):
    x, w, b = _v(ctx, node, 0), _v(ctx, node, 1), _v(ctx, node, 2)
    n = w.rank - 2
    strides = [int(s) for s in _attr(node, "strides", [1] * n)]
    dilations = [int(d) for d in _attr(node, "dilations", [1] * n)]
    auto = _attr(node, "auto_pad", "NOTSET")
    if auto not in ("NOTSET", "VALID", "", None) or _attr(node, "output_shape") is not None:
        raise GraphoptError(f"{ctx.where()}: ConvTranspose with auto_pad={auto} or output_shape is not supported; "
                            "export it with explicit pads")
    pads = [int(p) for p in _attr(node, "pads", [0] * (2 * n))] if auto != "VALID" else [0] * (2 * n)
    begins, ends = pads[:n], pads[n:]
    sym = [min(bb, e) for bb, e in zip(begins, ends)]
    attrs = {"stride": strides, "padding": sym, "dilation": dilations, "groups": int(_attr(node, "group", 1)),
             "output_padding": [int(p) for p in _attr(node, "output_padding", [0] * n)]}
    y = ctx.emit1("conv_transpose", [x, w, b], attrs)
    for i, (bb, e, s) in enumerate(zip(begins, ends, sym)):  # uneven padding crops the output further
        if bb != e:
            axis = 2 + i
            size = y.shape[axis]
            y = ctx.emit1("slice", [y], {"axis": axis, "start": bb - s, "end": size - (e - s), "step": 1})
    return y


def _const_2d(ctx, name: str | None) -> Known | None:
    k = ctx.known(name) if name else None
    return k if k is not None and not k.symbolic and len(k.shape) == 2 and k.is_initializer else None


def _single_use(ctx, name: str) -> bool:
    return len(ctx.consumers.get(name, [])) == 1


def _linear_weight(ctx, name: str, k: Known, transposed: bool) -> Value:
    """A linear weight [out, in]. ONNX's x @ W holds W as [in, out]: its data is transposed under the same name."""
    if not transposed:
        return ctx.value(name)
    value = ctx.weight(name, k.tensor().t().contiguous())
    value.meta["onnx_transposed"] = True
    return value


@register_onnx_op("MatMul")
def _matmul(ctx, node):
    a = _v(ctx, node, 0)
    b_name = node.input[1]
    k = _const_2d(ctx, b_name)
    plain = ctx.transposed_weights.get(b_name)
    if plain is not None or (k is not None and a.rank >= 2 and _single_use(ctx, b_name)):
        weight = ctx.value(plain) if plain is not None else _linear_weight(ctx, b_name, k, transposed=True)
        add, bias = _bias_add(ctx, node.output[0], int(weight.shape[0]))
        out = ctx.emit1("linear", [a, weight, bias])
        if add is not None:  # MatMul + Add(bias) is one linear: the Add is taken in here
            ctx.fuse(add, out)
        return out
    return ctx.emit1("matmul", [a, ctx.value(b_name)])


def _bias_add(ctx, name: str, features: int) -> tuple[Any, Value | None]:
    """The Add that adds a constant [features] bias to tensor `name` (its only reader), if there is one."""
    add = ctx.only_consumer(name)
    if add is None or add.op_type != "Add" or len(add.input) != 2:
        return None, None
    other = add.input[1] if add.input[0] == name else add.input[0]
    k = ctx.known(other)
    if k is None or k.symbolic or list(k.shape) != [features] or not k.dtype.is_floating_point:
        return None, None
    return add, ctx.value(other)


@register_onnx_op("Gemm")
def _gemm(ctx, node):
    alpha, beta = float(_attr(node, "alpha", 1.0)), float(_attr(node, "beta", 1.0))
    trans_a, trans_b = int(_attr(node, "transA", 0)), int(_attr(node, "transB", 0))
    a = _v(ctx, node, 0)
    b_name, c_name = node.input[1], ctx.input(node, 2)
    if trans_a:
        a = ctx.emit1("permute", [a], {"dims": [1, 0]})
    k = _const_2d(ctx, b_name)
    c = ctx.known(c_name) if c_name else None
    bias = None
    if k is not None and (_single_use(ctx, b_name) or trans_b):
        weight = _linear_weight(ctx, b_name, k, transposed=not trans_b)
        out_features = weight.shape[0]
        if c is not None and not c.symbolic and beta == 1.0 and c.numel == out_features and len(c.shape) <= 2:
            bias = ctx.value(c_name) if list(c.shape) == [out_features] else \
                ctx.weight(c_name, c.tensor().reshape(out_features))
            c_name = None
        y = ctx.emit1("linear", [a, weight, bias])
    else:
        b = ctx.value(b_name)
        if trans_b:
            b = ctx.emit1("permute", [b], {"dims": [1, 0]})
        y = ctx.emit1("matmul", [a, b])
    if alpha != 1.0:
        y = ctx.emit1("mul", [y, ctx.scalar(alpha, y.dtype)])
    if c_name:
        cv = ctx.value(c_name)
        if beta != 1.0:
            cv = ctx.emit1("mul", [cv, ctx.scalar(beta, cv.dtype)])
        y = ctx.emit1("add", [y, cv])
    return y


@register_onnx_op("Einsum")
def _einsum(ctx, node):
    return ctx.emit1("einsum", [ctx.value(n) for n in node.input], {"equation": _attr(node, "equation")})


@register_onnx_op("Attention")
def _attention(ctx, node):
    if len([o for o in node.output if o]) > 1 or ctx.input(node, 4) or ctx.input(node, 5):
        raise GraphoptError(f"{ctx.where()}: Attention with a KV cache or extra outputs is not supported")
    q, k, v = _v(ctx, node, 0), _v(ctx, node, 1), _v(ctx, node, 2)
    mask = _v(ctx, node, 3)
    if q.rank != 4 or _attr(node, "softcap", 0.0) or _attr(node, "qk_matmul_output_mode", 0):
        raise GraphoptError(f"{ctx.where()}: only 4-d Attention without softcap is supported")
    attrs = {"is_causal": bool(_attr(node, "is_causal", 0)), "scale": _attr(node, "scale"),
             "enable_gqa": not D.dims_equal(q.shape[1], k.shape[1])}
    return ctx.emit1("sdpa", [q, k, v, mask], attrs)


# ---------------------------------------------------------- normalisation
@register_onnx_op("BatchNormalization")
def _batch_norm(ctx, node):
    if _attr(node, "training_mode", 0):
        raise GraphoptError(f"{ctx.where()}: BatchNormalization in training mode is not supported")
    x, scale, bias = (_v(ctx, node, i) for i in range(3))
    mean, var = (ctx.value(node.input[i], kind="buffer") for i in (3, 4))  # running statistics, as in torch
    out = ctx.emit1("batch_norm", [x, scale, bias, mean, var],
                    {"eps": float(_attr(node, "epsilon", 1e-5)), "momentum": 1.0 - float(_attr(node, "momentum", 0.9))})
    return [out] + [None] * (len(node.output) - 1)


@register_onnx_op("InstanceNormalization")
def _instance_norm(ctx, node):
    x, scale, bias = _v(ctx, node, 0), _v(ctx, node, 1), _v(ctx, node, 2)
    channels = x.shape[1]
    if not isinstance(channels, int):
        raise GraphoptError(f"{ctx.where()}: InstanceNormalization needs a static channel count")
    eps = float(_attr(node, "epsilon", 1e-5))
    return ctx.emit1("group_norm", [x, scale, bias], {"num_groups": channels, "eps": eps})


def _trailing_shape(ctx, x: Value, axis: int) -> list[int]:
    shape = list(x.shape[axis % x.rank:])
    if not all(isinstance(d, int) for d in shape):
        raise GraphoptError(f"{ctx.where()}: normalising over symbolic axes {shape} is not supported")
    return shape


def _affine_matches(value: Value | None, shape: list[int]) -> bool:
    return value is None or list(value.shape) == shape


@register_onnx_op("LayerNormalization")
def _layer_norm(ctx, node):
    x, scale, bias = _v(ctx, node, 0), _v(ctx, node, 1), _v(ctx, node, 2)
    shape = _trailing_shape(ctx, x, int(_attr(node, "axis", -1)))
    eps = float(_attr(node, "epsilon", 1e-5))
    if _affine_matches(scale, shape) and _affine_matches(bias, shape):
        out = ctx.emit1("layer_norm", [x, scale, bias], {"normalized_shape": shape, "eps": eps})
    else:  # broadcast affine parameters: normalise, then scale and shift
        out = ctx.emit1("layer_norm", [x, None, None], {"normalized_shape": shape, "eps": eps})
        out = ctx.emit1("mul", [out, scale]) if scale is not None else out
        out = ctx.emit1("add", [out, bias]) if bias is not None else out
    return [out] + [None] * (len(node.output) - 1)


@register_onnx_op("GroupNormalization")
def _group_norm(ctx, node):
    x, scale, bias = _v(ctx, node, 0), _v(ctx, node, 1), _v(ctx, node, 2)
    groups = int(_attr(node, "num_groups"))
    channels = x.shape[1]
    params = []
    for name, value in ((node.input[1], scale), (node.input[2], bias)):
        if isinstance(channels, int) and value.shape[0] == groups and groups != channels:
            # opset 18 gives one scale per group: spread it over the group's channels
            k = ctx.known(name)
            if k is None:
                raise GraphoptError(f"{ctx.where()}: per-group scale/bias must be constants")
            value = ctx.weight(name, k.tensor().repeat_interleave(channels // groups))
        params.append(value)
    return ctx.emit1("group_norm", [x, *params], {"num_groups": groups, "eps": float(_attr(node, "epsilon", 1e-5))})


@register_onnx_op("RMSNormalization")
def _rms_norm(ctx, node):
    x, scale = _v(ctx, node, 0), _v(ctx, node, 1)
    shape = _trailing_shape(ctx, x, int(_attr(node, "axis", -1)))
    eps = float(_attr(node, "epsilon", 1e-5))
    if _affine_matches(scale, shape):
        return ctx.emit1("rms_norm", [x, scale], {"normalized_shape": shape, "eps": eps})
    out = ctx.emit1("rms_norm", [x, None], {"normalized_shape": shape, "eps": eps})
    return ctx.emit1("mul", [out, scale])


@register_onnx_op("Softmax", "LogSoftmax")
def _softmax(ctx, node):
    op = "softmax" if node.op_type == "Softmax" else "log_softmax"
    x = _v(ctx, node, 0)
    if ctx.opset >= 13:
        return ctx.emit1(op, [x], {"axis": int(_attr(node, "axis", -1))})
    axis = int(_attr(node, "axis", 1)) % max(x.rank, 1)
    if axis == x.rank - 1:
        return ctx.emit1(op, [x], {"axis": -1})
    # before opset 13 the input is coerced to 2-d [prod(:axis), prod(axis:)]
    flat = _reshape(ctx, x, [D.prod(x.shape[:axis]), D.prod(x.shape[axis:])])
    return _reshape(ctx, ctx.emit1(op, [flat], {"axis": 1}), x.shape)


# ----------------------------------------------------------------- layout
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
    x = _v(ctx, node, 0)
    target = ctx.ints(node.input[1], "shape") if ctx.opset >= 5 else list(_attr(node, "shape"))
    return _reshape(ctx, x, resolve_reshape(ctx, x.shape, target, bool(_attr(node, "allowzero", 0))))


@register_onnx_op("Flatten")
def _flatten(ctx, node):
    x = _v(ctx, node, 0)
    axis = int(_attr(node, "axis", 1)) % (x.rank + 1) if x.rank else 0
    return _reshape(ctx, x, [D.prod(x.shape[:axis]), D.prod(x.shape[axis:])])


@register_onnx_op("Squeeze")
def _squeeze(ctx, node):
    x = _v(ctx, node, 0)
    axes = _attr(node, "axes") if ctx.opset < 13 else ctx.ints(ctx.input(node, 1), "axes")
    if axes is None:
        axes = [i for i, d in enumerate(x.shape) if isinstance(d, int) and d == 1]
    drop = {int(a) % x.rank for a in axes}
    return _reshape(ctx, x, [d for i, d in enumerate(x.shape) if i not in drop])


@register_onnx_op("Unsqueeze")
def _unsqueeze(ctx, node):
    x = _v(ctx, node, 0)
    axes = _attr(node, "axes") if ctx.opset < 13 else ctx.ints(node.input[1], "axes")
    rank = x.rank + len(axes)
    shape = list(x.shape)
    for axis in sorted(int(a) % rank for a in axes):
        shape.insert(axis, 1)
    return _reshape(ctx, x, shape)


@register_onnx_op("Transpose")
def _transpose(ctx, node):
    k = ctx.known(node.input[0])
    reader = ctx.only_consumer(node.output[0])
    if (k is not None and k.is_initializer and len(k.shape) == 2 and list(_attr(node, "perm") or [1, 0]) == [1, 0]
            and reader is not None and reader.op_type == "MatMul" and reader.input[1] == node.output[0]):
        # x @ W^T (graphopt's own export of a linear): the MatMul becomes linear(x, W), W keeps its name
        ctx.transposed_weights[node.output[0]] = node.input[0]
        return None
    x = _v(ctx, node, 0)
    perm = _attr(node, "perm") or list(range(x.rank))[::-1]
    if list(perm) == list(range(x.rank)):
        return x
    return ctx.emit1("permute", [x], {"dims": [int(p) for p in perm]})


@register_onnx_op("Concat")
def _concat(ctx, node):
    xs = [ctx.value(n) for n in node.input if n]
    xs = [x for x in xs if not (x.rank == 1 and x.shape[0] == 0)] or xs[:1]
    if len(xs) == 1:
        return xs[0]
    return ctx.emit1("concat", xs, {"axis": int(_attr(node, "axis")) % xs[0].rank})


@register_onnx_op("Split")
def _split(ctx, node):
    x = _v(ctx, node, 0)
    axis = int(_attr(node, "axis", 0)) % x.rank
    size = x.shape[axis]
    sizes = _attr(node, "split") if ctx.opset < 13 else ctx.ints(ctx.input(node, 1), "split")
    n_out = len(node.output)
    if not sizes:
        n = int(_attr(node, "num_outputs", n_out))
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
    x = _v(ctx, node, 0)
    if ctx.opset < 10:
        starts, ends, axes, steps = _attr(node, "starts"), _attr(node, "ends"), _attr(node, "axes"), None
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
    axis = int(_attr(node, "axis", 0))
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
    flat = _reshape(ctx, idx, [D.prod(idx.shape)])
    picked = ctx.emit1("index_select", [x, flat], {"axis": axis})
    return _reshape(ctx, picked, [*x.shape[:axis], *idx.shape, *x.shape[axis + 1:]])


@register_onnx_op("Expand")
def _expand(ctx, node):
    x = _v(ctx, node, 0)
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
    x = _v(ctx, node, 0)
    reps = ctx.ints(node.input[1], "repeats")
    inter, expanded, merged = [], [], []
    for r, d in zip(reps, x.shape):
        inter += [1, d]
        expanded += [r, d]
        merged.append(D.canon(r * d))
    y = _reshape(ctx, x, inter)
    y = ctx.emit1("expand", [y], {"shape": expanded})
    return _reshape(ctx, y, merged)


_PAD_MODES = {"constant": "constant", "reflect": "reflect", "edge": "replicate", "wrap": "circular"}


@register_onnx_op("Pad")
def _pad(ctx, node):
    x = _v(ctx, node, 0)
    mode = _attr(node, "mode", "constant")
    if mode not in _PAD_MODES:
        raise GraphoptError(f"{ctx.where()}: Pad mode '{mode}' is not supported")
    if ctx.opset < 11:
        pads, value = list(_attr(node, "pads")), float(_attr(node, "value", 0.0))
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


# ----------------------------------------------------------------- pooling
def _pool(ctx, node, op: str):
    x = _v(ctx, node, 0)
    kernel = [int(k) for k in _attr(node, "kernel_shape")]
    n = len(kernel)
    strides = [int(s) for s in _attr(node, "strides", [1] * n)]
    dilations = [int(d) for d in _attr(node, "dilations", [1] * n)]
    begins, ends = _spatial_pads(ctx, node, x, kernel, strides, dilations)
    ceil = bool(_attr(node, "ceil_mode", 0))
    attrs: dict[str, Any] = {"kernel": kernel, "stride": strides, "ceil_mode": ceil}
    if op == "max_pool":
        if len([o for o in node.output if o]) > 1:
            raise GraphoptError(f"{ctx.where()}: MaxPool's indices output is not supported")
        x, pads = _pad_asymmetric(ctx, x, begins, ends, value=float("-inf"))
        attrs.update(padding=pads, dilation=dilations)
    else:
        include = bool(_attr(node, "count_include_pad", 0))
        if begins != ends and not include:
            raise GraphoptError(f"{ctx.where()}: AveragePool with uneven padding and count_include_pad=0 is not "
                                "supported")
        if any(d != 1 for d in dilations):
            raise GraphoptError(f"{ctx.where()}: dilated AveragePool is not supported")
        x, pads = _pad_asymmetric(ctx, x, begins, ends)
        attrs.update(padding=pads, count_include_pad=include, divisor_override=None)
    return ctx.emit1(op, [x], attrs)


@register_onnx_op("MaxPool")
def _max_pool(ctx, node):
    return _pool(ctx, node, "max_pool")


@register_onnx_op("AveragePool")
def _avg_pool(ctx, node):
    return _pool(ctx, node, "avg_pool")


@register_onnx_op("GlobalAveragePool", "GlobalMaxPool")
def _global_pool(ctx, node):
    x = _v(ctx, node, 0)
    op = "adaptive_avg_pool" if node.op_type == "GlobalAveragePool" else "adaptive_max_pool"
    return ctx.emit1(op, [x], {"output_size": [1] * (x.rank - 2)})


def _resize_mode(ctx, node, rank: int) -> tuple[str, bool | None]:
    mode = _attr(node, "mode", "nearest")
    ctm = _attr(node, "coordinate_transformation_mode", "half_pixel" if node.op_type == "Resize" else "asymmetric")
    if node.op_type == "Upsample" or ctx.opset < 11:
        ctm = "asymmetric"
    if _attr(node, "antialias", 0):
        raise GraphoptError(f"{ctx.where()}: antialiased Resize is not supported")
    if mode == "nearest":
        nearest = _attr(node, "nearest_mode", "round_prefer_floor" if ctx.opset >= 11 else "floor")
        if node.op_type == "Upsample" or ctx.opset < 11:
            nearest = "floor"
        if ctm == "asymmetric" and nearest == "floor":
            return "nearest", None
        if ctm == "half_pixel" and nearest == "round_prefer_ceil":
            return "nearest-exact", None
        raise GraphoptError(f"{ctx.where()}: nearest Resize with coordinate_transformation_mode={ctm} and "
                            f"nearest_mode={nearest} has no torch equivalent")
    if mode in ("linear", "bilinear", "cubic", "bicubic"):
        if ctm not in ("half_pixel", "pytorch_half_pixel", "align_corners"):
            raise GraphoptError(f"{ctx.where()}: {mode} Resize with coordinate_transformation_mode={ctm} has no torch "
                                "equivalent")
        if mode in ("cubic", "bicubic"):
            if not math.isclose(float(_attr(node, "cubic_coeff_a", -0.75)), -0.75) or _attr(node, "exclude_outside", 0):
                raise GraphoptError(f"{ctx.where()}: cubic Resize differs from torch's bicubic (cubic_coeff_a, "
                                    "exclude_outside)")
            return "bicubic", ctm == "align_corners"
        torch_mode = {3: "linear", 4: "bilinear", 5: "trilinear"}.get(rank)
        if torch_mode is None:
            raise GraphoptError(f"{ctx.where()}: linear Resize of a rank-{rank} tensor is not supported")
        return torch_mode, ctm == "align_corners"
    raise GraphoptError(f"{ctx.where()}: Resize mode '{mode}' is not supported")


@register_onnx_op("Resize", "Upsample")
def _resize(ctx, node):
    x = _v(ctx, node, 0)
    mode, align = _resize_mode(ctx, node, x.rank)
    if node.op_type == "Upsample" or ctx.opset < 11:
        scales_name, sizes_name = (ctx.input(node, 1) if ctx.opset >= 9 else None), None
        scales = ctx.floats(scales_name) if scales_name else list(_attr(node, "scales"))
    else:
        scales_name, sizes_name = ctx.input(node, 2), ctx.input(node, 3)
        scales = ctx.floats(scales_name) if scales_name else None
        if scales is not None and not scales:
            scales = None
    axes = _attr(node, "axes")
    n = x.rank - 2
    if sizes_name and ctx.known(sizes_name) is not None and ctx.known(sizes_name).numel:
        sizes = ctx.ints(sizes_name, "sizes")
        if axes:
            full = list(x.shape)
            for a, s in zip(axes, sizes):
                full[int(a) % x.rank] = s
            sizes = full
        if not D.shapes_equal(sizes[:2], x.shape[:2]):
            raise GraphoptError(f"{ctx.where()}: Resize of the batch or channel axis is not supported")
        return ctx.emit1("resize", [x], {"size": list(sizes[2:]), "scale_factor": None, "mode": mode,
                                         "align_corners": align})
    if scales is None:
        raise GraphoptError(f"{ctx.where()}: Resize needs constant scales or sizes")
    if axes:
        full_scales = [1.0] * x.rank
        for a, s in zip(axes, scales):
            full_scales[int(a) % x.rank] = s
        scales = full_scales
    if scales[:2] != [1.0, 1.0]:
        raise GraphoptError(f"{ctx.where()}: Resize of the batch or channel axis is not supported")
    return ctx.emit1("resize", [x], {"size": None, "scale_factor": [float(s) for s in scales[2:]][:n], "mode": mode,
                                     "align_corners": align})


# -------------------------------------------------------------- reductions
_REDUCE = {"ReduceMean": "mean", "ReduceSum": "sum", "ReduceMax": "amax", "ReduceMin": "amin", "ReduceProd": "prod"}


def _reduce_axes(ctx, node) -> list[int] | None:
    axes_in_input = ctx.opset >= 18 or (node.op_type == "ReduceSum" and ctx.opset >= 13)
    axes = ctx.ints(ctx.input(node, 1), "axes") if axes_in_input else _attr(node, "axes")
    if not axes:
        if _attr(node, "noop_with_empty_axes", 0):
            return []
        return None
    return [int(a) for a in axes]


def _reduce(op: str):
    def convert(ctx, node):
        x = _v(ctx, node, 0)
        axes = _reduce_axes(ctx, node)
        if axes == []:
            return x
        if axes is not None:
            axes = sorted(a % x.rank for a in axes)
        return ctx.emit1(op, [x], {"axes": axes, "keepdim": bool(_attr(node, "keepdims", 1))})

    return convert


for _onnx_op, _op in _REDUCE.items():
    register_onnx_op(_onnx_op)(_reduce(_op))


@register_onnx_op("ReduceSumSquare", "ReduceL2", "ReduceL1")
def _reduce_norms(ctx, node):
    x = _v(ctx, node, 0)
    axes = _reduce_axes(ctx, node)
    axes = None if axes is None else sorted(a % x.rank for a in axes)
    keep = bool(_attr(node, "keepdims", 1))
    y = ctx.emit1("abs", [x]) if node.op_type == "ReduceL1" else ctx.emit1("mul", [x, x])
    y = ctx.emit1("sum", [y], {"axes": axes, "keepdim": keep})
    return ctx.emit1("sqrt", [y]) if node.op_type == "ReduceL2" else y


@register_onnx_op("ArgMax", "ArgMin")
def _argmax(ctx, node):
    if _attr(node, "select_last_index", 0):
        raise GraphoptError(f"{ctx.where()}: {node.op_type} with select_last_index=1 is not supported")
    x = _v(ctx, node, 0)
    op = "argmax" if node.op_type == "ArgMax" else "argmin"
    return ctx.emit1(op, [x], {"axes": [int(_attr(node, "axis", 0)) % x.rank],
                               "keepdim": bool(_attr(node, "keepdims", 1))})


@register_onnx_op("CumSum")
def _cumsum(ctx, node):
    if _attr(node, "exclusive", 0) or _attr(node, "reverse", 0):
        raise GraphoptError(f"{ctx.where()}: exclusive or reverse CumSum is not supported")
    x = _v(ctx, node, 0)
    axis = ctx.ints(node.input[1], "axis")[0]
    return ctx.emit1("cumsum", [x], {"axis": int(axis) % x.rank})


@register_onnx_op("Trilu")
def _trilu(ctx, node):
    x = _v(ctx, node, 0)
    k = ctx.ints(ctx.input(node, 1), "k")
    op = "triu" if _attr(node, "upper", 1) else "tril"
    return ctx.emit1(op, [x], {"diagonal": int(k[0]) if k else 0})


# ---------------------------------------------------------------- creation
@register_onnx_op("ConstantOfShape")
def _constant_of_shape(ctx, node):
    shape = ctx.ints(node.input[0], "shape")
    value = _attr(node, "value")
    dtype, fill = (torch.float32, 0.0) if value is None else tensor_scalar(value)
    return ctx.emit1("full", [], {"shape": shape, "value": fill, "dtype": dtype})


@register_onnx_op("Range")
def _range(ctx, node):
    start, limit, delta = (ctx.ints(n, what) if not ctx.dtype_of(n).is_floating_point else ctx.floats(n)
                           for n, what in zip(node.input, ("start", "limit", "delta")))
    return ctx.emit1("arange", [], {"start": start[0], "end": limit[0], "step": delta[0],
                                    "dtype": ctx.dtype_of(node.input[0])})


@register_onnx_op("Shape", "Size")
def _shape_of_unknown(ctx, node):  # pragma: no cover - Shape is always folded
    raise GraphoptError(f"{ctx.where()}: the shape of '{node.input[0]}' is unknown")
