"""Latency budgets (`prune{target_latency=...}`): the lookup table, its cache, the allocation and the closed loop.

The solver's tests time graphs with a synthetic latency (a function of the graph: MACs, a penalty for
widths off the 16-channel block, the elements other nodes write), registered as the latency back-end
"synthetic", so they are deterministic; one test measures a small model on ONNX Runtime for real.
"""

from __future__ import annotations

import math

import pytest
import torch

import graphopt
from graphopt import GraphoptError, models_zoo
from graphopt.analysis import bindings_from_inputs, estimate_cost
from graphopt.passes.prune import Prune
from graphopt.passes.prune import latency as latency_module
from graphopt.passes.prune.latency_table import (Grid, LatencyCache, Signature, build_table, one_node_graph,
                                                 signature_of)
from graphopt.passmanager import PassManager
from graphopt.timing import Timing


def synthetic_seconds(graph, inputs) -> float:
    """A deterministic stand-in for a back-end: 1 ns per MAC, 5 us per dense node whose output width is not a
    multiple of 16, 0.2 ns per element other nodes write, 20 us per call."""
    env = bindings_from_inputs(graph, inputs)
    seconds = estimate_cost(graph, bindings=env).total_macs * 1e-9 + 20e-6
    for node in graph.nodes:
        if node.op in ("conv", "linear"):
            seconds += 5e-6 * (node.inputs[1].shape[0] % 16 != 0)
        elif node.outputs:
            seconds += 0.2e-9 * math.prod(int(d) if isinstance(d, int) else env.get(str(d), 1)
                                          for d in node.outputs[0].shape)
    return seconds


class Counting:
    """The synthetic measurer, counting its one-node and whole-graph calls."""

    def __init__(self) -> None:
        self.nodes = self.graphs = 0

    def __call__(self, threads: int):
        def measure(graph, inputs):
            if len(graph.nodes) == 1:
                self.nodes += 1
            else:
                self.graphs += 1
            return Timing(synthetic_seconds(graph, inputs), 0.0, 1)

        return measure


@pytest.fixture
def synthetic(monkeypatch):
    counting = Counting()
    monkeypatch.setitem(latency_module.MEASURERS, "synthetic", counting)
    return counting


@pytest.fixture(scope="module")
def cnn():
    torch.manual_seed(0)
    model, inputs = models_zoo.get("resnet18", "tiny")
    return model.eval(), inputs


def latency_prune(graph, inputs, cache, **options):
    options = {"target_latency": 0.5, "latency_backend": "synthetic", "latency_cache": str(cache), **options}
    text = ",".join(f"{k}={v}" for k, v in options.items())
    out, report = PassManager.parse(f"prune{{{text}}}").run(graph.clone(), inputs)
    return out, report.stats("prune")[-1]


def test_the_solver_meets_a_synthetic_latency_target(cnn, synthetic, tmp_path):
    model, inputs = cnn
    graph = graphopt.trace(model, inputs)
    for target in (0.5, 0.3):
        pruned, report = latency_prune(graph, inputs, tmp_path, target_latency=target)
        latency = report.latency
        assert abs(latency.measured / target - 1) <= 0.10, latency.summary()
        batch1 = tuple(x[:1] for x in inputs)
        got = synthetic_seconds(pruned, batch1) / synthetic_seconds(graph, batch1)
        assert got == pytest.approx(latency.measured, rel=1e-6)  # what the report says is what the graph does
        assert report.target_metric == "latency" and report.achieved_fraction == latency.measured
        assert "predicted" in report.summary() and "measured" in report.summary()
        for decision in report.decisions:  # widths stay on the fast multiples
            assert decision.kept * decision.width % 8 == 0 or decision.kept == decision.total


