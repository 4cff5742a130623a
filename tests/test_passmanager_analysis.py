"""The analysis manager: computed on demand, cached per graph, invalidated by what a pass does not preserve."""

from __future__ import annotations

import pytest
import torch

from graphopt.errors import GraphoptError
from graphopt.ir import Graph
from graphopt.passmanager import (
    AnalysisManager,
    Pass,
    PassManager,
    PassResult,
    PreservedAnalyses,
    list_analyses,
    register_analysis,
    register_pass,
    unregister,
)
from graphopt.passmanager import analysis as analysis_module
from graphopt.passmanager.use_def import UseDef


def chain_graph() -> Graph:
    g = Graph("chain")
    x = g.add_input("x", (2, 4), torch.float32)
    w = g.add_weight("fc.weight", torch.randn(4, 4))
    fc = g.create_node("linear", [x, w, None], name="fc")
    relu = g.create_node("relu", [fc.output], name="relu")
    g.create_node("sigmoid", [fc.output], name="dead")
    g.outputs = [relu.output]
    return g


def node_count(graph):
    """Counts nodes (the analysis under test)."""
    return len(graph.nodes)


def doubled(graph, analyses):
    """Reads node-count, so it must go when node-count goes."""
    return 2 * analyses.get("node-count")


@pytest.fixture(autouse=True)
def registered():
    register_analysis("node-count", node_count)
    register_analysis("doubled", doubled)

    @register_pass("needs-count")
    class NeedsCount(Pass):
        requires = ("node-count",)

        def run(self, graph, analyses):
            assert analyses.is_cached("node-count")
            return PassResult(graph, modified=False)

    @register_pass("touch-preserving-count")
    class TouchPreserving(Pass):
        preserves = ("node-count",)

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


def run_counting(pipeline: str) -> AnalysisManager:
    analyses = AnalysisManager()
    PassManager.parse(pipeline).run(chain_graph(), analyses=analyses)
    return analyses


def test_preserving_pass_does_not_trigger_recomputation():
    analyses = run_counting("needs-count,touch-preserving-count,needs-count,touch-keep-all,needs-count")
    assert analyses.computations["node-count"] == 1


def test_non_preserving_pass_triggers_recomputation():
    analyses = run_counting("needs-count,touch,needs-count,needs-count,touch,needs-count")
    assert analyses.computations["node-count"] == 3


def test_unmodified_graph_keeps_every_analysis():
    analyses = run_counting("needs-count,needs-count,needs-count")
    assert analyses.computations["node-count"] == 1


def test_new_graph_object_starts_with_an_empty_cache():
    # even though NewGraph declares preserves="all": the cached results describe the old graph's nodes
    analyses = run_counting("needs-count,new-graph,needs-count")
    assert analyses.computations["node-count"] == 2


def test_dependent_analysis_is_invalidated_with_its_input():
    g = chain_graph()
    am = AnalysisManager()
    assert am.get("doubled", g) == 6
    assert am.invalidate(g, PreservedAnalyses.only("doubled")) == ["node-count", "doubled"]
    am.get("doubled", g)
    assert am.computations == {"node-count": 2, "doubled": 2}
    # preserving the input keeps the dependent too; preserving all drops nothing
    assert am.invalidate(g, PreservedAnalyses.only("node-count")) == ["doubled"]
    assert am.invalidate(g, PreservedAnalyses.all()) == []


def test_cache_is_per_graph():
    a, b = chain_graph(), chain_graph()
    am = AnalysisManager()
    am.get("node-count", a)
    am.get("node-count", b)
    am.get("node-count", a)
    assert am.computations["node-count"] == 2
    am.invalidate(a)
    assert am.is_cached("node-count", b) and not am.is_cached("node-count", a)


def test_analyses_registered_as_objects_are_keyed_by_them():
    g = chain_graph()
    am = AnalysisManager()
    assert am.get(node_count, g) == 3
    assert am.get("node-count", g) == 3
    assert am.computations["node-count"] == 1
    assert PreservedAnalyses.only(node_count).preserves("node-count")

    def unregistered(graph):
        return "adhoc"

    assert am.get(unregistered, g) == "adhoc"  # usable without registering, cached under its qualified name
    assert am.get(unregistered, g) == "adhoc" and sum(am.computations.values()) == 2


def test_use_def_analysis_finds_dead_nodes_and_positions():
    g = chain_graph()
    use_def = AnalysisManager().get("use-def", g)
    assert isinstance(use_def, UseDef)
    assert [n.name for n in use_def.dead_nodes()] == ["dead"]
    assert use_def.before(g.node("fc"), g.node("relu"))
    assert use_def.readers[g.node("fc").output] == [g.node("relu"), g.node("dead")]


def test_unknown_analysis_suggests_close_matches():
    with pytest.raises(GraphoptError, match="unknown analysis 'cots'; did you mean 'cost'"):
        AnalysisManager().get("cots", chain_graph())


def test_builtin_analyses_are_discovered_without_imports():
    listing = list_analyses()
    assert {"cost", "use-def", "node-count"} <= set(listing)
    assert listing["node-count"] == "Counts nodes (the analysis under test)."


def test_registering_twice_needs_replace():
    with pytest.raises(GraphoptError, match="already registered"):
        register_analysis("node-count", doubled)
    register_analysis("node-count", node_count)  # the same function again is fine


def test_self_dependency_is_reported():
    register_analysis("selfish", lambda graph, analyses: analyses.get("selfish"), replace=True)
    try:
        with pytest.raises(GraphoptError, match="depends on itself: selfish -> selfish"):
            AnalysisManager().get("selfish", chain_graph())
    finally:
        analysis_module.ANALYSES.pop("selfish", None)


def test_bindings_come_from_example_inputs_then_explicit_values():
    from graphopt.ir import dims as D

    g = Graph("sym")
    x = g.add_input("x", (D.symbol("batch"), D.symbol("seq")), torch.float32)
    g.outputs = [g.create_node("relu", [x]).output]
    am = AnalysisManager(example_inputs=(torch.zeros(3, 7),), bindings={"seq": 9})
    assert am.bindings(g) == {"batch": 3, "seq": 9}
