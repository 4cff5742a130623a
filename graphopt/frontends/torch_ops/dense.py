"""ATen converters for dense ops: convolutions, linear/matmul/addmm, einsum, embedding, attention."""

from __future__ import annotations

import torch

from graphopt.errors import GraphoptError
from graphopt.frontends.torch import RaggedPiece, register_torch_op
from graphopt.frontends.torch_ops._common import as_list, schema_arg
from graphopt.ir.graph import Value


@register_torch_op("aten.conv1d", "aten.conv2d", "aten.conv3d")
def _conv(ctx, node):
    x, w = ctx.value(node.args[0]), ctx.value(node.args[1])
    b = ctx.maybe_value(schema_arg(node, 2, "bias"))
    n = w.rank - 2
    stride = as_list(schema_arg(node, 3, "stride", 1))
    padding = schema_arg(node, 4, "padding", 0)
    dilation = as_list(schema_arg(node, 5, "dilation", 1))
    groups = int(schema_arg(node, 6, "groups", 1))
    stride = stride * n if len(stride) == 1 else stride
    dilation = dilation * n if len(dilation) == 1 else dilation
    if isinstance(padding, str):
        padding, x = _string_padding(ctx, x, w, padding, dilation)
    else:
        padding = as_list(padding)
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
    b = ctx.maybe_value(schema_arg(node, 2, "bias"))
    n = w.rank - 2

    def per_axis(v):
        v = as_list(v)
        return v * n if len(v) == 1 else v

    attrs = {
        "stride": per_axis(schema_arg(node, 3, "stride", 1)),
        "padding": per_axis(schema_arg(node, 4, "padding", 0)),
        "output_padding": per_axis(schema_arg(node, 5, "output_padding", 0)),
        "groups": int(schema_arg(node, 6, "groups", 1)),
        "dilation": per_axis(schema_arg(node, 7, "dilation", 1)),
    }
    return ctx.emit1("conv_transpose", [x, w, b], attrs)


@register_torch_op("aten.linear")
def _linear(ctx, node):
    piece = ctx._values.get(node.args[0]) if isinstance(node.args[0], torch.fx.Node) else None
    if isinstance(piece, RaggedPiece) and piece.weight is None and schema_arg(node, 2, "bias") is None:
        # one expert's rows (JetMoE): kept pending until the cat of all pieces makes a grouped_mm
        return RaggedPiece(piece.x, piece.offsets, piece.index, piece.count, ctx.value(node.args[1]))
    return ctx.emit1("linear", [ctx.value(node.args[0]), ctx.value(node.args[1]), ctx.maybe_value(schema_arg(node, 2, "bias"))])


@register_torch_op("aten.matmul", "aten.mm", "aten.bmm")
def _matmul(ctx, node):
    return ctx.emit1("matmul", [ctx.value(node.args[0]), ctx.value(node.args[1])])


@register_torch_op("aten.addmm", "aten.baddbmm")  # baddbmm: BLOOM's alibi attention scores
def _addmm(ctx, node):
    bias, a, b = (ctx.value(v) for v in node.args[:3])
    beta, alpha = node.kwargs.get("beta", 1), node.kwargs.get("alpha", 1)
    prod = ctx.emit1("matmul", [a, b])
    if alpha != 1:
        prod = ctx.emit1("mul", [prod, ctx.value(alpha)])
    if beta == 0:  # torch ignores the input then, NaNs included
        return prod
    if beta != 1:
        bias = ctx.emit1("mul", [bias, ctx.value(beta)])
    return ctx.emit1("add", [prod, bias])


@register_torch_op("aten.einsum")
def _einsum(ctx, node):
    return ctx.emit1("einsum", [ctx.value(v) for v in node.args[1]], {"equation": node.args[0]})


@register_torch_op("aten.embedding")
def _embedding(ctx, node):
    weight, idx = ctx.value(node.args[0]), ctx.value(node.args[1])
    padding_idx = int(schema_arg(node, 2, "padding_idx", -1))
    return ctx.emit1("embedding", [idx, weight], {"padding_idx": None if padding_idx < 0 else padding_idx})


@register_torch_op("aten.scaled_dot_product_attention")
def _sdpa(ctx, node):
    q, k, v = (ctx.value(a) for a in node.args[:3])
    mask = ctx.maybe_value(schema_arg(node, 3, "attn_mask"))
    dropout_p = float(schema_arg(node, 4, "dropout_p", 0.0))
    if dropout_p:
        raise GraphoptError(f"node '{node.name}': scaled_dot_product_attention with dropout_p={dropout_p} "
                            "is not deterministic; trace the model in eval mode with dropout_p=0")
    attrs = {
        "is_causal": bool(schema_arg(node, 5, "is_causal", False)),
        "scale": node.kwargs.get("scale", node.args[6] if len(node.args) > 6 else None),
        "enable_gqa": bool(node.kwargs.get("enable_gqa", node.args[7] if len(node.args) > 7 else False)),
    }
    return ctx.emit1("sdpa", [q, k, v, mask], attrs)


@register_torch_op("transformers.grouped_mm_fallback", "aten._grouped_mm", "aten.grouped_mm")
def _grouped_mm(ctx, node):
    # transformers' mixture-of-experts blocks: tokens sorted by expert, offsets = cumsum(histc(expert ids))
    x, w = ctx.value(node.args[0]), ctx.value(node.args[1])
    offsets = schema_arg(node, 2, "offs")
    if offsets is None or x.rank != 2 or w.rank != 3 or schema_arg(node, 3, "bias") is not None:
        raise GraphoptError(f"node '{node.name}': only the 2-d x 3-d grouped_mm with offsets and no bias is "
                            f"supported, got {list(x.shape)} x {list(w.shape)}")
    out = ctx.emit1("grouped_mm", [x, w, ctx.value(offsets)])
    return out if out.dtype == ctx.out_dtype() else ctx.emit1("cast", [out], {"dtype": ctx.out_dtype()})


@register_torch_op("aten.outer", "aten.ger")
def _outer(ctx, node):
    # a[:, None] * b[None, :] (rotary tables: positions x inverse frequencies)
    a, b = ctx.value(node.args[0]), ctx.value(node.args[1])
    column = ctx.emit1("reshape", [a], {"shape": [a.shape[0], 1]})
    row = ctx.emit1("reshape", [b], {"shape": [1, b.shape[0]]})
    return ctx.emit1("mul", [column, row])
