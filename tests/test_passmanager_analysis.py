"""The analysis manager: analyses keyed by type, computed on demand, cached per graph, invalidated by passes."""

from __future__ import annotations

import pytest
import torch

from graphopt.analysis import Analysis, ChannelGroups, CostAnalysis
from graphopt.errors import GraphoptError
from graphopt.ir import Graph
from graphopt.passmanager import (
    AnalysisManager,
    Pass,
    PassManager,
    PassResult,
    PreservedAnalyses,
    RunContext,
    register_pass,
    unregister,
)


def chain_graph() -> Graph:
    g = Graph("chain")
    x = g.add_input("x", (2, 4), torch.float32)
    w = g.add_weight("fc.weight", torch.randn(4, 4))
    fc = g.create_node("linear", [x, w, None], name="fc")
    relu = g.create_node("relu", [fc.output], name="relu")
    g.create_node("sigmoid", [fc.output], name="dead")
    g.outputs = [relu.output]
    return g


class NodeCount(Analysis):
    """Counts nodes (the analysis under test)."""

    def compute(self, graph, analyses):
        return len(graph.nodes)


class Doubled(Analysis):
    """Reads NodeCount, so it must go when NodeCount goes."""

    def compute(self, graph, analyses):
        return 2 * analyses.get(NodeCount, graph)


class Scaled(Analysis):
    """A parameterised analysis: each factor is its own cache entry; declares its input in `depends`."""

    factor: int = 1
    depends = (NodeCount,)

    def compute(self, graph, analyses):
        return self.factor * analyses.cached(NodeCount, graph)


@pytest.fixture(autouse=True)
def registered():
    @register_pass("needs-count")
    class NeedsCount(Pass):
        requires = (NodeCount,)

        def run(self, graph, analyses):
            assert analyses.is_cached(NodeCount, graph)
            return PassResult(graph, modified=False)

    @register_pass("touch-preserving-count")
    class TouchPreserving(Pass):
        preserves = (NodeCount,)

        def run(self, graph, analyses):
            graph.nodes[0].meta["touched"] = True
            return PassResult(graph, modified=True)

    @register_pass("touch")
    class Touch(Pass):
        def run(self, graph, analyses):
            graph.nodes[0].meta["touched"] = True
            return PassResult(graph, modified=True)

    @register_pass("touch-keep-all")
    class TouchKeepAll(Pass):
        def run(self, graph, analyses):
            return PassResult(graph, modified=True, preserved=analyses.all())

    @register_pass("new-graph")
    class NewGraph(Pass):
        preserves = "all"

        def run(self, graph, analyses):
            return PassResult(graph.clone(), modified=True)

    yield
    for name in ("needs-count", "touch-preserving-count", "touch", "touch-keep-all", "new-graph"):
        unregister(name)


@pytest.mark.parametrize("pipeline, computed", [
    # preserving passes (by declaration, or by analyses.all() in the result) keep the result
    ("needs-count,touch-preserving-count,needs-count,touch-keep-all,needs-count", 1),
    # a pass that modifies the graph without preserving it drops it
    ("needs-count,touch,needs-count,needs-count,touch,needs-count", 3),
    # an unmodified graph keeps every analysis
    ("needs-count,needs-count,needs-count", 1),
    # a new graph object starts with an empty cache, even though NewGraph declares preserves="all":
    # the cached results describe the old graph's nodes
    ("needs-count,new-graph,needs-count", 2),
])
def test_recomputation_follows_what_passes_preserve(pipeline, computed):
    analyses = AnalysisManager()
    PassManager.parse(pipeline).run(chain_graph(), analyses=analyses)
    assert analyses.computations[NodeCount()] == computed


def test_dependent_analysis_is_invalidated_with_its_input():
    g = chain_graph()
    am = AnalysisManager()
    assert am.get(Doubled, g) == 6
    assert am.invalidate(g, PreservedAnalyses.only(Doubled)) == [NodeCount(), Doubled()]
    am.get(Doubled, g)
    assert am.computations == {NodeCount(): 2, Doubled(): 2}
    # preserving the input keeps the dependent too; preserving all drops nothing
    assert am.invalidate(g, PreservedAnalyses.only(NodeCount)) == [Doubled()]
    assert am.invalidate(g, PreservedAnalyses.all()) == []


