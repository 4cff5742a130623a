"""What an analysis is: a key, its type and parameters, that computes a result from a graph.

The model is MLIR's `AnalysisManager`, which looks analyses up by their C++
type: here the key is an instance of an `Analysis` subclass, a frozen
dataclass, so `ChannelGroups()` and `ChannelGroups(heads=False)` are two
cached results and equal parameters share one. A class stands for its default
instance (`analyses.get(CostAnalysis)`). Nothing is registered anywhere: the
class is the analysis, so importing it is all a caller needs.

This module is below the pass manager: an analysis reads other analyses and
the run's context through the small `Analyses` protocol that the pass
manager's `AnalysisManager` implements, and never imports it. The one helper
here, `bindings_from_inputs`, is how that context binds symbolic dims.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Protocol, Sequence, Union, dataclass_transform

from graphopt.errors import GraphoptError
from graphopt.ir.graph import Graph


class RunInputs(Protocol):
    """The part of a run's context an analysis may read: sizes for the graph's symbolic dims."""

    def bindings(self, graph: Graph) -> dict[str, int]: ...


class Analyses(Protocol):
    """What `compute` receives: the other analyses of the graph, and the run's context."""

    @property
    def context(self) -> RunInputs: ...

    def get(self, key: AnalysisKey, graph: Graph) -> Any: ...


@dataclass_transform(frozen_default=True)
class Analysis:
    """Base class of every analysis; a subclass is a frozen dataclass whose instances are cache keys.

        class OpHistogram(Analysis):
            \"\"\"How many nodes of each op.\"\"\"

            def compute(self, graph, analyses):
                return collections.Counter(n.op for n in graph.nodes)

    Annotated fields are parameters (`ChannelGroups(heads=False)`); give each a
    default so the class alone is a key too. `depends` lists analyses computed
    first and treated as inputs: when one of them is invalidated this one goes
    with it. Reading another analysis inside `compute` records the same link.
    """

    depends: ClassVar[tuple[AnalysisKey, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # frozen and compared by value: equal parameters must find the same cache entry
        dataclasses.dataclass(frozen=True)(cls)

    def compute(self, graph: Graph, analyses: Analyses) -> Any:
        """The result for `graph`; read other analyses with `analyses.get(Other, graph)`."""
        raise NotImplementedError(f"analysis {type(self).__qualname__} does not implement compute()")

    @classmethod
    def describe(cls) -> str:
        """The first line of the class docstring: what the analysis computes."""
        return (cls.__doc__ or "").strip().split("\n")[0]


AnalysisKey = Union[Analysis, "type[Analysis]"]


def analysis_key(key: Any) -> Analysis:
    """The cache key for `key`: an instance as is, a class as its default instance."""
    if isinstance(key, Analysis):
        return key
    if isinstance(key, type) and issubclass(key, Analysis):
        try:
            return key()
        except TypeError as exc:
            raise GraphoptError(f"analysis {key.__qualname__} has parameters without defaults; "
                                f"pass an instance, e.g. {key.__qualname__}(...): {exc}") from None
    hint = " (analyses are no longer looked up by name: import the class)" if isinstance(key, str) else ""
    raise GraphoptError(f"not an analysis: {key!r}; use a subclass of graphopt.analysis.Analysis "
                        f"or an instance of one{hint}")


def bindings_from_inputs(graph: Graph, example_inputs: Sequence[Any] | Any) -> dict[str, int]:
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

