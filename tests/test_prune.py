"""The `prune` pass on every zoo model: it runs, shrinks, keeps output shapes, respects round_to."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

import graphopt
from graphopt import models_zoo
from graphopt.analysis import channel_groups
from graphopt.backends.torch import to_module
from graphopt.passmanager import PassManager, Verify

from conftest import resize_inputs, traced_zoo_model

PIPELINES = ["prune{ratio=0.5}", "prune{ratio=0.3}", "prune{ratio=0.3,scope=global,round_to=8}",
             "prune{ratio=0.5,scope=global}"]


@pytest.mark.parametrize("pipeline", PIPELINES)
def test_prune_every_zoo_model(zoo_name, pipeline):
    model, inputs, graph = traced_zoo_model(zoo_name)
    pruned, runs = PassManager.parse(pipeline, instruments=[Verify()]).run(graph, inputs)  # Verify: shapes kept
    report = runs.stats("prune")[-1]
    assert report.params_after < report.params_before
    assert report.macs_after < report.macs_before
    assert pruned.num_params() == report.params_after
    for d in report.decisions:
        if "round_to=8" in pipeline:
            step = 8
        else:  # the default: multiples of 16, or of 8, 4, 2 for groups too narrow for 16
            step = 16
            while step > 1 and d.total * d.width < 2 * step:
                step //= 2
        assert (d.kept * d.width) % step == 0 or d.kept == d.total, d
    other = resize_inputs(inputs, models_zoo.spec(zoo_name).dynamic_axes, {"batch": 3, "seq": 9})
    with torch.no_grad():
        assert to_module(pruned)(*other).shape == model(*other).shape


def test_local_ratio_halves_each_group():
    _, inputs, graph = traced_zoo_model("vgg_bn")
    pruned, runs = PassManager.parse("prune{ratio=0.5}").run(graph, inputs)
    report = runs.stats("prune")[-1]
    assert all(d.kept == d.total - d.total // 2 for d in report.decisions)
    assert len(report.decisions) == sum(g.prunable for g in channel_groups(graph))


def test_params_and_macs_after_are_the_expected_numbers():
    """Linear(6,4) -> Linear(4,3) at ratio 0.5 becomes Linear(6,2) -> Linear(2,3): count by hand."""
    model = TwoLayer().eval()
    x = torch.randn(5, 6)
    pruned, runs = PassManager.parse("prune{ratio=0.5}").run(graphopt.trace(model, (x,)), (x,))
    report = runs.stats("prune")[-1]
    assert (report.params_before, report.params_after) == (6 * 4 + 4 + 4 * 3 + 3, 6 * 2 + 2 + 2 * 3 + 3)
    assert (report.macs_before, report.macs_after) == (5 * (6 * 4 + 4 * 3), 5 * (6 * 2 + 2 * 3))


def test_vgg_params_fall_quadratically():
    """In a plain conv chain, halving every group quarters each inner conv: params < 30% remain."""
    _, inputs, graph = traced_zoo_model("vgg_bn")
    pruned, runs = PassManager.parse("prune{ratio=0.5}").run(graph, inputs)
    report = runs.stats("prune")[-1]
    assert 0.2 < report.params_after / report.params_before < 0.3
    assert 0.2 < report.macs_after / report.macs_before < 0.3


def test_ratio_zero_changes_nothing():
    _, inputs, graph = traced_zoo_model("resnet18")
    pruned, report = PassManager.parse("prune{ratio=0.0}").run(graph, inputs)
    assert not report.modified and str(pruned) == str(graph)


def test_ignore_keeps_matching_groups_whole():
    _, inputs, graph = traced_zoo_model("resnet18")
    pruned, _ = PassManager.parse("prune{ratio=0.5,ignore=['layer4.*']}").run(graph, inputs)
    assert pruned.weights["layer4.0.conv1.weight"].shape == graph.weights["layer4.0.conv1.weight"].shape
    assert pruned.weights["layer1.0.conv1.weight"].shape[0] < graph.weights["layer1.0.conv1.weight"].shape[0]


class TwoLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, 4)
        self.fc2 = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


@pytest.mark.parametrize("criterion", ["l1", "l2", "bn_scale"])
def test_criteria_remove_the_weakest_channel(criterion):
    model = TwoLayer().eval()
    with torch.no_grad():
        model.fc1.weight[2] *= 1e-3  # hidden channel 2 barely contributes
        model.fc1.bias[2] = 0.0
        model.fc2.weight[:, 2] *= 1e-3
    x = torch.randn(5, 6)
    graph = graphopt.trace(model, (x,))
    pruned, _ = PassManager.parse(f"prune{{ratio=0.25,criterion={criterion},round_to=1}}").run(graph, (x,))
    w = pruned.weights["fc1.weight"].data
    assert w.shape == (3, 6)
    kept_rows = [int(torch.argmin((model.fc1.weight.detach() - row).abs().sum(1))) for row in w]
    assert kept_rows == [0, 1, 3]
    torch.testing.assert_close(to_module(pruned)(x), model(x), atol=0.05, rtol=0.05)


def test_pruned_graph_runs_on_onnx_runtime():
    pytest.importorskip("onnxruntime")
    from graphopt.backends import onnx as onnx_backend

    model, inputs, graph = traced_zoo_model("mobilenet_v2")
    pruned, _ = PassManager.parse("canonicalize,prune{ratio=0.5,round_to=8}").run(graph, inputs)
    runner = onnx_backend.compile(pruned)
    with torch.no_grad():
        expected = to_module(pruned)(*inputs)
        torch.testing.assert_close(runner(*inputs), expected, atol=1e-4, rtol=1e-4)
        bigger = resize_inputs(inputs, {0: {0: "batch"}}, {"batch": 5})
        assert runner(*bigger).shape == (5,) + tuple(expected.shape[1:])


def test_unknown_criterion_is_a_clear_error():
    _, inputs, graph = traced_zoo_model("resnet18")
    with pytest.raises(Exception, match="unknown pruning criterion 'taylorr'"):
        PassManager.parse("prune{criterion=taylorr}").run(graph, inputs)


@pytest.mark.parametrize("name", ["resnet18", "vit", "llama"])
def test_taylor_criterion_prunes_zoo_models(name):
    model, inputs, graph = traced_zoo_model(name)
    pruned, runs = PassManager.parse("prune{ratio=0.5,criterion=taylor}", instruments=[Verify()]).run(graph, inputs)
    report = runs.stats("prune")[-1]
    assert report.params_after < report.params_before


def test_taylor_scores_follow_weight_times_gradient():
    """A hidden channel whose outgoing weights are zero has zero gradient, so Taylor removes it first."""
    model = TwoLayer().eval()
    with torch.no_grad():
        model.fc2.weight[:, 1] = 0.0
    x = torch.randn(8, 6)
    graph = graphopt.trace(model, (x,))
    pruned, _ = PassManager.parse("prune{ratio=0.25,criterion=taylor,round_to=1}").run(graph, (x,))
    kept = [int(torch.argmin((model.fc1.weight.detach() - row).abs().sum(1))) for row in pruned.weights["fc1.weight"].data]
    assert kept == [0, 2, 3]


def test_taylor_without_inputs_is_a_clear_error():
    _, _, graph = traced_zoo_model("resnet18")
    with pytest.raises(Exception, match="needs calibration data"):
        PassManager.parse("prune{criterion=taylor}").run(graph)