def test_cache_is_per_graph():
    a, b = chain_graph(), chain_graph()
    am = AnalysisManager()
    am.get(NodeCount, a)
    am.get(NodeCount, b)
    am.get(NodeCount(), a)  # the class stands for its default instance: the same key
    assert am.computations[NodeCount()] == 2
    am.invalidate(a)
    assert am.is_cached(NodeCount, b) and not am.is_cached(NodeCount, a)


def test_parameterised_keys_are_cached_apart_and_depends_is_computed_first():
    g = chain_graph()
    am = AnalysisManager()
    assert am.get(Scaled(factor=2), g) == 6 and am.get(Scaled(factor=3), g) == 9  # NodeCount came first
    assert am.get(Scaled(factor=2), g) == 6
    assert am.computations == {NodeCount(): 1, Scaled(2): 1, Scaled(3): 1}
    # a class preserves every parameterisation; an instance only itself; a declared input takes its dependents
    assert PreservedAnalyses.only(Scaled).preserves(Scaled(factor=7))
    assert not PreservedAnalyses.only(Scaled(factor=2)).preserves(Scaled(factor=3))
    assert am.invalidate(g, PreservedAnalyses.only(Scaled, NodeCount)) == []
    assert set(am.invalidate(g, PreservedAnalyses.only(Scaled))) == {NodeCount(), Scaled(2), Scaled(3)}


def test_builtin_analyses_are_classes_found_by_import():
    """Nothing registers itself: ChannelGroups and CostAnalysis are keys because they are classes."""
    g = chain_graph()
    am = AnalysisManager()
    assert am.get(ChannelGroups, g) is am.get(ChannelGroups(heads=True), g)
    assert am.get(ChannelGroups(heads=False), g) is not am.get(ChannelGroups, g)
    assert am.get(CostAnalysis, g).total_params == 16
    assert ChannelGroups.describe().startswith("Coupled channel groups")


def test_a_key_must_be_an_analysis():
    with pytest.raises(GraphoptError, match="no longer looked up by name: import the class"):
        AnalysisManager().get("cost", chain_graph())
    with pytest.raises(GraphoptError, match="not an analysis"):
        PreservedAnalyses.only(len)

    class Needs(Analysis):
        size: int

        def compute(self, graph, analyses):
            return self.size

    with pytest.raises(GraphoptError, match="has parameters without defaults"):
        AnalysisManager().get(Needs, chain_graph())
    assert AnalysisManager().get(Needs(size=4), chain_graph()) == 4


def test_analysis_manager_has_no_current_graph():
    with pytest.raises(GraphoptError, match="needs the graph"):
        AnalysisManager().get(NodeCount, None)


class Selfish(Analysis):
    def compute(self, graph, analyses):
        return analyses.get(Selfish, graph)


def test_self_dependency_is_reported():
    with pytest.raises(GraphoptError, match=r"depends on itself: Selfish\(\) -> Selfish\(\)"):
        AnalysisManager().get(Selfish, chain_graph())


def test_bindings_come_from_example_inputs_then_explicit_values():
    from graphopt.ir import dims as D

    g = Graph("sym")
    x = g.add_input("x", (D.symbol("batch"), D.symbol("seq")), torch.float32)
    g.outputs = [g.create_node("relu", [x]).output]
    context = RunContext(example_inputs=(torch.zeros(3, 7),), explicit_bindings={"seq": 9})
    assert context.bindings(g) == {"batch": 3, "seq": 9}
    assert AnalysisManager(context).context.bindings(g) == {"batch": 3, "seq": 9}


def test_the_run_context_reaches_passes_through_analyses():
    seen = []

    @register_pass("read-context")
    class ReadContext(Pass):
        def run(self, graph, analyses):
            seen.append((analyses.context.example_inputs, analyses.context.calibration_batches()))
            return PassResult(graph, modified=False)

    try:
        x = torch.zeros(2, 4)
        PassManager.parse("read-context").run(chain_graph(), x, calibration_data=iter([x, (x,)]))
    finally:
        unregister("read-context")
    (inputs, batches), = seen
    assert inputs == (x,) and len(batches) == 2 and all(b == (x,) for b in batches)
