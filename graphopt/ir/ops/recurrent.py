"""Recurrent ops (lstm, gru): a whole stacked, optionally bidirectional LSTM or GRU as one node, as torch runs it.

One node rather than a decomposition into per-step matmuls: an unrolled loop
would fix the sequence length and grow the graph with it, while torch
(`torch.lstm`, `torch.gru`) and ONNX (`LSTM`, `GRU`) run the whole recurrence as one operator,
for any length. (torch.export 2.13 still specialises nn.LSTM's sequence length
when tracing, with a warning; the op and its lowering do not need it fixed.)
"""

from __future__ import annotations

import torch

from graphopt.errors import ShapeError
from graphopt.ir.graph import Node
from graphopt.ir.ops._core import TensorType, in_, kernel, op

_ATTRS = {
    "hidden_size": "H, the size of the hidden state",
    "num_layers": "stacked layers (each reads the previous one's output)",
    "bidirectional": "a second, reversed direction per layer; outputs concatenated",
    "batch_first": "x and the output are [N, T, *] instead of [T, N, *]",
    "has_biases": "weights come in fours (w_ih, w_hh, b_ih, b_hh) instead of pairs",
}
# op -> (gates stacked on the weights' first axis, state inputs and outputs besides the sequence)
CELLS = {"lstm": (4, 2), "gru": (3, 1)}


def lstm_weights_per_direction(has_biases: bool) -> int:
    """Weights per layer and direction, for lstm and gru alike: w_ih, w_hh (and b_ih, b_hh)."""
    return 4 if has_biases else 2


def first_weight(op: str) -> int:
    """Input index of the first weight: after x and the initial states."""
    return 1 + CELLS[op][1]


def _recurrent(node: Node) -> list[TensorType]:
    x, h0 = in_(node, 0), in_(node, 1)
    a, (gates, states) = node.attrs, CELLS[node.op]
    if x.rank != 3:
        raise ShapeError(f"{node.where()}: {node.op} wants a 3-d input, got rank {x.rank}")
    directions = 2 if a["bidirectional"] else 1
    expected = a["num_layers"] * directions * lstm_weights_per_direction(a["has_biases"])
    given = len(node.inputs) - first_weight(node.op)
    if given != expected:
        raise ShapeError(f"{node.where()}: {given} weights given, {expected} expected")
    hidden = a["hidden_size"]
    w_hh = in_(node, first_weight(node.op) + 1)
    if tuple(w_hh.shape) != (gates * hidden, hidden):
        raise ShapeError(f"{node.where()}: w_hh has shape {list(w_hh.shape)}, "
                         f"expected [{gates * hidden}, {hidden}]")
    seq, batch = (x.shape[1], x.shape[0]) if a["batch_first"] else (x.shape[0], x.shape[1])
    out = (batch, seq, directions * hidden) if a["batch_first"] else (seq, batch, directions * hidden)
    state = (a["num_layers"] * directions, batch, hidden)
    if tuple(h0.shape)[0::2] != state[0::2]:
        raise ShapeError(f"{node.where()}: h0 has shape {list(h0.shape)}, expected {list(state)}")
    return [(out, x.dtype)] + [(state, x.dtype)] * states


_SHAPE = ("x [T, N, I] -> output [T, N, D*H], {states} [L*D, N, H] (D = 2 if bidirectional); weights per layer "
          "and direction: w_ih [{g}H, I or D*H], w_hh [{g}H, H], b_ih [{g}H], b_hh [{g}H] (torch's gate order {order})")
op("lstm", "x, h0, c0, *weights", attrs=_ATTRS, category="recurrent", doc="nn.LSTM: output, h_n, c_n",
   shape=_SHAPE.format(states="h_n and c_n", g=4, order="i, f, g, o"))(_recurrent)
op("gru", "x, h0, *weights", attrs=_ATTRS, category="recurrent", doc="nn.GRU: output, h_n",
   shape=_SHAPE.format(states="h_n", g=3, order="r, z, n"))(_recurrent)


@kernel("lstm")
def lstm(x, h0, c0, *weights, hidden_size, num_layers, bidirectional, batch_first, has_biases):
    return tuple(torch.lstm(x, (h0, c0), list(weights), has_biases, num_layers, 0.0, False, bidirectional,
                            batch_first))


@kernel("gru")
def gru(x, h0, *weights, hidden_size, num_layers, bidirectional, batch_first, has_biases):
    return tuple(torch.gru(x, h0, list(weights), has_biases, num_layers, 0.0, False, bidirectional, batch_first))
