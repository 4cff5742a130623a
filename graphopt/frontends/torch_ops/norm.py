"""ATen converters for normalisation and softmax: batch/layer/group/RMS norm, (log_)softmax."""

from __future__ import annotations

from graphopt.errors import GraphoptError
from graphopt.frontends.torch import register_torch_op
from graphopt.frontends.torch_ops._common import cast_to, schema_arg


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
