"""Dense, attention and normalisation ops (conv, linear, matmul, einsum, embedding, sdpa, norms, softmax).

Each op's definition and shape rule sit next to its torch kernel.
"""

from __future__ import annotations

import string

import torch
import torch.nn.functional as F

from graphopt.errors import ShapeError
from graphopt.ir import dims as D
from graphopt.ir.graph import Node
from graphopt.ir.ops._core import TRAINING_AWARE, TensorType, broadcast, in_, kernel, op, pair_list, result_dtype, same

# ------------------------------------------------------------- convolutions
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
    x, w = in_(node, 0), in_(node, 1)
    n = w.rank - 2
    stride, pad, dil = (pair_list(node.attrs.get(k, d), n) for k, d in (("stride", 1), ("padding", 0), ("dilation", 1)))
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


_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


@kernel("conv")
def conv(x, weight, bias=None, *, stride, padding, dilation, groups):
    return _CONV[weight.dim() - 2](x, weight, bias, stride, padding, dilation, groups)


@op("conv_transpose", "x, weight, bias?", attrs={**_CONV_ATTRS, "output_padding": "per spatial axis"},
    shape="[N, C_out, (L-1)s - 2p + d(k-1) + output_padding + 1 ...]; weight [C_in, C_out/groups, k...]",
    category="dense", doc="transposed N-d convolution")
def _conv_transpose(node: Node) -> list[TensorType]:
    x, w = in_(node, 0), in_(node, 1)
    n = w.rank - 2
    stride, pad, dil, opad = (
        pair_list(node.attrs.get(k, d), n)
        for k, d in (("stride", 1), ("padding", 0), ("dilation", 1), ("output_padding", 0))
    )
    groups = node.attrs.get("groups", 1)
    spatial = [
        (L - 1) * s - 2 * p + d * (k - 1) + op_ + 1
        for L, s, p, d, k, op_ in zip(x.shape[2:], stride, pad, dil, w.shape[2:], opad)
    ]
    return [((x.shape[0], w.shape[1] * groups, *spatial), x.dtype)]


@kernel("conv_transpose")
def conv_transpose(x, weight, bias=None, *, stride, padding, output_padding, dilation, groups):
    return _CONV_T[weight.dim() - 2](x, weight, bias, stride, padding, output_padding, groups, dilation)


# ---------------------------------------------------------- matrix products
@op("linear", "x, weight, bias?", shape="[..., out] with weight [out, in]", category="dense", doc="x @ weight.T + bias")
def _linear(node: Node) -> list[TensorType]:
    x, w = in_(node, 0), in_(node, 1)
    if isinstance(x.shape[-1], int) and x.shape[-1] != w.shape[1]:
        raise ShapeError(f"{node.where()}: input features {x.shape[-1]} != weight in-features {w.shape[1]}")
    return [((*x.shape[:-1], w.shape[0]), x.dtype)]


@kernel("linear")
def linear(x, weight, bias=None):
    return F.linear(x, weight, bias)


@op("matmul", "a, b", shape="torch.matmul: batch axes broadcast, [.., n, k] @ [.., k, m] -> [.., n, m]",
    category="dense", doc="matrix product")
def _matmul(node: Node) -> list[TensorType]:
    a, b = in_(node, 0), in_(node, 1)
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


kernel("matmul")(torch.matmul)


@op("grouped_mm", "x, weight, offsets", shape="[S, n] from x [S, k], weight [G, k, n], offsets [G] (int)",
    category="dense", doc="rows offsets[g-1] <= s < offsets[g] of x (sorted by group) times weight[g]; rows past "
    "offsets[-1] are 0. Mixture-of-experts blocks run their experts so (transformers' grouped_mm)")
def _grouped_mm(node: Node) -> list[TensorType]:
    x, w, offs = in_(node, 0), in_(node, 1), in_(node, 2)
    if x.rank != 2 or w.rank != 3 or offs.rank != 1:
        raise ShapeError(f"{node.where()}: grouped_mm wants x [S, k], weight [G, k, n] and offsets [G], got "
                         f"{list(x.shape)}, {list(w.shape)} and {list(offs.shape)}")
    if offs.dtype.is_floating_point or not D.dims_equal(offs.shape[0], w.shape[0]):
        raise ShapeError(f"{node.where()}: grouped_mm offsets must be integers, one per group: "
                         f"{offs.dtype}{list(offs.shape)} for {w.shape[0]} groups")
    if isinstance(x.shape[1], int) and isinstance(w.shape[1], int) and x.shape[1] != w.shape[1]:
        raise ShapeError(f"{node.where()}: contraction sizes {x.shape[1]} and {w.shape[1]} differ")
    return [((x.shape[0], w.shape[2]), result_dtype(x, w))]


