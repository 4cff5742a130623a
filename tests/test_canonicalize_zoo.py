"""Every canonicalisation pass, and the `canonicalize` pipeline, on every tiny zoo model: exact and well-formed."""

from __future__ import annotations

import pytest
import torch

from graphopt import models_zoo
from graphopt.passmanager import PassManager, Tolerance, Verify
from graphopt.passmanager.instruments import compare_outputs, run_graph, run_graph_float64

from conftest import traced_zoo_model

PASSES = ["remove-identity", "merge-reshapes", "fold-constants", "fold-batchnorm", "eliminate-dead-code",
          "canonicalize"]
FOLDABLE_INTO = ("conv", "conv_transpose", "linear")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy 2-core machine the
    OpenMP spin-waits made these tests ~10x slower in CPU time; restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("pipeline", PASSES)
@pytest.mark.parametrize("name", models_zoo.list_models())
def test_pass_is_exact_on_zoo_model(name, pipeline):
    _, inputs, graph = traced_zoo_model(name)
    before = graph.format(source=True)
    verify = Verify(inputs)  # graph.verify() and output comparison after every pass that changed the graph
    new, report = PassManager.parse(pipeline, instruments=[verify]).run(graph, inputs)

    assert graph.format(source=True) == before, "the caller's graph must not change"
    new.verify()
    if len(report.records) > 1:
        # Verify compared each pass with the one before; end to end, the result still computes
        # what the traced graph computes (for a single pass, that is what Verify just checked)
        compare_outputs(run_graph(graph, inputs), run_graph(new, inputs), Tolerance("exact"), pipeline,
                        lambda: run_graph_float64(graph, inputs))
    # node counts are reported, and add up
    assert report.records[0].nodes_before == len(graph.nodes)
    assert report.records[-1].nodes_after == len(new.nodes)
    assert report.modified == (new.format() != graph.format())
    assert len(verify.checked) == sum(r.modified for r in report)


def assert_no_foldable_batchnorm(graph) -> None:
    for bn in graph.find_nodes("batch_norm"):
        x = bn.inputs[0]
        foldable = x.producer is not None and x.producer.op in FOLDABLE_INTO and len(x.uses()) == 1
        assert not foldable, f"{bn.where()} could have been folded into {x.producer.where()}"


@pytest.mark.parametrize("name", models_zoo.list_models())
def test_fold_batchnorm_leaves_no_foldable_batchnorm(name):
    _, inputs, graph = traced_zoo_model(name)
    folded, report = PassManager.parse("fold-batchnorm").run(graph, inputs)
    assert_no_foldable_batchnorm(folded)
    (record,) = report.records
    assert record.modified == bool(graph.find_nodes("batch_norm"))
    assert record.nodes_before - record.nodes_after == len(graph.find_nodes("batch_norm")) - len(
        folded.find_nodes("batch_norm"))
    canonical, _ = PassManager.parse("canonicalize").run(graph, inputs)
    assert_no_foldable_batchnorm(canonical)
    # a second run finds nothing left to do: every pass reports modified=False
    _, again = PassManager.parse("canonicalize").run(canonical, inputs)
    assert not again.modified and len(again.records) == 5


def test_cnn_zoo_models_lose_their_batchnorms():
    """In the CNNs whose norms follow their convs (all but DenseNet's pre-activation blocks), none remain."""
    for name in ("resnet18", "resnet50", "resnext", "mobilenet_v2", "mobilenet_v3", "efficientnet", "regnet",
                 "vgg_bn", "unet"):
        _, inputs, graph = traced_zoo_model(name)
        assert graph.find_nodes("batch_norm")
        new, _ = PassManager.parse("fold-batchnorm").run(graph, inputs)
        assert not new.find_nodes("batch_norm"), name
