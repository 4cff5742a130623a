"""The `ResidualBlocks` analysis: every residual branch of the graph, what it costs, and whether it can be dropped.

Depth pruning (LLM-Drop, ShortGPT, SLEB) removes whole residual blocks: where
`y = s + f(s)`, replacing `y` by `s` deletes `f` and changes no shape. On the IR
a residual block is found from its merge, an `add` of two activations of the
output's shape, without knowing the architecture:

- identity shortcut: one operand (the branch output `b`) descends from the
  other (the skip `s`). The branch is every node on a path from `s` to `b`:
  `s` dominates it and the add post-dominates it.
- projection shortcut (ResNet's downsampling blocks): the skip is a short
  chain of conv/linear/norm/pooling nodes from a fork value `x` of another
  shape, which the branch also starts from. Dropping keeps the projection: the
  add becomes its output. (With equal shapes, `p(x) + f(x)` is two parallel
  branches, not a block.)

A branch without a dense op (conv, linear, matmul, sdpa...) is an elementwise
formula (a tanh-GELU's `x + c x^3`), not a block. A whole transformer layer
is an attention block followed by an MLP block whose skip is the attention
block's output (pre-norm), possibly through norms (post-norm, BERT): the span
from the layer input to the MLP's add. A block can be dropped only if nothing
outside it reads a value it computes; otherwise it is reported with why.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from graphopt.analysis.base import Analyses, Analysis
from graphopt.analysis.cost import CostReport, estimate_cost
from graphopt.analysis.rule_columns import mac_rule_for
from graphopt.ir.graph import Graph, Node, Value

ATTENTION_OPS = frozenset({"sdpa", "softmax"})
CONV_OPS = frozenset({"conv", "conv_transpose"})
# What a projection shortcut may be made of: a strided 1x1 conv, its norm, ResNet-D's pooling.
PROJECTION_OPS = frozenset({"conv", "linear", "batch_norm", "layer_norm", "avg_pool", "max_pool"})
# What may sit between a post-norm layer's attention add and its MLP's skip.
POST_NORM_OPS = frozenset({"layer_norm", "batch_norm", "group_norm"})


@dataclass(frozen=True)
class ResidualBlock:
    """One residual block: the span its merge closes, what it costs, and whether it can be dropped.

    `skip` is the value that replaces the merge's output when the block is
    dropped (the block input, or its projection); `nodes` are the span's node
    names in graph order, the merge last. `params` counts the parameters only
    this span reads: exactly what dropping it removes.
    """

    name: str
    kind: str  # attention, mlp, conv, layer, other
    merge: str
    skip: str
    nodes: tuple[str, ...]
    params: int
    macs: int
    shortcut: str = "identity"  # or "projection"
    droppable: bool = True
    why_not: str = ""
    parent: str = ""  # the smallest block containing this one
    children: tuple[str, ...] = ()


@dataclass
class BlockReport:
    """The residual blocks of a graph, outermost first within graph order."""

    blocks: list[ResidualBlock] = field(default_factory=list)

    def __iter__(self):
        return iter(self.blocks)

    def __len__(self) -> int:
        return len(self.blocks)

    def get(self, name: str) -> ResidualBlock | None:
        return next((b for b in self.blocks if b.name == name), None)

    def droppable(self) -> list[ResidualBlock]:
        return [b for b in self.blocks if b.droppable]

    def select(self, granularity: str) -> list[ResidualBlock]:
        """`layer`: outermost blocks (whole transformer layers, CNN blocks); a kind; or `any`: every block."""
        if granularity == "any":
            return list(self.blocks)
        if granularity == "layer":
            return [b for b in self.blocks if not b.parent]
        return [b for b in self.blocks if b.kind == granularity]

    def table(self, scores: dict[str, float] | None = None) -> str:
        """A text table: block, kind, shortcut, params, MACs (and a score column when given), droppable."""
        width = max([5] + [len(b.name) for b in self.blocks])
        head = f"{'block'.ljust(width)}  {'kind':<10}{'params':>12}{'MACs':>16}"
        head += f"{'score':>10}" if scores is not None else ""
        lines = [head + "  droppable"]
        for b in self.blocks:
            row = f"{b.name.ljust(width)}  {b.kind:<10}{b.params:>12,}{b.macs:>16,}"
            if scores is not None:
                row += f"{scores[b.name]:>10.4f}" if b.name in scores else f"{'-':>10}"
            lines.append(row + ("  yes" if b.droppable else f"  no: {b.why_not}"))
        if not self.blocks:
            lines.append("(no residual blocks)")
        return "\n".join(lines)

    __str__ = table


class ResidualBlocks(Analysis):
    """Every residual block (identity or projection shortcut, nested ones included), its kind, params and MACs."""

    def compute(self, graph: Graph, analyses: Analyses) -> BlockReport:
        return find_blocks(graph, bindings=analyses.context.bindings(graph))


def find_blocks(graph: Graph, *, bindings: dict[str, int] | None = None) -> BlockReport:
    """The residual blocks of `graph`; MACs evaluated with `bindings` (unbound symbols count 1)."""
    finder = _Finder(graph)
    spans = [span for node in graph.nodes if node.op == "add" for span in [finder.block_at(node)] if span]
    spans += finder.layers(spans)
    cost = estimate_cost(graph, bindings=bindings)
    return BlockReport(_named(graph, spans, cost))


@dataclass
class _Span:
    """A block under construction: node objects instead of names."""

    kind: str
    merge: Node
    skip: Value
    nodes: list[Node]  # graph order, merge last
    shortcut: str = "identity"
    why_not: str = ""
    parts: tuple[Any, ...] = ()  # the attention and MLP spans of a layer


class _Finder:
    """Ancestor sets of every node as bitsets, and the block-finding rules that read them."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.index = {id(n): i for i, n in enumerate(graph.nodes)}
        self.source = {id(v): len(graph.nodes) + i for i, v in enumerate(graph.inputs)}
        self.ancestors: list[int] = []
        for i, node in enumerate(graph.nodes):
            bits = 1 << i
            for value in node.inputs:
                if value is not None and not value.is_weight:
                    bits |= self._bits_of(value)
            self.ancestors.append(bits)

    def _id(self, value: Value) -> int | None:
        if value.producer is not None:
            return self.index.get(id(value.producer))
        return self.source.get(id(value))

    def _bits_of(self, value: Value) -> int:
        if value.producer is not None:
            return self.ancestors[self.index[id(value.producer)]]
        return 1 << self.source[id(value)] if id(value) in self.source else 0

    def descends(self, value: Value, root: Value) -> bool:
        root_id = self._id(root)
        return root_id is not None and value is not root and bool(self._bits_of(value) >> root_id & 1)

    # ------------------------------------------------------------ single blocks
    def block_at(self, add: Node) -> _Span | None:
        """The block `add` merges, or None when it is not a residual merge."""
        operands = add.inputs
        if len(operands) != 2 or any(v is None or v.is_weight for v in operands):
            return None
        if not operands[0].shape == operands[1].shape == add.output.shape or operands[0] is operands[1]:
            return None
        for skip, branch_out in (operands, operands[::-1]):
            if self.descends(branch_out, skip):
                return self._span(add, skip, skip, branch_out, "identity")
        for skip, branch_out in (operands, operands[::-1]):
            fork = self._projection_fork(skip)
            if fork is not None and self.descends(branch_out, fork):
                return self._span(add, skip, fork, branch_out, "projection")
        return None

    def _projection_fork(self, skip: Value) -> Value | None:
        """The fork a projection shortcut starts from, if `skip` is one: a chain with a conv/linear up to a shared value."""
        value, weighted = skip, False
        while value.producer is not None and value.producer.op in PROJECTION_OPS:
            weighted |= value.producer.op in ("conv", "linear")
            value = value.producer.inputs[0]
            if len(value.uses()) != 1 or value.is_graph_output():
                break
        # a projection exists because the shape changes; with equal shapes y = p(x) + f(x) is two parallel branches
        return value if weighted and value.shape != skip.shape else None

    def _span(self, add: Node, skip: Value, start: Value, branch_out: Value, shortcut: str) -> _Span | None:
        """The nodes on a path from `start` to `branch_out`, if they hold a dense op."""
        start_id, end_bits = self._id(start), self._bits_of(branch_out)
        lo = self.index[id(start.producer)] + 1 if start.producer is not None else 0
        hi = self.index[id(branch_out.producer)]
        nodes = [self.graph.nodes[i] for i in range(lo, hi + 1)
                 if end_bits >> i & 1 and self.ancestors[i] >> start_id & 1]
        if not any(mac_rule_for(n.op) is not None for n in nodes):
            return None
        span = _Span(_kind(nodes), add, skip, nodes + [add], shortcut)
        span.why_not = _escape(span.nodes)
        return span

    # ------------------------------------------------------------ whole layers
    def layers(self, spans: list[_Span]) -> list[_Span]:
        """Whole transformer layers: an attention block whose output (through norms) is an MLP block's skip."""
        by_merge = {id(s.merge.output): s for s in spans if s.kind == "attention" and s.shortcut == "identity"}
        found = []
        for mlp in (s for s in spans if s.kind == "mlp" and s.shortcut == "identity"):
            chain, value = [], mlp.skip
            while id(value) not in by_merge and value.producer is not None and value.producer.op in POST_NORM_OPS:
                chain.append(value.producer)
                value = value.producer.inputs[0]
            attention = by_merge.get(id(value))
            if attention is None:
                continue
            nodes = attention.nodes + chain[::-1] + mlp.nodes
            layer = _Span("layer", mlp.merge, attention.skip, nodes, "identity", parts=(attention, mlp))
            layer.why_not = _escape(nodes)
            found.append(layer)
        return found


