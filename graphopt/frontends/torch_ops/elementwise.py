"""ATen converters for elementwise ops: activations, arithmetic and comparisons, casts and aliases."""

from __future__ import annotations

import math

import torch

from graphopt.errors import GraphoptError
from graphopt.frontends.torch import ImportContext, register_torch_op
from graphopt.frontends.torch_ops._common import cast_to, schema_arg


_UNARY = {
    "relu": "relu", "sigmoid": "sigmoid", "tanh": "tanh", "silu": "silu", "hardswish": "hardswish",
    "hardsigmoid": "hardsigmoid", "mish": "mish", "exp": "exp", "log": "log", "sqrt": "sqrt", "rsqrt": "rsqrt",
    "neg": "neg", "abs": "abs", "erf": "erf", "sin": "sin", "cos": "cos", "reciprocal": "reciprocal",
    "logical_not": "logical_not", "bitwise_not": "logical_not", "sign": "sign", "floor": "floor", "ceil": "ceil",
    "expm1": "expm1", "log1p": "log1p", "asin": "asin", "acos": "acos", "atan": "atan", "tan": "tan",
    "sinh": "sinh", "cosh": "cosh", "asinh": "asinh", "acosh": "acosh", "atanh": "atanh", "log2": "log2",
    "log10": "log10", "trunc": "trunc", "fix": "trunc",
}


def _unary(op: str):
    def convert(ctx: ImportContext, node):
        x = ctx.value(node.args[0])
        # torch computes in the output's dtype: exp/reciprocal/... of integers are floats, logical_not of
        # numbers is that of (x != 0), a bool
        return ctx.emit1(_bitwise_on_integers(node, op, x), [cast_to(ctx, x, ctx.out_dtype())])

    return convert


def _bitwise_on_integers(node, op: str, *values) -> str:
    """Bitwise ops on bools (masks) are the logical op; on integers they stay bitwise_*."""
    name = str(node.target)
    if op.startswith("logical_") and ("bitwise" in name or "__" in name) and any(v.dtype != torch.bool for v in values):
        return "bitwise_" + op[len("logical_"):]
    return op


for _aten, _op in _UNARY.items():
    register_torch_op(f"aten.{_aten}", f"aten.{_aten}_")(_unary(_op))
register_torch_op("aten.round.default", "aten.round_.default")(_unary("round"))  # round(x, decimals=n) is not mapped


@register_torch_op("aten.square", "aten.square_")
def _square(ctx, node):
    x = ctx.value(node.args[0])
    return cast_to(ctx, ctx.emit1("mul", [x, x]), ctx.out_dtype())  # x * x exactly; bool squares to int64


@register_torch_op("aten.log_sigmoid", "aten.log_sigmoid_forward")
def _log_sigmoid(ctx, node):
    # log(sigmoid(x)) = -softplus(-x); softplus's linear branch (-x > 20) keeps it exact for very negative x
    x = ctx.emit1("neg", [ctx.value(node.args[0])])
    out = ctx.emit1("neg", [ctx.emit1("softplus", [x], {"beta": 1.0, "threshold": 20.0})])
    return out if "forward" not in str(node.target) else [out, None]  # the buffer output is for autograd only


@register_torch_op("aten.gelu", "aten.gelu_")
def _gelu(ctx, node):
    return ctx.emit1("gelu", [ctx.value(node.args[0])], {"approximate": schema_arg(node, 1, "approximate", "none")})


@register_torch_op("aten.hardtanh", "aten.hardtanh_")
def _hardtanh(ctx, node):
    return ctx.emit1("hardtanh", [ctx.value(node.args[0])],
                     {"min_val": float(schema_arg(node, 1, "min_val", -1.0)), "max_val": float(schema_arg(node, 2, "max_val", 1.0))})


@register_torch_op("aten.relu6", "aten.relu6_")
def _relu6(ctx, node):
    return ctx.emit1("hardtanh", [ctx.value(node.args[0])], {"min_val": 0.0, "max_val": 6.0})


