"""`graphopt.optimize` on every zoo model with both back-ends."""

from __future__ import annotations

import time

import pytest
import torch

import graphopt
from graphopt import models_zoo
from graphopt.passmanager import InvalidOptionError


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_optimize_prunes_every_zoo_model(zoo_name, backend):
    if backend == "onnx":
        pytest.importorskip("onnxruntime")
    model, inputs = models_zoo.get(zoo_name, "tiny")
    result = graphopt.optimize(model, inputs, prune=0.5, backend=backend,
                               dynamic=models_zoo.spec(zoo_name).dynamic_axes)
    report = result.report
    assert report.params_after < report.params_before and report.macs_after < report.macs_before
    assert "prune{ratio=0.5}" in report.pipeline and "MACs" in str(report)
    # the prune report came through the pass result into the pipeline report, not through graph.meta
    assert report.prune == report.passes.stats("prune") and len(report.prune) == 1
    assert "prune_reports" not in result.graph.meta
    with torch.no_grad():
        out = result(*inputs)
        assert out.shape == model(*inputs).shape
        torch.testing.assert_close(result.torch_module()(*inputs), out, atol=1e-4, rtol=1e-4)


def test_optimize_without_pruning_is_exact():
    model, inputs = models_zoo.get("mobilenet_v3", "tiny")
    result = graphopt.optimize(model, inputs)
    with torch.no_grad():
        torch.testing.assert_close(result(*inputs), model(*inputs))
    assert result.report.params_after <= result.report.params_before  # BN folded into convs


def test_optimize_rejects_bad_arguments():
    model, inputs = models_zoo.get("resnet18", "tiny")
    with pytest.raises(graphopt.GraphoptError, match="unknown backend 'tvmm'"):
        graphopt.optimize(model, inputs, backend="tvmm")
    with pytest.raises(graphopt.GraphoptError, match="prune must be a ratio"):
        graphopt.optimize(model, inputs, prune="half")


@pytest.mark.parametrize("prune, steps, option", [
    (1.0, 1, "ratio"),
    (1.5, 3, "ratio"),  # checked as given, before it is split into steps
    ({"criterion": "taylorr"}, 1, "criterion"),
    ({"ratio": 0.3, "target_macs": 0.5}, 1, "ratio"),
    ({"target_macs": 0.5, "target_params": 0.5}, 1, "target_params"),
    ({"target_macs": 1.5}, 2, "target_macs"),
    ({"round_to": 0}, 1, "round_to"),
])
def test_bad_prune_options_fail_before_tracing(monkeypatch, prune, steps, option):
    def no_export(*args, **kwargs):
        raise AssertionError("torch.export.export was called: the options were not checked first")

    monkeypatch.setattr(torch.export, "export", no_export)
    model, inputs = models_zoo.get("resnet18", "tiny")
    started = time.perf_counter()
    with pytest.raises(InvalidOptionError, match=f"pass 'prune', option '{option}'") as info:
        graphopt.optimize(model, inputs, prune=prune, steps=steps)
    assert time.perf_counter() - started < 2.0
    assert info.value.option == option and len(str(info.value).splitlines()) == 1
    assert not isinstance(info.value, graphopt.passmanager.PassFailedError)  # no pass ran, no reproducer


def test_iterative_targets_are_split_into_steps_without_a_ratio():
    from graphopt.api import _prune_steps

    passes = _prune_steps({"target_macs": 0.25}, 2)
    assert [p.pipeline_text() for p in passes] == ["prune{target_macs=0.5}"] * 2
    assert [p.pipeline_text() for p in _prune_steps(0.75, 2)] == ["prune{ratio=0.5}"] * 2


@pytest.mark.parametrize("name", ["resnet50", "vit", "llama", "densenet"])
def test_recipe_round_trip_rebuilds_the_pruned_model(name, tmp_path):
    """prune -> save recipe -> original model + recipe in a new call -> identical outputs."""
    model, inputs = models_zoo.get(name, "tiny")
    dynamic = models_zoo.spec(name).dynamic_axes
    pruned = graphopt.optimize(model, inputs, prune={"ratio": 0.5, "scope": "global"}, dynamic=dynamic)
    path = pruned.save_recipe(tmp_path / "recipe.json")
    assert [p.name for p in tmp_path.iterdir()] == ["recipe.json"]

    fresh, _ = models_zoo.get(name, "tiny")  # same architecture and seed: the original checkpoint
    replayed = graphopt.optimize(fresh, inputs, recipe=path, dynamic=dynamic)
    assert str(replayed.graph) == str(pruned.graph)
    with torch.no_grad():
        assert torch.equal(replayed(*inputs), pruned(*inputs))


def test_recipe_refuses_another_model(tmp_path):
    model, inputs = models_zoo.get("resnet18", "tiny")
    path = graphopt.optimize(model, inputs, prune=0.5).save_recipe(tmp_path / "r.json")
    other, other_inputs = models_zoo.get("resnet50", "tiny")
    with pytest.raises(graphopt.GraphoptError, match="recipe was made for a graph with structure"):
        graphopt.optimize(other, other_inputs, recipe=path)


