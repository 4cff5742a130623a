"""ONNX converters for elementwise ops: activations, arithmetic, comparisons, casts."""

from __future__ import annotations

import math

from graphopt.dtypes import to_torch_dtype
from graphopt.errors import GraphoptError
from graphopt.frontends.onnx import register_onnx_op
from graphopt.frontends.onnx_ops._common import attr, value_at


_UNARY = {"Relu": "relu", "Sigmoid": "sigmoid", "Tanh": "tanh", "Erf": "erf", "Exp": "exp", "Log": "log",
          "Sqrt": "sqrt", "Neg": "neg", "Abs": "abs", "Sin": "sin", "Cos": "cos", "Reciprocal": "reciprocal",
          "Not": "logical_not", "HardSwish": "hardswish", "Mish": "mish", "Sign": "sign", "Asin": "asin",
          "Acos": "acos", "Atan": "atan", "Floor": "floor", "Ceil": "ceil", "Round": "round",
          "BitwiseNot": "bitwise_not", "Tan": "tan", "Sinh": "sinh", "Cosh": "cosh", "Asinh": "asinh",
          "Acosh": "acosh", "Atanh": "atanh"}


def _unary(op: str):
    def convert(ctx, node):
        return ctx.emit1(op, [value_at(ctx, node, 0)])

    return convert


for _onnx_op, _op in _UNARY.items():
    register_onnx_op(_onnx_op)(_unary(_op))


@register_onnx_op("Identity", "Dropout")
def _identity(ctx, node):
    if node.op_type == "Dropout" and len(node.output) > 1 and node.output[1] and ctx.consumers.get(node.output[1]):
        raise GraphoptError(f"{ctx.where()}: the mask output of Dropout is not supported")
    if node.op_type == "Dropout" and attr(node, "is_test", 1) == 0 and ctx.opset < 7:
        raise GraphoptError(f"{ctx.where()}: a training-mode Dropout has no inference meaning")
    k = ctx.known(node.input[0])
    return [k if k is not None else ctx.value(node.input[0]), None]


@register_onnx_op("Softplus")
def _softplus(ctx, node):
    return ctx.emit1("softplus", [value_at(ctx, node, 0)], {"beta": 1.0, "threshold": 20.0})


@register_onnx_op("Gelu")
def _gelu(ctx, node):
    return ctx.emit1("gelu", [value_at(ctx, node, 0)], {"approximate": attr(node, "approximate", "none")})


@register_onnx_op("LeakyRelu")
def _leaky_relu(ctx, node):
    return ctx.emit1("leaky_relu", [value_at(ctx, node, 0)], {"negative_slope": float(attr(node, "alpha", 0.01))})


@register_onnx_op("Elu")
def _elu(ctx, node):
    return ctx.emit1("elu", [value_at(ctx, node, 0)], {"alpha": float(attr(node, "alpha", 1.0))})


@register_onnx_op("HardSigmoid")
def _hardsigmoid(ctx, node):
    x = value_at(ctx, node, 0)
    alpha, beta = float(attr(node, "alpha", 0.2)), float(attr(node, "beta", 0.5))
    if math.isclose(alpha, 1 / 6, rel_tol=1e-6) and math.isclose(beta, 0.5):
        return ctx.emit1("hardsigmoid", [x])
    y = ctx.emit1("mul", [x, ctx.scalar(alpha, x.dtype)])
    y = ctx.emit1("add", [y, ctx.scalar(beta, x.dtype)])
    return ctx.emit1("clamp", [y], {"min": 0.0, "max": 1.0})


@register_onnx_op("PRelu")
def _prelu(ctx, node):
    x, slope = value_at(ctx, node, 0), value_at(ctx, node, 1)
    negative = ctx.emit1("mul", [x, slope])
    return ctx.emit1("where", [ctx.emit1("gt", [x, ctx.scalar(0.0, x.dtype)]), x, negative])


@register_onnx_op("Clip")
def _clip(ctx, node):
    x = value_at(ctx, node, 0)
    if ctx.opset < 11:
        lo, hi = attr(node, "min"), attr(node, "max")
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

_BINARY = {"Add": "add", "Sub": "sub", "Mul": "mul", "Pow": "pow", "Equal": "eq", "Less": "lt",
           "LessOrEqual": "le", "Greater": "gt", "GreaterOrEqual": "ge", "And": "logical_and", "Or": "logical_or",
           "Xor": "ne", "BitwiseAnd": "bitwise_and", "BitwiseOr": "bitwise_or", "BitwiseXor": "bitwise_xor"}


def _binary(op: str):
    def convert(ctx, node):
        return ctx.emit1(op, [value_at(ctx, node, 0), value_at(ctx, node, 1)])

    return convert


for _onnx_op, _op in _BINARY.items():
    register_onnx_op(_onnx_op)(_binary(_op))


@register_onnx_op("Div")
def _div(ctx, node):
    a, b = value_at(ctx, node, 0), value_at(ctx, node, 1)
    attrs = {} if a.dtype.is_floating_point else {"rounding_mode": "trunc"}  # ONNX integer Div truncates
    return ctx.emit1("div", [a, b], attrs)


@register_onnx_op("Mod")
def _mod(ctx, node):
    """x - q*y with q rounded down (fmod=0: the divisor's sign, Python's %) or toward zero (fmod=1: C's fmod)."""
    a, b = value_at(ctx, node, 0), value_at(ctx, node, 1)
    fmod = int(attr(node, "fmod", 0))
    if not fmod and a.dtype.is_floating_point:
        raise GraphoptError(f"{ctx.where()}: Mod on floats needs fmod=1 (the ONNX spec allows no other)")
    q = ctx.emit1("div", [a, b], {"rounding_mode": "trunc" if fmod else "floor"})
    return ctx.emit1("sub", [a, ctx.emit1("mul", [q, b])])


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
    return ctx.emit1("where", [value_at(ctx, node, 0), value_at(ctx, node, 1), value_at(ctx, node, 2)])


@register_onnx_op("Cast")
def _cast(ctx, node):
    x = value_at(ctx, node, 0)
    dtype = to_torch_dtype(attr(node, "to"))
    return x if x.dtype == dtype else ctx.emit1("cast", [x], {"dtype": dtype})


@register_onnx_op("CastLike")
def _cast_like(ctx, node):
    x = value_at(ctx, node, 0)
    dtype = ctx.dtype_of(node.input[1])
    return x if x.dtype == dtype else ctx.emit1("cast", [x], {"dtype": dtype})
