"""ONNX lowerings of the recurrent ops: one ONNX LSTM or GRU node per layer (forward or bidirectional).

torch stacks the gates along the weights' first axis as i, f, g, o (LSTM) and
r, z, n (GRU); ONNX wants i, o, f, c and z, r, h, one [D, G*H, *] tensor per
kind over the D directions, and the two biases concatenated. The weights are
reordered by Gather in the graph, so computed weights work too (ONNX Runtime
folds the reordering of constant ones). torch's GRU applies the reset gate
after the hidden product, which is ONNX's linear_before_reset=1. ONNX's Y is
[T, D, N, H]; torch's output is [T, N, D*H], the layer's input to the next one.
"""

from __future__ import annotations

import torch

from graphopt.backends.onnx.lowering import lowering
from graphopt.backends.onnx.lowerings._common import out_of
from graphopt.ir.ops.recurrent import CELLS, first_weight, lstm_weights_per_direction

# torch's gate blocks in the order ONNX stacks them
_ONNX_GATES = {"lstm": (0, 3, 1, 2), "gru": (1, 0, 2)}


def _onnx_gate_order(op: str, hidden: int) -> list[int]:
    """Rows of torch's gate stack in ONNX's order."""
    return [g * hidden + i for g in _ONNX_GATES[op] for i in range(hidden)]


def _stack_directions(b, names: list[str], order: str, dt: torch.dtype) -> str:
    """Reorder each direction's gates and stack the directions on a new axis 0."""
    per_direction = [b.op("Unsqueeze", [b.op("Gather", [n, order], {"axis": 0}, dtype=dt), b.i64([0])], dtype=dt)
                     for n in names]
    return per_direction[0] if len(per_direction) == 1 else b.op("Concat", per_direction, {"axis": 0}, dtype=dt)


def _layer_weights(b, node, ins, layer: int, order: str, dt: torch.dtype) -> list[str | None]:
    """W, R and B (None without biases) of one layer, every direction, in ONNX's layout."""
    directions = 2 if node.attrs["bidirectional"] else 1
    per = lstm_weights_per_direction(node.attrs["has_biases"])
    first = first_weight(node.op) + layer * directions * per
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


@lowering("lstm", "gru")
def _recurrent(b, node, ins):
    a, dt = node.attrs, out_of(node).dtype
    hidden, directions = int(a["hidden_size"]), 2 if a["bidirectional"] else 1
    states = CELLS[node.op][1]
    order = b.i64(_onnx_gate_order(node.op, hidden))
    attrs = {"hidden_size": hidden, "direction": "bidirectional" if directions == 2 else "forward"}
    if node.op == "gru":
        attrs["linear_before_reset"] = 1
    x = b.op("Transpose", [ins[0]], {"perm": [1, 0, 2]}, dtype=dt) if a["batch_first"] else ins[0]
    finals: list[list[str]] = [[] for _ in range(states)]  # per state: each layer's final value
    for layer in range(a["num_layers"]):
        w, r, bias = _layer_weights(b, node, ins, layer, order, dt)
        span = [b.i64([layer * directions]), b.i64([(layer + 1) * directions]), b.i64([0])]
        initial = [b.op("Slice", [ins[1 + s], *span], dtype=dt) for s in range(states)]
        y, *last = b.op(node.op.upper(), [x, w, r, bias, "", *initial], attrs, outputs=1 + states, dtype=dt)
        for s in range(states):
            finals[s].append(last[s])
        x = b.op("Reshape", [b.op("Transpose", [y], {"perm": [0, 2, 1, 3]}, dtype=dt), b.i64([0, 0, -1])], dtype=dt)
    out = b.op("Transpose", [x], {"perm": [1, 0, 2]}, dtype=dt) if a["batch_first"] else x
    return [out] + [f[0] if len(f) == 1 else b.op("Concat", f, {"axis": 0}, dtype=dt) for f in finals]
