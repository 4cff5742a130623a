"""Rewrite rules and the worklist driver that applies them to a fixed point, with dead code removed as it goes.

A `Rule` names the ops it looks at and a function that, given a node, returns
either a string (why the rule does not apply: it reads as a diagnostic) or a
replacement. `graph_rewrite(graph, rules)` keeps a worklist of nodes, tries
each rule on each node until none applies anywhere, and revisits what a
rewrite touched: the users of replaced values, an edited node itself, the
producers that lost a reader. Nodes and weights a rewrite leaves unread are
erased by the driver, so a rule never cleans up after itself.

The models are tinygrad's `PatternMatcher` + `graph_rewrite` and MLIR's greedy
pattern rewrite driver; user passes reuse it through `RewritePass`:

    @rule("drop-double-neg", "neg")
    def drop_double_neg(node):
        inner = node.inputs[0].producer
        if inner is None or inner.op != "neg":
            return "input is not produced by a neg"
        return inner.inputs[0]          # every reader of node now reads neg's input

A replacement is one of:
  a Value, or one Value per output   the node's outputs are replaced by them and the node is erased;
  a new Node                         its outputs replace the node's outputs (same thing, for one new node);
  the node itself                    the rule edited it in place (inputs, attrs): it is revisited at once.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Callable, ClassVar, Iterable, Sequence, Union

from graphopt.errors import GraphoptError
from graphopt.ir.graph import Graph, Node, Value
from graphopt.passmanager.analysis import AnalysisManager
from graphopt.passmanager.pass_base import Pass, PassResult

Replacement = Union[Value, Sequence[Value], Node]
Outcome = Union[str, Replacement]


@dataclass(frozen=True)
class Rule:
    """One rewrite: the ops it looks at (empty: every op) and `apply(node)` -> failure reason or replacement."""

    name: str
    ops: frozenset[str]
    apply: Callable[[Node], Outcome]
    where: str = ""  # file:line the rule was written at, for error messages

    def applies_to(self, op: str) -> bool:
        return not self.ops or op in self.ops

    def __call__(self, node: Node) -> Outcome:
        """Try the rule on `node` directly: a failure reason (str) or the replacement (the graph may be edited)."""
        return self.apply(node)

    def __repr__(self) -> str:
        ops = ",".join(sorted(self.ops)) or "*"
        return f"<Rule {self.name} on {ops} at {self.where}>"


def rule(name: str, *ops: str) -> Callable[[Callable[[Node], Outcome]], Rule]:
    """Decorator: turn `fn(node) -> reason | replacement` into a `Rule` named `name` on `ops` (none: all ops)."""

    def wrap(fn: Callable[[Node], Outcome]) -> Rule:
        code = getattr(fn, "__code__", None)
        where = f"{code.co_filename}:{code.co_firstlineno}" if code is not None else ""
        return Rule(name, frozenset(ops), fn, where)

    return wrap


@dataclass
class RewriteStats:
    """What one `graph_rewrite` did: rewrites per rule, dead nodes erased, unread weights removed."""

    applied: dict[str, int] = field(default_factory=dict)
    erased: int = 0
    weights_removed: int = 0

    @property
    def rewrites(self) -> int:
        return sum(self.applied.values())

    @property
    def modified(self) -> bool:
        return bool(self.rewrites or self.erased or self.weights_removed)

    def __bool__(self) -> bool:
        return self.modified


class _Worklist:
    """Nodes still to visit, each at most once at a time, in the order they were queued."""

    def __init__(self, nodes: Iterable[Node]) -> None:
        self._queue: deque[Node] = deque()
        self._pending: set[int] = set()
        for node in nodes:
            self.push(node)

    def push(self, node: Node, *, front: bool = False) -> None:
        if id(node) in self._pending:
            return
        self._pending.add(id(node))
        if front:
            self._queue.appendleft(node)
        else:
            self._queue.append(node)

    def push_users(self, values: Iterable[Value | None]) -> None:
        for value in values:
            if value is not None:
                for user in value.users:
                    self.push(user)

    def pop(self) -> Node:
        node = self._queue.popleft()
        self._pending.discard(id(node))
        return node

    def __bool__(self) -> bool:
        return bool(self._queue)


def graph_rewrite(graph: Graph, rules: Sequence[Rule], *, erase_dead: bool = False,
                  max_rewrites: int | None = None) -> RewriteStats:
    """Apply `rules` to `graph` in place until none applies; the first applicable rule wins per visit.

    Nodes are visited in topological order, then as rewrites queue them again.
    Whatever a rewrite leaves unread (the producers it bypassed, the weights
    they read) is erased on the spot. `erase_dead=True` also erases every node
    nothing reads and every weight no node reads, found or not by a rule (a
    full dead-code sweep; graph inputs always stay). More than `max_rewrites`
    rewrites (default: 8 per node, at least 64) means the rules undo each
    other: a `GraphoptError` names the rule.
    """
    for r in rules:
        if not isinstance(r, Rule):
            raise GraphoptError(f"graph_rewrite takes Rule objects (see graphopt.passmanager.rewrite.rule), not {r!r}")
    limit = max(64, 8 * len(graph.nodes)) if max_rewrites is None else max_rewrites
    by_op: dict[str, list[Rule]] = {}
    stats = RewriteStats()
    worklist = _Worklist(graph.nodes)
    while worklist:
        node = worklist.pop()
        if node.graph is not graph:
            continue  # erased since it was queued
        if erase_dead and node.is_dead():
            _erase_dead(graph, node, worklist, stats)
            continue
        candidates = by_op.get(node.op)
        if candidates is None:
            candidates = by_op[node.op] = [r for r in rules if r.applies_to(node.op)]
        for r in candidates:
            inputs = node.inputs
            outcome = r(node)
            if isinstance(outcome, str):
                continue
            stats.applied[r.name] = stats.applied.get(r.name, 0) + 1
            if stats.rewrites > limit:
                raise _not_converging(graph, r, node, stats, limit)
            _commit(graph, node, r, outcome, inputs, worklist, stats)
            break
    if erase_dead:
        stats.weights_removed += graph.remove_unused_weights()
    return stats


def _commit(graph: Graph, node: Node, r: Rule, outcome: Replacement, old_inputs: Sequence[Value | None],
            worklist: _Worklist, stats: RewriteStats) -> None:
    """Make the graph reflect what rule `r` returned for `node`, and queue what that touched."""
    if outcome is node:  # edited in place: look at it again first, then at its readers
        worklist.push(node, front=True)
        worklist.push_users(node.outputs)
        _release(graph, [v for v in old_inputs if v is not None and all(v is not w for w in node.inputs)],
                 worklist, stats)
        return
    if isinstance(outcome, Node):
        worklist.push(outcome)
        new_values: list = list(outcome.outputs)
    elif isinstance(outcome, Value):
        new_values = [outcome]
    elif isinstance(outcome, (list, tuple)) and all(isinstance(v, Value) for v in outcome):
        new_values = list(outcome)
    else:
        raise GraphoptError(f"rule '{r.name}' ({r.where}) returned {outcome!r} for {node.where()}: expected a "
                            "failure reason (str), a Value, one Value per output, a new Node or the node itself")
    if len(new_values) != len(node.outputs) or any(new is old for new, old in zip(new_values, node.outputs)):
        raise GraphoptError(f"rule '{r.name}' ({r.where}) replaced the {len(node.outputs)} output(s) of "
                            f"{node.where()} by {len(new_values)} value(s), or by the node's own outputs")
    inputs = node.inputs
    graph.replace_node(node, new_values)
    worklist.push_users(new_values)
    _release(graph, inputs, worklist, stats)


def _erase_dead(graph: Graph, node: Node, worklist: _Worklist, stats: RewriteStats) -> None:
    inputs = node.inputs
    graph.erase_node(node)
    stats.erased += 1
    _release(graph, inputs, worklist, stats)


def _release(graph: Graph, values: Iterable[Value | None], worklist: _Worklist, stats: RewriteStats) -> None:
    """`values` lost a reader: erase the producers (and weights) nothing reads any more, requeue the others."""
    stack = [v for v in values if v is not None]
    while stack:  # a loop, not recursion: a dead chain can be thousands of nodes long
        value = stack.pop()
        producer = value.producer
        if producer is None:
            stats.weights_removed += graph.remove_weight_if_unused(value)
            continue
        inputs = producer.inputs
        if graph.erase_if_dead(producer):
            stack.extend(v for v in inputs if v is not None)
            stats.erased += 1
        elif producer.graph is graph:  # (not: erased already, when another of its outputs was released first)
            worklist.push(producer)  # one reader fewer can make a rule match it (e.g. a sole-reader fold)


def _not_converging(graph: Graph, last: Rule, node: Node, stats: RewriteStats, limit: int) -> GraphoptError:
    busiest = max(stats.applied, key=lambda name: stats.applied[name])
    counts = ", ".join(f"{name} x{n}" for name, n in sorted(stats.applied.items(), key=lambda kv: -kv[1]))
    return GraphoptError(
        f"graph_rewrite did not converge on graph '{graph.name}': more than {limit} rewrites ({counts}); "
        f"rule '{busiest}' keeps applying (last: '{last.name}' at {last.where}, on {node.where()}). "
        "Rules that undo each other, or a rule that reports a change it did not make, loop for ever"
    )


class RewritePass(Pass):
    """A pass that applies a rule set with `graph_rewrite`; subclasses implement `rules()`.

    `erase_dead = True` makes the pass a full dead-code sweep as well.
    """

    erase_dead: ClassVar[bool] = False

    def rules(self) -> Sequence[Rule]:
        raise NotImplementedError(f"rewrite pass '{self.name}' ({type(self).__qualname__}) does not define rules()")

    def run(self, graph: Graph, analyses: AnalysisManager) -> PassResult:
        stats = graph_rewrite(graph, self.rules(), erase_dead=self.erase_dead)
        return PassResult(graph, modified=stats.modified, stats=stats)


__all__ = ["Rule", "rule", "graph_rewrite", "RewriteStats", "RewritePass", "Replacement", "Outcome"]