def _kind(nodes: list[Node]) -> str:
    ops = {n.op for n in nodes}
    if ops & ATTENTION_OPS:
        return "attention"
    if ops & CONV_OPS:
        return "conv"
    if any(mac_rule_for(op) is not None for op in ops):
        return "mlp"
    return "other"


def _escape(nodes: list[Node]) -> str:
    """Why the span cannot be dropped (a value read outside it), or "" when it can."""
    inside = {id(n) for n in nodes}
    for node in nodes[:-1]:  # the merge's output is the block's output: it may go anywhere
        for out in node.outputs:
            if out.is_graph_output():
                return f"%{out.name} (in the block) is a graph output"
            outside = [user for user in out.users if id(user) not in inside]
            if outside:
                return f"%{out.name} (in the block) is also read by %{outside[0].name}, outside it"
    return ""


def _named(graph: Graph, spans: list[_Span], cost: CostReport) -> list[ResidualBlock]:
    """Freeze the spans into blocks: stable names, exclusive params, MACs, nesting."""
    names = _names(spans)
    sets = {id(s): {id(n) for n in s.nodes} for s in spans}
    order = sorted(spans, key=lambda s: (graph.index_of(s.merge), -len(s.nodes)))
    parents: dict[int, _Span] = {}
    for span in order:
        containers = [o for o in spans if o is not span and sets[id(span)] < sets[id(o)]]
        if containers:
            parents[id(span)] = min(containers, key=lambda o: len(o.nodes))
    blocks = []
    for span in order:
        children = tuple(names[id(o)] for o in order if parents.get(id(o)) is span)
        parent = parents.get(id(span))
        blocks.append(ResidualBlock(
            names[id(span)], span.kind, span.merge.name, span.skip.name, tuple(n.name for n in span.nodes),
            _exclusive_params(span.nodes, sets[id(span)]), sum(cost.nodes[n.name].macs for n in span.nodes),
            span.shortcut, not span.why_not, span.why_not, names[id(parent)] if parent else "", children))
    return blocks


