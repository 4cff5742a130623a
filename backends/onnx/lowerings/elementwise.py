"""ONNX lowerings of elementwise ops: activations, arithmetic, comparisons, casts, triangles and cumsum."""

from __future__ import annotations

import math

import torch

from graphopt.ir.ops import result_dtype
from graphopt.backends.onnx.lowering import Lowering, OpsetTooLow, lowering
from graphopt.backends.onnx.lowerings._common import casted, out_of, scalar


_DIRECT_UNARY = {
    "relu": "Relu", "sigmoid": "Sigmoid", "tanh": "Tanh", "exp": "Exp", "log": "Log", "sqrt": "Sqrt",
    "neg": "Neg", "abs": "Abs", "erf": "Erf", "sin": "Sin", "cos": "Cos", "reciprocal": "Reciprocal",
    "hardswish": "HardSwish", "identity": "Identity", "dropout": "Identity", "sign": "Sign",
    "asin": "Asin", "acos": "Acos", "atan": "Atan", "tan": "Tan", "sinh": "Sinh", "cosh": "Cosh",
    "asinh": "Asinh", "acosh": "Acosh", "atanh": "Atanh",
}


def _direct_unary(op_type: str) -> Lowering:
    def lower(b, node, ins):
        return b.op(op_type, ins[:1], dtype=out_of(node).dtype)

    return lower


for _op, _onnx in _DIRECT_UNARY.items():
    lowering(_op)(_direct_unary(_onnx))


# ONNX has neither Expm1 nor Log1p: exp(x) - 1 and log(1 + x) agree with torch's up to the float rounding
# of the result (an absolute, not a relative, error near 0)
@lowering("expm1")
def _expm1(b, node, ins):
    dt = out_of(node).dtype
    return b.op("Sub", [b.op("Exp", ins[:1], dtype=dt), scalar(b, 1.0, dt)], dtype=dt)


@lowering("log1p")
def _log1p(b, node, ins):
    dt = out_of(node).dtype
    return b.op("Log", [b.op("Add", [ins[0], scalar(b, 1.0, dt)], dtype=dt)], dtype=dt)


@lowering("log2", "log10")
def _log_base(b, node, ins):
    """ONNX has only the natural Log: log(x) / log(base), as a multiplication by the constant 1 / log(base)."""
    dt = out_of(node).dtype
    base = 2.0 if node.op == "log2" else 10.0
    return b.op("Mul", [b.op("Log", ins[:1], dtype=dt), scalar(b, 1.0 / math.log(base), dt)], dtype=dt)


@lowering("trunc")
def _trunc(b, node, ins):
    """ONNX has no Trunc: Ceil below zero, Floor above (torch.trunc; integers pass through)."""
    dt = out_of(node).dtype
    if not dt.is_floating_point:
        return b.op("Identity", ins[:1], dtype=dt)
    negative = b.op("Less", [ins[0], scalar(b, 0.0, dt)], dtype=torch.bool)
    return b.op("Where", [negative, b.op("Ceil", ins[:1], dtype=dt), b.op("Floor", ins[:1], dtype=dt)], dtype=dt)


_ROUNDING = {"floor": "Floor", "ceil": "Ceil", "round": "Round"}  # ONNX Round also sends halves to even


@lowering(*_ROUNDING)
def _round(b, node, ins):
    dt = out_of(node).dtype
    if not dt.is_floating_point:  # ONNX Floor/Ceil/Round take floats only; on integers torch returns x
        return b.op("Identity", ins[:1], dtype=dt)
    return b.op(_ROUNDING[node.op], ins[:1], dtype=dt)


@lowering("logical_not")
def _logical_not(b, node, ins):
    x = b.cast(ins[0], torch.bool, node.inputs[0].dtype)
    return b.cast(b.op("Not", [x], dtype=torch.bool), out_of(node).dtype, torch.bool)