@register_torch_op("aten.leaky_relu", "aten.leaky_relu_")
def _leaky_relu(ctx, node):
    return ctx.emit1("leaky_relu", [ctx.value(node.args[0])], {"negative_slope": float(schema_arg(node, 1, "negative_slope", 0.01))})


@register_torch_op("aten.elu", "aten.elu_")
def _elu(ctx, node):
    return ctx.emit1("elu", [ctx.value(node.args[0])], {"alpha": float(schema_arg(node, 1, "alpha", 1.0))})


@register_torch_op("aten.softplus")
def _softplus(ctx, node):
    return ctx.emit1("softplus", [ctx.value(node.args[0])],
                     {"beta": float(schema_arg(node, 1, "beta", 1.0)), "threshold": float(schema_arg(node, 2, "threshold", 20.0))})


@register_torch_op("aten.clamp", "aten.clamp_")
def _clamp(ctx, node):
    lo, hi = schema_arg(node, 1, "min"), schema_arg(node, 2, "max")
    if isinstance(lo, torch.fx.Node) or isinstance(hi, torch.fx.Node):
        x = ctx.value(node.args[0])
        if lo is not None:
            x = ctx.emit1("maximum", [x, ctx.value(lo)])
        if hi is not None:
            x = ctx.emit1("minimum", [x, ctx.value(hi)])
        return x
    return ctx.emit1("clamp", [ctx.value(node.args[0])], {"min": lo, "max": hi})


@register_torch_op("aten.clamp_min", "aten.clamp_min_", "aten.clamp_max", "aten.clamp_max_")
def _clamp_one_side(ctx, node):
    lower = "clamp_min" in str(node.target)
    x, bound = ctx.value(node.args[0]), node.args[1]
    if isinstance(bound, torch.fx.Node):  # a tensor bound (clamp_min.Tensor): elementwise max/min
        out = ctx.emit1("maximum" if lower else "minimum", [x, ctx.value(bound)])
        return cast_to(ctx, out, ctx.out_dtype())
    return ctx.emit1("clamp", [x], {"min": bound, "max": None} if lower else {"min": None, "max": bound})


@register_torch_op("aten.dropout", "aten.dropout_", "aten.feature_dropout", "aten.alpha_dropout")
def _dropout(ctx, node):
    return ctx.emit1("dropout", [ctx.value(node.args[0])], {"p": float(schema_arg(node, 1, "p", 0.5))})


@register_torch_op("aten.triu", "aten.tril")
def _tri(ctx, node):
    op = "triu" if "triu" in str(node.target) else "tril"
    return ctx.emit1(op, [ctx.value(node.args[0])], {"diagonal": int(schema_arg(node, 1, "diagonal", 0))})


@register_torch_op("aten.cumsum")
def _cumsum(ctx, node):
    x = ctx.value(node.args[0])
    out = ctx.emit1("cumsum", [x], {"axis": int(node.args[1])})
    dtype = ctx.out_dtype()
    return out if out.dtype == dtype else ctx.emit1("cast", [out], {"dtype": dtype})


# --------------------------------------------------------------- binary ops
_BINARY = {"add": "add", "sub": "sub", "mul": "mul", "div": "div", "pow": "pow", "maximum": "maximum",
           "minimum": "minimum", "eq": "eq", "ne": "ne", "lt": "lt", "le": "le", "gt": "gt", "ge": "ge",
           "logical_and": "logical_and", "logical_or": "logical_or", "logical_xor": "logical_xor",
           "bitwise_and": "logical_and", "bitwise_or": "logical_or", "bitwise_xor": "logical_xor",
           # torch's alias spellings
           "multiply": "mul", "divide": "div", "true_divide": "div", "subtract": "sub", "greater": "gt",
           "greater_equal": "ge", "less": "lt", "less_equal": "le", "not_equal": "ne"}