def _names(spans: list[_Span]) -> dict[int, str]:
    """A stable name per block: the source module of its merge (else the merge node's name).

    A whole layer takes the longest common module prefix of its two merges; a
    block sharing its name with another (Llama's attention and MLP adds are both
    in `model.layers.0`) gets `#kind`, then a counter.
    """
    base = {}
    for span in spans:
        if span.parts:
            modules = [_module(p.merge).split(".") if _module(p.merge) else [] for p in span.parts]
            prefix = []
            for a, b in zip(*modules):
                if a != b:
                    break
                prefix.append(a)
            base[id(span)] = ".".join(prefix) or span.merge.name
        else:
            base[id(span)] = _module(span.merge) or span.merge.name
    names: dict[int, str] = {}
    taken: set[str] = set()
    for span in sorted(spans, key=lambda s: not s.parts):  # layers keep the plain name
        name = base[id(span)]
        if name in taken or (not span.parts and sum(b == name for b in base.values()) > 1):
            name = f"{name}#{span.kind}"
        candidate, n = name, 1
        while candidate in taken:
            n += 1
            candidate = f"{name}{n}"
        taken.add(candidate)
        names[id(span)] = candidate
    return names


def _module(node: Node) -> str:
    return node.source.module if node.source is not None else ""


def _exclusive_params(nodes: list[Node], inside: set[int]) -> int:
    """Elements of the `param` weights that only the span's nodes read (dropping it frees exactly these)."""
    total, seen = 0, set()
    for node in nodes:
        for value in node.inputs:
            if value is None or value.kind != "param" or id(value) in seen:
                continue
            seen.add(id(value))
            if all(id(user) in inside for user in value.users):
                total += value.data.numel() if value.data is not None else _numel(value)
    return total


def _numel(value: Value) -> int:
    total = 1
    for d in value.shape:
        total *= int(d)
    return total
