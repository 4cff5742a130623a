"""One ONNX lowering per canonical op: how each graphopt op is spelled in ONNX operators.

A lowering is `fn(b, node, ins) -> output tensor name(s)`: `b` is the
`OnnxBuilder`, `node` the IR node (its attrs and typed inputs/outputs), `ins`
the ONNX names of its inputs (None for an absent optional input). The
reference for what each op computes is `backends/torch/kernels.py`; every
lowering here matches it numerically, including the corners (ceil-mode
pooling, align_corners, rounding division, softplus's threshold), and is
tested against it in tests/test_onnx_lowering.py.

ONNX wants both operands of arithmetic in one element type, while the IR
follows torch's promotion; lowerings therefore cast inputs to the node's
output dtype (constants are converted in place by the builder).
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

from graphopt.errors import GraphoptError
from graphopt.ir import dims as D
from graphopt.ir.graph import Node
from graphopt.ir.ops import result_dtype
from graphopt.backends.onnx.builder import INT64_MAX, OnnxBuilder
from graphopt.backends.onnx.dtypes import tensor_proto

Lowering = Callable[[OnnxBuilder, Node, list], "str | Sequence[str]"]
LOWERINGS: dict[str, Lowering] = {}


def lowering(*ops: str) -> Callable[[Lowering], Lowering]:
    def wrap(fn: Lowering) -> Lowering:
        for name in ops:
            LOWERINGS[name] = fn
        return fn

    return wrap


def register_lowering(op: str, fn: Lowering, *, replace: bool = False) -> None:
    """Teach the ONNX exporter a (user-registered) op: `fn(builder, node, input_names) -> output name(s)`."""
    if op in LOWERINGS and not replace:
        raise GraphoptError(f"op '{op}' already has an ONNX lowering; pass replace=True to override it")
    LOWERINGS[op] = fn


# ----------------------------------------------------------------- helpers
def _out(node: Node, i: int = 0):
    return node.outputs[i]


def _casted(b: OnnxBuilder, node: Node, ins: list, dtype: torch.dtype) -> list[str]:
    return [b.cast(name, dtype, value.dtype) for name, value in zip(ins, node.inputs)]


def _scalar(b: OnnxBuilder, number, dtype: torch.dtype) -> str:
    return b.const(number, dtype)


def _per_axis(value, n: int) -> list:
    """An attribute given once or per spatial axis, as one entry per axis."""
    if isinstance(value, (list, tuple)):
        return list(value) if len(value) == n else list(value) * (n // max(len(value), 1))
    return [value] * n


def _axes_list(axes, rank: int) -> list[int]:
    return [int(a) % max(rank, 1) for a in axes]


def reduce(b: OnnxBuilder, op_type: str, x: str, axes: Sequence[int] | None, keepdims: bool,
           dtype: torch.dtype) -> str:
    """Reduce* with `axes` as an attribute or an input, whichever the opset wants (None: all axes)."""
    axes_as_input = op_type == "ReduceSum" and b.opset >= 13 or b.opset >= 18
    attrs: dict = {"keepdims": int(keepdims)}
    inputs = [x]
    if axes is not None:
        if axes_as_input:
            inputs.append(b.i64(list(axes)))
        else:
            attrs["axes"] = list(axes)
    return b.op(op_type, inputs, attrs, dtype=dtype)


def reshape(b: OnnxBuilder, x: str, in_shape: Sequence[D.Dim], out_shape: Sequence[D.Dim],
            dtype: torch.dtype) -> str:
    """Reshape to `out_shape`, keeping the shape tensor constant whenever possible.

    A target dim equal to the input dim at the same position is written 0
    ("copy"), and one remaining unknown dim is written -1, so typical dynamic
    reshapes ([batch, seq, 4, 16] from [batch, seq, 64]) need no run-time shape
    arithmetic. A literal 0 in the target needs allowzero, and then every dim
    is given explicitly.
    """
    in_shape = [b.resolve(d) for d in in_shape]
    out_shape = [b.resolve(d) for d in out_shape]
    if D.shapes_equal(in_shape, out_shape):
        return x
    if any(isinstance(d, int) and d == 0 for d in out_shape):
        return b.op("Reshape", [x, b.shape(out_shape)], {"allowzero": 1}, dtype=dtype)
    spec: list = []
    unknown: list[int] = []
    for i, d in enumerate(out_shape):
        if isinstance(d, int):
            spec.append(d)
        elif i < len(in_shape) and D.dims_equal(in_shape[i], d):
            spec.append(0)
        else:
            spec.append(d)
            unknown.append(i)
    if unknown:
        # the most complex unknown dim is the one left for ONNX to infer
        spec[max(unknown, key=lambda i: len(str(spec[i])))] = -1
    return b.op("Reshape", [x, b.shape(spec)], dtype=dtype)


def expand(b: OnnxBuilder, x: str, in_shape: Sequence[D.Dim], out_shape: Sequence[D.Dim], dtype: torch.dtype) -> str:
    """Expand, writing 1 for every target dim the input already has (ONNX Expand broadcasts both ways)."""
    in_shape = [b.resolve(d) for d in in_shape]
    out_shape = [b.resolve(d) for d in out_shape]
    offset = len(out_shape) - len(in_shape)
    spec: list = []
    for i, d in enumerate(out_shape):
        j = i - offset
        spec.append(1 if j >= 0 and D.dims_equal(in_shape[j], d) else d)
    if all(isinstance(d, int) and d == 1 for d in spec) and offset == 0:
        return x
    return b.op("Expand", [x, b.shape(spec)], dtype=dtype)


def neg_inf(b: OnnxBuilder, dtype: torch.dtype) -> str:
    return b.const(float("-inf"), dtype)


# ------------------------------------------------------------- elementwise
_DIRECT_UNARY = {
    "relu": "Relu", "sigmoid": "Sigmoid", "tanh": "Tanh", "exp": "Exp", "log": "Log", "sqrt": "Sqrt",
    "neg": "Neg", "abs": "Abs", "erf": "Erf", "sin": "Sin", "cos": "Cos", "reciprocal": "Reciprocal",
    "hardswish": "HardSwish", "identity": "Identity", "dropout": "Identity",
}


def _direct_unary(op_type: str) -> Lowering:
    def lower(b, node, ins):
        return b.op(op_type, ins[:1], dtype=_out(node).dtype)

    return lower


for _op, _onnx in _DIRECT_UNARY.items():
    lowering(_op)(_direct_unary(_onnx))


@lowering("logical_not")
def _logical_not(b, node, ins):
    x = b.cast(ins[0], torch.bool, node.inputs[0].dtype)
    return b.cast(b.op("Not", [x], dtype=torch.bool), _out(node).dtype, torch.bool)


@lowering("gelu")
def _gelu(b, node, ins):
    x, dt = ins[0], _out(node).dtype
    approximate = node.attrs.get("approximate", "none")
    if b.opset >= 20:
        return b.op("Gelu", [x], {"approximate": approximate}, dtype=dt)
    if approximate == "tanh":  # 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
        cube = b.op("Mul", [b.op("Mul", [x, x], dtype=dt), x], dtype=dt)
        inner = b.op("Add", [x, b.op("Mul", [cube, _scalar(b, 0.044715, dt)], dtype=dt)], dtype=dt)
        t = b.op("Tanh", [b.op("Mul", [inner, _scalar(b, math.sqrt(2.0 / math.pi), dt)], dtype=dt)], dtype=dt)
    else:  # 0.5 x (1 + erf(x / sqrt(2)))
        t = b.op("Erf", [b.op("Mul", [x, _scalar(b, 1.0 / math.sqrt(2.0), dt)], dtype=dt)], dtype=dt)
    one_plus = b.op("Add", [t, _scalar(b, 1.0, dt)], dtype=dt)
    return b.op("Mul", [b.op("Mul", [x, _scalar(b, 0.5, dt)], dtype=dt), one_plus], dtype=dt)


@lowering("silu")
def _silu(b, node, ins):
    dt = _out(node).dtype
    return b.op("Mul", [ins[0], b.op("Sigmoid", [ins[0]], dtype=dt)], dtype=dt)


@lowering("hardsigmoid")
def _hardsigmoid(b, node, ins):
    return b.op("HardSigmoid", ins[:1], {"alpha": 1.0 / 6.0, "beta": 0.5}, dtype=_out(node).dtype)


@lowering("hardtanh")
def _hardtanh(b, node, ins):
    dt = _out(node).dtype
    lo, hi = node.attrs["min_val"], node.attrs["max_val"]
    return b.op("Clip", [ins[0], _scalar(b, lo, dt), _scalar(b, hi, dt)], dtype=dt)


@lowering("clamp")
def _clamp(b, node, ins):
    dt = _out(node).dtype
    lo, hi = node.attrs.get("min"), node.attrs.get("max")
    bounds = [None if v is None else _scalar(b, v, dt) for v in (lo, hi)]
    return b.op("Clip", [ins[0], *bounds], dtype=dt)


@lowering("leaky_relu")
def _leaky_relu(b, node, ins):
    return b.op("LeakyRelu", ins[:1], {"alpha": float(node.attrs["negative_slope"])}, dtype=_out(node).dtype)


@lowering("elu")
def _elu(b, node, ins):
    return b.op("Elu", ins[:1], {"alpha": float(node.attrs["alpha"])}, dtype=_out(node).dtype)


@lowering("softplus")
def _softplus(b, node, ins):
    # torch: x where beta*x > threshold, else log(1 + exp(beta*x)) / beta
    x, dt = ins[0], _out(node).dtype
    beta, threshold = float(node.attrs.get("beta", 1.0)), float(node.attrs.get("threshold", 20.0))
    bx = x if beta == 1.0 else b.op("Mul", [x, _scalar(b, beta, dt)], dtype=dt)
    soft = b.op("Softplus", [bx], dtype=dt)
    if beta != 1.0:
        soft = b.op("Div", [soft, _scalar(b, beta, dt)], dtype=dt)
    linear = b.op("Greater", [bx, _scalar(b, threshold, dt)], dtype=torch.bool)
    return b.op("Where", [linear, x, soft], dtype=dt)


@lowering("mish")
def _mish(b, node, ins):
    dt = _out(node).dtype
    if b.opset >= 18:
        return b.op("Mish", ins[:1], dtype=dt)
    return b.op("Mul", [ins[0], b.op("Tanh", [b.op("Softplus", ins[:1], dtype=dt)], dtype=dt)], dtype=dt)


@lowering("rsqrt")
def _rsqrt(b, node, ins):
    dt = _out(node).dtype
    return b.op("Reciprocal", [b.op("Sqrt", ins[:1], dtype=dt)], dtype=dt)


@lowering("triu", "tril")
def _tri(b, node, ins):
    dt = _out(node).dtype
    work = dt if dt in (torch.float32, torch.float64, torch.int64, torch.bool) else torch.float32
    x = b.cast(ins[0], work, dt)
    out = b.op("Trilu", [x, b.i64(int(node.attrs.get("diagonal", 0)))], {"upper": int(node.op == "triu")}, dtype=work)
    return b.cast(out, dt, work)


@lowering("cumsum")
def _cumsum(b, node, ins):
    dt = _out(node).dtype
    work = dt if dt in (torch.float32, torch.float64, torch.int32, torch.int64) else torch.int64
    x = b.cast(ins[0], work, node.inputs[0].dtype)
    out = b.op("CumSum", [x, b.i64(int(node.attrs["axis"]))], dtype=work)
    return b.cast(out, dt, work)


@lowering("cast")
def _cast(b, node, ins):
    return b.cast(ins[0], node.attrs["dtype"], node.inputs[0].dtype)


# ------------------------------------------------------------------ binary
_ARITH = {"add": "Add", "sub": "Sub", "mul": "Mul", "pow": "Pow", "maximum": "Max", "minimum": "Min"}
_COMPARE = {"eq": "Equal", "lt": "Less", "le": "LessOrEqual", "gt": "Greater", "ge": "GreaterOrEqual"}


def _arith(op_type: str) -> Lowering:
    def lower(b, node, ins):
        dt = _out(node).dtype
        return b.op(op_type, _casted(b, node, ins, dt), dtype=dt)

    return lower


for _op, _onnx in _ARITH.items():
    lowering(_op)(_arith(_onnx))


def _compare(op_type: str, negate: bool = False) -> Lowering:
    def lower(b, node, ins):
        common = result_dtype(*node.inputs)
        out = b.op(op_type, _casted(b, node, ins, common), dtype=torch.bool)
        return b.op("Not", [out], dtype=torch.bool) if negate else out

    return lower


for _op, _onnx in _COMPARE.items():
    lowering(_op)(_compare(_onnx))
lowering("ne")(_compare("Equal", negate=True))


@lowering("logical_and", "logical_or")
def _logical(b, node, ins):
    args = _casted(b, node, ins, torch.bool)
    return b.op("And" if node.op == "logical_and" else "Or", args, dtype=torch.bool)


@lowering("div")
def _div(b, node, ins):
    dt = _out(node).dtype
    mode = node.attrs.get("rounding_mode")
    x, y = _casted(b, node, ins, dt)
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
    negative = b.op("Less", [q, _scalar(b, 0.0, dt)], dtype=torch.bool)
    return b.op("Where", [negative, b.op("Ceil", [q], dtype=dt), b.op("Floor", [q], dtype=dt)], dtype=dt)


@lowering("where")
def _where(b, node, ins):
    dt = _out(node).dtype
    cond = b.cast(ins[0], torch.bool, node.inputs[0].dtype)
    a = b.cast(ins[1], dt, node.inputs[1].dtype)
    c = b.cast(ins[2], dt, node.inputs[2].dtype)
    return b.op("Where", [cond, a, c], dtype=dt)


# --------------------------------------------------------------- dense ops
def _conv_attrs(node: Node, n: int) -> dict:
    stride = _per_axis(node.attrs.get("stride", 1), n)
    pad = _per_axis(node.attrs.get("padding", 0), n)
    dil = _per_axis(node.attrs.get("dilation", 1), n)
    return {"strides": [int(s) for s in stride], "pads": [int(p) for p in pad] * 2,
            "dilations": [int(d) for d in dil], "group": int(node.attrs.get("groups", 1))}


@lowering("conv")
def _conv(b, node, ins):
    w = node.inputs[1]
    attrs = _conv_attrs(node, w.rank - 2)
    attrs["kernel_shape"] = [int(k) for k in w.shape[2:]]
    return b.op("Conv", [i for i in ins[:3] if i is not None], attrs, dtype=_out(node).dtype)


@lowering("conv_transpose")
def _conv_transpose(b, node, ins):
    w = node.inputs[1]
    n = w.rank - 2
    attrs = _conv_attrs(node, n)
    attrs["kernel_shape"] = [int(k) for k in w.shape[2:]]
    opad = [int(p) for p in _per_axis(node.attrs.get("output_padding", 0), n)]
    if any(opad):
        attrs["output_padding"] = opad
    return b.op("ConvTranspose", [i for i in ins[:3] if i is not None], attrs, dtype=_out(node).dtype)


def _transposed_weight(b: OnnxBuilder, node: Node, name: str) -> str:
    """W^T for x @ W^T, as a Transpose node: the file keeps W under its own name, and ONNX Runtime
    folds the transpose into a constant when it loads the model."""
    w = node.inputs[1]
    return b.op("Transpose", [name], {"perm": list(range(w.rank))[::-1]}, dtype=w.dtype)


@lowering("linear")
def _linear(b, node, ins):
    x, w, bias = ins[0], ins[1], ins[2] if len(ins) > 2 else None
    dt = _out(node).dtype
    if node.inputs[0].rank == 2 and node.inputs[1].is_weight:
        return b.op("Gemm", [x, w] + ([bias] if bias else []), {"transB": 1}, dtype=dt)
    y = b.op("MatMul", [x, _transposed_weight(b, node, w)], dtype=dt)
    return b.op("Add", [y, bias], dtype=dt) if bias else y


@lowering("matmul")
def _matmul(b, node, ins):
    dt = _out(node).dtype
    return b.op("MatMul", _casted(b, node, ins, dt), dtype=dt)


@lowering("einsum")
def _einsum(b, node, ins):
    dt = _out(node).dtype
    return b.op("Einsum", _casted(b, node, ins, dt), {"equation": node.attrs["equation"].replace(" ", "")}, dtype=dt)


@lowering("embedding")
def _embedding(b, node, ins):
    return b.op("Gather", [ins[1], ins[0]], {"axis": 0}, dtype=_out(node).dtype)


def _repeat_heads(b: OnnxBuilder, x: str, shape: Sequence[D.Dim], groups: int, dtype: torch.dtype) -> str:
    """torch.repeat_interleave(x, groups, dim=-3): each kv head serves `groups` query heads."""
    lead, heads, s, e = list(shape[:-3]), shape[-3], shape[-2], shape[-1]
    y = reshape(b, x, shape, [*lead, heads, 1, s, e], dtype)
    y = expand(b, y, [*lead, heads, 1, s, e], [*lead, heads, groups, s, e], dtype)
    return reshape(b, y, [*lead, heads, groups, s, e], [*lead, heads * groups, s, e], dtype)


@lowering("sdpa")
def _sdpa(b, node, ins):
    q_v, k_v, v_v = node.inputs[:3]
    mask_v = node.inputs[3] if len(node.inputs) > 3 else None
    q, k, v = ins[:3]
    mask = ins[3] if len(ins) > 3 else None
    dt = _out(node).dtype
    causal = bool(node.attrs.get("is_causal", False))
    scale = node.attrs.get("scale")
    if scale is None:
        e = b.resolve(q_v.shape[-1])
        if not isinstance(e, int):
            raise GraphoptError(f"{node.where()}: sdpa with a symbolic head size needs an explicit scale")
        scale = 1.0 / math.sqrt(e)
    if b.opset >= 23 and b.fused_attention and q_v.rank == k_v.rank == v_v.rank == 4:
        attrs = {"is_causal": int(causal), "scale": float(scale)}
        inputs = [q, k, v] + ([b.cast(mask, dt, mask_v.dtype) if mask_v.dtype != torch.bool else mask] if mask else [])
        return b.op("Attention", inputs, attrs, dtype=dt)
    hq, hk = q_v.shape[-3] if q_v.rank >= 3 else 1, k_v.shape[-3] if k_v.rank >= 3 else 1
    if node.attrs.get("enable_gqa") and not D.dims_equal(hq, hk):
        if not (isinstance(hq, int) and isinstance(hk, int) and hq % hk == 0):
            raise GraphoptError(f"{node.where()}: GQA needs static head counts with q heads a multiple of kv heads")
        k = _repeat_heads(b, k, k_v.shape, hq // hk, dt)
        v = _repeat_heads(b, v, v_v.shape, hq // hk, dt)
    perm = list(range(k_v.rank))
    perm[-1], perm[-2] = perm[-2], perm[-1]
    q_scaled = b.op("Mul", [q, _scalar(b, float(scale), dt)], dtype=dt)
    scores = b.op("MatMul", [q_scaled, b.op("Transpose", [k], {"perm": perm}, dtype=dt)], dtype=dt)
    if causal:
        rows = b.op("Range", [b.i64(0), b.scalar_dim(q_v.shape[-2]), b.i64(1)], dtype=torch.int64)
        cols = b.op("Range", [b.i64(0), b.scalar_dim(k_v.shape[-2]), b.i64(1)], dtype=torch.int64)
        rows = b.op("Unsqueeze", [rows, b.i64([1])], dtype=torch.int64)
        keep = b.op("LessOrEqual", [cols, rows], dtype=torch.bool)  # [L, S]: key j visible to query i if j <= i
        scores = b.op("Where", [keep, scores, neg_inf(b, dt)], dtype=dt)
    if mask is not None:
        if mask_v.dtype == torch.bool:
            scores = b.op("Where", [mask, scores, neg_inf(b, dt)], dtype=dt)
        else:
            scores = b.op("Add", [scores, b.cast(mask, dt, mask_v.dtype)], dtype=dt)
    attn = b.op("Softmax", [scores], {"axis": -1}, dtype=dt)
    return b.op("MatMul", [attn, v], dtype=dt)


# ----------------------------------------------------------- normalisation
def _ones_or(b: OnnxBuilder, name: str | None, shape: Sequence[int], value: float, dtype: torch.dtype) -> str:
    if name is not None:
        return name
    return b.const(torch.full([int(s) for s in shape], value, dtype=dtype), dtype, hint="ones" if value else "zeros")


@lowering("batch_norm")
def _batch_norm(b, node, ins):
    dt = _out(node).dtype
    x, w, bias, mean, var = (list(ins) + [None] * 5)[:5]
    channels = node.inputs[3].shape
    w = _ones_or(b, w, channels, 1.0, dt)
    bias = _ones_or(b, bias, channels, 0.0, dt)
    eps = float(node.attrs.get("eps", 1e-5))
    return b.op("BatchNormalization", [x, w, bias, mean, var], {"epsilon": eps}, dtype=dt)


@lowering("layer_norm")
def _layer_norm(b, node, ins):
    dt = _out(node).dtype
    shape = [int(s) for s in node.attrs["normalized_shape"]]
    w = _ones_or(b, ins[1] if len(ins) > 1 else None, shape, 1.0, dt)
    bias = ins[2] if len(ins) > 2 else None
    return b.op("LayerNormalization", [ins[0], w] + ([bias] if bias else []),
                {"axis": -len(shape), "epsilon": float(node.attrs.get("eps", 1e-5))}, dtype=dt)


@lowering("group_norm")
def _group_norm(b, node, ins):
    # [N, C, *] -> [N, G, -1], InstanceNormalization over the last axis, back to [N, C, *], then the affine
    x_v = node.inputs[0]
    dt = _out(node).dtype
    groups = int(node.attrs["num_groups"])
    eps = float(node.attrs.get("eps", 1e-5))
    grouped = b.op("Reshape", [ins[0], b.i64([0, groups, -1])], dtype=dt)
    normed = b.op("InstanceNormalization", [grouped, _ones_or(b, None, [groups], 1.0, dt),
                                            _ones_or(b, None, [groups], 0.0, dt)], {"epsilon": eps}, dtype=dt)
    y = b.op("Reshape", [normed, b.op("Shape", [ins[0]], dtype=torch.int64)], dtype=dt)
    per_channel = [-1] + [1] * (x_v.rank - 2)
    w, bias = (ins[1] if len(ins) > 1 else None), (ins[2] if len(ins) > 2 else None)
    if w is not None:
        y = b.op("Mul", [y, b.op("Reshape", [w, b.i64(per_channel)], dtype=dt)], dtype=dt)
    if bias is not None:
        y = b.op("Add", [y, b.op("Reshape", [bias, b.i64(per_channel)], dtype=dt)], dtype=dt)
    return y


@lowering("rms_norm")
def _rms_norm(b, node, ins):
    dt = _out(node).dtype
    shape = [int(s) for s in node.attrs["normalized_shape"]]
    eps = node.attrs.get("eps")
    eps = float(torch.finfo(dt).eps if eps is None else eps)
    w = ins[1] if len(ins) > 1 else None
    if b.opset >= 23:
        return b.op("RMSNormalization", [ins[0], _ones_or(b, w, shape, 1.0, dt)],
                    {"axis": -len(shape), "epsilon": eps}, dtype=dt)
    rank = node.inputs[0].rank
    axes = list(range(rank - len(shape), rank))
    ms = reduce(b, "ReduceMean", b.op("Mul", [ins[0], ins[0]], dtype=dt), axes, True, dt)
    inv = b.op("Reciprocal", [b.op("Sqrt", [b.op("Add", [ms, _scalar(b, eps, dt)], dtype=dt)], dtype=dt)], dtype=dt)
    y = b.op("Mul", [ins[0], inv], dtype=dt)
    return b.op("Mul", [y, w], dtype=dt) if w is not None else y


@lowering("softmax", "log_softmax")
def _softmax(b, node, ins):
    op_type = "Softmax" if node.op == "softmax" else "LogSoftmax"
    return b.op(op_type, ins[:1], {"axis": int(node.attrs["axis"])}, dtype=_out(node).dtype)


# -------------------------------------------------------------------- layout
@lowering("reshape")
def _reshape(b, node, ins):
    return reshape(b, ins[0], node.inputs[0].shape, node.attrs["shape"], _out(node).dtype)


@lowering("permute")
def _permute(b, node, ins):
    rank = node.inputs[0].rank
    return b.op("Transpose", ins[:1], {"perm": _axes_list(node.attrs["dims"], rank)}, dtype=_out(node).dtype)


@lowering("expand")
def _expand(b, node, ins):
    return expand(b, ins[0], node.inputs[0].shape, node.attrs["shape"], _out(node).dtype)


@lowering("concat")
def _concat(b, node, ins):
    dt = _out(node).dtype
    return b.op("Concat", _casted(b, node, ins, dt), {"axis": int(node.attrs["axis"])}, dtype=dt)


@lowering("split")
def _split(b, node, ins):
    sizes = list(node.attrs["sizes"])
    dt = node.inputs[0].dtype
    axis = int(node.attrs["axis"])
    outs = b.op("Split", [ins[0], b.shape(sizes)], {"axis": axis}, outputs=len(sizes), dtype=dt)
    return [outs] if len(sizes) == 1 else outs


@lowering("slice")
def _slice(b, node, ins):
    x_v = node.inputs[0]
    axis = int(node.attrs["axis"]) % x_v.rank
    start, end, step = node.attrs["start"], node.attrs["end"], node.attrs.get("step", 1)
    size = b.resolve(x_v.shape[axis])
    end = b.resolve(D.canon(end))
    ends = b.i64([INT64_MAX]) if D.dims_equal(end, size) or (isinstance(end, int) and end >= INT64_MAX) else b.dim(end)
    return b.op("Slice", [ins[0], b.dim(start), ends, b.i64([axis]), b.dim(step)], dtype=_out(node).dtype)


@lowering("select")
def _select(b, node, ins):
    return b.op("Gather", [ins[0], b.i64(int(node.attrs["index"]))], {"axis": int(node.attrs["axis"])},
                dtype=_out(node).dtype)


@lowering("index_select")
def _index_select(b, node, ins):
    return b.op("Gather", ins[:2], {"axis": int(node.attrs["axis"])}, dtype=_out(node).dtype)


_PAD_MODES = {"constant": "constant", "reflect": "reflect", "replicate": "edge", "circular": "wrap"}


@lowering("pad")
def _pad(b, node, ins):
    x_v = node.inputs[0]
    dt = _out(node).dtype
    pad = [int(p) for p in node.attrs["pad"]]
    mode = node.attrs.get("mode", "constant")
    if mode not in _PAD_MODES or (mode == "circular" and b.opset < 19):
        raise GraphoptError(f"{node.where()}: pad mode '{mode}' has no ONNX equivalent at opset {b.opset}")
    begins, ends = [0] * x_v.rank, [0] * x_v.rank
    for i in range(len(pad) // 2):
        axis = x_v.rank - 1 - i
        begins[axis], ends[axis] = pad[2 * i], pad[2 * i + 1]
    inputs = [ins[0], b.i64(begins + ends)]
    if mode == "constant":
        inputs.append(_scalar(b, node.attrs.get("value", 0.0) or 0, dt))
    return b.op("Pad", inputs, {"mode": _PAD_MODES[mode]}, dtype=dt)


# ------------------------------------------------------------------- pooling
def _pool_geometry(node: Node) -> tuple[list[int], list[int], list[int], list[int]]:
    kernel = [int(k) for k in node.attrs["kernel"]]
    n = len(kernel)
    stride = [int(s) for s in _per_axis(node.attrs.get("stride") or kernel, n)]
    pad = [int(p) for p in _per_axis(node.attrs.get("padding", 0), n)]
    dil = [int(d) for d in _per_axis(node.attrs.get("dilation", 1), n)]
    return kernel, stride, pad, dil


def _ceil_extra(node: Node, kernel, stride, pad, dil) -> list[int] | None:
    """Right padding that makes floor-mode pooling produce torch's ceil-mode output length.

    torch drops a last window that would start in the right padding; ONNX's
    shape inference does not (and runtimes have differed), so padding
    explicitly and pooling in floor mode gives torch's lengths on every
    runtime and checker. Needs static spatial dims.
    """
    x = node.inputs[0]
    out = node.outputs[0]
    n = len(kernel)
    extra = []
    for L, o, k, s, p, d in zip(x.shape[-n:], out.shape[-n:], kernel, stride, pad, dil):
        if not (isinstance(L, int) and isinstance(o, int)):
            return None
        floor_len = (L + 2 * p - d * (k - 1) - 1) // s + 1
        extra.append((o - floor_len) * s)
    return extra


def _pad_for_ceil(b: OnnxBuilder, node: Node, x: str, kernel, pad, extra, fill: float, dt) -> tuple[str, list[int]]:
    """Input and `pads` attribute for a floor-mode pool giving torch's ceil-mode windows.

    The extra right padding goes into the pool's `pads` when it stays below the
    kernel size (ONNX Runtime rejects more); otherwise an explicit Pad node
    filled with `fill` comes first and the pool gets no padding.
    """
    n = len(kernel)
    right = [p + e for p, e in zip(pad, extra)]
    if all(r < k for r, k in zip(right, kernel)):
        return x, pad + right
    rank = node.inputs[0].rank
    pads = [0] * (rank - n) + list(pad) + [0] * (rank - n) + right
    padded = b.op("Pad", [x, b.i64(pads), _scalar(b, fill, dt)], {"mode": "constant"}, dtype=dt)
    return padded, [0] * (2 * n)


@lowering("max_pool")
def _max_pool(b, node, ins):
    dt = _out(node).dtype
    kernel, stride, pad, dil = _pool_geometry(node)
    attrs = {"kernel_shape": kernel, "strides": stride, "pads": pad * 2, "dilations": dil}
    x = ins[0]
    if node.attrs.get("ceil_mode"):
        extra = _ceil_extra(node, kernel, stride, pad, dil)
        if extra is None:  # symbolic spatial dims: rely on the runtime's ceil_mode
            attrs["ceil_mode"] = 1
        elif any(extra):
            x, attrs["pads"] = _pad_for_ceil(b, node, x, kernel, pad, extra, float("-inf"), dt)
    return b.op("MaxPool", [x], attrs, dtype=dt)


@lowering("avg_pool")
def _avg_pool(b, node, ins):
    dt = _out(node).dtype
    kernel, stride, pad, _ = _pool_geometry(node)
    include_pad = bool(node.attrs.get("count_include_pad", True))
    if node.attrs.get("ceil_mode") or node.attrs.get("divisor_override"):
        return _avg_pool_by_sum(b, node, ins[0], kernel, stride, pad, include_pad, dt)
    attrs = {"kernel_shape": kernel, "strides": stride, "pads": pad * 2, "count_include_pad": int(include_pad)}
    return b.op("AveragePool", ins[:1], attrs, dtype=dt)


def _avg_pool_by_sum(b: OnnxBuilder, node: Node, x: str, kernel, stride, pad, include_pad: bool, dt) -> str:
    """Average pooling as window sum / divisor, with torch's divisor rules.

    In ceil mode torch counts padding only up to the padded edge (a window
    hanging past it is divided by fewer elements), and divisor_override
    replaces the count; ONNX AveragePool has neither rule. The sum is exact
    from a count_include_pad AveragePool whose windows all lie inside the
    (explicitly extended) padding, times the window size; the per-window
    divisors are computed here, so the spatial dims must be static.
    """
    n = len(kernel)
    spatial = [b.resolve(d) for d in node.inputs[0].shape[-n:]]
    out_spatial = [b.resolve(d) for d in node.outputs[0].shape[-n:]]
    extra = _ceil_extra(node, kernel, stride, pad, [1] * n) if node.attrs.get("ceil_mode") else [0] * n
    if extra is None or not all(isinstance(d, int) for d in spatial + out_spatial):
        raise GraphoptError(f"{node.where()}: ceil-mode or divisor_override average pooling needs static spatial "
                            "dims to export to ONNX")
    x, pads = _pad_for_ceil(b, node, x, kernel, pad, extra, 0.0, dt)
    attrs = {"kernel_shape": kernel, "strides": stride, "pads": pads, "count_include_pad": 1}
    total = b.op("Mul", [b.op("AveragePool", [x], attrs, dtype=dt), _scalar(b, float(math.prod(kernel)), dt)], dtype=dt)
    divisor = node.attrs.get("divisor_override")
    if divisor:
        return b.op("Div", [total, _scalar(b, float(divisor), dt)], dtype=dt)
    counts = _window_counts(spatial, kernel, stride, pad, extra, include_pad)
    if list(counts.shape) != out_spatial:
        raise GraphoptError(f"{node.where()}: pooling window count {list(counts.shape)} != output {out_spatial}")
    return b.op("Div", [total, b.const(counts.to(dt), dt, hint="pool_count")], dtype=dt)


def _window_counts(spatial, kernel, stride, pad, extra, include_pad: bool) -> torch.Tensor:
    """How many elements torch divides each window's sum by: those inside the input, or inside input + padding."""
    F = torch.nn.functional
    ones = torch.ones([1, 1, *spatial], dtype=torch.float64)
    if include_pad:  # the padding counts, what lies past it does not
        ones = F.pad(ones, [q for p in reversed(pad) for q in (p, p)], value=1.0)
        lo = [0] * len(pad)
    else:
        lo = list(pad)
    widths = [q for p, e in zip(reversed(lo), reversed(extra)) for q in (p, p + e)]
    padded = F.pad(ones, widths)
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[len(kernel)]
    return conv(padded, torch.ones([1, 1, *kernel], dtype=torch.float64), stride=stride)[0, 0]


