"""The `cost` analysis: parameters and multiply-accumulates (MACs) per node and in total.

Passes that trade accuracy for speed (pruning, layer dropping) need to know
where the compute is; reports need "before/after" figures. Conventions:

- MACs are counted for dense ops only: conv, conv_transpose, linear, matmul,
  einsum, sdpa (q k^T and attn v); their rules are the "mac_rule" column of the
  op table (graphopt/analysis/mac_rules.py). Embedding lookups, norms, pooling and
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
from typing import Any, Sequence

from graphopt.analysis import mac_rules  # noqa: F401 - attaches the built-in MAC rules to the op table
from graphopt.analysis.base import Analyses, Analysis, bindings_from_inputs
# MAC_RULES and mac_rule stay importable from here, where users registered MAC rules before the op table
from graphopt.analysis.rule_columns import MAC_RULES, MacRule, mac_rule, mac_rule_for  # noqa: F401
from graphopt.ir import dims as D
from graphopt.ir.graph import Graph, Value


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
    # bytes of the weights nodes read, by element type ("int4" for int8 tensors holding 4-bit values), and
    # MACs by the type they are computed in ("int8" when both operands are dequantized integers)
    weight_bytes: dict[str, int] = field(default_factory=dict)
    macs_by_dtype: dict[str, int] = field(default_factory=dict)

    @property
    def total_weight_bytes(self) -> int:
        return sum(self.weight_bytes.values())

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
        if set(self.weight_bytes) & {"int8", "uint8", "int4"}:  # a quantized graph: its size by type
            by_type = ", ".join(f"{k} {v:,}" for k, v in sorted(self.weight_bytes.items()))
            lines.append(f"weight bytes by type: {by_type}")
        if self.bindings:
            lines.append("evaluated with " + ", ".join(f"{k}={v}" for k, v in sorted(self.bindings.items())))
        return "\n".join(lines)

    __str__ = table


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
    weighed: set[int] = set()
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
        for value in node.inputs:
            if value is not None and value.is_weight and id(value) not in weighed:
                weighed.add(id(value))
                kind, size = _storage(value)
                report.weight_bytes[kind] = report.weight_bytes.get(kind, 0) + size
        rule = mac_rule_for(node.op)
        macs = rule(node, numel) if rule is not None else 0
        report.nodes[node.name] = NodeCost(node.op, params, macs)
        report.total_macs += macs
        if macs:
            kind = _compute_type(node)
            report.macs_by_dtype[kind] = report.macs_by_dtype.get(kind, 0) + macs
    report.bindings = dict(sorted(used.items()))
    return report


def _storage(value: Value) -> tuple[str, int]:
    """(element type name, bytes) of a weight as deployed: `meta["bits"]` marks int8 tensors of 4-bit values."""
    bits = value.meta.get("bits")
    numel = _numel(value)
    if bits is not None and bits < 8:
        return f"int{bits}", (numel * bits + 7) // 8
    return str(value.dtype).replace("torch.", ""), numel * value.dtype.itemsize


def _compute_type(node) -> str:
    """The type a dense node multiplies in: integer when its operands come from dequantized integers."""
    if node.op == "matmul_nbits":
        return f"int{node.attrs['bits']}-weight"
    operands = [v for v in node.inputs[:2] if v is not None]
    integer = [v.producer is not None and v.producer.op == "dequantize_linear"
               and not v.producer.inputs[0].dtype.is_floating_point for v in operands]
    if operands and all(integer):
        return "int8"
    return str(node.outputs[0].dtype).replace("torch.", "")


def _is_param(value: Value | None) -> bool:
    return value is not None and value.kind == "param"


def _numel(value: Value) -> int:
    return math.prod(int(d) for d in value.shape)


class CostAnalysis(Analysis):
    """Params and MACs per node and in total (symbolic dims bound from the run's example inputs)."""

    def compute(self, graph: Graph, analyses: Analyses) -> CostReport:
        return estimate_cost(graph, bindings=analyses.context.bindings(graph))
