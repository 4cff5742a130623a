"""ONNX lowerings of dense ops: convolutions, linear/matmul/einsum, embedding, attention (fused from opset 23)."""

from __future__ import annotations

import math
from typing import Sequence

import torch

from graphopt.errors import GraphoptError
from graphopt.ir import dims as D
from graphopt.ir.graph import Node
from graphopt.backends.onnx.builder import OnnxBuilder
from graphopt.backends.onnx.lowering import lowering
from graphopt.backends.onnx.lowerings._common import casted, out_of, per_axis, scalar, expand, neg_inf, reduce, reshape


def _conv_attrs(node: Node, n: int) -> dict:
    stride = per_axis(node.attrs.get("stride", 1), n)
    pad = per_axis(node.attrs.get("padding", 0), n)
    dil = per_axis(node.attrs.get("dilation", 1), n)
    return {"strides": [int(s) for s in stride], "pads": [int(p) for p in pad] * 2,
            "dilations": [int(d) for d in dil], "group": int(node.attrs.get("groups", 1))}


@lowering("conv")
def _conv(b, node, ins):
    w = node.inputs[1]
    attrs = _conv_attrs(node, w.rank - 2)
    attrs["kernel_shape"] = [int(k) for k in w.shape[2:]]
    return b.op("Conv", [i for i in ins[:3] if i is not None], attrs, dtype=out_of(node).dtype)


@lowering("conv_transpose")
def _conv_transpose(b, node, ins):
    w = node.inputs[1]
    n = w.rank - 2
    attrs = _conv_attrs(node, n)
    attrs["kernel_shape"] = [int(k) for k in w.shape[2:]]
    opad = [int(p) for p in per_axis(node.attrs.get("output_padding", 0), n)]
    if any(opad):
        attrs["output_padding"] = opad
    return b.op("ConvTranspose", [i for i in ins[:3] if i is not None], attrs, dtype=out_of(node).dtype)


def _transposed_weight(b: OnnxBuilder, node: Node, name: str) -> str:
    """W^T for x @ W^T, as a Transpose node: the file keeps W under its own name, and ONNX Runtime
    folds the transpose into a constant when it loads the model."""
    w = node.inputs[1]
    return b.op("Transpose", [name], {"perm": list(range(w.rank))[::-1]}, dtype=w.dtype)


@lowering("linear")
def _linear(b, node, ins):
    x, w, bias = ins[0], ins[1], ins[2] if len(ins) > 2 else None
    dt = out_of(node).dtype
    if node.inputs[0].rank == 2 and node.inputs[1].is_weight:
        return b.op("Gemm", [x, w] + ([bias] if bias else []), {"transB": 1}, dtype=dt)
    y = b.op("MatMul", [x, _transposed_weight(b, node, w)], dtype=dt)
    return b.op("Add", [y, bias], dtype=dt) if bias else y


@lowering("matmul")
def _matmul(b, node, ins):
    dt = out_of(node).dtype
    return b.op("MatMul", casted(b, node, ins, dt), dtype=dt)


@lowering("einsum")
def _einsum(b, node, ins):
    dt = out_of(node).dtype
    return b.op("Einsum", casted(b, node, ins, dt), {"equation": node.attrs["equation"].replace(" ", "")}, dtype=dt)


@lowering("embedding")
def _embedding(b, node, ins):
    return b.op("Gather", [ins[1], ins[0]], {"axis": 0}, dtype=out_of(node).dtype)


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
    dt = out_of(node).dtype
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
    q_scaled = b.op("Mul", [q, scalar(b, float(scale), dt)], dtype=dt)
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


@lowering("grouped_mm")
def _grouped_mm(b, node, ins):
    """Every group's product [G, S, n], each row kept from its own group: group(s) = #{g: offsets[g] <= s}.

    Rows past offsets[-1] belong to no group and stay 0, as in the torch kernel.
    """
    x_v, w_v = node.inputs[0], node.inputs[1]
    dt = out_of(node).dtype
    x, w = b.cast(ins[0], dt, x_v.dtype), b.cast(ins[1], dt, w_v.dtype)
    offsets = b.cast(ins[2], torch.int64, node.inputs[2].dtype)
    groups = w_v.shape[0]
    rows = b.op("Range", [b.i64(0), b.scalar_dim(x_v.shape[0]), b.i64(1)], dtype=torch.int64)
    rows = b.op("Unsqueeze", [rows, b.i64([1])], dtype=torch.int64)  # [S, 1]
    passed = b.op("GreaterOrEqual", [rows, b.op("Unsqueeze", [offsets, b.i64([0])], dtype=torch.int64)],
                  dtype=torch.bool)  # [S, G]
    group = reduce(b, "ReduceSum", b.cast(passed, torch.int64, torch.bool), [1], False, torch.int64)  # [S]
    ids = b.op("Range", [b.i64(0), b.scalar_dim(groups), b.i64(1)], dtype=torch.int64)
    mine = b.op("Equal", [b.op("Unsqueeze", [group, b.i64([0])], dtype=torch.int64),
                          b.op("Unsqueeze", [ids, b.i64([1])], dtype=torch.int64)], dtype=torch.bool)  # [G, S]
    mine = b.op("Unsqueeze", [mine, b.i64([2])], dtype=torch.bool)  # [G, S, 1]
    every = b.op("MatMul", [x, w], dtype=dt)  # [G, S, n]
    kept = b.op("Where", [mine, every, scalar(b, 0, dt)], dtype=dt)
    return reduce(b, "ReduceSum", kept, [0], False, dt)
