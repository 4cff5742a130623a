"""ATen converters for recurrent layers: aten.lstm and aten.gru (nn.LSTM/nn.GRU on padded, not packed, sequences)."""

from __future__ import annotations

from graphopt.errors import GraphoptError
from graphopt.frontends.torch import register_torch_op
from graphopt.ir.ops.recurrent import lstm_weights_per_direction


def _recurrent(ctx, node, op: str, states: list):
    """input, hx, params, has_biases, num_layers, dropout, train, bidirectional, batch_first -> one `op` node."""
    x = ctx.value(node.args[0])
    weights = [ctx.value(w) for w in node.args[2]]
    has_biases, num_layers = bool(node.args[3]), int(node.args[4])
    bidirectional, batch_first = bool(node.args[7]), bool(node.args[8])
    expected = num_layers * (2 if bidirectional else 1) * lstm_weights_per_direction(has_biases)
    if len(weights) != expected:  # the extra weight per direction is weight_hr, the projection
        raise GraphoptError(f"node '{node.name}': nn.LSTM with proj_size is not supported "
                            f"({len(weights)} weights, {expected} expected without a projection)")
    attrs = {"hidden_size": int(weights[1].shape[1]), "num_layers": num_layers, "bidirectional": bidirectional,
             "batch_first": batch_first, "has_biases": has_biases}
    return list(ctx.emit(op, [x, *(ctx.value(s) for s in states), *weights], attrs).outputs)


@register_torch_op("aten.lstm.input")
def _lstm(ctx, node):
    return _recurrent(ctx, node, "lstm", list(node.args[1]))


@register_torch_op("aten.gru.input")
def _gru(ctx, node):
    return _recurrent(ctx, node, "gru", [node.args[1]])
