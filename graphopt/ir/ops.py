"""The canonical op set: each op's inputs, attributes and shape rule, in one registry.

Front-ends map framework operators onto these ops; passes and backends only
ever see these. An op is registered with `@op(...)` next to its shape rule, so
the documentation in docs/ir.md is generated from the same table that the
verifier and `Graph.create_node` use (`python -m graphopt.ir.ops` prints it).
Users add ops for their own layers with `register_op`.
"""

from __future__ import annotations

import string
import sys
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from graphopt.errors import GraphoptError, ShapeError
from graphopt.ir import dims as D
from graphopt.ir.graph import Node

TensorType = tuple  # (shape tuple, torch.dtype)
ShapeRule = Callable[[Node], "list[TensorType]"]


@dataclass(frozen=True)
class OpDef:
    """How one canonical op is called and how its output types follow from its inputs."""

    name: str
    rule: ShapeRule
    inputs: str  # e.g. "x, weight, bias?" ("?" optional, "*" variadic)
    attrs: dict[str, str] = field(default_factory=dict)  # attribute -> meaning
    shape_doc: str = ""
    category: str = "other"
    doc: str = ""


OPS: dict[str, OpDef] = {}


def register_op(opdef: OpDef, *, replace: bool = False) -> OpDef:
    """Add an op to the canonical set (a user's own layer, for instance)."""
    if opdef.name in OPS and not replace:
        raise GraphoptError(f"op '{opdef.name}' is already registered; pass replace=True to override it")
    OPS[opdef.name] = opdef
    return opdef


def op(name: str, inputs: str, *, attrs: dict[str, str] | None = None, shape: str = "", category: str = "other", doc: str = ""):
    def wrap(rule: ShapeRule) -> ShapeRule:
        register_op(OpDef(name, rule, inputs, dict(attrs or {}), shape, category, doc))
        return rule

    return wrap


def get_op(name: str) -> OpDef:
    try:
        return OPS[name]
    except KeyError:
        raise GraphoptError(
            f"op '{name}' is not in the canonical op set; register it with graphopt.ir.ops.register_op"
        ) from None


def infer_types(node: Node) -> list[TensorType]:
    """Output (shape, dtype) pairs of `node`, from its op's shape rule."""
    opdef = get_op(node.op)
    try:
        return [(tuple(D.canon(d) for d in s), t) for s, t in opdef.rule(node)]
    except (ShapeError, GraphoptError):
        raise
    except Exception as exc:  # a rule tripping over bad inputs is a shape error of that node
        raise ShapeError(f"shape rule of {node.where()} failed: {type(exc).__name__}: {exc}") from exc


# ------------------------------------------------------------------ helpers
def _in(node: Node, i: int):
    value = node.inputs[i] if i < len(node.inputs) else None
    if value is None:
        raise ShapeError(f"{node.where()}: required input {i} is missing")
    return value


def _norm_axis(axis: int, rank: int) -> int:
    if not -max(rank, 1) <= axis < max(rank, 1):
        raise ShapeError(f"axis {axis} out of range for rank {rank}")
    return axis % max(rank, 1)


def broadcast(*shapes: Sequence[D.Dim]) -> tuple:
    rank = max(len(s) for s in shapes)
    out = []
    for i in range(rank):
        dim: D.Dim = 1
        for s in shapes:
            j = i - (rank - len(s))
            if j < 0:
                continue
            d = s[j]
            if isinstance(d, int) and d == 1:
                continue
            if isinstance(dim, int) and dim == 1:
                dim = d
            elif not D.dims_equal(dim, d) and isinstance(dim, int) and isinstance(d, int):
                raise ShapeError(f"shapes {[list(s) for s in shapes]} do not broadcast")
            elif not isinstance(d, int):
                dim = d if isinstance(dim, int) and dim == 1 else dim
        out.append(dim)
    return tuple(out)


def _meta(value) -> torch.Tensor:
    return torch.empty((1,) * value.rank, dtype=value.dtype, device="meta")