# `a & b`, `a | b`, `a ^ b` on masks, and the binary overloads of torch.min/max (T5's relative position buckets)
_OPERATORS = {"aten.__and__": "logical_and", "aten.__iand__": "logical_and", "aten.__or__": "logical_or",
              "aten.__ior__": "logical_or", "aten.__xor__": "logical_xor", "aten.__ixor__": "logical_xor",
              "aten.min.other": "minimum", "aten.max.other": "maximum"}


def _binary(op: str):
    def convert(ctx: ImportContext, node):
        a, b = node.args[0], node.args[1]
        alpha = node.kwargs.get("alpha", node.args[2] if len(node.args) > 2 and op in ("add", "sub") else 1)
        a_val = ctx.value(a)
        b_val = ctx.value(b)
        if alpha != 1:
            b_val = ctx.emit1("mul", [b_val, ctx.value(alpha)])
        attrs = {}
        if op == "div":
            mode = node.kwargs.get("rounding_mode")
            if mode is not None:
                attrs["rounding_mode"] = mode
        return ctx.emit1(_bitwise_on_integers(node, op, a_val, b_val), [a_val, b_val], attrs)

    return convert


for _aten, _op in _BINARY.items():
    register_torch_op(f"aten.{_aten}", f"aten.{_aten}_")(_binary(_op))
for _aten, _op in _OPERATORS.items():
    register_torch_op(_aten)(_binary(_op))


@register_torch_op("aten.addcmul", "aten.addcmul_", "aten.addcdiv", "aten.addcdiv_")
def _addcmul(ctx, node):
    # x + (value * t1) * t2, or (value * t1) / t2: the order torch's kernel rounds in
    dtype = ctx.out_dtype()
    x, t1, t2 = (cast_to(ctx, ctx.value(a), dtype) for a in node.args[:3])
    value = schema_arg(node, 3, "value", 1)
    if value != 1:
        t1 = ctx.emit1("mul", [ctx.scalar(value, dtype=dtype), t1])
    term = ctx.emit1("mul" if "addcmul" in str(node.target) else "div", [t1, t2])
    return ctx.emit1("add", [x, term])


@register_torch_op("aten.rsub")
def _rsub(ctx, node):
    alpha = node.kwargs.get("alpha", 1)
    x = ctx.value(node.args[0])
    if alpha != 1:
        x = ctx.emit1("mul", [x, ctx.value(alpha)])
    return ctx.emit1("sub", [ctx.value(node.args[1]), x])


def _modulo(rounding: str):
    """a - round(a / b) * b: Python's % with "floor" (the sign of b: canine's hash buckets, relative position
    tables), C's fmod with "trunc" (the sign of a)."""
    def convert(ctx, node):
        dtype = ctx.out_dtype()
        a, b = cast_to(ctx, ctx.value(node.args[0]), dtype), cast_to(ctx, ctx.value(node.args[1]), dtype)
        quotient = ctx.emit1("div", [a, b], {"rounding_mode": rounding})
        return ctx.emit1("sub", [a, ctx.emit1("mul", [quotient, b])])

    return convert


register_torch_op("aten.remainder", "aten.remainder_")(_modulo("floor"))
register_torch_op("aten.fmod", "aten.fmod_")(_modulo("trunc"))


@register_torch_op("aten.floor_divide")
def _floor_divide(ctx, node):
    return ctx.emit1("div", [ctx.value(node.args[0]), ctx.value(node.args[1])], {"rounding_mode": "floor"})


@register_torch_op("aten.where")
def _where(ctx, node):
    if len(node.args) == 1:
        raise GraphoptError(f"node '{node.name}': torch.where(cond) with one argument is data-dependent")
    return ctx.emit1("where", [ctx.value(node.args[0]), ctx.value(node.args[1]), ctx.value(node.args[2])])


@register_torch_op("aten.isnan")
def _isnan(ctx, node):
    x = ctx.value(node.args[0])
    return ctx.emit1("ne", [x, x])  # NaN is the only value unequal to itself (all False on integers)