@kernel("grouped_mm")
def grouped_mm(x, weight, offsets):
    out = torch.zeros(x.shape[0], weight.shape[2], dtype=torch.result_type(x, weight), device=x.device)
    start = 0
    for group, end in enumerate(offsets.tolist()):  # one product per group, as transformers' fallback runs
        end = min(int(end), x.shape[0])
        if end > start:
            out[start:end] = x[start:end] @ weight[group]
        start = max(start, end)
    return out


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


@kernel("einsum")
def einsum(*operands, equation):
    return torch.einsum(equation, *operands)


@op("embedding", "indices, weight", attrs={"padding_idx": "row that gets no gradient (or None)"},
    shape="indices.shape + [weight.shape[1]]", category="dense", doc="row lookup in weight")
def _embedding(node: Node) -> list[TensorType]:
    idx, w = in_(node, 0), in_(node, 1)
    return [((*idx.shape, w.shape[1]), w.dtype)]


@kernel("embedding")
def embedding(indices, weight, *, padding_idx=None):
    return F.embedding(indices, weight, padding_idx)


@op("sdpa", "q, k, v, mask?", attrs={"is_causal": "apply a causal mask", "scale": "score scale or None (1/sqrt(d))",
                                      "enable_gqa": "k/v heads are shared by groups of q heads"},
    shape="q.shape[:-1] + [v.shape[-1]]", category="attention",
    doc="scaled dot-product attention softmax(q k^T * scale + mask) v, kept as one op")
def _sdpa(node: Node) -> list[TensorType]:
    q, v = in_(node, 0), in_(node, 2)
    return [((*q.shape[:-1], v.shape[-1]), q.dtype)]


@kernel("sdpa")
def sdpa(q, k, v, mask=None, *, is_causal=False, scale=None, enable_gqa=False):
    return F.scaled_dot_product_attention(q, k, v, mask, 0.0, is_causal, scale=scale, enable_gqa=enable_gqa)


# ------------------------------------------------------------- normalisation
op("batch_norm", "x, weight?, bias?, running_mean, running_var", attrs={"eps": "epsilon", "momentum": "for training"},
   shape="same as x; channel axis 1", category="norm", doc="inference batch norm with running statistics",
   traits={TRAINING_AWARE})(same)


@kernel("batch_norm")
def batch_norm(x, weight, bias, running_mean, running_var, *, eps, momentum=0.1, training=False):
    return F.batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps)


op("layer_norm", "x, weight?, bias?", attrs={"normalized_shape": "trailing axes normalised", "eps": "epsilon"},
   shape="same as x", category="norm", doc="layer norm over the trailing normalized_shape axes")(same)


@kernel("layer_norm")
def layer_norm(x, weight=None, bias=None, *, normalized_shape, eps):
    return F.layer_norm(x, normalized_shape, weight, bias, eps)


op("group_norm", "x, weight?, bias?", attrs={"num_groups": "channel groups", "eps": "epsilon"},
   shape="same as x; channel axis 1", category="norm", doc="group norm")(same)


@kernel("group_norm")
def group_norm(x, weight=None, bias=None, *, num_groups, eps):
    return F.group_norm(x, num_groups, weight, bias, eps)


op("rms_norm", "x, weight?", attrs={"normalized_shape": "trailing axes normalised", "eps": "epsilon or None"},
   shape="same as x", category="norm", doc="x / sqrt(mean(x^2) + eps) * weight")(same)


@kernel("rms_norm")
def rms_norm(x, weight=None, *, normalized_shape, eps=None):
    return F.rms_norm(x, normalized_shape, weight, eps)


op("softmax", "x", attrs={"axis": "axis"}, shape="same as x", category="norm", doc="softmax along axis")(same)


@kernel("softmax")
def softmax(x, *, axis):
    return torch.softmax(x, axis)


op("log_softmax", "x", attrs={"axis": "axis"}, shape="same as x", category="norm", doc="log of softmax along axis")(same)


@kernel("log_softmax")
def log_softmax(x, *, axis):
    return torch.log_softmax(x, axis)
