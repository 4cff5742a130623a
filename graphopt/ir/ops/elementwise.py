"""Elementwise ops (unary, binary, comparisons, where, cast): definitions, shape rules and torch kernels."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from graphopt.ir.graph import Node
from graphopt.ir.ops._core import (ELEMENTWISE, SATURATING, TRAINING_AWARE, TensorType, broadcast, in_, kernel, op,
                                   result_dtype, same)


def identity(x):
    return x


def gelu(x, *, approximate="none"):
    return F.gelu(x, approximate=approximate)


def hardtanh(x, *, min_val, max_val):
    return F.hardtanh(x, min_val, max_val)


def leaky_relu(x, *, negative_slope):
    return F.leaky_relu(x, negative_slope)


def elu(x, *, alpha):
    return F.elu(x, alpha)


def softplus(x, *, beta, threshold):
    return F.softplus(x, beta, threshold)


def clamp(x, *, min=None, max=None):  # noqa: A002 - torch's names
    return torch.clamp(x, min, max)


def dropout(x, *, p, training=False):
    return F.dropout(x, p, training)


def triu(x, *, diagonal=0):
    return torch.triu(x, diagonal)


def tril(x, *, diagonal=0):
    return torch.tril(x, diagonal)


def cumsum(x, *, axis):
    return torch.cumsum(x, axis)


# name -> (attributes, meaning, torch kernel)
_UNARY = {
    "relu": ({}, "max(x, 0)", torch.relu),
    "gelu": ({"approximate": "'none' or 'tanh'"}, "Gaussian error linear unit", gelu),
    "silu": ({}, "x * sigmoid(x)", F.silu),
    "sigmoid": ({}, "1 / (1 + exp(-x))", torch.sigmoid),
    "tanh": ({}, "hyperbolic tangent", torch.tanh),
    "hardswish": ({}, "x * relu6(x + 3) / 6", F.hardswish),
    "hardsigmoid": ({}, "relu6(x + 3) / 6", F.hardsigmoid),
    "hardtanh": ({"min_val": "lower bound", "max_val": "upper bound"},
                 "clamp(x, min_val, max_val); relu6 is hardtanh(0, 6)", hardtanh),
    "leaky_relu": ({"negative_slope": "slope for x < 0"}, "leaky ReLU", leaky_relu),
    "elu": ({"alpha": "scale of the negative part"}, "exponential linear unit", elu),
    "softplus": ({"beta": "sharpness", "threshold": "linear above this"}, "log(1 + exp(beta x)) / beta", softplus),
    "mish": ({}, "x * tanh(softplus(x))", F.mish),
    "exp": ({}, "e^x", torch.exp),
    "expm1": ({}, "e^x - 1, exact near 0", torch.expm1),
    "log1p": ({}, "log(1 + x), exact near 0", torch.log1p),
    "log": ({}, "natural log", torch.log),
    "sqrt": ({}, "square root", torch.sqrt),
    "rsqrt": ({}, "1 / sqrt(x)", torch.rsqrt),
    "neg": ({}, "-x", torch.neg),
    "abs": ({}, "|x|", torch.abs),
    "erf": ({}, "error function", torch.erf),
    "sin": ({}, "sine", torch.sin),
    "cos": ({}, "cosine", torch.cos),
    "asin": ({}, "arcsine", torch.asin),
    "acos": ({}, "arccosine", torch.acos),
    "atan": ({}, "arctangent", torch.atan),
    "tan": ({}, "tangent", torch.tan),
    "sinh": ({}, "hyperbolic sine", torch.sinh),
    "cosh": ({}, "hyperbolic cosine", torch.cosh),
    "asinh": ({}, "inverse hyperbolic sine", torch.asinh),
    "acosh": ({}, "inverse hyperbolic cosine", torch.acosh),
    "atanh": ({}, "inverse hyperbolic tangent", torch.atanh),
    "log2": ({}, "base-2 log", torch.log2),
    "log10": ({}, "base-10 log", torch.log10),
    "trunc": ({}, "round toward zero (identity on integers)", torch.trunc),
    "reciprocal": ({}, "1 / x", torch.reciprocal),
    "sign": ({}, "-1, 0 or 1 by the sign of x", torch.sign),
    "floor": ({}, "round down (identity on integers)", torch.floor),
    "ceil": ({}, "round up (identity on integers)", torch.ceil),
    "round": ({}, "round to the nearest integer, halves to even (identity on integers)", torch.round),
    "bitwise_not": ({}, "~x: every bit flipped (integers; bools use logical_not)", torch.bitwise_not),
    "clamp": ({"min": "lower bound or None", "max": "upper bound or None"}, "clamp to [min, max]", clamp),
    "dropout": ({"p": "drop probability (identity at inference)"},
                "identity at inference; training drops with probability p", dropout),
    "identity": ({}, "x", identity),
    "logical_not": ({}, "boolean not", torch.logical_not),
    "triu": ({"diagonal": "diagonal offset"}, "upper triangle of the last two axes, zero elsewhere", triu),
    "tril": ({"diagonal": "diagonal offset"}, "lower triangle of the last two axes, zero elsewhere", tril),
    "cumsum": ({"axis": "axis to accumulate along"}, "running sum along axis", cumsum),
}
ELEMENTWISE_UNARY = frozenset(_UNARY) - {"triu", "tril", "cumsum"}
_SATURATING = {"relu", "gelu", "silu", "sigmoid", "tanh", "hardswish", "hardsigmoid", "hardtanh", "elu", "softplus",
               "mish", "clamp"}

for _name, (_attrs, _doc, _kernel) in _UNARY.items():
    _traits = {ELEMENTWISE} if _name in ELEMENTWISE_UNARY else set()
    if _name == "dropout":
        _traits.add(TRAINING_AWARE)
    if _name in _SATURATING:
        _traits.add(SATURATING)
    op(_name, "x", attrs=_attrs, shape="same as x", category="elementwise", doc=_doc, traits=_traits)(same)
    kernel(_name)(_kernel)


def div(a, b, *, rounding_mode=None):
    return torch.div(a, b, rounding_mode=rounding_mode)


_BINARY = {
    "add": ("a + b", torch.add),
    "sub": ("a - b", torch.sub),
    "mul": ("a * b", torch.mul),
    "div": ("a / b (attr rounding_mode: None, 'trunc' or 'floor')", div),
    "pow": ("a ** b", torch.pow),
    "maximum": ("elementwise max", torch.maximum),
    "minimum": ("elementwise min", torch.minimum),
    # on integers; the front-ends map these on bools (masks) to logical_and/or/xor
    "bitwise_and": ("a & b (integers)", torch.bitwise_and),
    "bitwise_or": ("a OR b bit by bit (integers)", torch.bitwise_or),
    "bitwise_xor": ("a ^ b (integers)", torch.bitwise_xor),
}
_COMPARE = {
    "eq": ("a == b", torch.eq), "ne": ("a != b", torch.ne), "lt": ("a < b", torch.lt), "le": ("a <= b", torch.le),
    "gt": ("a > b", torch.gt), "ge": ("a >= b", torch.ge), "logical_and": ("a and b", torch.logical_and),
    "logical_or": ("a or b", torch.logical_or), "logical_xor": ("a xor b", torch.logical_xor),
}


def _binary(node: Node) -> list[TensorType]:
    a, b = in_(node, 0), in_(node, 1)
    dtype = result_dtype(a, b)
    if node.op == "div" and not node.attrs.get("rounding_mode") and not dtype.is_floating_point:
        dtype = torch.get_default_dtype()
    return [(broadcast(a.shape, b.shape), dtype)]


def _compare(node: Node) -> list[TensorType]:
    a, b = in_(node, 0), in_(node, 1)
    return [(broadcast(a.shape, b.shape), torch.bool)]


for _name, (_doc, _kernel) in _BINARY.items():
    op(_name, "a, b", attrs={"rounding_mode": "None, 'trunc' or 'floor'"} if _name == "div" else {},
       shape="broadcast(a, b); dtype by torch promotion", category="binary", doc=_doc, traits={ELEMENTWISE})(_binary)
    kernel(_name)(_kernel)
for _name, (_doc, _kernel) in _COMPARE.items():
    op(_name, "a, b", shape="broadcast(a, b), bool", category="binary", doc=_doc, traits={ELEMENTWISE})(_compare)
    kernel(_name)(_kernel)
ELEMENTWISE_BINARY = frozenset(_BINARY) | frozenset(_COMPARE)


@op("where", "cond, a, b", shape="broadcast(cond, a, b)", category="elementwise", doc="a where cond else b",
    traits={ELEMENTWISE})
def _where(node: Node) -> list[TensorType]:
    c, a, b = in_(node, 0), in_(node, 1), in_(node, 2)
    return [(broadcast(c.shape, a.shape, b.shape), result_dtype(a, b))]


kernel("where")(torch.where)


@op("cast", "x", attrs={"dtype": "target dtype"}, shape="same as x, dtype attr", category="elementwise",
    doc="convert the element type", traits={ELEMENTWISE})
def _cast(node: Node) -> list[TensorType]:
    x = in_(node, 0)
    return [(x.shape, node.attrs["dtype"])]


@kernel("cast")
def cast(x, *, dtype):
    return x.to(dtype)
