"""The prune pass's safety net: a deliberately wrong channel rule costs compression, never a broken model.

Each test registers a wrong rule with `replace=True` (conftest restores the op table after it), prunes,
and checks that the pruned graph runs, equals the original with the kept plan masked, names the bad
group in the report and still prunes the other groups. A sound model must come out bit-identical to
the pass without the net.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import graphopt
from graphopt import GraphoptError
from graphopt.analysis import channel_groups, mask_channels, register_channel_rule
from graphopt.analysis.channel_rules import rule_for
from graphopt.ir.interpreter import run_graph
from graphopt.passes.prune import PruneRecipe
from graphopt.passes.prune.recipe import anchor_of
from graphopt.passmanager import PassManager

from conftest import traced_zoo_model


class TwoBranch(nn.Module):
    """stem -> two convs concatenated -> head conv -> classifier: four groups, one through the concat."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.a = nn.Conv2d(16, 16, 3, padding=1)
        self.b = nn.Conv2d(16, 16, 1)
        self.head = nn.Conv2d(32, 32, 3, padding=1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.stem(x)))
        y = torch.cat([F.relu(self.a(x)), F.relu(self.b(x))], 1)
        y = F.relu(self.head(y))
        return self.fc(y.mean((2, 3)))


class _Reversed:
    """A node seen with its inputs in reverse order (everything else is the node's)."""

    def __init__(self, node) -> None:
        self._node = node
        self.inputs = list(node.inputs)[::-1]

    def __getattr__(self, name):
        return getattr(self._node, name)


def swap_concat_offsets() -> None:
    """A wrong concat rule: the real one applied to the inputs reversed, so the channels of `a` are
    coupled to the concat positions of `b` (shapes still agree: both branches have 16 channels)."""
    concat = rule_for("concat")
    register_channel_rule("concat", replace=True)(lambda b, node: concat(b, _Reversed(node)))


def forget_linear_weight() -> None:
    """A wrong linear rule: couples nothing, so the classifier's weight columns are left out of the head's group."""
    register_channel_rule("linear", replace=True)(lambda b, node: None)


@pytest.fixture
def two_branch():
    torch.manual_seed(0)
    model = TwoBranch().eval()
    inputs = (torch.randn(2, 3, 8, 8),)
    return model, inputs, graphopt.trace(model, inputs)


def _group_with(graph, weight: str):
    return next(g for g in channel_groups(graph) if g.prunable and any(s.value.name == weight and s.role == "producer"
                                                                         for s in g.spaces))


def _masked_by_recipe(graph, recipe: PruneRecipe):
    """The original with the recipe's (kept) groups masked: what the pruned graph must equal."""
    masked = graph.clone()
    by_anchor = {json.dumps(anchor_of(g)): g for g in channel_groups(graph)}
    for entry in recipe.steps[0].groups:
        mask_channels(masked, by_anchor[json.dumps(entry["anchor"])], np.asarray(entry["removed"]))
    return masked


def _prune(graph, inputs, options: str = "ratio=0.5"):
    pruned, runs = PassManager.parse(f"prune{{{options}}}").run(graph, inputs)
    return pruned, runs.stats("prune")[-1]


def test_a_wrong_rule_that_changes_the_outputs_is_left_unpruned(two_branch):
    model, inputs, graph = two_branch
    swap_concat_offsets()
    bad = _group_with(graph, "a.weight")
    pruned, report = _prune(graph, inputs)

    assert [e.group for e in report.safety.excluded] == [bad.id]
    text = str(report)
    assert f"group {bad.id} at node a: analysis unsound for this pattern, left unpruned" in text
    assert "differs from the masked original" in text and "checks in" in text
    assert bad.id not in {d.group for d in report.decisions}
    # the other groups are pruned; the concat's inputs and the head's input columns stay whole
    assert pruned.weights["stem.weight"].shape[0] == 8 and pruned.weights["head.weight"].shape[:2] == (16, 32)
    assert pruned.weights["a.weight"].shape[0] == 16 and pruned.weights["b.weight"].shape[0] == 16
    # the result runs and equals the original with the kept plan masked
    recipe = pruned.meta["prune_recipes"][-1]
    assert bad.id not in [g.id for g in channel_groups(graph) if json.dumps(anchor_of(g)) in
                          {json.dumps(e["anchor"]) for e in recipe.steps[0].groups}]
    got, want = run_graph(pruned, inputs)[0], run_graph(_masked_by_recipe(graph, recipe), inputs)[0]
    torch.testing.assert_close(got, want)


def test_a_wrong_rule_that_breaks_removal_is_left_unpruned(two_branch):
    """The classifier's weight is missing from the head's group: removing it fails on the classifier's shapes."""
    _, inputs, graph = two_branch
    forget_linear_weight()
    bad = _group_with(graph, "head.weight")
    pruned, report = _prune(graph, inputs)
    (exclusion,) = report.safety.excluded
    assert exclusion.group == bad.id and exclusion.node == "head"
    assert "removing its channels fails" in exclusion.reason and "fc" in exclusion.reason
    assert pruned.weights["head.weight"].shape[0] == 32 and pruned.weights["stem.weight"].shape[0] == 8
    assert pruned.weights["a.weight"].shape[0] + pruned.weights["b.weight"].shape[0] == 16  # the concat group
    assert run_graph(pruned, inputs)[0].shape == (2, 10)
    pruned.verify()


