"""Multiply-accumulates per canonical op: the "mac_rule" column of the op table, used by the cost analysis.

MACs are counted for dense ops only (conv, conv_transpose, linear, matmul, grouped_mm,
einsum, sdpa, lstm, gru); an op without a MAC rule counts 0 (topk, sort, im2col and
col2im only move or compare values), see graphopt/analysis/cost.py.
A rule is `fn(node, numel) -> int`, where `numel(shape)` evaluates a (symbolic)
shape's size; register one for your own op with `mac_rule("my_op")`.
"""

from __future__ import annotations

from graphopt.analysis.rule_columns import mac_rule
from graphopt.ir import dims as D
from graphopt.ir.graph import Node
from graphopt.ir.ops.recurrent import CELLS, first_weight, lstm_weights_per_direction


@mac_rule("conv")
def _conv(node: Node, numel) -> int:
    w = node.inputs[1]
    # each output element: C_in/groups * prod(kernel) MACs; weight is [C_out, C_in/groups, k...]
    return numel(node.outputs[0].shape) * numel(w.shape[1:])


@mac_rule("conv_transpose")
def _conv_transpose(node: Node, numel) -> int:
    w = node.inputs[1]
    # each input element scatters into C_out/groups * prod(kernel) outputs; weight is [C_in, C_out/groups, k...]
    return numel(node.inputs[0].shape) * numel(w.shape[1:])


@mac_rule("linear")
def _linear(node: Node, numel) -> int:
    return numel(node.outputs[0].shape) * numel(node.inputs[1].shape[1:])


@mac_rule("matmul")
def _matmul(node: Node, numel) -> int:
    a = node.inputs[0]
    return numel(node.outputs[0].shape) * numel(a.shape[-1:])


@mac_rule("grouped_mm")
def _grouped_mm(node: Node, numel) -> int:
    # each row of x [S, k] meets one group's weight [k, n] (rows past the last offset: fewer)
    return numel(node.outputs[0].shape) * numel(node.inputs[0].shape[-1:])


@mac_rule("einsum")
def _einsum(node: Node, numel) -> int:
    """Product of every index's size: exact for one- and two-operand einsums, an upper bound beyond."""
    lhs = node.attrs["equation"].replace(" ", "").partition("->")[0]
    sizes: dict[str, D.Dim] = {}
    ellipsis: tuple = ()
    for term, value in zip(lhs.split(","), node.inputs):
        shape = list(value.shape)
        if "..." in term:
            pre, post = term.split("...")
            n_ell = len(shape) - len(pre) - len(post)
            if len(shape[len(pre):len(pre) + n_ell]) > len(ellipsis):
                ellipsis = tuple(shape[len(pre):len(pre) + n_ell])
            shape = shape[:len(pre)] + shape[len(pre) + n_ell:]
            term = pre + post
        for letter, d in zip(term, shape):
            if letter not in sizes or sizes[letter] == 1:
                sizes[letter] = d
    return numel(list(sizes.values())) * numel(ellipsis)


@mac_rule("sdpa")
def _sdpa(node: Node, numel) -> int:
    q, k, v = node.inputs[0], node.inputs[1], node.inputs[2]
    # scores: [..., L, S] each a dot of length E; output: [..., L, Ev] each a dot of length S
    batch_and_l = numel(q.shape[:-1])
    s = numel(k.shape[-2:-1])
    return batch_and_l * s * (numel(q.shape[-1:]) + numel(v.shape[-1:]))


@mac_rule("lstm", "gru")
def _recurrent(node: Node, numel) -> int:
    """Every step of every layer and direction: each gate's products with x_t (w_ih) and with h_{t-1} (w_hh)."""
    x, a = node.inputs[0], node.attrs
    steps_times_batch = numel(x.shape[:2])
    hidden, directions = a["hidden_size"], 2 if a["bidirectional"] else 1
    gates = CELLS[node.op][0]
    per_direction = lstm_weights_per_direction(a["has_biases"])
    total = 0
    for layer in range(a["num_layers"]):
        w_ih = node.inputs[first_weight(node.op) + layer * directions * per_direction]
        total += directions * steps_times_batch * gates * hidden * (numel(w_ih.shape[1:]) + hidden)
    return total


@mac_rule("matmul_nbits")
def _matmul_nbits(node: Node, numel) -> int:
    """A linear whose weight is stored in 4/8 bits: [..., K] x [N, K]^T."""
    return numel(node.outputs[0].shape) * numel(node.inputs[1].shape[1:])


@mac_rule("quantize_linear", "dequantize_linear", "dynamic_quantize_linear")
def _quantization(node: Node, numel) -> int:
    """Scaling and rounding, element-wise: no multiply-accumulates (as for the other element-wise ops)."""
    return 0