def test_the_cache_is_reused(cnn, synthetic, tmp_path):
    model, inputs = cnn
    graph = graphopt.trace(model, inputs)
    latency_prune(graph, inputs, tmp_path)
    first = synthetic.nodes
    assert first > 0 and list(tmp_path.glob("synthetic-*.json"))
    _, report = latency_prune(graph, inputs, tmp_path)
    assert synthetic.nodes == first  # the second run measures no node again
    assert report.latency.table_measured == 0 and report.latency.table_points > 0


def test_the_measurement_cap_fails_before_measuring(cnn, synthetic, tmp_path):
    model, inputs = cnn
    graph = graphopt.trace(model, inputs)
    with pytest.raises(GraphoptError, match="latency_max_measurements=3"):
        latency_prune(graph, inputs, tmp_path, latency_max_measurements=3)
    assert synthetic.nodes == 0


def test_an_unreachable_target_says_why(cnn, synthetic, tmp_path):
    model, inputs = cnn
    graph = graphopt.trace(model, inputs)
    with pytest.raises(GraphoptError, match="target_latency=0.01"):
        latency_prune(graph, inputs, tmp_path, target_latency=0.01)


@pytest.mark.parametrize("options, match", [
    ({"target_latency": 0.0}, "target_latency"),
    ({"target_latency": 1.5}, "target_latency"),
    ({"target_latency": 0.5, "target_macs": 0.5}, "not both"),
    ({"target_latency": 0.5, "ratio": 0.3}, "ratio"),
    ({"target_latency": 0.5, "latency_backend": "onxx"}, "onnx"),
    ({"target_latency": 0.5, "latency_batch": 0}, "latency_batch"),
    ({"target_latency": 0.5, "latency_threads": 0}, "latency_threads"),
])
def test_bad_options_are_rejected(options, match):
    with pytest.raises(GraphoptError, match=match):
        Prune(**options)


def test_optimize_measures_on_its_own_backend_by_default():
    from graphopt.api import _prune_steps

    assert _prune_steps({"target_latency": 0.5}, 1, "torch")[0].latency_backend == "torch"
    assert _prune_steps({"target_latency": 0.5, "latency_backend": "torch"}, 1, "onnx")[0].latency_backend == "torch"
    two = _prune_steps({"target_latency": 0.25}, 2, "onnx")
    assert [p.target_latency for p in two] == [0.5, 0.5] and two[0].latency_backend == "onnx"


def test_the_grid_interpolates_linearly_and_extrapolates():
    grid = Grid([16, 32], [16, 64], [[1.0, 4.0], [2.0, 8.0]], 0.0)
    assert grid.at(16, 16) == 1.0 and grid.at(32, 64) == 8.0
    assert grid.at(24, 40) == pytest.approx((1.0 + 4.0 + 2.0 + 8.0) / 4)
    assert grid.at(8, 16) == pytest.approx(0.5)  # extrapolated from the nearest two points
    assert grid.at(0, 0) >= 0.0


def test_signatures_and_one_node_graphs(cnn):
    model, inputs = cnn
    graph = graphopt.trace(model, inputs)
    convs = [n for n in graph.nodes if n.op == "conv"]
    sig = signature_of(convs[1], {"batch": 1}, True, True)
    assert isinstance(sig, Signature) and sig.x_shape[0] == 1
    one, x = one_node_graph(sig, 8, 16)
    assert [n.op for n in one.nodes] == ["conv"] and one.outputs[0].shape[1] == 16 and x[0].shape[1] == 8
    from graphopt.ir.interpreter import run_graph

    assert run_graph(one, x)[0].shape[1] == 16


def test_the_cache_is_keyed_by_threads_and_survives_damage(tmp_path):
    cache = LatencyCache(tmp_path, "synthetic", threads=1)
    cache.put("k", Timing(1e-3, 0.01, 7))
    cache.save()
    assert LatencyCache(tmp_path, "synthetic", threads=1).get("k") == Timing(1e-3, 0.01, 7)
    assert LatencyCache(tmp_path, "synthetic", threads=2).get("k") is None
    cache.path.write_text("{not json")
    assert LatencyCache(tmp_path, "synthetic", threads=1).get("k") is None