@pytest.mark.parametrize("wrong_rule, weight, target", [(forget_linear_weight, "head.weight", 0.5),
                                                        (swap_concat_offsets, "a.weight", 0.6)])
def test_a_target_is_met_by_the_groups_the_net_keeps(two_branch, wrong_rule, weight, target):
    """A MACs target holds without the excluded group: the search skips a group whose removal raises, and
    searches again without a group the net excluded after removal (the first search counted its savings)."""
    _, inputs, graph = two_branch
    wrong_rule()
    bad = _group_with(graph, weight)
    pruned, report = _prune(graph, inputs, f"target_macs={target}")
    assert [e.group for e in report.safety.excluded] == [bad.id]
    assert abs(report.macs_after / report.macs_before / target - 1) <= 0.05  # issue 18: within 5 %
    assert f"searched for macs {target:.0%}" in report.summary()
    assert pruned.weights[weight].shape[0] == graph.weights[weight].shape[0]
    assert run_graph(pruned, inputs)[0].shape == (2, 10)


def test_the_bisection_costs_about_log2_checks_per_bad_group(two_branch):
    _, inputs, graph = two_branch
    swap_concat_offsets()
    _, report = _prune(graph, inputs, "ratio=0.5,round_to=1")
    plan = len(report.decisions) + len(report.safety.excluded)
    assert report.safety.checks <= 1 + 2 * int(np.ceil(np.log2(plan))) and report.safety.seconds > 0


def test_the_recipe_leaves_the_excluded_group_out_and_replays_identically(two_branch, tmp_path):
    model, inputs, graph = two_branch
    swap_concat_offsets()
    bad = _group_with(graph, "a.weight")
    result = graphopt.optimize(model, inputs, prune=0.5)
    assert [e.group for e in result.report.prune[0].safety.excluded] == [bad.id]
    path = result.save_recipe(tmp_path / "recipe.json")
    anchors = [e["anchor"]["weight"] for e in json.loads(path.read_text())["steps"][0]["groups"]]
    assert anchor_of(bad)["weight"] not in anchors and len(anchors) == 2
    replayed = graphopt.optimize(model, inputs, recipe=path)
    assert replayed.graph.format() == result.graph.format()
    torch.testing.assert_close(replayed(*inputs), result(*inputs), rtol=0, atol=0)


def test_the_check_budget_and_a_plan_that_fails_entirely_are_clear_errors(two_branch):
    _, inputs, graph = two_branch
    swap_concat_offsets()
    with pytest.raises(GraphoptError, match="more than max_checks=2 checks"):
        _prune(graph, inputs, "ratio=0.5,safety_max_checks=2")
    with pytest.raises(GraphoptError, match="every group of the plan fails its check"):
        _prune(graph, inputs, "ratio=0.5,ignore=['bn*','fc*']")  # the plan is the bad group alone
    with pytest.raises(GraphoptError, match="safety_max_checks"):
        PassManager.parse("prune{safety_max_checks=0}")


def test_inputs_the_graph_cannot_run_are_blamed_on_the_inputs_not_on_a_group(two_branch):
    _, _, graph = two_branch
    # checked where the inputs enter the pass manager, before any pass runs
    with pytest.raises(GraphoptError, match=r"example_inputs: input 0 .* has size 4 on axis 1; the model needs 3"):
        _prune(graph, (torch.randn(2, 4, 8, 8),))  # 4 colour channels for a 3-channel stem


def test_without_example_inputs_the_net_warns_and_skips(two_branch):
    _, _, graph = two_branch
    with pytest.warns(UserWarning, match="safety net skipped \\(no example inputs"):
        _, runs = PassManager.parse("prune{ratio=0.5}").run(graph)
    report = runs.stats("prune")[-1]
    assert report.safety.skipped.startswith("no example inputs") and "safety net: skipped" in str(report)


@pytest.mark.parametrize("name, options", [("resnet18", "ratio=0.5"), ("llama", "ratio=0.5,heads=false"),
                                           ("vit", "ratio=0.5,scope=global"), ("resnet18", "target_macs=0.5")])
def test_a_sound_model_has_no_exclusion_and_the_same_result_as_without_the_net(name, options):
    """Bit-identical to `safety=false`: same printed graph, same weights, same recipe (vit: inexact groups)."""
    _, inputs, graph = traced_zoo_model(name)
    with_net, report = _prune(graph, inputs, options)
    without, plain = _prune(graph, inputs, options + ",safety=false")
    assert report.safety.excluded == [] and report.safety.checks == 1 and plain.safety is None
    assert with_net.format() == without.format()
    for weight, value in without.weights.items():
        assert torch.equal(with_net.weights[weight].data, value.data), weight
    assert [r.to_json() for r in with_net.meta["prune_recipes"]] == [r.to_json() for r in without.meta["prune_recipes"]]
    assert "every group sound" in str(report)
