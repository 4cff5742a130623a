"""ONNX lowering of the recurrent op: lstm as one ONNX LSTM node per layer (forward or bidirectional).

torch stacks the gates i, f, g, o along the weights' first axis; ONNX wants
i, o, f, c (c is torch's g), one [D, 4H, *] tensor per kind over the D
directions, and the two biases concatenated. The weights are reordered by
Gather in the graph, so computed weights work too (ONNX Runtime folds the
reordering of constant ones). ONNX's Y is [T, D, N, H]; torch's output is
[T, N, D*H], the layer's input to the next one.
"""

from __future__ import annotations

import torch

from graphopt.backends.onnx.lowering import lowering
from graphopt.backends.onnx.lowerings._common import out_of
from graphopt.ir.ops.recurrent import lstm_weights_per_direction


def _onnx_gate_order(hidden: int) -> list[int]:
    """Rows of torch's [i; f; g; o] stack in ONNX's order [i; o; f; c]."""
    block = [list(range(g * hidden, (g + 1) * hidden)) for g in range(4)]
    return block[0] + block[3] + block[1] + block[2]


def _stack_directions(b, names: list[str], order: str, dt: torch.dtype) -> str:
    """Reorder each direction's gates and stack the directions on a new axis 0."""
    per_direction = [b.op("Unsqueeze", [b.op("Gather", [n, order], {"axis": 0}, dtype=dt), b.i64([0])], dtype=dt)
                     for n in names]
    return per_direction[0] if len(per_direction) == 1 else b.op("Concat", per_direction, {"axis": 0}, dtype=dt)


def _layer_weights(b, node, ins, layer: int, order: str, dt: torch.dtype) -> list[str | None]:
    """W, R and B (None without biases) of one layer, every direction, in ONNX's layout."""
    directions = 2 if node.attrs["bidirectional"] else 1
    per = lstm_weights_per_direction(node.attrs["has_biases"])
    first = 3 + layer * directions * per
    groups = [ins[first + d * per: first + (d + 1) * per] for d in range(directions)]
    w = _stack_directions(b, [g[0] for g in groups], order, dt)
    r = _stack_directions(b, [g[1] for g in groups], order, dt)
    if per == 2:
        return [w, r, None]
    biases = [b.op("Concat", [b.op("Gather", [g[2], order], {"axis": 0}, dtype=dt),
                              b.op("Gather", [g[3], order], {"axis": 0}, dtype=dt)], {"axis": 0}, dtype=dt)
              for g in groups]
    stacked = [b.op("Unsqueeze", [bias, b.i64([0])], dtype=dt) for bias in biases]
    return [w, r, stacked[0] if directions == 1 else b.op("Concat", stacked, {"axis": 0}, dtype=dt)]


@lowering("lstm")
def _lstm(b, node, ins):
    a, dt = node.attrs, out_of(node).dtype
    hidden, directions = int(a["hidden_size"]), 2 if a["bidirectional"] else 1
    order = b.i64(_onnx_gate_order(hidden))
    x = b.op("Transpose", [ins[0]], {"perm": [1, 0, 2]}, dtype=dt) if a["batch_first"] else ins[0]
    h_n, c_n = [], []
    for layer in range(a["num_layers"]):
        w, r, bias = _layer_weights(b, node, ins, layer, order, dt)
        span = [b.i64([layer * directions]), b.i64([(layer + 1) * directions]), b.i64([0])]
        h0 = b.op("Slice", [ins[1], *span], dtype=dt)
        c0 = b.op("Slice", [ins[2], *span], dtype=dt)
        y, y_h, y_c = b.op("LSTM", [x, w, r, bias, "", h0, c0],
                           {"hidden_size": hidden, "direction": "bidirectional" if directions == 2 else "forward"},
                           outputs=3, dtype=dt)
        h_n.append(y_h)
        c_n.append(y_c)
        x = b.op("Reshape", [b.op("Transpose", [y], {"perm": [0, 2, 1, 3]}, dtype=dt), b.i64([0, 0, -1])], dtype=dt)
    out = b.op("Transpose", [x], {"perm": [1, 0, 2]}, dtype=dt) if a["batch_first"] else x
    states = [s[0] if len(s) == 1 else b.op("Concat", s, {"axis": 0}, dtype=dt) for s in (h_n, c_n)]
    return [out, *states]