@lowering("gelu")
def _gelu(b, node, ins):
    x, dt = ins[0], out_of(node).dtype
    approximate = node.attrs.get("approximate", "none")
    if b.opset >= 20:
        return b.op("Gelu", [x], {"approximate": approximate}, dtype=dt)
    if approximate == "tanh":  # 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
        cube = b.op("Mul", [b.op("Mul", [x, x], dtype=dt), x], dtype=dt)
        inner = b.op("Add", [x, b.op("Mul", [cube, scalar(b, 0.044715, dt)], dtype=dt)], dtype=dt)
        t = b.op("Tanh", [b.op("Mul", [inner, scalar(b, math.sqrt(2.0 / math.pi), dt)], dtype=dt)], dtype=dt)
    else:  # 0.5 x (1 + erf(x / sqrt(2)))
        t = b.op("Erf", [b.op("Mul", [x, scalar(b, 1.0 / math.sqrt(2.0), dt)], dtype=dt)], dtype=dt)
    one_plus = b.op("Add", [t, scalar(b, 1.0, dt)], dtype=dt)
    return b.op("Mul", [b.op("Mul", [x, scalar(b, 0.5, dt)], dtype=dt), one_plus], dtype=dt)


@lowering("silu")
def _silu(b, node, ins):
    dt = out_of(node).dtype
    return b.op("Mul", [ins[0], b.op("Sigmoid", [ins[0]], dtype=dt)], dtype=dt)


@lowering("hardsigmoid")
def _hardsigmoid(b, node, ins):
    return b.op("HardSigmoid", ins[:1], {"alpha": 1.0 / 6.0, "beta": 0.5}, dtype=out_of(node).dtype)


@lowering("hardtanh")
def _hardtanh(b, node, ins):
    dt = out_of(node).dtype
    lo, hi = node.attrs["min_val"], node.attrs["max_val"]
    return b.op("Clip", [ins[0], scalar(b, lo, dt), scalar(b, hi, dt)], dtype=dt)


@lowering("clamp")
def _clamp(b, node, ins):
    dt = out_of(node).dtype
    lo, hi = node.attrs.get("min"), node.attrs.get("max")
    bounds = [None if v is None else scalar(b, v, dt) for v in (lo, hi)]
    return b.op("Clip", [ins[0], *bounds], dtype=dt)


@lowering("leaky_relu")
def _leaky_relu(b, node, ins):
    return b.op("LeakyRelu", ins[:1], {"alpha": float(node.attrs["negative_slope"])}, dtype=out_of(node).dtype)


@lowering("elu")
def _elu(b, node, ins):
    return b.op("Elu", ins[:1], {"alpha": float(node.attrs["alpha"])}, dtype=out_of(node).dtype)


@lowering("softplus")
def _softplus(b, node, ins):
    # torch: x where beta*x > threshold, else log(1 + exp(beta*x)) / beta
    x, dt = ins[0], out_of(node).dtype
    beta, threshold = float(node.attrs.get("beta", 1.0)), float(node.attrs.get("threshold", 20.0))
    bx = x if beta == 1.0 else b.op("Mul", [x, scalar(b, beta, dt)], dtype=dt)
    soft = b.op("Softplus", [bx], dtype=dt)
    if beta != 1.0:
        soft = b.op("Div", [soft, scalar(b, beta, dt)], dtype=dt)
    linear = b.op("Greater", [bx, scalar(b, threshold, dt)], dtype=torch.bool)
    return b.op("Where", [linear, x, soft], dtype=dt)


@lowering("mish")
def _mish(b, node, ins):
    dt = out_of(node).dtype
    if b.opset >= 18:
        return b.op("Mish", ins[:1], dtype=dt)
    return b.op("Mul", [ins[0], b.op("Tanh", [b.op("Softplus", ins[:1], dtype=dt)], dtype=dt)], dtype=dt)


@lowering("rsqrt")
def _rsqrt(b, node, ins):
    dt = out_of(node).dtype
    return b.op("Reciprocal", [b.op("Sqrt", ins[:1], dtype=dt)], dtype=dt)


@lowering("triu", "tril")
def _tri(b, node, ins):
    dt = out_of(node).dtype
    work = dt if dt in (torch.float32, torch.float64, torch.int64, torch.bool) else torch.float32
    x = b.cast(ins[0], work, dt)
    out = b.op("Trilu", [x, b.i64(int(node.attrs.get("diagonal", 0)))], {"upper": int(node.op == "triu")}, dtype=work)
    return b.cast(out, dt, work)