def _adaptive(b: OnnxBuilder, node: Node, x: str, reduce_op: str, pool_op: str, global_op: str) -> str:
    x_v = node.inputs[0]
    dt = _out(node).dtype
    size = list(node.attrs["output_size"])
    n = len(size)
    if x_v.rank != n + 2:
        raise GraphoptError(f"{node.where()}: adaptive pooling of a rank-{x_v.rank} input is not exported "
                            "(ONNX pooling needs [N, C, *spatial])")
    spatial = [b.resolve(d) for d in x_v.shape[2:]]
    target = [spatial[i] if s is None else int(s) for i, s in enumerate(size)]
    if all(isinstance(t, int) and t == 1 for t in target):
        return b.op(global_op, [x], dtype=dt)
    if not all(isinstance(L, int) for L, s in zip(spatial, size) if s is not None):
        raise GraphoptError(f"{node.where()}: adaptive pooling over a symbolic spatial dim cannot be exported")
    if all(s is None or L % s == 0 for L, s in zip(spatial, size)):
        kernel = [1 if s is None else L // s for L, s in zip(spatial, size)]
        return b.op(pool_op, [x], {"kernel_shape": kernel, "strides": kernel}, dtype=dt)
    # uneven bins: pool one axis at a time (bins are rectangles, so this is exact)
    y = x
    for i, (L, s) in enumerate(zip(spatial, size)):
        if s is None or L == s:
            continue
        axis = 2 + i
        pieces = []
        for j in range(s):
            lo, hi = (j * L) // s, -((-(j + 1) * L) // s)
            part = b.op("Slice", [y, b.i64([lo]), b.i64([hi]), b.i64([axis])], dtype=dt)
            pieces.append(reduce(b, reduce_op, part, [axis], True, dt))
        y = b.op("Concat", pieces, {"axis": axis}, dtype=dt)
    return y


@lowering("adaptive_avg_pool")
def _adaptive_avg(b, node, ins):
    return _adaptive(b, node, ins[0], "ReduceMean", "AveragePool", "GlobalAveragePool")


@lowering("adaptive_max_pool")
def _adaptive_max(b, node, ins):
    return _adaptive(b, node, ins[0], "ReduceMax", "MaxPool", "GlobalMaxPool")


@lowering("resize")
def _resize(b, node, ins):
    x_v = node.inputs[0]
    dt = _out(node).dtype
    mode = node.attrs.get("mode", "nearest")
    align = bool(node.attrs.get("align_corners"))
    if mode == "nearest":  # torch: src = floor(dst * in / out)
        attrs = {"mode": "nearest", "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"}
    elif mode == "nearest-exact":  # torch: src = floor((dst + 0.5) * in / out)
        attrs = {"mode": "nearest", "coordinate_transformation_mode": "half_pixel", "nearest_mode": "round_prefer_ceil"}
    elif mode in ("linear", "bilinear", "trilinear", "bicubic"):
        attrs = {"mode": "cubic" if mode == "bicubic" else "linear",
                 "coordinate_transformation_mode": "align_corners" if align else "half_pixel"}
        if mode == "bicubic":
            attrs["cubic_coeff_a"] = -0.75
    else:
        raise GraphoptError(f"{node.where()}: resize mode '{mode}' has no ONNX equivalent")
    size, scale = node.attrs.get("size"), node.attrs.get("scale_factor")
    n = x_v.rank - 2
    if size is not None:
        sizes = b.shape([*x_v.shape[:2], *size])
        return b.op("Resize", [ins[0], "", "", sizes], attrs, dtype=dt)
    scales = [1.0, 1.0] + [float(s) for s in _per_axis(scale, n)]
    return b.op("Resize", [ins[0], "", b.const(scales, torch.float32, hint="scales")], attrs, dtype=dt)


# ---------------------------------------------------------------- reductions
_REDUCE = {"mean": "ReduceMean", "sum": "ReduceSum", "amax": "ReduceMax", "amin": "ReduceMin", "prod": "ReduceProd"}


def _reduce_lowering(op_type: str) -> Lowering:
    def lower(b, node, ins):
        dt = _out(node).dtype
        x_v = node.inputs[0]
        work = dt if dt != torch.bool else torch.int32
        x = b.cast(ins[0], work, x_v.dtype)
        axes = node.attrs.get("axes")
        axes = None if axes is None else _axes_list(axes, x_v.rank)
        out = reduce(b, op_type, x, axes, bool(node.attrs.get("keepdim", False)), work)
        return b.cast(out, dt, work)

    return lower


for _op, _onnx in _REDUCE.items():
    lowering(_op)(_reduce_lowering(_onnx))


@lowering("any", "all")
def _any_all(b, node, ins):
    x = b.cast(b.cast(ins[0], torch.bool, node.inputs[0].dtype), torch.int32, torch.bool)
    axes = node.attrs.get("axes")
    axes = None if axes is None else _axes_list(axes, node.inputs[0].rank)
    out = reduce(b, "ReduceMax" if node.op == "any" else "ReduceMin", x, axes,
                 bool(node.attrs.get("keepdim", False)), torch.int32)
    return b.cast(out, torch.bool, torch.int32)


@lowering("argmax", "argmin")
def _argmax(b, node, ins):
    op_type = "ArgMax" if node.op == "argmax" else "ArgMin"
    axes = node.attrs.get("axes")
    x = ins[0]
    if axes is None:
        x = b.op("Reshape", [x, b.i64([-1])], dtype=node.inputs[0].dtype)
        return b.op(op_type, [x], {"axis": 0, "keepdims": 0}, dtype=torch.int64)
    axis = _axes_list(axes, node.inputs[0].rank)[0]
    return b.op(op_type, [x], {"axis": axis, "keepdims": int(bool(node.attrs.get("keepdim", False)))},
                dtype=torch.int64)


@lowering("var")
def _var(b, node, ins):
    dt = _out(node).dtype
    x_v = node.inputs[0]
    axes = node.attrs.get("axes")
    axes = list(range(x_v.rank)) if axes is None else _axes_list(axes, x_v.rank)
    keep = bool(node.attrs.get("keepdim", False))
    correction = node.attrs.get("correction", 1)
    correction = 1 if correction is None else correction
    mean = reduce(b, "ReduceMean", ins[0], axes, True, dt)
    diff = b.op("Sub", [ins[0], mean], dtype=dt)
    total = reduce(b, "ReduceSum", b.op("Mul", [diff, diff], dtype=dt), axes, keep, dt)
    count = D.prod(x_v.shape[a] for a in axes) - correction
    denom = b.cast(b.scalar_dim(count), dt, torch.int64)
    return b.op("Div", [total, denom], dtype=dt)


# ------------------------------------------------------------------ creation
@lowering("full")
def _full(b, node, ins):
    dt = node.attrs["dtype"]
    shape = b.shape(node.attrs["shape"])
    value = node.attrs["value"]
    if not isinstance(value, (bool, int, float)):  # a symbolic dim used as a value
        scalar = b.cast(b.scalar_dim(value), dt, torch.int64)
        return b.op("Expand", [scalar, shape], dtype=dt)
    fill = tensor_proto("value", torch.tensor([value], dtype=dt))
    return b.op("ConstantOfShape", [shape], {"value": fill}, dtype=dt)


@lowering("arange")
def _arange(b, node, ins):
    dt = node.attrs["dtype"]
    work = dt if dt in (torch.float32, torch.float64, torch.int16, torch.int32, torch.int64) else torch.float32
    parts = []
    for key, default in (("start", 0), ("end", None), ("step", 1)):
        v = node.attrs.get(key, default)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            parts.append(b.const(v, work))
        else:
            parts.append(b.cast(b.scalar_dim(v), work, torch.int64))
    return b.cast(b.op("Range", parts, dtype=work), dt, work)

