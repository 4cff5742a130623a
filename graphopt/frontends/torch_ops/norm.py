"""ATen converters for normalisation and softmax: batch/instance/layer/group/RMS norm, (log_)softmax.

A batch norm without running statistics (nn.BatchNorm with track_running_stats=False, or
the weight standardisation of NFNet/BiT convs, F.batch_norm(w, None, None, training=True))
normalises by the statistics of its own input; it decomposes exactly into mean, var and
elementwise ops, which the channel analysis and every back-end already know. Instance norm
is the same with per-sample statistics.
"""

from __future__ import annotations

from graphopt.errors import GraphoptError
from graphopt.frontends.torch import register_torch_op
from graphopt.frontends.torch_ops._common import cast_to, schema_arg
from graphopt.ir.graph import Value


@register_torch_op("aten._native_batch_norm_legit_no_training")
def _bn_no_training(ctx, node):
    x, w, b, mean, var = (ctx.maybe_value(a) for a in node.args[:5])
    out = ctx.emit1("batch_norm", [x, w, b, mean, var], {"eps": float(node.args[6]), "momentum": float(node.args[5])})
    return [out, None, None]


def _batch_statistics_norm(ctx, x: Value, w: Value | None, b: Value | None, eps: float,
                           per_sample: bool = False) -> Value:
    """(x - mean) / sqrt(var + eps) * w + b, with mean and biased var over every axis but the channel axis 1
    (and the batch axis 0 too when `per_sample`: instance norm)."""
    axes = [a for a in range(x.rank) if a != 1 and not (per_sample and a == 0)]
    mean = ctx.emit1("mean", [x], {"axes": axes, "keepdim": True})
    var = ctx.emit1("var", [x], {"axes": axes, "keepdim": True, "correction": 0})
    inv_std = ctx.emit1("rsqrt", [ctx.emit1("add", [var, ctx.scalar(eps)])])
    y = ctx.emit1("mul", [ctx.emit1("sub", [x, mean]), inv_std])
    per_channel = [x.shape[1]] + [1] * (x.rank - 2)
    if w is not None:
        y = ctx.emit1("mul", [y, ctx.emit1("reshape", [w], {"shape": per_channel})])
    if b is not None:
        y = ctx.emit1("add", [y, ctx.emit1("reshape", [b], {"shape": per_channel})])
    return y


def _batch_norm_from(ctx, node, args: list) -> Value:
    """Convert batch_norm(x, w, b, running_mean, running_var, training, momentum, eps) in any of its spellings."""
    x, w, b, mean, var = (ctx.maybe_value(a) for a in args[:5])
    training, momentum, eps = bool(args[5]), float(args[6]), float(args[7])
    if mean is None and var is None:
        return _batch_statistics_norm(ctx, x, w, b, eps)
    if training:
        raise GraphoptError(f"node '{node.name}': batch_norm in training mode updates its running statistics; "
                            "trace the model in eval mode")
    return ctx.emit1("batch_norm", [x, w, b, mean, var], {"eps": eps, "momentum": momentum})


@register_torch_op("aten.batch_norm")
def _batch_norm(ctx, node):
    return _batch_norm_from(ctx, node, list(node.args[:8]))


@register_torch_op("aten.native_batch_norm", "aten._native_batch_norm_legit_functional")
def _native_batch_norm(ctx, node):
    out = _batch_norm_from(ctx, node, list(node.args[:8]))
    return [out] + [None] * (len(ctx.current.meta["val"]) - 1)  # the saved statistics are for backward only


@register_torch_op("aten.instance_norm")
def _instance_norm(ctx, node):
    x, w, b, mean, var = (ctx.maybe_value(a) for a in node.args[:5])
    use_input_stats, momentum, eps = bool(node.args[5]), float(node.args[6]), float(node.args[7])
    if use_input_stats:  # the usual InstanceNorm: each sample's own statistics, running ones (if any) unused
        return _batch_statistics_norm(ctx, x, w, b, eps, per_sample=True)
    return ctx.emit1("batch_norm", [x, w, b, mean, var], {"eps": eps, "momentum": momentum})


@register_torch_op("aten._native_batch_norm_legit.no_stats")
def _batch_norm_no_stats(ctx, node):
    x, w, b = (ctx.maybe_value(a) for a in node.args[:3])
    return [_batch_statistics_norm(ctx, x, w, b, float(node.args[5])), None, None]


@register_torch_op("aten.layer_norm")
def _layer_norm(ctx, node):
    x = ctx.value(node.args[0])
    w, b = ctx.maybe_value(schema_arg(node, 2, "weight")), ctx.maybe_value(schema_arg(node, 3, "bias"))
    return ctx.emit1("layer_norm", [x, w, b], {"normalized_shape": [int(d) for d in node.args[1]],
                                               "eps": float(schema_arg(node, 4, "eps", 1e-5))})


@register_torch_op("aten.native_layer_norm")
def _native_layer_norm(ctx, node):
    x = ctx.value(node.args[0])
    w, b = ctx.maybe_value(node.args[2]), ctx.maybe_value(node.args[3])
    out = ctx.emit1("layer_norm", [x, w, b], {"normalized_shape": [int(d) for d in node.args[1]], "eps": float(node.args[4])})
    return [out, None, None]


@register_torch_op("aten.group_norm")
def _group_norm(ctx, node):
    x = ctx.value(node.args[0])
    w, b = ctx.maybe_value(schema_arg(node, 2, "weight")), ctx.maybe_value(schema_arg(node, 3, "bias"))
    return ctx.emit1("group_norm", [x, w, b], {"num_groups": int(node.args[1]), "eps": float(schema_arg(node, 4, "eps", 1e-5))})


@register_torch_op("aten.rms_norm")
def _rms_norm(ctx, node):
    x = ctx.value(node.args[0])
    w = ctx.maybe_value(schema_arg(node, 2, "weight"))
    eps = schema_arg(node, 3, "eps")
    return ctx.emit1("rms_norm", [x, w], {"normalized_shape": [int(d) for d in node.args[1]],
                                           "eps": None if eps is None else float(eps)})


@register_torch_op("aten.softmax", "aten._softmax", "aten.log_softmax", "aten._log_softmax")
def _softmax(ctx, node):
    op = "log_softmax" if "log_softmax" in str(node.target) else "softmax"
    x = ctx.value(node.args[0])
    out = ctx.emit1(op, [x], {"axis": int(node.args[1])})
    return cast_to(ctx, out, ctx.out_dtype())
