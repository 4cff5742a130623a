"""Converters from functionalised ATen ops (what torch.export produces) to graphopt's canonical ops.

Each converter reads the fx node's arguments by their ATen schema and emits
canonical nodes. Aliases (view/reshape/flatten/squeeze -> reshape,
transpose -> permute, chunk -> split, ...) collapse here, so passes see one
spelling of each thing. Shapes that torch computed (`ctx.out_shape()`) are
used for reshape targets, so `-1` never reaches the graph and every axis
factorisation is explicit.
"""

from __future__ import annotations

from typing import Any

import torch

from graphopt.errors import GraphoptError
from graphopt.frontends.torch import ImportContext, register_torch_op
from graphopt.ir.graph import Value


def _arg(node, index: int, name: str, default: Any = None) -> Any:
    """An argument by position or keyword, as the ATen schema names it."""
    if index < len(node.args):
        return node.args[index]
    return node.kwargs.get(name, default)


def _list(value) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


# ------------------------------------------------------------- elementwise
_UNARY = {
    "relu": "relu", "sigmoid": "sigmoid", "tanh": "tanh", "silu": "silu", "hardswish": "hardswish",
    "hardsigmoid": "hardsigmoid", "mish": "mish", "exp": "exp", "log": "log", "sqrt": "sqrt", "rsqrt": "rsqrt",
    "neg": "neg", "abs": "abs", "erf": "erf", "sin": "sin", "cos": "cos", "reciprocal": "reciprocal",
    "logical_not": "logical_not", "bitwise_not": "logical_not",
}


def _unary(op: str):
    def convert(ctx: ImportContext, node):
        return ctx.emit1(op, [ctx.value(node.args[0])])

    return convert


for _aten, _op in _UNARY.items():
    register_torch_op(f"aten.{_aten}", f"aten.{_aten}_")(_unary(_op))


@register_torch_op("aten.gelu", "aten.gelu_")
def _gelu(ctx, node):
    return ctx.emit1("gelu", [ctx.value(node.args[0])], {"approximate": _arg(node, 1, "approximate", "none")})


@register_torch_op("aten.hardtanh", "aten.hardtanh_")
def _hardtanh(ctx, node):
    return ctx.emit1("hardtanh", [ctx.value(node.args[0])],
                     {"min_val": float(_arg(node, 1, "min_val", -1.0)), "max_val": float(_arg(node, 2, "max_val", 1.0))})


@register_torch_op("aten.relu6", "aten.relu6_")
def _relu6(ctx, node):
    return ctx.emit1("hardtanh", [ctx.value(node.args[0])], {"min_val": 0.0, "max_val": 6.0})


@register_torch_op("aten.leaky_relu", "aten.leaky_relu_")
def _leaky_relu(ctx, node):
    return ctx.emit1("leaky_relu", [ctx.value(node.args[0])], {"negative_slope": float(_arg(node, 1, "negative_slope", 0.01))})


@register_torch_op("aten.elu", "aten.elu_")
def _elu(ctx, node):
    return ctx.emit1("elu", [ctx.value(node.args[0])], {"alpha": float(_arg(node, 1, "alpha", 1.0))})


@register_torch_op("aten.softplus")
def _softplus(ctx, node):
    return ctx.emit1("softplus", [ctx.value(node.args[0])],
                     {"beta": float(_arg(node, 1, "beta", 1.0)), "threshold": float(_arg(node, 2, "threshold", 20.0))})


@register_torch_op("aten.clamp", "aten.clamp_")
def _clamp(ctx, node):
    lo, hi = _arg(node, 1, "min"), _arg(node, 2, "max")
    if isinstance(lo, torch.fx.Node) or isinstance(hi, torch.fx.Node):
        x = ctx.value(node.args[0])
        if lo is not None:
            x = ctx.emit1("maximum", [x, ctx.value(lo)])
        if hi is not None:
            x = ctx.emit1("minimum", [x, ctx.value(hi)])
        return x
    return ctx.emit1("clamp", [ctx.value(node.args[0])], {"min": lo, "max": hi})


@register_torch_op("aten.clamp_min", "aten.clamp_min_")
def _clamp_min(ctx, node):
    return ctx.emit1("clamp", [ctx.value(node.args[0])], {"min": node.args[1], "max": None})


@register_torch_op("aten.clamp_max", "aten.clamp_max_")
def _clamp_max(ctx, node):
    return ctx.emit1("clamp", [ctx.value(node.args[0])], {"min": None, "max": node.args[1]})


