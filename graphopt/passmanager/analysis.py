"""The analysis manager: analyses keyed by type, computed on demand, cached per graph, invalidated by passes.

Why a manager rather than results stored on nodes (torch.fx's `node.meta`):
a cached result that no pass invalidates goes stale silently. Here every pass
says what it preserves (`PreservedAnalyses`), the manager drops the rest, and
an analysis that read another while it ran is dropped with it.

Analyses are looked up by their class (MLIR's `AnalysisManager` keys them by
TypeID): `analyses.get(ChannelGroups, graph)`, or by a parameterised instance,
`analyses.get(ChannelGroups(heads=False), graph)`. See `graphopt.analysis.base`.
"""

from __future__ import annotations

import weakref
from collections import Counter
from typing import Any, Iterable

from graphopt.analysis.base import Analysis, AnalysisKey, analysis_key
from graphopt.errors import GraphoptError
from graphopt.ir.graph import Graph
from graphopt.passmanager.context import RunContext


class PreservedAnalyses:
    """Which cached analyses a pass left valid: all of them, none, or a set of analysis types and keys.

    A class preserves every parameterisation of it (`ChannelGroups` covers
    `ChannelGroups(heads=False)`); an instance preserves that key alone.
    """

    __slots__ = ("_all", "_types", "_keys")

    def __init__(self, keys: Iterable[AnalysisKey] = (), *, all: bool = False) -> None:  # noqa: A002
        self._all = all
        keys = list(keys)
        # a class stays a class (it covers every parameterisation); anything else must be a key
        self._types = frozenset(k for k in keys if isinstance(k, type) and issubclass(k, Analysis))
        self._keys = frozenset(analysis_key(k) for k in keys if k not in self._types)

    @classmethod
    def all(cls) -> PreservedAnalyses:
        return cls(all=True)

    @classmethod
    def none(cls) -> PreservedAnalyses:
        return cls()

    @classmethod
    def only(cls, *keys: AnalysisKey) -> PreservedAnalyses:
        return cls(keys)

    @property
    def is_all(self) -> bool:
        return self._all

    def preserves(self, key: AnalysisKey) -> bool:
        if self._all:
            return True
        if isinstance(key, type):
            return key in self._types
        return type(key) in self._types or key in self._keys

    __contains__ = preserves

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PreservedAnalyses) and (self._all, self._types, self._keys) == (
            other._all, other._types, other._keys)

    def __hash__(self) -> int:
        return hash((self._all, self._types, self._keys))

    def __repr__(self) -> str:
        if self._all:
            return "PreservedAnalyses.all()"
        if not self._types and not self._keys:
            return "PreservedAnalyses.none()"
        parts = sorted([t.__qualname__ for t in self._types] + [repr(k) for k in self._keys])
        return f"PreservedAnalyses.only({', '.join(parts)})"


def as_preserved(spec: Any) -> PreservedAnalyses:
    """Normalise what a pass declares: a PreservedAnalyses, "all", "none"/None, or analysis types/keys."""
    if isinstance(spec, PreservedAnalyses):
        return spec
    if spec is None or spec == "none":
        return PreservedAnalyses.none()
    if spec == "all":
        return PreservedAnalyses.all()
    if isinstance(spec, (type, Analysis)):
        return PreservedAnalyses([spec])
    return PreservedAnalyses(spec)


class AnalysisManager:
    """Computes analyses on demand and caches them per graph until a pass invalidates them.

    It holds analyses only. `context` is the run's `RunContext` (read-only
    here; the PassManager binds the one of each run), through which
    shape-dependent analyses such as cost see the example inputs.
    `computations` counts how often each key was computed, which is what
    tests of caching check.
    """

    def __init__(self, context: RunContext | None = None) -> None:
        self._context = context if context is not None else RunContext()
        self._cache: weakref.WeakKeyDictionary[Graph, dict[Analysis, Any]] = weakref.WeakKeyDictionary()
        # key -> keys of analyses that read it while they were computed (they must go when it goes)
        self._dependents: dict[Analysis, set[Analysis]] = {}
        self._stack: list[tuple[Analysis, Graph]] = []  # analyses being computed, innermost last
        self.computations: Counter[Analysis] = Counter()

    @property
    def context(self) -> RunContext:
        """The inputs of the run in progress (example inputs, calibration data, loss, bindings)."""
        return self._context

    def bind_context(self, context: RunContext) -> None:
        """Called by the PassManager at the start of a run: analyses computed from now on see `context`."""
        self._context = context

    # -------------------------------------------------------------- queries
    def get(self, analysis: AnalysisKey, graph: Graph) -> Any:
        """The result of `analysis` (a class or a parameterised instance) for `graph`, computed if needed."""
        if not isinstance(graph, Graph):
            raise GraphoptError(f"analyses.get({analysis!r}, graph) needs the graph, got {graph!r}")
        key = analysis_key(analysis)
        if self._stack:
            self._dependents.setdefault(key, set()).add(self._stack[-1][0])
        cache = self._cache.setdefault(graph, {})
        if key in cache:
            return cache[key]
        if (key, graph) in self._stack:
            chain = [repr(k) for k, _ in self._stack] + [repr(key)]
            raise GraphoptError(f"analysis {key!r} depends on itself: {' -> '.join(chain)}")
        self._stack.append((key, graph))
        try:
            for dependency in key.depends:
                self.get(dependency, graph)
            result = key.compute(graph, self)
        finally:
            self._stack.pop()
        self.computations[key] += 1
        cache[key] = result
        return result

    def cached(self, analysis: AnalysisKey, graph: Graph) -> Any | None:
        """The cached result, or None; never computes."""
        return self._cache.get(graph, {}).get(analysis_key(analysis))

    def is_cached(self, analysis: AnalysisKey, graph: Graph) -> bool:
        return analysis_key(analysis) in self._cache.get(graph, {})

    # ---------------------------------------------------------- invalidation
    def invalidate(self, graph: Graph, preserved: PreservedAnalyses | None = None) -> list[Analysis]:
        """Drop the results for `graph` that `preserved` does not cover (and whatever was built on them)."""
        preserved = preserved or PreservedAnalyses.none()
        cache = self._cache.get(graph)
        if not cache or preserved.is_all:
            return []
        doomed = {key for key in cache if not preserved.preserves(key)}
        frontier = list(doomed)
        while frontier:
            for dependent in self._dependents.get(frontier.pop(), ()):
                if dependent not in doomed:
                    doomed.add(dependent)
                    frontier.append(dependent)
        dropped = [key for key in cache if key in doomed]
        for key in dropped:
            del cache[key]
        return dropped

    def forget(self, graph: Graph) -> None:
        """Drop everything cached for `graph` (a pass replaced it with a new Graph object)."""
        self._cache.pop(graph, None)

    def clear(self) -> None:
        self._cache = weakref.WeakKeyDictionary()

    # Sugar for pass authors: `PassResult(graph, True, preserved=analyses.all())`.
    @staticmethod
    def all() -> PreservedAnalyses:
        return PreservedAnalyses.all()

    @staticmethod
    def none() -> PreservedAnalyses:
        return PreservedAnalyses.none()