def test_a_table_measured_on_onnx_runtime(cnn, tmp_path):
    """One real measurement: the ONNX Runtime table of a tiny model's first convs, cached, and read back."""
    pytest.importorskip("onnxruntime")
    import graphopt.backends.onnx  # noqa: F401 - registers the runner "onnx"
    from graphopt.passes.prune.latency_table import backend_measurer

    model, inputs = cnn
    graph = graphopt.trace(model, inputs)
    sigs = [signature_of(n, {"batch": 1}, True, True) for n in graph.nodes if n.op == "conv"][:2]
    cache = LatencyCache(tmp_path, "onnx", threads=1)
    table = build_table(sigs, backend_measurer("onnx", 1), cache, progress=False)
    assert table.measured > 0 and table.overhead > 0
    for sig in sigs:
        full, low = table.at(sig, sig.c_in, sig.c_out), table.at(sig, sig.widths()[0][0], sig.widths()[1][0])
        assert full > 0 and low >= 0
    again = build_table(sigs, backend_measurer("onnx", 1), LatencyCache(tmp_path, "onnx", threads=1), progress=False)
    assert again.measured == 0 and again.grids.keys() == table.grids.keys()


def test_reaiming_follows_the_measurements():
    from graphopt.passes.prune.latency import _reaimed

    assert _reaimed([0.5], [0.6], 0.5) == pytest.approx(0.5 * 0.5 / 0.6)
    assert _reaimed([0.5, 0.4], [0.6, 0.55], 0.5) == pytest.approx(0.3)  # the secant through both
    assert _reaimed([0.5, 0.4], [0.6, 0.65], 0.5) == pytest.approx(0.4 * 0.5 / 0.65)  # not rising: scaled
    assert _reaimed([0.9], [0.1], 0.5) == 1.0


def test_the_torch_runner_times_an_eager_module_and_restores_the_thread_count(cnn):
    import graphopt.backends.torch  # noqa: F401 - registers the runner "torch"
    from graphopt.passes.prune.latency_table import backend_measurer

    model, inputs = cnn
    graph = graphopt.trace(model, inputs)
    sig = [signature_of(n, {"batch": 1}, True, True) for n in graph.nodes if n.op == "conv"][1]
    threads = torch.get_num_threads()
    timing = backend_measurer("torch", 1)(*one_node_graph(sig, sig.c_in, sig.c_out))
    assert timing.median > 0 and timing.runs >= 7 and torch.get_num_threads() == threads


def test_optimize_in_steps_aims_each_step_at_what_the_measured_latency_left(cnn, synthetic, tmp_path):
    model, inputs = cnn
    result = graphopt.optimize(model, inputs, steps=2, prune={"target_latency": 0.4, "latency_backend": "synthetic",
                                                              "latency_cache": str(tmp_path)})
    kept = math.prod(report.latency.measured for report in result.report.prune)
    assert len(result.report.prune) == 2 and abs(kept / 0.4 - 1) <= 0.10


def test_a_tvm_latency_budget_measures_its_table_on_onnx_runtime(tmp_path):
    """backend "tvm": the table on ONNX Runtime (a TVM build per point takes seconds), the closed loop on TVM."""
    pytest.importorskip("tvm")
    pytest.importorskip("onnxruntime")
    import graphopt.backends.onnx  # noqa: F401 - the runners "onnx" and "tvm"
    import graphopt.backends.tvm  # noqa: F401

    model, inputs = models_zoo.get("vgg_bn", "tiny")
    graph = graphopt.trace(model, inputs)
    _, report = latency_prune(graph, inputs, tmp_path, target_latency=0.6, latency_backend="tvm", latency_batch=16)
    assert report.latency.backend == "tvm" and abs(report.latency.measured / 0.6 - 1) <= 0.10
    assert list(tmp_path.glob("onnx-*.json")) and any("ONNX Runtime" in w for w in report.why)
