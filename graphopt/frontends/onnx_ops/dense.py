"""ONNX converters for dense ops: convolutions, MatMul/Gemm (`linear` for a constant weight), Einsum, Attention."""

from __future__ import annotations

from typing import Any

from graphopt.errors import GraphoptError
from graphopt.frontends.onnx import Known, register_onnx_op
from graphopt.frontends.onnx_ops._common import attr, pad_asymmetric, spatial_pads, value_at
from graphopt.ir import dims as D
from graphopt.ir.graph import Value


@register_onnx_op("Conv")
def _conv(ctx, node):
    x, w, b = value_at(ctx, node, 0), value_at(ctx, node, 1), value_at(ctx, node, 2)
    n = w.rank - 2
    kernel = [int(k) for k in w.shape[2:]]
    strides = [int(s) for s in attr(node, "strides", [1] * n)]
    dilations = [int(d) for d in attr(node, "dilations", [1] * n)]
    begins, ends = spatial_pads(ctx, node, x, kernel, strides, dilations)
    x, pads = pad_asymmetric(ctx, x, begins, ends)
    return ctx.emit1("conv", [x, w, b], {"stride": strides, "padding": pads, "dilation": dilations,
                                         "groups": int(attr(node, "group", 1))})


@register_onnx_op("ConvTranspose")
def _conv_transpose(ctx, node):
    x, w, b = value_at(ctx, node, 0), value_at(ctx, node, 1), value_at(ctx, node, 2)
    n = w.rank - 2
    strides = [int(s) for s in attr(node, "strides", [1] * n)]
    dilations = [int(d) for d in attr(node, "dilations", [1] * n)]
    auto = attr(node, "auto_pad", "NOTSET")
    if auto not in ("NOTSET", "VALID", "", None) or attr(node, "output_shape") is not None:
        raise GraphoptError(f"{ctx.where()}: ConvTranspose with auto_pad={auto} or output_shape is not supported; "
                            "export it with explicit pads")
    pads = [int(p) for p in attr(node, "pads", [0] * (2 * n))] if auto != "VALID" else [0] * (2 * n)
    begins, ends = pads[:n], pads[n:]
    sym = [min(bb, e) for bb, e in zip(begins, ends)]
    attrs = {"stride": strides, "padding": sym, "dilation": dilations, "groups": int(attr(node, "group", 1)),
             "output_padding": [int(p) for p in attr(node, "output_padding", [0] * n)]}
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
    a = value_at(ctx, node, 0)
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
    alpha, beta = float(attr(node, "alpha", 1.0)), float(attr(node, "beta", 1.0))
    trans_a, trans_b = int(attr(node, "transA", 0)), int(attr(node, "transB", 0))
    a = value_at(ctx, node, 0)
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
    return ctx.emit1("einsum", [ctx.value(n) for n in node.input], {"equation": attr(node, "equation")})


@register_onnx_op("Attention")
def _attention(ctx, node):
    if len([o for o in node.output if o]) > 1 or ctx.input(node, 4) or ctx.input(node, 5):
        raise GraphoptError(f"{ctx.where()}: Attention with a KV cache or extra outputs is not supported")
    q, k, v = value_at(ctx, node, 0), value_at(ctx, node, 1), value_at(ctx, node, 2)
    mask = value_at(ctx, node, 3)
    if q.rank != 4 or attr(node, "softcap", 0.0) or attr(node, "qk_matmul_output_mode", 0):
        raise GraphoptError(f"{ctx.where()}: only 4-d Attention without softcap is supported")
    attrs = {"is_causal": bool(attr(node, "is_causal", 0)), "scale": attr(node, "scale"),
             "enable_gqa": not D.dims_equal(q.shape[1], k.shape[1])}
    return ctx.emit1("sdpa", [q, k, v, mask], attrs)
