"""ONNX converters for normalisation and softmax: Batch/Instance/Layer/Group/RMS normalisation, (Log)Softmax."""

from __future__ import annotations

from graphopt.errors import GraphoptError
from graphopt.frontends.onnx import register_onnx_op
from graphopt.frontends.onnx_ops._common import attr, reshape_to, value_at
from graphopt.ir import dims as D
from graphopt.ir.graph import Value


@register_onnx_op("BatchNormalization")
def _batch_norm(ctx, node):
    if attr(node, "training_mode", 0):
        return _batch_statistics_norm(ctx, node)
    x, scale, bias = (value_at(ctx, node, i) for i in range(3))
    mean, var = (ctx.value(node.input[i], kind="buffer") for i in (3, 4))  # running statistics, as in torch
    out = ctx.emit1("batch_norm", [x, scale, bias, mean, var],
                    {"eps": float(attr(node, "epsilon", 1e-5)), "momentum": 1.0 - float(attr(node, "momentum", 0.9))})
    return [out] + [None] * (len(node.output) - 1)


def _batch_statistics_norm(ctx, node):
    """training_mode=1: normalise by the statistics of this batch (what torch.onnx writes for
    F.batch_norm(training=True), e.g. NFNet's weight standardisation), not by running statistics.

    Only the normalised output is defined for inference; the updated running statistics are not.
    """
    if any(out and ctx.consumers.get(out) for out in node.output[1:]):
        raise GraphoptError(f"{ctx.where()}: the running-statistics outputs of a training-mode "
                            "BatchNormalization are read; graphopt imports inference graphs")
    x, scale, bias = (value_at(ctx, node, i) for i in range(3))
    axes = [a for a in range(x.rank) if a != 1]
    eps = float(attr(node, "epsilon", 1e-5))
    mean = ctx.emit1("mean", [x], {"axes": axes, "keepdim": True})
    var = ctx.emit1("var", [x], {"axes": axes, "keepdim": True, "correction": 0})
    scaled = ctx.emit1("mul", [ctx.emit1("sub", [x, mean]),
                               ctx.emit1("rsqrt", [ctx.emit1("add", [var, ctx.scalar(eps, x.dtype)])])])
    per_channel = [1, x.shape[1]] + [1] * (x.rank - 2)
    out = ctx.emit1("add", [ctx.emit1("mul", [scaled, reshape_to(ctx, scale, per_channel)]),
                            reshape_to(ctx, bias, per_channel)])
    return [out] + [None] * (len(node.output) - 1)


@register_onnx_op("InstanceNormalization")
def _instance_norm(ctx, node):
    x, scale, bias = value_at(ctx, node, 0), value_at(ctx, node, 1), value_at(ctx, node, 2)
    channels = x.shape[1]
    if not isinstance(channels, int):
        raise GraphoptError(f"{ctx.where()}: InstanceNormalization needs a static channel count")
    eps = float(attr(node, "epsilon", 1e-5))
    return ctx.emit1("group_norm", [x, scale, bias], {"num_groups": channels, "eps": eps})


def _trailing_shape(ctx, x: Value, axis: int) -> list[int]:
    shape = list(x.shape[axis % x.rank:])
    if not all(isinstance(d, int) for d in shape):
        raise GraphoptError(f"{ctx.where()}: normalising over symbolic axes {shape} is not supported")
    return shape


def _affine_matches(value: Value | None, shape: list[int]) -> bool:
    return value is None or list(value.shape) == shape


@register_onnx_op("LayerNormalization")
def _layer_norm(ctx, node):
    x, scale, bias = value_at(ctx, node, 0), value_at(ctx, node, 1), value_at(ctx, node, 2)
    shape = _trailing_shape(ctx, x, int(attr(node, "axis", -1)))
    eps = float(attr(node, "epsilon", 1e-5))
    if _affine_matches(scale, shape) and _affine_matches(bias, shape):
        out = ctx.emit1("layer_norm", [x, scale, bias], {"normalized_shape": shape, "eps": eps})
    else:  # broadcast affine parameters: normalise, then scale and shift
        out = ctx.emit1("layer_norm", [x, None, None], {"normalized_shape": shape, "eps": eps})
        out = ctx.emit1("mul", [out, scale]) if scale is not None else out
        out = ctx.emit1("add", [out, bias]) if bias is not None else out
    return [out] + [None] * (len(node.output) - 1)


@register_onnx_op("GroupNormalization")
def _group_norm(ctx, node):
    x, scale, bias = value_at(ctx, node, 0), value_at(ctx, node, 1), value_at(ctx, node, 2)
    groups = int(attr(node, "num_groups"))
    channels = x.shape[1]
    params = []
    for name, value in ((node.input[1], scale), (node.input[2], bias)):
        if isinstance(channels, int) and value.shape[0] == groups and groups != channels:
            # opset 18 gives one scale per group: spread it over the group's channels
            k = ctx.known(name)
            if k is None:
                raise GraphoptError(f"{ctx.where()}: per-group scale/bias must be constants")
            value = ctx.weight(name, k.tensor().repeat_interleave(channels // groups))
        params.append(value)
    return ctx.emit1("group_norm", [x, *params], {"num_groups": groups, "eps": float(attr(node, "epsilon", 1e-5))})


@register_onnx_op("RMSNormalization")
def _rms_norm(ctx, node):
    x, scale = value_at(ctx, node, 0), value_at(ctx, node, 1)
    shape = _trailing_shape(ctx, x, int(attr(node, "axis", -1)))
    eps = float(attr(node, "epsilon", 1e-5))
    if _affine_matches(scale, shape):
        return ctx.emit1("rms_norm", [x, scale], {"normalized_shape": shape, "eps": eps})
    out = ctx.emit1("rms_norm", [x, None], {"normalized_shape": shape, "eps": eps})
    return ctx.emit1("mul", [out, scale])


@register_onnx_op("Softmax", "LogSoftmax")
def _softmax(ctx, node):
    op = "softmax" if node.op_type == "Softmax" else "log_softmax"
    x = value_at(ctx, node, 0)
    if ctx.opset >= 13:
        return ctx.emit1(op, [x], {"axis": int(attr(node, "axis", -1))})
    axis = int(attr(node, "axis", 1)) % max(x.rank, 1)
    if axis == x.rank - 1:
        return ctx.emit1(op, [x], {"axis": -1})
    # before opset 13 the input is coerced to 2-d [prod(:axis), prod(axis:)]
    flat = reshape_to(ctx, x, [D.prod(x.shape[:axis]), D.prod(x.shape[axis:])])
    return reshape_to(ctx, ctx.emit1(op, [flat], {"axis": 1}), x.shape)