@register_torch_op("aten.dropout", "aten.dropout_", "aten.feature_dropout", "aten.alpha_dropout")
def _dropout(ctx, node):
    return ctx.emit1("dropout", [ctx.value(node.args[0])], {"p": float(_arg(node, 1, "p", 0.5))})


@register_torch_op("aten.triu", "aten.tril")
def _tri(ctx, node):
    op = "triu" if "triu" in str(node.target) else "tril"
    return ctx.emit1(op, [ctx.value(node.args[0])], {"diagonal": int(_arg(node, 1, "diagonal", 0))})


@register_torch_op("aten.cumsum")
def _cumsum(ctx, node):
    x = ctx.value(node.args[0])
    out = ctx.emit1("cumsum", [x], {"axis": int(node.args[1])})
    dtype = ctx.out_dtype()
    return out if out.dtype == dtype else ctx.emit1("cast", [out], {"dtype": dtype})


# --------------------------------------------------------------- binary ops
_BINARY = {"add": "add", "sub": "sub", "mul": "mul", "div": "div", "pow": "pow", "maximum": "maximum",
           "minimum": "minimum", "eq": "eq", "ne": "ne", "lt": "lt", "le": "le", "gt": "gt", "ge": "ge",
           "logical_and": "logical_and", "logical_or": "logical_or", "bitwise_and": "logical_and",
           "bitwise_or": "logical_or"}


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
        if op in ("logical_and", "logical_or") and (a_val.dtype != torch.bool or b_val.dtype != torch.bool):
            raise GraphoptError(f"node '{node.name}': bitwise ops are supported on bool tensors only")
        return ctx.emit1(op, [a_val, b_val], attrs)

    return convert


for _aten, _op in _BINARY.items():
    register_torch_op(f"aten.{_aten}", f"aten.{_aten}_")(_binary(_op))


@register_torch_op("aten.rsub")
def _rsub(ctx, node):
    alpha = node.kwargs.get("alpha", 1)
    x = ctx.value(node.args[0])
    if alpha != 1:
        x = ctx.emit1("mul", [x, ctx.value(alpha)])
    return ctx.emit1("sub", [ctx.value(node.args[1]), x])


@register_torch_op("aten.floor_divide")
def _floor_divide(ctx, node):
    return ctx.emit1("div", [ctx.value(node.args[0]), ctx.value(node.args[1])], {"rounding_mode": "floor"})


@register_torch_op("aten.where")
def _where(ctx, node):
    if len(node.args) == 1:
        raise GraphoptError(f"node '{node.name}': torch.where(cond) with one argument is data-dependent")
    return ctx.emit1("where", [ctx.value(node.args[0]), ctx.value(node.args[1]), ctx.value(node.args[2])])


@register_torch_op("aten.masked_fill", "aten.masked_fill_")
def _masked_fill(ctx, node):
    x = ctx.value(node.args[0])
    fill = node.args[2]
    fill_val = ctx.value(fill) if isinstance(fill, torch.fx.Node) else ctx.scalar(fill, dtype=x.dtype)
    return ctx.emit1("where", [ctx.value(node.args[1]), fill_val, x])


# -------------------------------------------------------------------- casts
def _cast_to(ctx, x: Value, dtype: torch.dtype) -> Value:
    return x if x.dtype == dtype else ctx.emit1("cast", [x], {"dtype": dtype})


@register_torch_op("aten._to_copy", "aten.to", "aten.type_as", "aten._to_dim_order_copy")
def _to(ctx, node):
    return _cast_to(ctx, ctx.value(node.args[0]), ctx.out_dtype())


@register_torch_op("aten.clone", "aten.contiguous", "aten.alias", "aten.detach", "aten.lift_fresh_copy",
                   "aten.lift_fresh", "aten.alias_copy", "aten.detach_", "aten.view_copy.dtype")
def _identity(ctx, node):
    return ctx.value(node.args[0])


# -------------------------------------------------------------- dense ops
@register_torch_op("aten.conv1d", "aten.conv2d", "aten.conv3d")
def _conv(ctx, node):
    x, w = ctx.value(node.args[0]), ctx.value(node.args[1])
    b = ctx.maybe_value(_arg(node, 2, "bias"))
    n = w.rank - 2
    stride = _list(_arg(node, 3, "stride", 1))
    padding = _arg(node, 4, "padding", 0)
    dilation = _list(_arg(node, 5, "dilation", 1))
    groups = int(_arg(node, 6, "groups", 1))
    stride = stride * n if len(stride) == 1 else stride
    dilation = dilation * n if len(dilation) == 1 else dilation
    if isinstance(padding, str):
        padding, x = _string_padding(ctx, x, w, padding, dilation)
    else:
        padding = _list(padding)
        padding = padding * n if len(padding) == 1 else padding
    return ctx.emit1("conv", [x, w, b], {"stride": stride, "padding": padding, "dilation": dilation, "groups": groups})


