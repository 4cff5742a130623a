"""`drop-layers`: dropped graphs against hand-built references, exact parameter counts, scores, recovery, API, CLI."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import graphopt
from graphopt import models_zoo
from graphopt.analysis.residual_blocks import find_blocks
from graphopt.backends.torch import to_module
from graphopt.errors import GraphoptError
from graphopt.ir.interpreter import run_graph
from graphopt.passes.drop_layers import DropLayers, DropRecipe, apply_drop_recipe
from graphopt.ir.interpreter import relative_error
from graphopt.passmanager import InvalidOptionError, PassManager, Verify


class Block(nn.Module):
    """A pre-norm MLP residual block."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1, self.fc2 = nn.Linear(width, 2 * width), nn.Linear(2 * width, width)

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(self.norm(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.branch(x)


class Stack(nn.Module):
    """Four residual blocks, a final norm and a head; `skip` leaves blocks out (the hand-built reference)."""

    def __init__(self, width: int = 16, depth: int = 4) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Block(width) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, 5)

    def forward(self, x: torch.Tensor, skip: tuple[int, ...] = ()) -> torch.Tensor:
        for i, block in enumerate(self.blocks):
            if i not in skip:
                x = block(x)
        return self.head(self.norm(x))


@pytest.fixture(scope="module")
def stack():
    torch.manual_seed(0)
    model = Stack().eval()
    with torch.no_grad():  # blocks of unequal strength, so the ranking has something to find
        for i, block in enumerate(model.blocks):
            block.fc2.weight.mul_(0.2 + i)
    inputs = (torch.randn(4, 6, 16),)
    graph = graphopt.trace(model, inputs, dynamic={0: {0: "batch", 1: "seq"}})
    return model, inputs, graph


@pytest.fixture(scope="module")
def llama():
    model, inputs = models_zoo.get("llama", "tiny")
    graph = graphopt.trace(model, inputs, dynamic=models_zoo.spec("llama").dynamic_axes)
    graph, _ = PassManager.parse("simplify").run(graph, inputs)
    return model, inputs, graph


@pytest.fixture(scope="module")
def resnet():
    model, inputs = models_zoo.get("resnet18", "tiny")
    graph = graphopt.trace(model, inputs, dynamic=models_zoo.spec("resnet18").dynamic_axes)
    graph, _ = PassManager.parse("simplify").run(graph, inputs)
    return model, inputs, graph


def drop(graph, inputs, text, **run):
    dropped, report = PassManager.parse(text, instruments=[Verify()]).run(graph, inputs, **run)
    return dropped, report.stats("drop-layers")[0], report


# ------------------------------------------------------------------ numerics against hand-built references
def test_dropped_graph_equals_the_model_without_the_block(stack):
    model, inputs, graph = stack
    dropped, stats, _ = drop(graph, inputs, "drop-layers{blocks=['blocks.1','blocks.3']}")
    assert stats.dropped == ["blocks.1", "blocks.3"]
    x = torch.randn(3, 9, 16)  # another batch and sequence length
    with torch.no_grad():
        torch.testing.assert_close(to_module(dropped)(x), model(x, skip=(1, 3)), rtol=1e-6, atol=1e-6)
    removed = sum(p.numel() for i in (1, 3) for p in model.blocks[i].parameters())
    assert graph.num_params() - dropped.num_params() == removed == stats.params_before - stats.params_after
    assert not any(name.startswith(("blocks.1.", "blocks.3.")) for name in dropped.weights)


def test_cosine_and_angular_scores_match_a_hand_computation(stack):
    model, inputs, graph = stack
    (x,) = inputs
    with torch.no_grad():
        h1 = model.blocks[0](x)
        h2 = model.blocks[1](h1)
    cos = torch.nn.functional.cosine_similarity(h1.double(), h2.double(), dim=-1)
    _, cosine, _ = drop(graph, inputs, "drop-layers{count=1,metric=cosine}")
    _, angular, _ = drop(graph, inputs, "drop-layers{count=1,metric=angular}")
    row = {r.name: r for r in cosine.rows}["blocks.1"]
    assert row.score == pytest.approx(float(1 - cos.mean()), rel=1e-6)
    assert {r.name: r.score for r in angular.rows}["blocks.1"] == pytest.approx(
        float((torch.arccos(cos.clamp(-1, 1)) / math.pi).mean()), rel=1e-6)
    # block 0's branch is the weakest, so both metrics drop it
    assert cosine.dropped == angular.dropped == ["blocks.0"]
    assert min(cosine.rows, key=lambda r: r.score).name == "blocks.0"


def test_loss_metric_is_the_measured_change_of_dropping_the_block_alone(stack):
    model, inputs, graph = stack
    _, stats, _ = drop(graph, inputs, "drop-layers{count=1,metric=loss}")
    with torch.no_grad():
        reference = model(*inputs)
        for row in stats.rows:
            index = int(row.name.split(".")[1])
            expected = relative_error([[reference]], [[model(*inputs, skip=(index,))]])
            assert row.score == pytest.approx(expected, rel=1e-4)
    assert stats.dropped == [min(stats.rows, key=lambda r: r.score).name]


def test_loss_metric_uses_the_run_loss_with_targets(stack):
    model, inputs, graph = stack
    targets = torch.randint(0, 5, (4, 6))

    def loss(out, target):
        return torch.nn.functional.cross_entropy(out.reshape(-1, 5), target.reshape(-1))

    _, stats, _ = drop(graph, inputs, "drop-layers{count=1,metric=loss}", calibration_data=[(inputs, targets)],
                       loss=loss)
    with torch.no_grad():
        base = float(loss(model(*inputs), targets))
        row = {r.name: r for r in stats.rows}["blocks.2"]
        assert row.score == pytest.approx(float(loss(model(*inputs, skip=(2,)), targets)) - base, rel=1e-4)


def test_iterative_drop_equals_dropping_one_at_a_time(stack):
    _, inputs, graph = stack
    _, stats, _ = drop(graph, inputs, "drop-layers{count=2,iterative=true,metric=cosine}")
    once, first, _ = drop(graph, inputs, "drop-layers{count=1,metric=cosine}")
    _, second, _ = drop(once, inputs, "drop-layers{count=1,metric=cosine}")
    assert stats.dropped == first.dropped + second.dropped


def _kl(reference: torch.Tensor, output: torch.Tensor) -> float:
    p, q = torch.log_softmax(reference.double(), -1), torch.log_softmax(output.double(), -1)
    return float((p.exp() * (p - q)).sum(-1).mean())


def test_default_metric_on_logits_is_kl_chosen_greedily_against_the_dense_model(stack):
    """auto -> kl (the head is a linear): each block's score is the KL of the output distribution with it dropped,
    and the second block is the one whose removal together with the first changes the dense output least."""
    model, inputs, graph = stack
    _, stats, _ = drop(graph, inputs, "drop-layers{count=2,progress=false}")
    assert stats.metric.startswith("kl (auto: output 0 is the output of linear")
    with torch.no_grad():
        dense = model(*inputs)
        alone = {f"blocks.{i}": _kl(dense, model(*inputs, skip=(i,))) for i in range(4)}
        for row in stats.rows:
            assert row.score == pytest.approx(alone[row.name], rel=1e-6)
        first = min(alone, key=alone.get)
        index = int(first.split(".")[1])
        together = {f"blocks.{i}": _kl(dense, model(*inputs, skip=(index, i))) for i in range(4) if i != index}
    assert stats.dropped == [first, min(together, key=together.get)]


def test_default_metric_without_logits_is_the_measured_output_change():
    class Trunk(Stack):  # residual blocks and a norm, no head: features, not logits
        def forward(self, x):
            for block in self.blocks:
                x = block(x)
            return self.norm(x)

    torch.manual_seed(0)
    model, inputs = Trunk().eval(), (torch.randn(2, 5, 16),)
    _, stats, _ = drop(graphopt.trace(model, inputs), inputs, "drop-layers{count=1,progress=false}")
    assert stats.metric.startswith("loss (auto: output 0 is not a linear layer's logits")
    with torch.no_grad():
        dense = model(*inputs)
        changes = {}
        for i in range(4):
            kept = [b for j, b in enumerate(model.blocks) if j != i]
            x = inputs[0]
            for block in kept:
                x = block(x)
            changes[f"blocks.{i}"] = relative_error([[dense]], [[model.norm(x)]])
    assert stats.dropped == [min(changes, key=changes.get)]


def test_recipe_replays_the_drop(stack):
    _, inputs, graph = stack
    dropped, stats, _ = drop(graph, inputs, "drop-layers{count=2}")
    (recipe,) = dropped.meta["drop_recipes"]
    assert recipe.blocks == stats.dropped
    replayed = apply_drop_recipe(graph.clone(), DropRecipe.from_json(recipe.to_json()))
    torch.testing.assert_close(run_graph(replayed, inputs), run_graph(dropped, inputs))
    with pytest.raises(GraphoptError, match="structure"):
        apply_drop_recipe(dropped.clone(), recipe)


# ------------------------------------------------------------------ zoo models
@pytest.mark.parametrize("text, kinds", [("drop-layers{count=1}", {"layer"}),
                                         ("drop-layers{count=2,granularity=mlp}", {"mlp"}),
                                         ("drop-layers{count=1,granularity=attention,metric=angular}", {"attention"})])
def test_llama_params_fall_by_the_dropped_blocks_and_backends_agree(llama, text, kinds):
    _, inputs, graph = llama
    dropped, stats, _ = drop(graph, inputs, text)
    blocks = find_blocks(graph)
    assert {blocks.get(name).kind for name in stats.dropped} == kinds
    assert graph.num_params() - dropped.num_params() == sum(blocks.get(n).params for n in stats.dropped)
    assert stats.params_after == dropped.num_params()
    ids = torch.randint(1, 1000, (3, 11))  # another batch and sequence length
    expected = to_module(dropped)(ids)
    assert expected.shape == (3, 11, 1000)
    pytest.importorskip("onnxruntime")
    from graphopt.backends import onnx as onnx_backend

    torch.testing.assert_close(onnx_backend.compile(dropped)(ids), expected, rtol=1e-4, atol=1e-4)


def test_resnet_drop_any_skips_overlaps_and_matches_onnx(resnet):
    _, inputs, graph = resnet
    dropped, stats, _ = drop(graph, inputs, "drop-layers{fraction=0.5}")
    blocks = find_blocks(graph)
    assert len(stats.dropped) == 2
    assert graph.num_params() - dropped.num_params() == sum(blocks.get(n).params for n in stats.dropped)
    x = torch.randn(5, 3, 32, 32)
    pytest.importorskip("onnxruntime")
    from graphopt.backends import onnx as onnx_backend

    torch.testing.assert_close(onnx_backend.compile(dropped)(x), to_module(dropped)(x), rtol=1e-4, atol=1e-4)


def test_nested_blocks_are_never_dropped_twice(llama):
    _, inputs, graph = llama
    dropped, stats, _ = drop(graph, inputs, "drop-layers{count=3,granularity=any}")
    blocks = find_blocks(graph)
    spans = [set(blocks.get(n).nodes) for n in stats.dropped]
    assert all(not (a & b) for i, a in enumerate(spans) for b in spans[i + 1:])
    assert graph.num_params() - dropped.num_params() == sum(blocks.get(n).params for n in stats.dropped)


@pytest.mark.parametrize("fixture", ["llama", "resnet"])
def test_recover_beats_the_ranking_alone(request, fixture):
    model, inputs, graph = request.getfixturevalue(fixture)
    torch.manual_seed(1)
    if fixture == "llama":
        calibration = [(torch.randint(1, 1000, (8, 16)),) for _ in range(2)]
    else:
        calibration = [(torch.randn(16, 3, 32, 32),) for _ in range(4)]  # with 2, a 32-image fit was worse end to end
    text = "drop-layers{count=1,granularity=mlp}" if fixture == "llama" else "drop-layers{count=1}"
    plain, _, _ = drop(graph, inputs, text, calibration_data=calibration)
    recovered, stats, _ = drop(graph, inputs, text[:-1] + ",recover=true}", calibration_data=calibration)
    assert stats.recovery.fits and any(f.error_after < f.error_before for f in stats.recovery.fits)
    reference = [run_graph(graph, batch) for batch in calibration]
    error_plain = relative_error(reference, [run_graph(plain, b) for b in calibration])
    error_recovered = relative_error(reference, [run_graph(recovered, b) for b in calibration])
    assert error_recovered < error_plain


# ------------------------------------------------------------------ no-ops and errors
def test_model_without_residual_blocks_is_a_clear_no_op():
    model, inputs = models_zoo.get("vgg_bn", "tiny")
    graph = graphopt.trace(model, inputs)
    same, stats, report = drop(graph, inputs, "drop-layers{count=2}")
    assert not report.modified and stats.dropped == []
    assert "no residual blocks" in stats.summary()
    assert same.num_params() == graph.num_params()


def test_granularity_without_candidates_is_a_no_op(resnet):
    _, inputs, graph = resnet
    _, stats, report = drop(graph, inputs, "drop-layers{granularity=attention}")
    assert not report.modified and "no droppable block at granularity 'attention'" in stats.message


@pytest.mark.parametrize("options, option", [({"count": 0}, "count"), ({"fraction": 1.5}, "fraction"),
                                             ({"count": 1, "fraction": 0.5}, "fraction"),
                                             ({"blocks": ["a"], "count": 1}, "blocks"),
                                             ({"blocks": ["a"], "iterative": True}, "blocks"),
                                             ({"damp": -1.0}, "damp")])
def test_bad_options_fail_when_the_pass_is_built(options, option):
    with pytest.raises(InvalidOptionError) as info:
        DropLayers(**options)
    assert info.value.option == option


def test_asking_for_more_blocks_than_there_are_is_an_error(resnet):
    _, inputs, graph = resnet
    with pytest.raises(GraphoptError, match="only 4 droppable"):
        PassManager.parse("drop-layers{count=5}").run(graph, inputs)
    with pytest.raises(GraphoptError, match="no block named 'layer9.0'"):
        PassManager.parse("drop-layers{blocks=['layer9.0']}").run(graph, inputs)


class _Untraceable(nn.Module):
    def forward(self, x):
        raise AssertionError("traced")


@pytest.mark.parametrize("value, error", [(0, InvalidOptionError), (1.5, InvalidOptionError),
                                          ("two", GraphoptError), ({"granularity": "block"}, GraphoptError)])
def test_optimize_checks_drop_layers_before_tracing(value, error):
    with pytest.raises(error):
        graphopt.optimize(_Untraceable(), torch.randn(1, 4), drop_layers=value)


def test_optimize_drops_then_prunes_in_one_report(stack):
    model, inputs, _ = stack
    result = graphopt.optimize(model, inputs, drop_layers={"count": 1, "recover": True},
                               prune={"ratio": 0.5, "round_to": 1})
    text = result.report.pipeline
    assert text.index("drop-layers") < text.index("prune")
    (dropped,) = result.report.drop
    assert dropped.dropped == ["blocks.0"] and len(result.report.prune) == 1
    assert "drop-layers" in str(result.report) and "prune" in str(result.report)
    assert result(*inputs).shape == model(*inputs).shape
    assert result.report.params_after < dropped.params_after  # pruning came after dropping


def test_cli_inspect_blocks(capsys):
    from graphopt.cli import main

    assert main(["inspect", "resnet18", "--blocks"]) == 0
    out = capsys.readouterr().out
    assert "4 residual blocks" in out and "layer3.0" in out and "kl (auto" in out
    assert main(["inspect", "resnet18", "--blocks", "--metric", "cosine"]) == 0
    assert "score: cosine" in " ".join(capsys.readouterr().out.split())
    assert main(["inspect", "resnet18", "--blocks", "--metric", "cosin"]) != 0
    assert "unknown metric 'cosin'" in capsys.readouterr().err
    assert main(["inspect", "vgg_bn", "--blocks"]) == 0
    assert "no residual blocks" in capsys.readouterr().out


def test_iterative_names_refer_to_the_blocks_of_the_input_graph(llama):
    _, inputs, graph = llama
    dropped, stats, _ = drop(graph, inputs, "drop-layers{count=2,granularity=any,iterative=true}")
    blocks = find_blocks(graph)
    assert all(blocks.get(name) is not None for name in stats.dropped)
    replayed = apply_drop_recipe(graph.clone(), dropped.meta["drop_recipes"][0])
    assert replayed.format() == dropped.format()


def test_consecutive_blocks_dropped_out_of_order(stack):
    model, inputs, graph = stack
    dropped, stats, _ = drop(graph, inputs, "drop-layers{blocks=['blocks.2','blocks.1','blocks.0','blocks.3']}")
    assert stats.dropped == ["blocks.2", "blocks.1", "blocks.0", "blocks.3"]
    with torch.no_grad():
        torch.testing.assert_close(to_module(dropped)(*inputs), model(*inputs, skip=(0, 1, 2, 3)), rtol=1e-6, atol=1e-6)


def test_docs_drop_layers_md_code_runs(capsys):
    from docblocks import run_blocks

    run_blocks("docs/drop_layers.md", minimum=4)


def test_recovery_is_the_least_squares_fit_computed_by_hand(stack):
    """Dropping the last block: the final norm's affine, then the head, refitted by plain least squares (damp=0)."""
    model, inputs, graph = stack
    torch.manual_seed(2)
    calibration = [(torch.randn(4, 6, 16),) for _ in range(20)]  # 480 rows: enough for a full head refit
    dropped, stats, _ = drop(graph, inputs, "drop-layers{blocks=['blocks.3'],recover=true,damp=0.0}",
                             calibration_data=calibration)
    assert [f.node for f in stats.recovery.fits] == ["norm", "head"]
    x = torch.cat([batch[0] for batch in calibration]).double()
    reference = model.double()
    try:
        with torch.no_grad():
            h_full, h_drop = x, x
            for i, block in enumerate(reference.blocks):
                h_full = block(h_full)
                h_drop = block(h_drop) if i != 3 else h_drop
            target = reference.norm(h_full).reshape(-1, 16)
            normalised = torch.nn.functional.layer_norm(h_drop, (16,)).reshape(-1, 16)
            for c in range(16):  # per channel: target = a * normalised + b
                design = torch.stack([normalised[:, c], torch.ones_like(normalised[:, c])], dim=1)
                a, b = torch.linalg.lstsq(design, target[:, c:c + 1]).solution.flatten()
                assert float(dropped.weights["norm.weight"].data[c]) == pytest.approx(float(a), rel=1e-4, abs=1e-5)
                assert float(dropped.weights["norm.bias"].data[c]) == pytest.approx(float(b), rel=1e-4, abs=1e-5)
            refit = normalised * dropped.weights["norm.weight"].data.double() + dropped.weights["norm.bias"].data.double()
            design = torch.cat([refit, torch.ones(refit.shape[0], 1, dtype=refit.dtype)], dim=1)
            solution = torch.linalg.lstsq(design, reference.head(reference.norm(h_full)).reshape(-1, 5)).solution
            head_target = reference.head(reference.norm(h_full)).reshape(-1, 5)
    finally:
        model.float()
    # A LayerNorm's outputs sum to a constant per row, so the head's solution is not unique (and the float32
    # graph's fit is ill-conditioned): it must reach the least-squares residual, and beat the original head.
    fitted = torch.cat([dropped.weights["head.weight"].data.double().T, dropped.weights["head.bias"].data.double()[None]])
    original = torch.cat([model.head.weight.data.double().T, model.head.bias.data.double()[None]])
    best = float((design @ solution - head_target).pow(2).sum())
    assert float((design @ fitted - head_target).pow(2).sum()) == pytest.approx(best, rel=1e-3)
    assert float((design @ original - head_target).pow(2).sum()) > 2 * best


def test_report_table_and_fraction(stack):
    _, inputs, graph = stack
    _, stats, report = drop(graph, inputs, "drop-layers{fraction=0.5}")
    assert len(stats.dropped) == 2 and report.modified
    header, *rows = stats.table().splitlines()
    assert header.split() == ["block", "kind", "params", "MACs", "score", "dropped"]
    assert [row.split()[0] for row in rows] == ["blocks.0", "blocks.1", "blocks.2", "blocks.3"]
    assert sum(row.endswith("yes") for row in rows) == 2
    _, none, report = drop(graph, inputs, "drop-layers{fraction=0.2}")   # 0.2 of 4 blocks rounds down to 0
    assert not report.modified and "rounds down to 0" in none.message


def test_cli_inspect_takes_an_onnx_file_and_a_factory_as_optimize_does(tmp_path, capsys, monkeypatch):
    """inspect reads every MODEL form optimize reads: FILE.onnx, module.path:factory, zoo:NAME (and a bare name)."""
    pytest.importorskip("onnxruntime")
    import graphopt
    from graphopt import models_zoo
    from graphopt.backends import onnx as onnx_backend
    from graphopt.cli import main

    model, inputs = models_zoo.get("resnet18", "tiny")
    onnx_backend.export(graphopt.trace(model, inputs), tmp_path / "r18.onnx")
    assert main(["inspect", str(tmp_path / "r18.onnx"), "--blocks"]) == 0
    assert "r18: 4 residual blocks" in capsys.readouterr().out
    assert main(["inspect", str(tmp_path / "r18.onnx"), "--groups"]) == 0
    assert "channel groups" in capsys.readouterr().out
    (tmp_path / "inspected_models.py").write_text(
        "import torch\n\ndef build():\n    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU())\n")
    monkeypatch.chdir(tmp_path)
    assert main(["inspect", "inspected_models:build", "--input-shape", "1,3,16,16"]) == 0
    assert "conv(" in capsys.readouterr().out
    assert main(["inspect", "inspected_models:build"]) == 2
    assert "--input-shape" in capsys.readouterr().err
    assert main(["inspect", "zoo:resnet18", "--no-weights"]) == 0
    assert main(["inspect", str(tmp_path / "missing.onnx")]) != 0
