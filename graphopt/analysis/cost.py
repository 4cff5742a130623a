"""The `cost` analysis: parameters and multiply-accumulates (MACs) per node and in total.

Passes that trade accuracy for speed (pruning, layer dropping) need to know
where the compute is; reports need "before/after" figures. Conventions:

- MACs are counted for dense ops only: conv, conv_transpose, linear, matmul,
  einsum, sdpa (q k^T and attn v). Embedding lookups, norms, pooling and
  element-wise ops count 0 MACs: they are memory-bound and small next to them.
- Params are the elements of `param`-kind weights a node reads. Per node, a
  weight read by two nodes counts for both; the total counts it once.
- Symbolic dims (batch, seq) are evaluated with `bindings` (symbol -> size),
  which the analysis manager reads off the example inputs given to
  `PassManager.run`. A symbol left unbound counts as 1, so by default the
  figures are per sample. `CostReport.bindings` says which values were used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from graphopt.ir import dims as D
from graphopt.ir.graph import Graph, Node, Value
from graphopt.passmanager.analysis import AnalysisManager, bindings_from_inputs, register_analysis

MacRule = Callable[[Node, Callable[[Sequence[D.Dim]], int]], int]


@dataclass(frozen=True)
class NodeCost:
    """Cost of one node: parameters it reads and multiply-accumulates it performs."""

    op: str
    params: int
    macs: int


@dataclass
class CostReport:
    """Per-node costs in graph order, the totals, and the symbol sizes they were evaluated with."""

    nodes: dict[str, NodeCost] = field(default_factory=dict)
    total_params: int = 0
    total_macs: int = 0
    bindings: dict[str, int] = field(default_factory=dict)

    def by_op(self) -> dict[str, NodeCost]:
        """Costs summed per op type (params here double-count shared weights, like per-node figures)."""
        out: dict[str, list[int]] = {}
        for cost in self.nodes.values():
            acc = out.setdefault(cost.op, [0, 0])
            acc[0] += cost.params
            acc[1] += cost.macs
        return {op: NodeCost(op, p, m) for op, (p, m) in sorted(out.items(), key=lambda kv: -kv[1][1])}

    def table(self, top: int | None = None) -> str:
        """The costliest nodes (by MACs) as a text table."""
        rows = sorted(self.nodes.items(), key=lambda kv: -kv[1].macs)
        rows = [r for r in rows if r[1].macs or r[1].params][:top]
        width = max([4] + [len(name) for name, _ in rows])
        lines = [f"{'node'.ljust(width)}  {'op':<14}{'params':>12}{'MACs':>16}"]
        lines += [f"{name.ljust(width)}  {c.op:<14}{c.params:>12,}{c.macs:>16,}" for name, c in rows]
        lines.append(f"{'total'.ljust(width)}  {'':<14}{self.total_params:>12,}{self.total_macs:>16,}")
        if self.bindings:
            lines.append("evaluated with " + ", ".join(f"{k}={v}" for k, v in sorted(self.bindings.items())))
        return "\n".join(lines)

    __str__ = table


# --------------------------------------------------------------- MAC rules
MAC_RULES: dict[str, MacRule] = {}


def mac_rule(*ops: str) -> Callable[[MacRule], MacRule]:
    """Register how many MACs an op performs; `numel(shape)` evaluates a (symbolic) shape's size."""

    def wrap(fn: MacRule) -> MacRule:
        for op in ops:
            MAC_RULES[op] = fn
        return fn

    return wrap


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


# ------------------------------------------------------------------ driver
def estimate_cost(
    graph: Graph,
    *,
    bindings: dict[str, int] | None = None,
    example_inputs: Sequence[Any] | None = None,
) -> CostReport:
    """Params and MACs of every node; symbols bound by `bindings`, then `example_inputs`, else 1."""
    env: dict[str, int] = {}
    if example_inputs is not None:
        env.update(bindings_from_inputs(graph, example_inputs))
    env.update(bindings or {})
    used: dict[str, int] = {}

    def numel(shape: Sequence[D.Dim]) -> int:
        total = 1
        for d in shape:
            if not isinstance(d, int):
                for sym in d.free_symbols:
                    used[str(sym)] = env.get(str(sym), 1)
                d = D.evaluate(d, {**{str(s): 1 for s in d.free_symbols}, **env})
            total *= d
        return total

    report = CostReport()
    counted: set[int] = set()
    for node in graph.nodes:
        params = 0
        seen: set[int] = set()
        for value in node.inputs:
            if _is_param(value) and id(value) not in seen:
                seen.add(id(value))
                params += _numel(value)
                if id(value) not in counted:
                    counted.add(id(value))
                    report.total_params += _numel(value)
        rule = MAC_RULES.get(node.op)
        macs = rule(node, numel) if rule is not None else 0
        report.nodes[node.name] = NodeCost(node.op, params, macs)
        report.total_macs += macs
    report.bindings = dict(sorted(used.items()))
    return report


def _is_param(value: Value | None) -> bool:
    return value is not None and value.kind == "param"


def _numel(value: Value) -> int:
    return math.prod(int(d) for d in value.shape)


def _cost_analysis(graph: Graph, analyses: AnalysisManager) -> CostReport:
    """Params and MACs per node and in total (symbolic dims bound from the example inputs)."""
    return estimate_cost(graph, bindings=analyses.bindings(graph))


register_analysis("cost", _cost_analysis)