def result_dtype(*values) -> torch.dtype:
    """torch's type promotion over the inputs (0-d tensors count as wrapped scalars)."""
    result = _meta(values[0])
    for value in values[1:]:
        other = _meta(value)
        dtype = torch.result_type(result, other)
        result = torch.empty((1,) * max(result.dim(), other.dim()), dtype=dtype, device="meta")
    return result.dtype


def _same(node: Node) -> list[TensorType]:
    x = _in(node, 0)
    return [(x.shape, x.dtype)]


def _pair_list(value, n: int) -> list:
    if isinstance(value, (list, tuple)):
        return list(value) if len(value) == n else list(value) * (n // len(value))
    return [value] * n


# ---------------------------------------------------------------- elementwise
_UNARY = {
    "relu": ({}, "max(x, 0)"),
    "gelu": ({"approximate": "'none' or 'tanh'"}, "Gaussian error linear unit"),
    "silu": ({}, "x * sigmoid(x)"),
    "sigmoid": ({}, "1 / (1 + exp(-x))"),
    "tanh": ({}, "hyperbolic tangent"),
    "hardswish": ({}, "x * relu6(x + 3) / 6"),
    "hardsigmoid": ({}, "relu6(x + 3) / 6"),
    "hardtanh": ({"min_val": "lower bound", "max_val": "upper bound"}, "clamp(x, min_val, max_val); relu6 is hardtanh(0, 6)"),
    "leaky_relu": ({"negative_slope": "slope for x < 0"}, "leaky ReLU"),
    "elu": ({"alpha": "scale of the negative part"}, "exponential linear unit"),
    "softplus": ({"beta": "sharpness", "threshold": "linear above this"}, "log(1 + exp(beta x)) / beta"),
    "mish": ({}, "x * tanh(softplus(x))"),
    "exp": ({}, "e^x"),
    "log": ({}, "natural log"),
    "sqrt": ({}, "square root"),
    "rsqrt": ({}, "1 / sqrt(x)"),
    "neg": ({}, "-x"),
    "abs": ({}, "|x|"),
    "erf": ({}, "error function"),
    "sin": ({}, "sine"),
    "cos": ({}, "cosine"),
    "reciprocal": ({}, "1 / x"),
    "clamp": ({"min": "lower bound or None", "max": "upper bound or None"}, "clamp to [min, max]"),
    "dropout": ({"p": "drop probability (identity at inference)"}, "identity at inference; training drops with probability p"),
    "identity": ({}, "x"),
    "logical_not": ({}, "boolean not"),
    "triu": ({"diagonal": "diagonal offset"}, "upper triangle of the last two axes, zero elsewhere"),
    "tril": ({"diagonal": "diagonal offset"}, "lower triangle of the last two axes, zero elsewhere"),
    "cumsum": ({"axis": "axis to accumulate along"}, "running sum along axis"),
}
for _name, (_attrs, _doc) in _UNARY.items():
    op(_name, "x", attrs=_attrs, shape="same as x", category="elementwise", doc=_doc)(_same)

ELEMENTWISE_UNARY = frozenset(_UNARY) - {"triu", "tril", "cumsum"}

_BINARY = {
    "add": "a + b",
    "sub": "a - b",
    "mul": "a * b",
    "div": "a / b (attr rounding_mode: None, 'trunc' or 'floor')",
    "pow": "a ** b",
    "maximum": "elementwise max",
    "minimum": "elementwise min",
}
_COMPARE = {"eq": "a == b", "ne": "a != b", "lt": "a < b", "le": "a <= b", "gt": "a > b", "ge": "a >= b",
            "logical_and": "a and b", "logical_or": "a or b"}


def _binary(node: Node) -> list[TensorType]:
    a, b = _in(node, 0), _in(node, 1)
    dtype = result_dtype(a, b)
    if node.op == "div" and not node.attrs.get("rounding_mode") and not dtype.is_floating_point:
        dtype = torch.get_default_dtype()
    return [(broadcast(a.shape, b.shape), dtype)]


def _compare(node: Node) -> list[TensorType]:
    a, b = _in(node, 0), _in(node, 1)
    return [(broadcast(a.shape, b.shape), torch.bool)]


for _name, _doc in _BINARY.items():
    op(_name, "a, b", attrs={"rounding_mode": "None, 'trunc' or 'floor'"} if _name == "div" else {},
       shape="broadcast(a, b); dtype by torch promotion", category="binary", doc=_doc)(_binary)
for _name, _doc in _COMPARE.items():
    op(_name, "a, b", shape="broadcast(a, b), bool", category="binary", doc=_doc)(_compare)
ELEMENTWISE_BINARY = frozenset(_BINARY) | frozenset(_COMPARE)


@op("where", "cond, a, b", shape="broadcast(cond, a, b)", category="elementwise", doc="a where cond else b")
def _where(node: Node) -> list[TensorType]:
    c, a, b = _in(node, 0), _in(node, 1), _in(node, 2)
    return [(broadcast(c.shape, a.shape, b.shape), result_dtype(a, b))]


@op("cast", "x", attrs={"dtype": "target dtype"}, shape="same as x, dtype attr", category="elementwise",
    doc="convert the element type")
def _cast(node: Node) -> list[TensorType]:
    x = _in(node, 0)
    return [(x.shape, node.attrs["dtype"])]


# --------------------------------------------------------------- dense ops
_CONV_ATTRS = {
    "stride": "per spatial axis",
    "padding": "per spatial axis, symmetric",
    "dilation": "per spatial axis",
    "groups": "channel groups (groups == C_in == C_out: depthwise)",
}


@op("conv", "x, weight, bias?", attrs=_CONV_ATTRS,
    shape="[N, C_out, floor((L + 2p - d(k-1) - 1) / s) + 1 ...]; weight [C_out, C_in/groups, k...]",
    category="dense", doc="N-d convolution (1-d, 2-d or 3-d from the weight rank)")
def _conv(node: Node) -> list[TensorType]:
    x, w = _in(node, 0), _in(node, 1)
    n = w.rank - 2
    stride, pad, dil = (_pair_list(node.attrs.get(k, d), n) for k, d in (("stride", 1), ("padding", 0), ("dilation", 1)))
    groups = node.attrs.get("groups", 1)
    if x.rank != n + 2:
        raise ShapeError(f"{node.where()}: input rank {x.rank} does not fit a {n}-d weight")
    cin = x.shape[1]
    if isinstance(cin, int) and cin != w.shape[1] * groups:
        raise ShapeError(f"{node.where()}: input has {cin} channels, weight expects {w.shape[1]} x {groups} groups")
    spatial = [
        D.floordiv(L + 2 * p - d * (k - 1) - 1, s) + 1
        for L, p, d, k, s in zip(x.shape[2:], pad, dil, w.shape[2:], stride)
    ]
    return [((x.shape[0], w.shape[0], *spatial), x.dtype)]


@op("conv_transpose", "x, weight, bias?", attrs={**_CONV_ATTRS, "output_padding": "per spatial axis"},
    shape="[N, C_out, (L-1)s - 2p + d(k-1) + output_padding + 1 ...]; weight [C_in, C_out/groups, k...]",
    category="dense", doc="transposed N-d convolution")
def _conv_transpose(node: Node) -> list[TensorType]:
    x, w = _in(node, 0), _in(node, 1)
    n = w.rank - 2
    stride, pad, dil, opad = (
        _pair_list(node.attrs.get(k, d), n)
        for k, d in (("stride", 1), ("padding", 0), ("dilation", 1), ("output_padding", 0))
    )
    groups = node.attrs.get("groups", 1)
    spatial = [
        (L - 1) * s - 2 * p + d * (k - 1) + op_ + 1
        for L, s, p, d, k, op_ in zip(x.shape[2:], stride, pad, dil, w.shape[2:], opad)
    ]
    return [((x.shape[0], w.shape[1] * groups, *spatial), x.dtype)]


@op("linear", "x, weight, bias?", shape="[..., out] with weight [out, in]", category="dense", doc="x @ weight.T + bias")
def _linear(node: Node) -> list[TensorType]:
    x, w = _in(node, 0), _in(node, 1)
    if isinstance(x.shape[-1], int) and x.shape[-1] != w.shape[1]:
        raise ShapeError(f"{node.where()}: input features {x.shape[-1]} != weight in-features {w.shape[1]}")
    return [((*x.shape[:-1], w.shape[0]), x.dtype)]


@op("matmul", "a, b", shape="torch.matmul: batch axes broadcast, [.., n, k] @ [.., k, m] -> [.., n, m]",
    category="dense", doc="matrix product")
def _matmul(node: Node) -> list[TensorType]:
    a, b = _in(node, 0), _in(node, 1)
    sa, sb = list(a.shape), list(b.shape)
    if len(sa) == 1 and len(sb) == 1:
        return [((), result_dtype(a, b))]
    squeeze_a, squeeze_b = len(sa) == 1, len(sb) == 1
    if squeeze_a:
        sa = [1] + sa
    if squeeze_b:
        sb = sb + [1]
    if isinstance(sa[-1], int) and isinstance(sb[-2], int) and sa[-1] != sb[-2]:
        raise ShapeError(f"{node.where()}: contraction sizes {sa[-1]} and {sb[-2]} differ")
    batch = broadcast(sa[:-2], sb[:-2])
    out = [*batch, sa[-2], sb[-1]]
    if squeeze_a:
        out.pop(-2)
    if squeeze_b:
        out.pop(-1)
    return [(tuple(out), result_dtype(a, b))]


@op("einsum", "*operands", attrs={"equation": "einsum equation, e.g. 'bhqd,bhkd->bhqk'"},
    shape="from the equation", category="dense", doc="Einstein summation")
def _einsum(node: Node) -> list[TensorType]:
    eq = node.attrs["equation"].replace(" ", "")
    lhs, arrow, rhs = eq.partition("->")
    terms = lhs.split(",")
    sizes: dict[str, D.Dim] = {}
    ell: tuple = ()
    for term, value in zip(terms, node.inputs):
        shape = list(value.shape)
        if "..." in term:
            pre, post = term.split("...")
            n_ell = len(shape) - len(pre) - len(post)
            ell = broadcast(ell, shape[len(pre):len(pre) + n_ell])
            shape = shape[:len(pre)] + shape[len(pre) + n_ell:]
            term = pre + post
        for ch, d in zip(term, shape):
            if ch not in sizes or (isinstance(sizes[ch], int) and sizes[ch] == 1):
                sizes[ch] = d
    if not arrow:
        letters = sorted(ch for ch in set("".join(terms)) if ch in string.ascii_letters and "".join(terms).count(ch) == 1)
        rhs = ("..." if ell else "") + "".join(letters)
    out: list = []
    if "..." in rhs:
        pre, post = rhs.split("...")
        out = [sizes[c] for c in pre] + list(ell) + [sizes[c] for c in post]
    else:
        out = [sizes[c] for c in rhs]
    return [(tuple(out), result_dtype(*node.inputs))]


@op("embedding", "indices, weight", attrs={"padding_idx": "row that gets no gradient (or None)"},
    shape="indices.shape + [weight.shape[1]]", category="dense", doc="row lookup in weight")
def _embedding(node: Node) -> list[TensorType]:
    idx, w = _in(node, 0), _in(node, 1)
    return [((*idx.shape, w.shape[1]), w.dtype)]


@op("sdpa", "q, k, v, mask?", attrs={"is_causal": "apply a causal mask", "scale": "score scale or None (1/sqrt(d))",
                                      "enable_gqa": "k/v heads are shared by groups of q heads"},
    shape="q.shape[:-1] + [v.shape[-1]]", category="attention",
    doc="scaled dot-product attention softmax(q k^T * scale + mask) v, kept as one op")
def _sdpa(node: Node) -> list[TensorType]:
    q, v = _in(node, 0), _in(node, 2)
    return [((*q.shape[:-1], v.shape[-1]), q.dtype)]


# ------------------------------------------------------------- normalisation
@op("batch_norm", "x, weight?, bias?, running_mean, running_var", attrs={"eps": "epsilon", "momentum": "for training"},
    shape="same as x; channel axis 1", category="norm", doc="inference batch norm with running statistics")
def _batch_norm(node: Node) -> list[TensorType]:
    return _same(node)


@op("layer_norm", "x, weight?, bias?", attrs={"normalized_shape": "trailing axes normalised", "eps": "epsilon"},
    shape="same as x", category="norm", doc="layer norm over the trailing normalized_shape axes")
def _layer_norm(node: Node) -> list[TensorType]:
    return _same(node)


@op("group_norm", "x, weight?, bias?", attrs={"num_groups": "channel groups", "eps": "epsilon"},
    shape="same as x; channel axis 1", category="norm", doc="group norm")
def _group_norm(node: Node) -> list[TensorType]:
    return _same(node)


@op("rms_norm", "x, weight?", attrs={"normalized_shape": "trailing axes normalised", "eps": "epsilon or None"},
    shape="same as x", category="norm", doc="x / sqrt(mean(x^2) + eps) * weight")
def _rms_norm(node: Node) -> list[TensorType]:
    return _same(node)


@op("softmax", "x", attrs={"axis": "axis"}, shape="same as x", category="norm", doc="softmax along axis")
def _softmax(node: Node) -> list[TensorType]:
    return _same(node)


@op("log_softmax", "x", attrs={"axis": "axis"}, shape="same as x", category="norm", doc="log of softmax along axis")
def _log_softmax(node: Node) -> list[TensorType]:
    return _same(node)


# -------------------------------------------------------------- layout ops
@op("reshape", "x", attrs={"shape": "target shape; dims may be symbolic, never -1"},
    shape="the shape attr (element counts must agree)", category="layout", doc="view/reshape/flatten/(un)squeeze")
def _reshape(node: Node) -> list[TensorType]:
    x = _in(node, 0)
    shape = tuple(node.attrs["shape"])
    if any(isinstance(d, int) and d < 0 for d in shape):
        raise ShapeError(f"{node.where()}: reshape target {list(shape)} has a negative dim; resolve it first")
    if D.shape_is_static(x.shape) and D.shape_is_static(shape) and D.prod(x.shape) != D.prod(shape):
        raise ShapeError(f"{node.where()}: cannot reshape {list(x.shape)} into {list(shape)}")
    return [(shape, x.dtype)]


@op("permute", "x", attrs={"dims": "new order of the axes"}, shape="x.shape permuted by dims", category="layout",
    doc="permute/transpose")
def _permute(node: Node) -> list[TensorType]:
    x = _in(node, 0)
    dims = node.attrs["dims"]
    if sorted(d % max(x.rank, 1) for d in dims) != list(range(x.rank)):
        raise ShapeError(f"{node.where()}: dims {dims} are not a permutation of rank {x.rank}")
    return [(tuple(x.shape[d] for d in dims), x.dtype)]


@op("expand", "x", attrs={"shape": "target shape (dims may be symbolic)"}, shape="the shape attr", category="layout",
    doc="broadcast x to shape without copying")
def _expand(node: Node) -> list[TensorType]:
    x = _in(node, 0)
    return [(tuple(node.attrs["shape"]), x.dtype)]


@op("concat", "*xs", attrs={"axis": "axis"}, shape="inputs agree except on axis, which adds up", category="layout",
    doc="torch.cat")
def _concat(node: Node) -> list[TensorType]:
    xs = [v for v in node.inputs]
    axis = _norm_axis(node.attrs["axis"], xs[0].rank)
    total: D.Dim = 0
    for x in xs:
        total = total + x.shape[axis]
    shape = list(xs[0].shape)
    shape[axis] = D.canon(total)
    return [(tuple(shape), result_dtype(*xs))]


@op("split", "x", attrs={"sizes": "size of each piece", "axis": "axis"}, shape="one output per size",
    category="layout", doc="split/chunk/unbind (unbind adds reshapes)")
def _split(node: Node) -> list[TensorType]:
    x = _in(node, 0)
    axis = _norm_axis(node.attrs["axis"], x.rank)
    out = []
    for size in node.attrs["sizes"]:
        shape = list(x.shape)
        shape[axis] = size
        out.append((tuple(shape), x.dtype))
    return out


@op("slice", "x", attrs={"axis": "axis", "start": "first index", "end": "one past the last index (may be symbolic)",
                         "step": "stride"}, shape="axis becomes ceil((end - start) / step)", category="layout",
    doc="x[start:end:step] along axis; start/end already clamped to the axis")
def _slice(node: Node) -> list[TensorType]:
    x = _in(node, 0)
    axis = _norm_axis(node.attrs["axis"], x.rank)
    start, end, step = node.attrs["start"], node.attrs["end"], node.attrs.get("step", 1)
    shape = list(x.shape)
    shape[axis] = D.ceildiv(end - start, step)
    return [(tuple(shape), x.dtype)]


@op("select", "x", attrs={"axis": "axis", "index": "position"}, shape="x.shape without axis", category="layout",
    doc="x[..., index, ...]: picks one position and drops the axis")
def _select(node: Node) -> list[TensorType]:
    x = _in(node, 0)
    axis = _norm_axis(node.attrs["axis"], x.rank)
    return [(tuple(d for i, d in enumerate(x.shape) if i != axis), x.dtype)]


@op("index_select", "x, indices", attrs={"axis": "axis"}, shape="axis becomes len(indices)", category="layout",
    doc="gather whole slices along axis")
def _index_select(node: Node) -> list[TensorType]:
    x, idx = _in(node, 0), _in(node, 1)
    axis = _norm_axis(node.attrs["axis"], x.rank)
    shape = list(x.shape)
    shape[axis] = idx.shape[0]
    return [(tuple(shape), x.dtype)]


@op("pad", "x", attrs={"pad": "torch order: (last_lo, last_hi, prev_lo, prev_hi, ...)", "mode": "constant|reflect|replicate",
                       "value": "fill for constant mode"}, shape="padded axes grow by lo + hi", category="layout",
    doc="F.pad")
def _pad(node: Node) -> list[TensorType]:
    x = _in(node, 0)
    pad = node.attrs["pad"]
    shape = list(x.shape)
    for i in range(len(pad) // 2):
        axis = x.rank - 1 - i
        shape[axis] = shape[axis] + pad[2 * i] + pad[2 * i + 1]
    return [(tuple(shape), x.dtype)]


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
    x = _in(node, 0)
    kernel = node.attrs["kernel"]
    n = len(kernel)
    stride = _pair_list(node.attrs.get("stride") or kernel, n)
    pad = _pair_list(node.attrs.get("padding", 0), n)
    dil = _pair_list(node.attrs.get("dilation", 1), n)
    spatial = [
        _pool_len(L, k, s, p, d, node.attrs.get("ceil_mode", False))
        for L, k, s, p, d in zip(x.shape[-n:], kernel, stride, pad, dil)
    ]
    return [((*x.shape[:-n], *spatial), x.dtype)]


op("max_pool", "x", attrs={**_POOL_ATTRS, "dilation": "per spatial axis"}, shape="pooled spatial axes",
   category="pool", doc="max pooling")(_pool)
op("avg_pool", "x", attrs={**_POOL_ATTRS, "count_include_pad": "divide by the full window",
                           "divisor_override": "fixed divisor or None"},
   shape="pooled spatial axes", category="pool", doc="average pooling")(_pool)


def _adaptive(node: Node) -> list[TensorType]:
    x = _in(node, 0)
    size = list(node.attrs["output_size"])
    n = len(size)
    spatial = [x.shape[x.rank - n + i] if s is None else s for i, s in enumerate(size)]
    return [((*x.shape[:-n], *spatial), x.dtype)]


op("adaptive_avg_pool", "x", attrs={"output_size": "per spatial axis"}, shape="spatial axes become output_size",
   category="pool", doc="adaptive average pooling")(_adaptive)
op("adaptive_max_pool", "x", attrs={"output_size": "per spatial axis"}, shape="spatial axes become output_size",
   category="pool", doc="adaptive max pooling")(_adaptive)


@op("resize", "x", attrs={"size": "output spatial size or None", "scale_factor": "per spatial axis or None",
                          "mode": "nearest|bilinear|bicubic|linear", "align_corners": "bool or None"},
    shape="[N, C, size...] or [N, C, floor(L * scale)...]", category="pool", doc="F.interpolate")
def _resize(node: Node) -> list[TensorType]:
    x = _in(node, 0)
    size, scale = node.attrs.get("size"), node.attrs.get("scale_factor")
    n = x.rank - 2
    if size is not None:
        spatial = list(size)
    else:
        spatial = [D.canon(_floor_mul(L, s)) for L, s in zip(x.shape[2:], _pair_list(scale, n))]
    return [((*x.shape[:2], *spatial), x.dtype)]


def _floor_mul(L, s):
    if isinstance(L, int):
        return int(L * s)
    import sympy

    return sympy.floor(L * sympy.nsimplify(s))


# --------------------------------------------------------------- reductions
_REDUCE_ATTRS = {"axes": "axes reduced (None: all)", "keepdim": "keep reduced axes as size 1"}


def _reduce(node: Node) -> list[TensorType]:
    x = _in(node, 0)
    axes = node.attrs.get("axes")
    axes = set(range(x.rank)) if axes is None else {_norm_axis(a, x.rank) for a in axes}
    keep = node.attrs.get("keepdim", False)
    shape = tuple((1 if i in axes else d) for i, d in enumerate(x.shape) if keep or i not in axes)
    dtype = x.dtype
    if node.op == "sum" and (dtype == torch.bool or not (dtype.is_floating_point or dtype.is_complex)):
        dtype = torch.int64
    if node.op in ("argmax", "argmin"):
        dtype = torch.int64
    return [(shape, dtype)]


for _name, _doc in {"mean": "mean", "sum": "sum", "amax": "maximum", "amin": "minimum", "prod": "product",
                    "argmax": "index of the maximum (one axis)", "argmin": "index of the minimum (one axis)",
                    "any": "logical or", "all": "logical and"}.items():
    op(_name, "x", attrs=_REDUCE_ATTRS, shape="reduced axes removed (or 1 with keepdim)", category="reduce",
       doc=_doc)(_reduce)
op("var", "x", attrs={**_REDUCE_ATTRS, "correction": "Bessel correction (0 or 1)"},
   shape="reduced axes removed (or 1 with keepdim)", category="reduce", doc="variance")(_reduce)


# ---------------------------------------------------------------- creation
@op("full", "", attrs={"shape": "output shape (dims may be symbolic)", "value": "fill value", "dtype": "element type"},
    shape="the shape attr", category="creation", doc="a tensor filled with value")
def _full(node: Node) -> list[TensorType]:
    return [(tuple(node.attrs["shape"]), node.attrs["dtype"])]


@op("arange", "", attrs={"start": "first value", "end": "bound (may be symbolic)", "step": "increment",
                         "dtype": "element type"}, shape="[ceil((end - start) / step)]", category="creation",
    doc="torch.arange")
def _arange(node: Node) -> list[TensorType]:
    a = node.attrs
    return [((D.ceildiv(a["end"] - a["start"], a.get("step", 1)),), a["dtype"])]


# ------------------------------------------------------------ documentation
def markdown() -> str:
    """The op reference in docs/ir.md, generated from this registry."""
    lines = [
        "# The graphopt IR: canonical op set",
        "",
        "Generated by `python -m graphopt.ir.ops` from the op registry; a test keeps this file in step.",
        "Inputs marked `?` are optional (may be `None`), `*` variadic. Dims may be ints or symbolic",
        "expressions over dynamic axes (`batch`, `seq`, ...).",
        "",
    ]
    by_category: dict[str, list[OpDef]] = {}
    for opdef in OPS.values():
        by_category.setdefault(opdef.category, []).append(opdef)
    for category in sorted(by_category):
        lines += [f"## {category}", "", "| op | inputs | attributes | shape rule | meaning |", "|---|---|---|---|---|"]
        for o in sorted(by_category[category], key=lambda o: o.name):
            attrs = "<br>".join(f"`{k}`: {v}" for k, v in o.attrs.items()) or "-"
            lines.append(f"| `{o.name}` | `{o.inputs or '-'}` | {attrs} | {o.shape_doc} | {o.doc} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.stdout.write(markdown())