@lowering("cumsum")
def _cumsum(b, node, ins):
    dt = out_of(node).dtype
    work = dt if dt in (torch.float32, torch.float64, torch.int32, torch.int64) else torch.int64
    x = b.cast(ins[0], work, node.inputs[0].dtype)
    out = b.op("CumSum", [x, b.i64(int(node.attrs["axis"]))], dtype=work)
    return b.cast(out, dt, work)


@lowering("cast")
def _cast(b, node, ins):
    return b.cast(ins[0], node.attrs["dtype"], node.inputs[0].dtype)


_ARITH = {"add": "Add", "sub": "Sub", "mul": "Mul", "pow": "Pow", "maximum": "Max", "minimum": "Min"}
_COMPARE = {"eq": "Equal", "lt": "Less", "le": "LessOrEqual", "gt": "Greater", "ge": "GreaterOrEqual"}


def _arith(op_type: str) -> Lowering:
    def lower(b, node, ins):
        dt = out_of(node).dtype
        return b.op(op_type, casted(b, node, ins, dt), dtype=dt)

    return lower


for _op, _onnx in _ARITH.items():
    lowering(_op)(_arith(_onnx))


def _compare(op_type: str, negate: bool = False) -> Lowering:
    def lower(b, node, ins):
        common = result_dtype(*node.inputs)
        out = b.op(op_type, casted(b, node, ins, common), dtype=torch.bool)
        return b.op("Not", [out], dtype=torch.bool) if negate else out

    return lower


for _op, _onnx in _COMPARE.items():
    lowering(_op)(_compare(_onnx))
lowering("ne")(_compare("Equal", negate=True))


_LOGICAL = {"logical_and": "And", "logical_or": "Or", "logical_xor": "Xor"}


@lowering(*_LOGICAL)
def _logical(b, node, ins):
    args = casted(b, node, ins, torch.bool)
    return b.op(_LOGICAL[node.op], args, dtype=torch.bool)


_BITWISE = {"bitwise_and": ("BitwiseAnd", "And"), "bitwise_or": ("BitwiseOr", "Or"),
            "bitwise_xor": ("BitwiseXor", "Xor"), "bitwise_not": ("BitwiseNot", "Not")}


@lowering(*_BITWISE)
def _bitwise(b, node, ins):
    dt = out_of(node).dtype
    integer, logical = _BITWISE[node.op]
    if dt == torch.bool:
        return b.op(logical, casted(b, node, ins, dt), dtype=dt)
    if b.opset < 18:
        raise OpsetTooLow(f"{node.where()}: {node.op} on {dt} needs ONNX's {integer}, opset 18 or later; "
                          f"export with opset=18", needs=18)
    return b.op(integer, casted(b, node, ins, dt), dtype=dt)


@lowering("div")
def _div(b, node, ins):
    dt = out_of(node).dtype
    mode = node.attrs.get("rounding_mode")
    x, y = casted(b, node, ins, dt)
    if mode is None:
        return b.op("Div", [x, y], dtype=dt)
    if not dt.is_floating_point:
        if mode == "trunc":  # ONNX integer Div truncates toward zero, like C
            return b.op("Div", [x, y], dtype=dt)
        rem = b.op("Mod", [x, y], {"fmod": 0}, dtype=dt)  # sign of the divisor, as Python's %
        return b.op("Div", [b.op("Sub", [x, rem], dtype=dt), y], dtype=dt)
    q = b.op("Div", [x, y], dtype=dt)
    if mode == "floor":
        return b.op("Floor", [q], dtype=dt)
    # trunc: floor for positive quotients, ceil for negative ones
    negative = b.op("Less", [q, scalar(b, 0.0, dt)], dtype=torch.bool)
    return b.op("Where", [negative, b.op("Ceil", [q], dtype=dt), b.op("Floor", [q], dtype=dt)], dtype=dt)


@lowering("where")
def _where(b, node, ins):
    dt = out_of(node).dtype
    cond = b.cast(ins[0], torch.bool, node.inputs[0].dtype)
    a = b.cast(ins[1], dt, node.inputs[1].dtype)
    c = b.cast(ins[2], dt, node.inputs[2].dtype)
    return b.op("Where", [cond, a, c], dtype=dt)