def _string_padding(ctx, x: Value, w: Value, mode: str, dilation: list) -> tuple[list, Value]:
    """Turn padding='same'/'valid' into explicit symmetric padding (plus a pad op when uneven)."""
    n = w.rank - 2
    if mode == "valid":
        return [0] * n, x
    totals = [d * (k - 1) for d, k in zip(dilation, w.shape[2:])]
    sym = [t // 2 for t in totals]
    if any(t % 2 for t in totals):
        extra: list[int] = []
        for t in reversed(totals):
            extra += [0, t % 2]
        x = ctx.emit1("pad", [x], {"pad": extra, "mode": "constant", "value": 0.0})
    return sym, x


@register_torch_op("aten.convolution")
def _convolution(ctx, node):
    x, w = ctx.value(node.args[0]), ctx.value(node.args[1])
    b = ctx.maybe_value(node.args[2])
    stride, padding, dilation, transposed, output_padding, groups = node.args[3:9]
    attrs = {"stride": list(stride), "padding": list(padding), "dilation": list(dilation), "groups": int(groups)}
    if transposed:
        attrs["output_padding"] = list(output_padding)
        return ctx.emit1("conv_transpose", [x, w, b], attrs)
    return ctx.emit1("conv", [x, w, b], attrs)


@register_torch_op("aten.conv_transpose1d", "aten.conv_transpose2d", "aten.conv_transpose3d")
def _conv_transpose(ctx, node):
    x, w = ctx.value(node.args[0]), ctx.value(node.args[1])
    b = ctx.maybe_value(_arg(node, 2, "bias"))
    n = w.rank - 2

    def per_axis(v):
        v = _list(v)
        return v * n if len(v) == 1 else v

    attrs = {
        "stride": per_axis(_arg(node, 3, "stride", 1)),
        "padding": per_axis(_arg(node, 4, "padding", 0)),
        "output_padding": per_axis(_arg(node, 5, "output_padding", 0)),
        "groups": int(_arg(node, 6, "groups", 1)),
        "dilation": per_axis(_arg(node, 7, "dilation", 1)),
    }
    return ctx.emit1("conv_transpose", [x, w, b], attrs)


@register_torch_op("aten.linear")
def _linear(ctx, node):
    return ctx.emit1("linear", [ctx.value(node.args[0]), ctx.value(node.args[1]), ctx.maybe_value(_arg(node, 2, "bias"))])


@register_torch_op("aten.matmul", "aten.mm", "aten.bmm")
def _matmul(ctx, node):
    return ctx.emit1("matmul", [ctx.value(node.args[0]), ctx.value(node.args[1])])


@register_torch_op("aten.addmm")
def _addmm(ctx, node):
    bias, a, b = (ctx.value(v) for v in node.args[:3])
    beta, alpha = node.kwargs.get("beta", 1), node.kwargs.get("alpha", 1)
    prod = ctx.emit1("matmul", [a, b])
    if alpha != 1:
        prod = ctx.emit1("mul", [prod, ctx.value(alpha)])
    if beta != 1:
        bias = ctx.emit1("mul", [bias, ctx.value(beta)])
    return ctx.emit1("add", [prod, bias])


@register_torch_op("aten.einsum")
def _einsum(ctx, node):
    return ctx.emit1("einsum", [ctx.value(v) for v in node.args[1]], {"equation": node.args[0]})


@register_torch_op("aten.embedding")
def _embedding(ctx, node):
    weight, idx = ctx.value(node.args[0]), ctx.value(node.args[1])
    padding_idx = int(_arg(node, 2, "padding_idx", -1))
    return ctx.emit1("embedding", [idx, weight], {"padding_idx": None if padding_idx < 0 else padding_idx})


@register_torch_op("aten.scaled_dot_product_attention")
def _sdpa(ctx, node):
    q, k, v = (ctx.value(a) for a in node.args[:3])
    mask = ctx.maybe_value(_arg(node, 3, "attn_mask"))
    dropout_p = float(_arg(node, 4, "dropout_p", 0.0))
    if dropout_p:
        raise GraphoptError(f"node '{node.name}': scaled_dot_product_attention with dropout_p={dropout_p} "
                            "is not deterministic; trace the model in eval mode with dropout_p=0")
    attrs = {
        "is_causal": bool(_arg(node, 5, "is_causal", False)),
        "scale": node.kwargs.get("scale", node.args[6] if len(node.args) > 6 else None),
        "enable_gqa": bool(node.kwargs.get("enable_gqa", node.args[7] if len(node.args) > 7 else False)),
    }
    return ctx.emit1("sdpa", [q, k, v, mask], attrs)


# ---------------------------------------------------------------- norms
@register_torch_op("aten._native_batch_norm_legit_no_training")
def _bn_no_training(ctx, node):
    x, w, b, mean, var = (ctx.maybe_value(a) for a in node.args[:5])
    out = ctx.emit1("batch_norm", [x, w, b, mean, var], {"eps": float(node.args[6]), "momentum": float(node.args[5])})
    return [out, None, None]


@register_torch_op("aten.batch_norm")
def _batch_norm(ctx, node):
    x, w, b, mean, var = (ctx.maybe_value(a) for a in node.args[:5])
    if node.args[5]:
        raise GraphoptError(f"node '{node.name}': batch_norm in training mode; trace the model in eval mode")
    return ctx.emit1("batch_norm", [x, w, b, mean, var], {"eps": float(node.args[7]), "momentum": float(node.args[6])})


@register_torch_op("aten.layer_norm")
def _layer_norm(ctx, node):
    x = ctx.value(node.args[0])
    w, b = ctx.maybe_value(_arg(node, 2, "weight")), ctx.maybe_value(_arg(node, 3, "bias"))
    return ctx.emit1("layer_norm", [x, w, b], {"normalized_shape": [int(d) for d in node.args[1]],
                                               "eps": float(_arg(node, 4, "eps", 1e-5))})


@register_torch_op("aten.native_layer_norm")
def _native_layer_norm(ctx, node):
    x = ctx.value(node.args[0])
    w, b = ctx.maybe_value(node.args[2]), ctx.maybe_value(node.args[3])
    out = ctx.emit1("layer_norm", [x, w, b], {"normalized_shape": [int(d) for d in node.args[1]], "eps": float(node.args[4])})
    return [out, None, None]


@register_torch_op("aten.group_norm")
def _group_norm(ctx, node):
    x = ctx.value(node.args[0])
    w, b = ctx.maybe_value(_arg(node, 2, "weight")), ctx.maybe_value(_arg(node, 3, "bias"))
    return ctx.emit1("group_norm", [x, w, b], {"num_groups": int(node.args[1]), "eps": float(_arg(node, 4, "eps", 1e-5))})


@register_torch_op("aten.rms_norm")
def _rms_norm(ctx, node):
    x = ctx.value(node.args[0])
    w = ctx.maybe_value(_arg(node, 2, "weight"))
    eps = _arg(node, 3, "eps")
    return ctx.emit1("rms_norm", [x, w], {"normalized_shape": [int(d) for d in node.args[1]],
                                           "eps": None if eps is None else float(eps)})


@register_torch_op("aten.softmax", "aten._softmax", "aten.log_softmax", "aten._log_softmax")
def _softmax(ctx, node):
    op = "log_softmax" if "log_softmax" in str(node.target) else "softmax"
    x = ctx.value(node.args[0])
    out = ctx.emit1(op, [x], {"axis": int(node.args[1])})
    return _cast_to(ctx, out, ctx.out_dtype())


# ---------------------------------------------------------------- layout
@register_torch_op("aten.view", "aten.reshape", "aten._unsafe_view", "aten.flatten", "aten.unflatten",
                   "aten.squeeze", "aten.unsqueeze", "aten.view_copy", "aten.squeeze_copy", "aten.unsqueeze_copy",
                   "aten._reshape_alias", "aten.reshape_as", "aten.view_as")
def _reshape(ctx, node):
    x = ctx.value(node.args[0])
    shape = ctx.out_shape()
    if len(shape) == x.rank and all(a == b for a, b in zip(shape, x.shape)):
        return x  # a no-op view: keep the graph free of it
    return ctx.emit1("reshape", [x], {"shape": list(shape)})


@register_torch_op("aten.permute", "aten.permute_copy")
def _permute(ctx, node):
    x = ctx.value(node.args[0])
    dims = [int(d) % max(x.rank, 1) for d in node.args[1]]
    return ctx.emit1("permute", [x], {"dims": dims})


@register_torch_op("aten.transpose", "aten.transpose_copy", "aten.swapaxes", "aten.swapdims")
def _transpose(ctx, node):
    x = ctx.value(node.args[0])
    a, b = int(node.args[1]) % max(x.rank, 1), int(node.args[2]) % max(x.rank, 1)
    dims = list(range(x.rank))
    dims[a], dims[b] = dims[b], dims[a]
    return ctx.emit1("permute", [x], {"dims": dims})


@register_torch_op("aten.t", "aten.numpy_T")
def _t(ctx, node):
    x = ctx.value(node.args[0])
    if x.rank < 2:
        return x
    return ctx.emit1("permute", [x], {"dims": list(range(x.rank))[::-1]})


@register_torch_op("aten.expand", "aten.expand_copy", "aten.expand_as", "aten.broadcast_to")
def _expand(ctx, node):
    x = ctx.value(node.args[0])
    shape = ctx.out_shape()
    if tuple(shape) == tuple(x.shape):
        return x
    return ctx.emit1("expand", [x], {"shape": list(shape)})


@register_torch_op("aten.repeat")
def _repeat(ctx, node):
    # repeat = expand on an interleaved view, then flatten: x[a, b] * (r, s) -> [r, a, s, b] -> [r*a, s*b]
    x = ctx.value(node.args[0])
    reps = ctx.dims(node.args[1])
    shape = [1] * (len(reps) - x.rank) + list(x.shape)
    inter, expanded = [], []
    for r, d in zip(reps, shape):
        inter += [1, d]
        expanded += [r, d]
    y = ctx.emit1("reshape", [x], {"shape": inter})
    y = ctx.emit1("expand", [y], {"shape": expanded})
    return ctx.emit1("reshape", [y], {"shape": list(ctx.out_shape())})


@register_torch_op("aten.cat", "aten.concat", "aten.concatenate")
def _cat(ctx, node):
    xs = [ctx.value(v) for v in node.args[0]]
    xs = [x for x in xs if not (x.rank == 1 and x.shape[0] == 0)]  # torch.cat skips empty 1-d tensors
    axis = int(_arg(node, 1, "dim", 0))
    if len(xs) == 1:
        return xs[0]
    dtype = ctx.out_dtype()
    return ctx.emit1("concat", [_cast_to(ctx, x, dtype) for x in xs], {"axis": axis % xs[0].rank})


def _split_values(ctx, x: Value, sizes: list, axis: int) -> list[Value]:
    if len(sizes) == 1:
        return [x]
    return list(ctx.emit("split", [x], {"sizes": sizes, "axis": axis % x.rank}).outputs)


@register_torch_op("aten.split", "aten.split_with_sizes", "aten.chunk", "aten.tensor_split.sections",
                   "aten.split_copy", "aten.split_with_sizes_copy")
def _split(ctx, node):
    x = ctx.value(node.args[0])
    axis = int(_arg(node, 2, "dim", 0))
    sizes = [ctx.out_shape(index=i)[axis] for i in range(len(node.meta["val"]))]
    return _split_values(ctx, x, sizes, axis)


@register_torch_op("aten.unbind", "aten.unbind_copy")
def _unbind(ctx, node):
    x = ctx.value(node.args[0])
    axis = int(_arg(node, 1, "dim", 0)) % x.rank
    n = x.shape[axis]
    pieces = _split_values(ctx, x, [1] * n, axis)
    return [ctx.emit1("reshape", [p], {"shape": list(ctx.out_shape(index=i))}) for i, p in enumerate(pieces)]


@register_torch_op("aten.slice", "aten.slice_copy")
def _slice(ctx, node):
    x = ctx.value(node.args[0])
    axis = int(_arg(node, 1, "dim", 0)) % x.rank
    step = int(_arg(node, 4, "step", 1))
    size = x.shape[axis]
    start = ctx.dim(_arg(node, 2, "start", 0) or 0)
    end = _arg(node, 3, "end", None)
    end = size if end is None else ctx.dim(end)
    start, end = _clamp_range(start, end, size)
    out_len = ctx.out_shape()[axis]
    if start == 0 and step == 1 and _same_dim(out_len, size):
        return x
    return ctx.emit1("slice", [x], {"axis": axis, "start": start, "end": end, "step": step})


def _same_dim(a, b) -> bool:
    from graphopt.ir import dims as D

    return D.dims_equal(a, b)


def _clamp_range(start, end, size):
    """Python slice semantics on static values; symbolic bounds are kept as torch saw them."""
    if isinstance(start, int) and isinstance(size, int):
        start = max(0, min(start + size if start < 0 else start, size))
    if isinstance(end, int) and isinstance(size, int):
        end = max(0, min(end + size if end < 0 else end, size))
    elif isinstance(end, int) and end >= 2**62:
        end = size
    return start, end


@register_torch_op("aten.narrow", "aten.narrow_copy")
def _narrow(ctx, node):
    x = ctx.value(node.args[0])
    axis = int(node.args[1]) % x.rank
    start = ctx.dim(node.args[2])
    length = ctx.dim(node.args[3])
    return ctx.emit1("slice", [x], {"axis": axis, "start": start, "end": start + length, "step": 1})


@register_torch_op("aten.select", "aten.select_copy")
def _select(ctx, node):
    x = ctx.value(node.args[0])
    axis = int(node.args[1]) % x.rank
    index = int(node.args[2])
    size = x.shape[axis]
    if index < 0:
        if not isinstance(size, int):
            raise GraphoptError(f"node '{node.name}': negative index on a dynamic axis")
        index += size
    return ctx.emit1("select", [x], {"axis": axis, "index": index})


@register_torch_op("aten.index_select")
def _index_select(ctx, node):
    x = ctx.value(node.args[0])
    return ctx.emit1("index_select", [x, ctx.value(node.args[2])], {"axis": int(node.args[1]) % x.rank})


@register_torch_op("aten.index.Tensor")
def _index(ctx, node):
    x = ctx.value(node.args[0])
    indices = node.args[1]
    used = [i for i, idx in enumerate(indices) if idx is not None]
    if len(used) != 1 or ctx.value(indices[used[0]]).rank != 1 or ctx.value(indices[used[0]]).dtype == torch.bool:
        raise GraphoptError(f"node '{node.name}': only x[..., idx, ...] with one 1-d integer index tensor is supported")
    return ctx.emit1("index_select", [x, ctx.value(indices[used[0]])], {"axis": used[0]})


@register_torch_op("aten.constant_pad_nd", "aten.pad")
def _pad(ctx, node):
    x = ctx.value(node.args[0])
    pad = [int(p) for p in node.args[1]]
    mode = "constant"
    value = _arg(node, 2, "value", 0.0)
    if "aten.pad" in str(node.target):
        mode = _arg(node, 2, "mode", "constant")
        value = _arg(node, 3, "value", 0.0)
    return ctx.emit1("pad", [x], {"pad": pad, "mode": mode, "value": float(value or 0.0)})


# ---------------------------------------------------------------- pooling
def _per_axis(v, n):
    v = _list(v)
    return [int(i) for i in (v * n if len(v) == 1 else v)]


@register_torch_op("aten.max_pool1d", "aten.max_pool2d", "aten.max_pool3d", "aten.max_pool2d_with_indices")
def _max_pool(ctx, node):
    x = ctx.value(node.args[0])
    kernel = _list(node.args[1])
    n = len(kernel) if len(kernel) > 1 else int(str(node.target).split("max_pool")[1][0])
    kernel = _per_axis(kernel, n)
    stride = _per_axis(_arg(node, 2, "stride", []) or kernel, n)
    attrs = {"kernel": kernel, "stride": stride, "padding": _per_axis(_arg(node, 3, "padding", 0), n),
             "dilation": _per_axis(_arg(node, 4, "dilation", 1), n), "ceil_mode": bool(_arg(node, 5, "ceil_mode", False))}
    out = ctx.emit1("max_pool", [x], attrs)
    return [out, None] if "with_indices" in str(node.target) else out


@register_torch_op("aten.avg_pool1d", "aten.avg_pool2d", "aten.avg_pool3d")
def _avg_pool(ctx, node):
    x = ctx.value(node.args[0])
    kernel = _list(node.args[1])
    n = len(kernel) if len(kernel) > 1 else int(str(node.target).split("avg_pool")[1][0])
    kernel = _per_axis(kernel, n)
    attrs = {"kernel": kernel, "stride": _per_axis(_arg(node, 2, "stride", []) or kernel, n),
             "padding": _per_axis(_arg(node, 3, "padding", 0), n), "ceil_mode": bool(_arg(node, 4, "ceil_mode", False)),
             "count_include_pad": bool(_arg(node, 5, "count_include_pad", True)),
             "divisor_override": _arg(node, 6, "divisor_override", None)}
    return ctx.emit1("avg_pool", [x], attrs)


@register_torch_op("aten.adaptive_avg_pool1d", "aten.adaptive_avg_pool2d", "aten.adaptive_avg_pool3d",
                   "aten._adaptive_avg_pool2d", "aten._adaptive_avg_pool3d")
def _adaptive_avg(ctx, node):
    x = ctx.value(node.args[0])
    size = [None if s is None else int(s) for s in _list(node.args[1])]
    n = int(str(node.target).split("pool")[1][0])
    return ctx.emit1("adaptive_avg_pool", [x], {"output_size": size * n if len(size) == 1 else size})


@register_torch_op("aten.adaptive_max_pool1d", "aten.adaptive_max_pool2d", "aten.adaptive_max_pool3d")
def _adaptive_max(ctx, node):
    x = ctx.value(node.args[0])
    size = [None if s is None else int(s) for s in _list(node.args[1])]
    n = int(str(node.target).split("pool")[1][0])
    return [ctx.emit1("adaptive_max_pool", [x], {"output_size": size * n if len(size) == 1 else size}), None]


@register_torch_op("aten.upsample_nearest1d", "aten.upsample_nearest2d", "aten.upsample_nearest3d",
                   "aten.upsample_bilinear2d", "aten.upsample_linear1d", "aten.upsample_bicubic2d",
                   "aten.upsample_trilinear3d", "aten._upsample_nearest_exact2d")
def _upsample(ctx, node):
    x = ctx.value(node.args[0])
    name = str(node.target)
    mode = ("nearest-exact" if "nearest_exact" in name else "nearest" if "nearest" in name
            else "bicubic" if "bicubic" in name else "trilinear" if "trilinear" in name
            else "bilinear" if "bilinear" in name else "linear")
    align = None if mode.startswith("nearest") else bool(_arg(node, 2, "align_corners", False))
    spatial = list(ctx.out_shape()[2:])
    scales = node.args[-1] if name.endswith(".vec") else None
    attrs: dict[str, Any] = {"mode": mode, "align_corners": align}
    if scales and not all(isinstance(d, int) for d in x.shape[2:]):
        attrs.update(size=None, scale_factor=[float(s) for s in scales])
    else:
        attrs.update(size=spatial, scale_factor=None)
    return ctx.emit1("resize", [x], attrs)


# ------------------------------------------------------------- reductions
def _reduce(op: str):
    def convert(ctx, node):
        x = ctx.value(node.args[0])
        whole = str(node.target).endswith(".default")  # e.g. sum(x, dtype=None): reduce everything
        axes = None if whole else _arg(node, 1, "dim", None)
        keepdim = False if whole else bool(_arg(node, 2, "keepdim", False))
        if axes is not None:
            axes = [int(a) % max(x.rank, 1) for a in _list(axes)]
            if not axes:
                axes = None
        out = ctx.emit1(op, [x], {"axes": axes, "keepdim": keepdim})
        return _cast_to(ctx, out, ctx.out_dtype())

    return convert


for _aten, _op in {"mean": "mean", "sum": "sum", "amax": "amax", "amin": "amin", "any": "any", "all": "all"}.items():
    register_torch_op(f"aten.{_aten}")(_reduce(_op))


@register_torch_op("aten.prod")
def _prod(ctx, node):
    return _reduce("prod")(ctx, node)


@register_torch_op("aten.argmax", "aten.argmin")
def _argmax(ctx, node):
    op = "argmax" if "argmax" in str(node.target) else "argmin"
    x = ctx.value(node.args[0])
    axis = _arg(node, 1, "dim", None)
    return ctx.emit1(op, [x], {"axes": None if axis is None else [int(axis) % x.rank],
                               "keepdim": bool(_arg(node, 2, "keepdim", False))})


@register_torch_op("aten.max.dim", "aten.min.dim")
def _max_dim(ctx, node):
    op = "amax" if "max" in str(node.target) else "amin"
    x = ctx.value(node.args[0])
    axes = [int(node.args[1]) % x.rank]
    keep = bool(_arg(node, 2, "keepdim", False))
    values = ctx.emit1(op, [x], {"axes": axes, "keepdim": keep})
    indices = ctx.emit1("argmax" if op == "amax" else "argmin", [x], {"axes": axes, "keepdim": keep})
    return [values, indices]


@register_torch_op("aten.max.default", "aten.min.default")
def _max_all(ctx, node):
    op = "amax" if "max" in str(node.target) else "amin"
    return ctx.emit1(op, [ctx.value(node.args[0])], {"axes": None, "keepdim": False})


@register_torch_op("aten.var", "aten.var.correction")
def _var(ctx, node):
    x = ctx.value(node.args[0])
    axes = _arg(node, 1, "dim", None)
    correction = node.kwargs.get("correction", 1)
    if "unbiased" in node.kwargs:
        correction = 1 if node.kwargs["unbiased"] else 0
    return ctx.emit1("var", [x], {"axes": None if axes is None else [int(a) % x.rank for a in _list(axes)],
                                  "keepdim": bool(node.kwargs.get("keepdim", False)), "correction": correction})


# --------------------------------------------------------------- creation
def _full_node(ctx, value, dtype=None):
    return ctx.emit1("full", [], {"shape": list(ctx.out_shape()), "value": value, "dtype": dtype or ctx.out_dtype()})


@register_torch_op("aten.full", "aten.new_full")
def _full(ctx, node):
    fill = node.args[-1]
    return _full_node(ctx, fill)


@register_torch_op("aten.zeros", "aten.new_zeros", "aten.zeros_like", "aten.empty", "aten.new_empty")
def _zeros(ctx, node):
    return _full_node(ctx, 0)


@register_torch_op("aten.ones", "aten.new_ones", "aten.ones_like")
def _ones(ctx, node):
    return _full_node(ctx, 1)


@register_torch_op("aten.full_like")
def _full_like(ctx, node):
    return _full_node(ctx, node.args[1])


@register_torch_op("aten.scalar_tensor")
def _scalar_tensor(ctx, node):
    return ctx.scalar(node.args[0], dtype=ctx.out_dtype())


@register_torch_op("aten.arange")
def _arange(ctx, node):
    args = [ctx.dim(a) if not isinstance(a, float) else a for a in node.args]
    start, end, step = 0, None, 1
    if len(args) == 1:
        end = args[0]
    elif len(args) == 2:
        start, end = args
    else:
        start, end, step = args[:3]
    return ctx.emit1("arange", [], {"start": start, "end": end, "step": step, "dtype": ctx.out_dtype()})


# ------------------------------------------------- functionalised in-place writes
# `x[:, 0] = y` reaches us as select_scatter/slice_scatter (plus a `copy`); rebuilding the
# result with slices and a concat keeps the canonical op set small and the channel
# analysis exact (concat offsets are something it already understands).
@register_torch_op("aten.copy", "aten.copy_")
def _copy(ctx, node):
    dst, src = ctx.value(node.args[0]), ctx.value(node.args[1])
    out = _cast_to(ctx, src, dst.dtype)
    if tuple(out.shape) != tuple(dst.shape):
        out = ctx.emit1("expand", [out], {"shape": list(dst.shape)})
    return out


@register_torch_op("aten.fill", "aten.fill_")
def _fill(ctx, node):
    value = node.args[1]
    if isinstance(value, torch.fx.Node):
        x = ctx.value(node.args[0])
        filled = _cast_to(ctx, ctx.value(value), x.dtype)
        return ctx.emit1("expand", [filled], {"shape": list(x.shape)})
    return _full_node(ctx, value)


def _scatter_range(ctx, x: Value, src: Value, axis: int, start, end) -> Value:
    pieces = []
    size = x.shape[axis]
    if not (isinstance(start, int) and start == 0):
        pieces.append(ctx.emit1("slice", [x], {"axis": axis, "start": 0, "end": start, "step": 1}))
    pieces.append(_cast_to(ctx, src, x.dtype))
    if not _same_dim(end, size):
        pieces.append(ctx.emit1("slice", [x], {"axis": axis, "start": end, "end": size, "step": 1}))
    return pieces[0] if len(pieces) == 1 else ctx.emit1("concat", pieces, {"axis": axis})


@register_torch_op("aten.slice_scatter")
def _slice_scatter(ctx, node):
    x, src = ctx.value(node.args[0]), ctx.value(node.args[1])
    axis = int(_arg(node, 2, "dim", 0)) % x.rank
    if int(_arg(node, 5, "step", 1)) != 1:
        raise GraphoptError(f"node '{node.name}': strided slice assignment is not supported")
    size = x.shape[axis]
    start = ctx.dim(_arg(node, 3, "start", 0) or 0)
    end = _arg(node, 4, "end", None)
    start, end = _clamp_range(start, size if end is None else ctx.dim(end), size)
    return _scatter_range(ctx, x, src, axis, start, end)


@register_torch_op("aten.select_scatter")
def _select_scatter(ctx, node):
    x, src = ctx.value(node.args[0]), ctx.value(node.args[1])
    axis = int(node.args[2]) % x.rank
    index = int(node.args[3])
    if index < 0:
        index += x.shape[axis]
    shape = list(x.shape)
    shape[axis] = 1
    src = ctx.emit1("reshape", [src], {"shape": shape})
    return _scatter_range(ctx, x, src, axis, index, index + 1)
