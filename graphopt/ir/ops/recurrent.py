"""Recurrent ops (lstm): a whole stacked, optionally bidirectional LSTM as one node, as nn.LSTM runs it.

One node rather than a decomposition into per-step matmuls: an unrolled loop
would fix the sequence length and grow the graph with it, while torch
(`torch.lstm`) and ONNX (`LSTM`) both run the whole recurrence as one operator,
for any length. (torch.export 2.13 still specialises nn.LSTM's sequence length
when tracing, with a warning; the op and its lowering do not need it fixed.)
"""

from __future__ import annotations

import torch

from graphopt.errors import ShapeError
from graphopt.ir.graph import Node
from graphopt.ir.ops._core import TensorType, in_, kernel, op

_LSTM_ATTRS = {
    "hidden_size": "H, the size of h and c",
    "num_layers": "stacked layers (each reads the previous one's output)",
    "bidirectional": "a second, reversed direction per layer; outputs concatenated",
    "batch_first": "x and the output are [N, T, *] instead of [T, N, *]",
    "has_biases": "weights come in fours (w_ih, w_hh, b_ih, b_hh) instead of pairs",
}


def lstm_weights_per_direction(has_biases: bool) -> int:
    return 4 if has_biases else 2


@op("lstm", "x, h0, c0, *weights", attrs=_LSTM_ATTRS,
    shape="x [T, N, I] -> output [T, N, D*H], h_n and c_n [L*D, N, H] (D = 2 if bidirectional); "
          "weights per layer and direction: w_ih [4H, I or D*H], w_hh [4H, H], b_ih [4H], b_hh [4H] "
          "(torch's gate order i, f, g, o)",
    category="recurrent", doc="nn.LSTM: output, h_n, c_n")
def _lstm(node: Node) -> list[TensorType]:
    x, h0 = in_(node, 0), in_(node, 1)
    a = node.attrs
    if x.rank != 3:
        raise ShapeError(f"{node.where()}: lstm wants a 3-d input, got rank {x.rank}")
    directions = 2 if a["bidirectional"] else 1
    expected = a["num_layers"] * directions * lstm_weights_per_direction(a["has_biases"])
    if len(node.inputs) - 3 != expected:
        raise ShapeError(f"{node.where()}: {len(node.inputs) - 3} weights given, {expected} expected")
    hidden = a["hidden_size"]
    w_hh = in_(node, 4)
    if tuple(w_hh.shape) != (4 * hidden, hidden):
        raise ShapeError(f"{node.where()}: w_hh has shape {list(w_hh.shape)}, expected [{4 * hidden}, {hidden}]")
    seq, batch = (x.shape[1], x.shape[0]) if a["batch_first"] else (x.shape[0], x.shape[1])
    out = (batch, seq, directions * hidden) if a["batch_first"] else (seq, batch, directions * hidden)
    state = (a["num_layers"] * directions, batch, hidden)
    if tuple(h0.shape)[0::2] != state[0::2]:
        raise ShapeError(f"{node.where()}: h0 has shape {list(h0.shape)}, expected {list(state)}")
    return [(out, x.dtype), (state, x.dtype), (state, x.dtype)]


@kernel("lstm")
def lstm(x, h0, c0, *weights, hidden_size, num_layers, bidirectional, batch_first, has_biases):
    return tuple(torch.lstm(x, (h0, c0), list(weights), has_biases, num_layers, 0.0, False, bidirectional,
                            batch_first))
