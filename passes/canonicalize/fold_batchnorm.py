"""`fold-batchnorm`: fold inference batch norm into the conv / linear / conv_transpose that feeds it."""

from __future__ import annotations

from typing import Sequence

import torch

from graphopt.ir.graph import Graph, Node, Value
from graphopt.passmanager import register_pass
from graphopt.passmanager.rewrite import Outcome, RewritePass, Rule, rule

FOLDABLE = ("conv", "conv_transpose", "linear")


def fold_target(bn: Node) -> Node | str:
    """The layer `bn` folds into (a conv/linear whose output only bn reads, weights stored), or why none."""
    x = bn.inputs[0]
    producer = x.producer
    if producer is None or producer.op not in FOLDABLE:
        return "its input is not produced by a conv, conv_transpose or linear"
    if len(x.uses()) != 1 or x.is_graph_output():
        return "another reader needs the un-normalised output"
    weight = producer.inputs[1]
    bias = producer.inputs[2] if len(producer.inputs) > 2 else None
    if weight is None or not weight.is_weight or (bias is not None and not bias.is_weight):
        return "the layer's weight or bias is computed, not a stored tensor"
    if not weight.dtype.is_floating_point:
        return "the layer is already quantized: scaling would need requantization"
    stats = bn.inputs[1:5]
    if any(v is not None and not v.is_weight for v in stats) or stats[2] is None or stats[3] is None:
        return "its statistics are not stored tensors"
    channels = x.shape[1] if x.rank > 1 else None
    if not isinstance(channels, int) or channels != stats[2].shape[0]:
        return "its channel count is not known to match the statistics"
    if producer.op == "linear" and x.rank != 2:
        return "batch_norm's channel axis 1 is the feature axis of a linear only for [N, features]"
    return producer


def _scaled_weight(op: str, weight: torch.Tensor, scale: torch.Tensor, groups: int) -> torch.Tensor:
    """Multiply each output channel of the layer's weight by `scale`."""
    tail = (1,) * (weight.dim() - 2)
    if op in ("conv", "linear"):  # weight [C_out, ...]
        return weight * scale.reshape(-1, 1, *tail)
    # conv_transpose weight [C_in, C_out/groups, k...]: output channel g*(C_out/groups) + j
    c_in, c_out_g = weight.shape[0], weight.shape[1]
    grouped = weight.reshape(groups, c_in // groups, c_out_g, *weight.shape[2:])
    return (grouped * scale.reshape(groups, 1, c_out_g, *tail)).reshape(weight.shape)


def _bias_name(graph: Graph, weight: Value) -> str:
    # add_weight makes the name unique if it is taken
    return weight.name[: -len("weight")] + "bias" if weight.name.endswith("weight") else weight.name + ".bias"


def _own_weight(graph: Graph, layer: Node, index: int, value: Value, tensor: torch.Tensor) -> None:
    """Give `layer` input `index` the tensor, rewriting the weight in place only if no one else reads it."""
    if len(value.uses()) == 1 and not value.is_graph_output():
        value.set_data(tensor)
    else:
        layer.set_input(index, graph.add_weight(value.name + ".bn_folded", tensor, kind="param"))


def fold_into_layer(graph: Graph, bn: Node, layer: Node) -> None:
    """Scale `layer`'s weight and bias so that its output is what `bn` made of it (bn itself stays)."""
    gamma, beta, mean, var = bn.inputs[1:5]
    weight = layer.inputs[1]
    bias = layer.inputs[2] if len(layer.inputs) > 2 else None
    eps = float(bn.attrs.get("eps", 1e-5))
    # In float64, so the folded tensors are the exactly-rounded fp32 values of the ideal ones.
    f64 = torch.float64
    var_t, mean_t = var.data.to(f64), mean.data.to(f64)
    scale = torch.rsqrt(var_t + eps)
    if gamma is not None:
        scale = scale * gamma.data.to(f64)
    shift = -mean_t * scale
    if beta is not None:
        shift = shift + beta.data.to(f64)
    groups = int(layer.attrs.get("groups", 1)) if layer.op == "conv_transpose" else 1
    new_weight = _scaled_weight(layer.op, weight.data.to(f64), scale, groups).to(weight.dtype)
    new_bias = shift if bias is None else bias.data.to(f64) * scale + shift
    new_bias = new_bias.to(bias.dtype if bias is not None else weight.dtype)

    _own_weight(graph, layer, 1, weight, new_weight)
    if bias is not None:
        _own_weight(graph, layer, 2, bias, new_bias)
    else:
        created = graph.add_weight(_bias_name(graph, weight), new_bias, kind="param")
        if len(layer.inputs) > 2:
            layer.set_input(2, created)
        else:
            layer.set_inputs([*layer.inputs, created])
    # Record the fold on the layer, as a new tuple: meta dicts are shallow-copied by Graph.clone.
    layer.meta["folded"] = (*layer.meta.get("folded", ()), bn.name)


@rule("fold-batchnorm-into-layer", "batch_norm")
def fold_batchnorm_into_layer(bn: Node) -> Outcome:
    """batch_norm(layer(x)) -> layer'(x), with the layer's weight and bias scaled and shifted."""
    layer = fold_target(bn)
    if isinstance(layer, str):
        return layer
    fold_into_layer(bn.graph, bn, layer)
    return layer.output  # the driver redirects bn's readers, erases bn and its now unread statistics


RULES: tuple[Rule, ...] = (fold_batchnorm_into_layer,)


@register_pass("fold-batchnorm")
class FoldBatchNorm(RewritePass):
    """Fold each inference batch_norm into the conv/linear/conv_transpose before it (W*scale, b*scale+shift).

    Only when the layer's output has no other reader; a bias is created when
    the layer has none. A weight shared with another node is copied, never
    rewritten under the other reader.
    """

    def rules(self) -> Sequence[Rule]:
        return RULES


__all__ = ["FoldBatchNorm", "RULES", "fold_into_layer", "fold_target"]