def test_an_onnx_file_is_optimized_like_a_module(tmp_path):
    """A .onnx path (and a ModelProto) goes through the same pipeline; example inputs default from its inputs."""
    import onnx

    from graphopt.backends import onnx as onnx_backend

    model, inputs = models_zoo.get("resnet18", "tiny")
    path = onnx_backend.export(graphopt.trace(model, inputs), tmp_path / "resnet.onnx", external_data=False)
    from_file = graphopt.optimize(path, inputs, prune=0.3, backend="onnx")
    from_proto = graphopt.optimize(onnx.load(str(path)), prune=0.3)  # example inputs made from the graph's
    from_module = graphopt.optimize(model, inputs, prune=0.3)
    assert from_file.report.params_after == from_proto.report.params_after == from_module.report.params_after
    x = torch.randn(3, 3, 32, 32)  # the file's symbolic batch axis
    torch.testing.assert_close(from_file(x), from_module(x), rtol=1e-4, atol=1e-4)
    with pytest.raises(graphopt.GraphoptError, match="not an .onnx file"):
        graphopt.optimize(tmp_path / "resnet.pt", inputs)
    with pytest.raises(graphopt.GraphoptError, match="does not exist"):
        graphopt.optimize(tmp_path / "missing.onnx")
    with pytest.raises(graphopt.GraphoptError, match="tune= is TVM's tuning budget"):
        graphopt.optimize(path, tune="1min")


def test_the_tvm_backend_compiles_saves_and_loads(tmp_path):
    """backend="tvm" (untuned: it warns what to pass): same outputs as the torch back-end at the example's sizes,
    a TVM artifact that graphopt.load runs; a malformed budget fails before tracing."""
    pytest.importorskip("tvm")
    from graphopt.backends.tvm import UntunedWarning

    model, inputs = models_zoo.get("resnet18", "tiny")
    with pytest.raises(graphopt.GraphoptError, match="tune="):
        graphopt.optimize(model, inputs, backend="tvm", tune="fast")
    with pytest.warns(UntunedWarning):
        compiled = graphopt.optimize(model, inputs, prune=0.3, backend="tvm")
    reference = graphopt.optimize(model, inputs, prune=0.3)
    torch.testing.assert_close(compiled(*inputs), reference(*inputs), rtol=1e-4, atol=1e-4)
    loaded = graphopt.load(compiled.save(tmp_path / "resnet-tvm"))
    torch.testing.assert_close(torch.from_numpy(loaded(inputs[0].numpy())), reference(*inputs), rtol=1e-4, atol=1e-4)


class _TwoHeads(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Linear(8, 8)

    def forward(self, x):
        h = torch.relu(self.body(x))
        return {"features": h, "score": h.sum(dim=1)}


def test_a_dict_output_stays_a_dict_on_every_backend_and_through_save_and_load(tmp_path):
    torch.manual_seed(0)
    model, x = _TwoHeads().eval(), torch.randn(4, 8)
    backends = ["torch", "onnx"] + (["tvm"] if _has_tvm() else [])
    for backend in backends:
        with pytest.warns(Warning) if backend == "tvm" else _nothing():  # untuned TVM says so
            opt = graphopt.optimize(model, (x,), backend=backend)
        out = opt(x)
        assert isinstance(out, dict) and list(out) == ["features", "score"], backend
        loaded = graphopt.load(opt.save(tmp_path / backend))(x.numpy() if backend != "torch" else x)
        assert isinstance(loaded, dict) and list(loaded) == ["features", "score"], backend
        for key in out:
            got = loaded[key] if isinstance(loaded[key], torch.Tensor) else torch.from_numpy(loaded[key])
            torch.testing.assert_close(got, out[key], rtol=1e-5, atol=1e-5)


def _has_tvm() -> bool:
    try:
        import tvm  # noqa: F401
    except ImportError:
        return False
    return True


def _nothing():
    import contextlib

    return contextlib.nullcontext()


def test_the_report_says_how_far_each_stage_moved_the_outputs():
    model, inputs = models_zoo.get("resnet18", "tiny")
    opt = graphopt.optimize(model, inputs, prune=0.3, quantize="int8")
    drift = opt.report.drift
    assert list(drift) == ["simplify", "prune{ratio=0.3}", "canonicalize", "quantize{mode=int8}"]
    assert drift["simplify"] < 1e-5 and drift["prune{ratio=0.3}"] > 1e-3
    assert abs(drift["canonicalize"] - drift["prune{ratio=0.3}"]) < 1e-4  # folding BatchNorms is exact
    with torch.no_grad():
        final = float((opt(*inputs) - model(*inputs)).norm() / model(*inputs).norm())
    assert drift["quantize{mode=int8}"] == pytest.approx(final, rel=1e-2, abs=1e-4)
    assert "output drift after prune{ratio=0.3}" in str(opt.report)


def test_a_pipeline_text_replaces_the_shortcuts_and_the_plot_is_written(tmp_path):
    pytest.importorskip("matplotlib")
    model, inputs = models_zoo.get("resnet18", "tiny")
    opt = graphopt.optimize(model, inputs, passes="simplify,prune{ratio=0.3,criterion=l1},canonicalize")
    assert opt.report.prune and opt.report.params_after < opt.report.params_before
    with pytest.raises(graphopt.GraphoptError, match="replaces prune="):
        graphopt.optimize(model, inputs, passes="canonicalize", prune=0.3)
    with pytest.raises(graphopt.GraphoptError, match="unknown pass"):
        graphopt.optimize(model, inputs, passes="canonicalize,no-such-pass")
    png = opt.plot(tmp_path / "report.png", model, inputs, runs=3)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
