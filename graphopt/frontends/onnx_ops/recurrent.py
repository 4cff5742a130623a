"""ONNX converters for LSTM and GRU: one ONNX node (one layer, forward or bidirectional) -> one lstm/gru node.

The inverse of the ONNX lowering (backends/onnx/lowerings/recurrent.py): ONNX stacks the gates as
i, o, f, c (LSTM) and z, r, h (GRU), torch as i, f, g, o and r, z, n, so each direction's weight rows
are put back in torch's order, and ONNX's one bias per direction is split into torch's b_ih and b_hh.
What torch's recurrence cannot express is refused by name, not approximated: peepholes, per-batch
sequence lengths, custom activations, clipping, coupled input-forget gates, and a GRU that resets
before the hidden product (linear_before_reset=0).
"""

from __future__ import annotations

import re

import numpy as np
import torch

from graphopt.errors import GraphoptError
from graphopt.frontends.onnx import register_onnx_op
from graphopt.frontends.onnx_ops._common import attr, value_at

# ONNX gate block k holds torch's gate block _TORCH_OF_ONNX[op][k]
_TORCH_OF_ONNX = {"LSTM": (0, 3, 1, 2), "GRU": (1, 0, 2)}
_DEFAULT_ACTIVATIONS = {"LSTM": ["Sigmoid", "Tanh", "Tanh"], "GRU": ["Sigmoid", "Tanh"]}


def _refuse_what_torch_cannot_run(ctx, node, directions: int) -> None:
    unsupported = []
    if ctx.input(node, 4):
        unsupported.append("sequence_lens (per-batch lengths)")
    if node.op_type == "LSTM" and ctx.input(node, 7):
        unsupported.append("peephole weights P")
    if attr(node, "clip", None) is not None:
        unsupported.append("clip")
    if int(attr(node, "input_forget", 0)):
        unsupported.append("input_forget=1")
    activations = attr(node, "activations", None)
    if activations is not None and [a.decode() if isinstance(a, bytes) else a for a in activations] != \
            _DEFAULT_ACTIVATIONS[node.op_type] * directions:
        unsupported.append(f"activations {activations}")
    if node.op_type == "GRU" and not int(attr(node, "linear_before_reset", 0)):
        unsupported.append("linear_before_reset=0 (torch's GRU applies the reset gate after the hidden product)")
    if unsupported:
        raise GraphoptError(f"{ctx.where()}: {node.op_type} with {', '.join(unsupported)} has no torch "
                            f"equivalent; graphopt maps only what nn.{node.op_type} computes")


def _torch_order(op_type: str, hidden: int) -> list[int]:
    """For each row of torch's gate stack, the row of ONNX's stack it comes from."""
    onnx_of_torch = [_TORCH_OF_ONNX[op_type].index(g) for g in range(len(_TORCH_OF_ONNX[op_type]))]
    return [k * hidden + i for k in onnx_of_torch for i in range(hidden)]


def _gate_rows(ctx, node, i: int, d: int, start: int, stop: int, name: str):
    """Rows start:stop of direction d of input i (W, R or B), in torch's gate order: a weight when the
    input is constant, else computed in the graph (graphopt's own export reorders its weights with
    Gather nodes, which fold-constants later folds back)."""
    hidden = int(attr(node, "hidden_size"))
    order = _torch_order(node.op_type, hidden)
    known = ctx.known(ctx.input(node, i))
    if known is not None and not known.symbolic:
        rows = np.asarray(known.array)[d][start:stop][order]
        return ctx.weight(name, torch.from_numpy(np.ascontiguousarray(rows)))
    value = ctx.emit1("select", [value_at(ctx, node, i)], {"axis": 0, "index": d})
    if (start, stop) != (0, value.shape[0]):
        value = ctx.emit1("slice", [value], {"axis": 0, "start": start, "end": stop, "step": 1})
    index = ctx.weight(f"{name}.order", torch.tensor(order, dtype=torch.int64), kind="const")
    return ctx.emit1("index_select", [value, index], {"axis": 0})


def _direction_weights(ctx, node, hidden: int, directions: int) -> list:
    """w_ih, w_hh, b_ih, b_hh per direction, in torch's layout."""
    gates = len(_TORCH_OF_ONNX[node.op_type])
    rows = gates * hidden
    # "/lstm/LSTM" (torch.onnx), "lstm/LSTM:node" (graphopt): a dotted weight path without empty parts
    base = ".".join(part for part in re.split(r"[^A-Za-z0-9_]+", node.name or node.output[0]) if part) or "rnn"
    weights = []
    for d in range(directions):
        weights.append(_gate_rows(ctx, node, 1, d, 0, rows, f"{base}.w_ih_{d}"))
        weights.append(_gate_rows(ctx, node, 2, d, 0, rows, f"{base}.w_hh_{d}"))
        if ctx.input(node, 3):
            weights.append(_gate_rows(ctx, node, 3, d, 0, rows, f"{base}.b_ih_{d}"))
            weights.append(_gate_rows(ctx, node, 3, d, rows, 2 * rows, f"{base}.b_hh_{d}"))
        else:  # ONNX's B defaults to zeros
            zeros = torch.zeros(rows, dtype=value_at(ctx, node, 0).dtype)
            weights += [ctx.weight(f"{base}.b_ih_{d}", zeros), ctx.weight(f"{base}.b_hh_{d}", zeros.clone())]
    return weights


@register_onnx_op("LSTM", "GRU")
def _recurrent(ctx, node):
    x = value_at(ctx, node, 0)
    direction = attr(node, "direction", "forward")
    direction = direction.decode() if isinstance(direction, bytes) else direction
    if direction not in ("forward", "bidirectional"):
        raise GraphoptError(f"{ctx.where()}: {node.op_type} direction={direction!r} (reverse only) has no torch "
                            "equivalent; flip the sequence and use 'forward'")
    directions = 2 if direction == "bidirectional" else 1
    _refuse_what_torch_cannot_run(ctx, node, directions)
    hidden = int(attr(node, "hidden_size"))
    batch_first = bool(attr(node, "layout", 0))
    batch = x.shape[0] if batch_first else x.shape[1]
    states = 2 if node.op_type == "LSTM" else 1
    initial = []
    for s, index in enumerate((5, 6)[:states]):
        given = value_at(ctx, node, index)
        initial.append(given if given is not None else
                       ctx.emit1("full", [], {"shape": [directions, batch, hidden], "value": 0.0, "dtype": x.dtype}))
    op = node.op_type.lower()
    attrs = {"hidden_size": hidden, "num_layers": 1, "bidirectional": directions == 2, "batch_first": batch_first,
             "has_biases": True}
    out, *finals = ctx.emit(op, [x, *initial, *_direction_weights(ctx, node, hidden, directions)], attrs).outputs
    # torch: [T, N, D*H] (or [N, T, D*H]); ONNX Y: [T, D, N, H] (or [N, T, D, H] with layout=1)
    seq = x.shape[1] if batch_first else x.shape[0]
    if batch_first:
        y = ctx.emit1("reshape", [out], {"shape": [batch, seq, directions, hidden]})
    else:
        y = ctx.emit1("permute", [ctx.emit1("reshape", [out], {"shape": [seq, batch, directions, hidden]})],
                      {"dims": [0, 2, 1, 3]})
    return [y, *finals]
