"""Analyses computed on demand, cached per graph, and invalidated by what a pass does not preserve.

Why a manager rather than results stored on nodes (torch.fx's `node.meta`):
a cached result that no pass invalidates goes stale silently. Here every pass
says what it preserves (`PreservedAnalyses`), the manager drops the rest, and
an analysis that read another while it ran is dropped with it.

Registering an analysis is one line: `register_analysis("cost", estimate)`
where `estimate(graph, analyses)` (or `estimate(graph)`) returns anything.
A class works too: it is called like a function, so its instance is the result.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import warnings
import weakref
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence, Union

from graphopt.errors import GraphoptError
from graphopt.ir.graph import Graph
from graphopt.passmanager.errors import did_you_mean

AnalysisFn = Callable[..., Any]
AnalysisKey = Union[str, AnalysisFn]  # a registered name, or the registered function/class itself


@dataclass(frozen=True)
class AnalysisDef:
    """A registered analysis: its name, how to compute it and a one-line description."""

    name: str
    compute: Callable[[Graph, "AnalysisManager"], Any]
    doc: str = ""
    source: Any = None  # the object registered (function or class), for lookup by object


ANALYSES: dict[str, AnalysisDef] = {}
_BY_OBJECT: dict[int, str] = {}


def _adapt(fn: AnalysisFn) -> Callable[[Graph, "AnalysisManager"], Any]:
    """Accept `fn(graph)` as well as `fn(graph, analyses)`."""
    try:
        params = [
            p for p in inspect.signature(fn).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
        ]
        variadic = any(p.kind is p.VAR_POSITIONAL for p in inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return fn
    if len(params) == 1 and not variadic:
        return lambda graph, analyses: fn(graph)
    return fn


def register_analysis(name: str, fn: AnalysisFn | None = None, *, doc: str = "", replace: bool = False) -> Any:
    """Register `fn(graph, analyses) -> result` under `name`; usable as a call or a decorator."""

    def wrap(obj: AnalysisFn) -> AnalysisFn:
        existing = ANALYSES.get(name)
        if existing is not None and not replace and not _same_object(existing.source, obj):
            raise GraphoptError(f"analysis '{name}' is already registered (by {existing.source!r}); pass replace=True")
        text = doc or (inspect.getdoc(obj) or "").split("\n")[0]
        ANALYSES[name] = AnalysisDef(name, _adapt(obj), text, obj)
        _BY_OBJECT[id(obj)] = name
        return obj

    return wrap if fn is None else wrap(fn)


def _same_object(a: Any, b: Any) -> bool:
    """True when `b` is `a` again (e.g. its module was reloaded)."""
    if a is b:
        return True
    return getattr(a, "__module__", None) == getattr(b, "__module__", 0) and getattr(a, "__qualname__", None) == getattr(
        b, "__qualname__", 0
    )


_discovered = False


def _discover() -> None:
    """Import analysis modules shipped in `graphopt.analysis` and `graphopt.analyses` plug-ins, once.

    So `analyses.get("cost")` works without the caller importing the module that
    registers it, and a new analysis module in graphopt/analysis/ needs no edit elsewhere.
    """
    global _discovered
    if _discovered:
        return
    _discovered = True
    importlib.import_module("graphopt.passmanager.use_def")
    import graphopt.analysis as package

    for info in pkgutil.iter_modules(package.__path__):
        if not info.name.startswith("_"):
            try:
                importlib.import_module(f"graphopt.analysis.{info.name}")
            except Exception as exc:  # one broken module must not hide the others
                warnings.warn(f"graphopt: could not import analysis module graphopt.analysis.{info.name}: {exc}",
                              stacklevel=3)
    from graphopt.passmanager.registry import load_entry_points

    load_entry_points("graphopt.analyses")


def analysis_name(key: AnalysisKey) -> str:
    """The registry name for a name, or for a registered function/class."""
    if isinstance(key, str):
        return key
    name = _BY_OBJECT.get(id(key))
    if name is None:
        _discover()
        name = _BY_OBJECT.get(id(key))
    if name is None:
        # An unregistered callable is still usable; it is cached under its qualified name.
        name = f"{getattr(key, '__module__', '?')}.{getattr(key, '__qualname__', repr(key))}"
        register_analysis(name, key)
    return name


def get_analysis(name: str) -> AnalysisDef:
    if name not in ANALYSES:
        _discover()
    try:
        return ANALYSES[name]
    except KeyError:
        raise GraphoptError(
            f"unknown analysis '{name}'{did_you_mean(name, ANALYSES)} (registered: {', '.join(sorted(ANALYSES))})"
        ) from None


def list_analyses() -> dict[str, str]:
    """Registered analysis names and their one-line descriptions."""
    _discover()
    return {name: d.doc for name, d in sorted(ANALYSES.items())}


class PreservedAnalyses:
    """Which cached analyses a pass left valid: all of them, none, or a named set."""

    __slots__ = ("_all", "_names")

    def __init__(self, names: Iterable[AnalysisKey] = (), *, all: bool = False) -> None:  # noqa: A002
        self._all = all
        self._names = frozenset(analysis_name(n) for n in names)

    @classmethod
    def all(cls) -> PreservedAnalyses:
        return cls(all=True)

    @classmethod
    def none(cls) -> PreservedAnalyses:
        return cls()

    @classmethod
    def only(cls, *names: AnalysisKey) -> PreservedAnalyses:
        return cls(names)

    @property
    def is_all(self) -> bool:
        return self._all

    @property
    def names(self) -> frozenset[str]:
        return self._names

    def preserves(self, key: AnalysisKey) -> bool:
        return self._all or analysis_name(key) in self._names

    __contains__ = preserves

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PreservedAnalyses) and (self._all, self._names) == (other._all, other._names)

    def __hash__(self) -> int:
        return hash((self._all, self._names))

    def __repr__(self) -> str:
        if self._all:
            return "PreservedAnalyses.all()"
        if not self._names:
            return "PreservedAnalyses.none()"
        return f"PreservedAnalyses.only({', '.join(repr(n) for n in sorted(self._names))})"


def as_preserved(spec: Any) -> PreservedAnalyses:
    """Normalise what a pass declares: a PreservedAnalyses, "all", "none"/None, or names."""
    if isinstance(spec, PreservedAnalyses):
        return spec
    if spec is None or spec == "none":
        return PreservedAnalyses.none()
    if spec == "all":
        return PreservedAnalyses.all()
    if isinstance(spec, str):
        return PreservedAnalyses([spec])
    return PreservedAnalyses(spec)


class AnalysisManager:
    """Computes analyses on demand and caches them per graph until a pass invalidates them.

    `example_inputs` / `bindings` tell shape-dependent analyses (cost) what
    sizes the symbolic dims take; see `bindings()`. `computations` counts how
    often each analysis was computed, which is what tests of caching check.
    `calibration_data` and `loss` are for data-driven passes (see
    `calibration_batches()`).
    """

    def __init__(
        self,
        *,
        example_inputs: Sequence[Any] | None = None,
        bindings: dict[str, int] | None = None,
        calibration_data: Iterable[Any] | None = None,
        loss: Callable[[Any, Any], Any] | None = None,
    ) -> None:
        self.example_inputs = example_inputs
        self.calibration_data = None if calibration_data is None else list(calibration_data)
        self.loss = loss
        self._bindings = dict(bindings or {})
        self._cache: weakref.WeakKeyDictionary[Graph, dict[str, Any]] = weakref.WeakKeyDictionary()
        # name -> names of analyses that read it while they were computed (they must go when it goes)
        self._dependents: dict[str, set[str]] = {}
        self._stack: list[tuple[str, Graph]] = []  # analyses being computed, innermost last
        self.computations: Counter[str] = Counter()
        self.graph: Graph | None = None  # the graph a pass is working on; the default for get()

    # -------------------------------------------------------------- queries
    def get(self, analysis: AnalysisKey, graph: Graph | None = None) -> Any:
        """The analysis result for `graph` (default: the graph being transformed), computed if needed."""
        graph = self._graph(graph)
        name = analysis_name(analysis)
        if self._stack:
            self._dependents.setdefault(name, set()).add(self._stack[-1][0])
        cache = self._cache.setdefault(graph, {})
        if name in cache:
            return cache[name]
        definition = get_analysis(name)
        if (name, graph) in self._stack:
            chain = [n for n, _ in self._stack] + [name]
            raise GraphoptError(f"analysis '{name}' depends on itself: {' -> '.join(chain)}")
        self._stack.append((name, graph))
        try:
            result = definition.compute(graph, self)
        finally:
            self._stack.pop()
        self.computations[name] += 1
        cache[name] = result
        return result

    def cached(self, analysis: AnalysisKey, graph: Graph | None = None) -> Any | None:
        """The cached result, or None; never computes."""
        return self._cache.get(self._graph(graph), {}).get(analysis_name(analysis))

    def is_cached(self, analysis: AnalysisKey, graph: Graph | None = None) -> bool:
        return analysis_name(analysis) in self._cache.get(self._graph(graph), {})

    def bindings(self, graph: Graph | None = None) -> dict[str, int]:
        """Sizes for the graph's symbolic dims: explicit bindings, else read off the example inputs.

        A symbol bound by neither is left out; analyses document what they assume
        for it (cost counts it as 1, i.e. reports per-sample figures).
        """
        graph = self._graph(graph)
        env: dict[str, int] = {}
        if self.example_inputs is not None:
            env.update(bindings_from_inputs(graph, self.example_inputs))
        env.update(self._bindings)
        return env

    def calibration_batches(self, *, targets: bool = False) -> list[tuple[Any, ...]] | list[tuple[tuple, Any]]:
        """Calibration batches as model-input tuples (or `(inputs, target)` pairs with `targets=True`).

        Items of `calibration_data` are model inputs (a tensor or a tuple of
        them); when a `loss` is set they are `(inputs, target)` pairs, the
        target being what `loss(output, target)` compares the output with.
        Without calibration data the example inputs are the one batch.
        """
        if self.calibration_data is None:
            if self.example_inputs is None:
                raise GraphoptError("this pass needs calibration data: give calibration_data (or example inputs)")
            items = [((tuple(self.example_inputs), None) if self.loss is not None else self.example_inputs)]
        else:
            items = self.calibration_data
        if not items:
            raise GraphoptError("calibration_data is empty")
        pairs = []
        for i, item in enumerate(items):
            if self.loss is not None:
                if not (isinstance(item, (tuple, list)) and len(item) == 2):
                    raise GraphoptError(f"calibration item {i}: with a loss, each item must be an (inputs, target) pair")
                inputs, target = item
            else:
                inputs, target = item, None
            pairs.append((tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,), target))
        return pairs if targets else [inputs for inputs, _ in pairs]

    # ---------------------------------------------------------- invalidation
    def invalidate(self, graph: Graph | None = None, preserved: PreservedAnalyses | None = None) -> list[str]:
        """Drop the results for `graph` that `preserved` does not cover (and whatever was built on them)."""
        preserved = preserved or PreservedAnalyses.none()
        cache = self._cache.get(self._graph(graph))
        if not cache or preserved.is_all:
            return []
        doomed = {name for name in cache if not preserved.preserves(name)}
        frontier = list(doomed)
        while frontier:
            for dependent in self._dependents.get(frontier.pop(), ()):
                if dependent not in doomed:
                    doomed.add(dependent)
                    frontier.append(dependent)
        dropped = [name for name in cache if name in doomed]
        for name in dropped:
            del cache[name]
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

    def _graph(self, graph: Graph | None) -> Graph:
        if graph is None:
            # inside an analysis, the graph it is computed for; otherwise the one being transformed
            graph = self._stack[-1][1] if self._stack else self.graph
        if graph is None:
            raise GraphoptError("no graph given and the analysis manager is not working on one")
        return graph


def bindings_from_inputs(graph: Graph, example_inputs: Sequence[Any]) -> dict[str, int]:
    """Each symbolic dim of the graph's inputs, bound to the size it has in `example_inputs`."""
    if not isinstance(example_inputs, (list, tuple)):
        example_inputs = (example_inputs,)
    env: dict[str, int] = {}
    for symbol, (index, axis) in graph.symbols().items():
        if index < len(example_inputs) and hasattr(example_inputs[index], "shape"):
            shape = example_inputs[index].shape
            if axis < len(shape):
                env[symbol] = int(shape[axis])
    return env