@register_torch_op("aten.isinf")
def _isinf(ctx, node):
    x = ctx.value(node.args[0])
    if not x.dtype.is_floating_point:  # integers are never infinite
        return ctx.emit1("ne", [x, x])
    return ctx.emit1("eq", [ctx.emit1("abs", [x]), ctx.scalar(math.inf, dtype=x.dtype)])


@register_torch_op("aten.atan2", "aten.arctan2")
def _atan2(ctx, node):
    """atan(y / x), moved by pi into the half-plane x < 0 and set to +-pi/2 (or 0) on the axis x = 0.

    ONNX has no Atan2. Equal to torch.atan2 except at signed zeros: y = -0.0 with x < 0 gives pi, not -pi.
    """
    dt = ctx.out_dtype()
    y, x = cast_to(ctx, ctx.value(node.args[0]), dt), cast_to(ctx, ctx.value(node.args[1]), dt)
    zero, pi = ctx.scalar(0.0, dtype=dt), ctx.scalar(math.pi, dtype=dt)
    base = ctx.emit1("atan", [ctx.emit1("div", [y, x])])
    left = ctx.emit1("where", [ctx.emit1("ge", [y, zero]), ctx.emit1("add", [base, pi]), ctx.emit1("sub", [base, pi])])
    axis = ctx.emit1("where", [ctx.emit1("gt", [y, zero]), ctx.scalar(math.pi / 2, dtype=dt),
                               ctx.emit1("where", [ctx.emit1("lt", [y, zero]), ctx.scalar(-math.pi / 2, dtype=dt),
                                                   zero])])
    return ctx.emit1("where", [ctx.emit1("gt", [x, zero]), base,
                               ctx.emit1("where", [ctx.emit1("lt", [x, zero]), left, axis])])


@register_torch_op("aten.nan_to_num", "aten.nan_to_num_")
def _nan_to_num(ctx, node):
    """NaN -> `nan` (0), +inf -> `posinf`, -inf -> `neginf` (default: the dtype's largest and lowest), as selects."""
    x = ctx.value(node.args[0])
    if not x.dtype.is_floating_point:  # integers hold no NaN or infinity: torch returns a copy
        return ctx.emit1("identity", [x])
    info = torch.finfo(x.dtype)
    replace = [(ctx.emit1("ne", [x, x]), schema_arg(node, 1, "nan"), 0.0),
               (ctx.emit1("eq", [x, ctx.scalar(math.inf, dtype=x.dtype)]), schema_arg(node, 2, "posinf"), info.max),
               (ctx.emit1("eq", [x, ctx.scalar(-math.inf, dtype=x.dtype)]), schema_arg(node, 3, "neginf"), info.min)]
    out = x
    for where, given, default in replace:
        out = ctx.emit1("where", [where, ctx.scalar(float(default if given is None else given), dtype=x.dtype), out])
    return out


@register_torch_op("aten.masked_fill", "aten.masked_fill_")
def _masked_fill(ctx, node):
    x = ctx.value(node.args[0])
    fill = node.args[2]
    fill_val = ctx.value(fill) if isinstance(fill, torch.fx.Node) else ctx.scalar(fill, dtype=x.dtype)
    return ctx.emit1("where", [ctx.value(node.args[1]), fill_val, x])


@register_torch_op("aten._to_copy", "aten.to", "aten.type_as", "aten._to_dim_order_copy")
def _to(ctx, node):
    return cast_to(ctx, ctx.value(node.args[0]), ctx.out_dtype())


@register_torch_op("aten.clone", "aten.contiguous", "aten.alias", "aten.detach", "aten.lift_fresh_copy",
                   "aten.lift_fresh", "aten.alias_copy", "aten.detach_", "aten.view_copy.dtype")
def _identity(ctx, node):
    return ctx.value(node.args[0])
