"""ONNX lowerings of normalisation and softmax: batch/layer/group/RMS norm, (log_)softmax."""

from __future__ import annotations

from typing import Sequence

import torch

from graphopt.backends.onnx.builder import OnnxBuilder
from graphopt.backends.onnx.lowering import lowering
from graphopt.backends.onnx.lowerings._common import out_of, scalar, reduce


def _ones_or(b: OnnxBuilder, name: str | None, shape: Sequence[int], value: float, dtype: torch.dtype) -> str:
    if name is not None:
        return name
    return b.const(torch.full([int(s) for s in shape], value, dtype=dtype), dtype, hint="ones" if value else "zeros")


@lowering("batch_norm")
def _batch_norm(b, node, ins):
    dt = out_of(node).dtype
    x, w, bias, mean, var = (list(ins) + [None] * 5)[:5]
    channels = node.inputs[3].shape
    w = _ones_or(b, w, channels, 1.0, dt)
    bias = _ones_or(b, bias, channels, 0.0, dt)
    eps = float(node.attrs.get("eps", 1e-5))
    return b.op("BatchNormalization", [x, w, bias, mean, var], {"epsilon": eps}, dtype=dt)


@lowering("layer_norm")
def _layer_norm(b, node, ins):
    dt = out_of(node).dtype
    shape = [int(s) for s in node.attrs["normalized_shape"]]
    w = _ones_or(b, ins[1] if len(ins) > 1 else None, shape, 1.0, dt)
    bias = ins[2] if len(ins) > 2 else None
    return b.op("LayerNormalization", [ins[0], w] + ([bias] if bias else []),
                {"axis": -len(shape), "epsilon": float(node.attrs.get("eps", 1e-5))}, dtype=dt)


@lowering("group_norm")
def _group_norm(b, node, ins):
    # [N, C, *] -> [N, G, -1], InstanceNormalization over the last axis, back to [N, C, *], then the affine
    x_v = node.inputs[0]
    dt = out_of(node).dtype
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
    dt = out_of(node).dtype
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
    inv = b.op("Reciprocal", [b.op("Sqrt", [b.op("Add", [ms, scalar(b, eps, dt)], dtype=dt)], dtype=dt)], dtype=dt)
    y = b.op("Mul", [ins[0], inv], dtype=dt)
    return b.op("Mul", [y, w], dtype=dt) if w is not None else y


@lowering("softmax", "log_softmax")
def _softmax(b, node, ins):
    op_type = "Softmax" if node.op == "softmax" else "LogSoftmax"
    return b.op(op_type, ins[:1], {"axis": int(node.attrs["axis"])}, dtype=out_of(node).dtype)
