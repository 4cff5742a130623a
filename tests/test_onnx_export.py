"""The ONNX back-end on real models and as an API: zoo models on ONNX Runtime, files, names, errors.

Zoo models are traced once per session (conftest.traced_zoo_model, shared
with the other zoo tests) and exported once per module.
"""

from __future__ import annotations

import functools
import importlib
import os
import subprocess
import sys

import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx_graphsurgeon")

import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402
from torch.utils import _pytree as pytree  # noqa: E402

from graphopt import models_zoo  # noqa: E402
from graphopt.backends import onnx as gonnx  # noqa: E402
from graphopt.errors import GraphoptError  # noqa: E402
from graphopt.ir import Graph  # noqa: E402
from graphopt.ir import dims as D  # noqa: E402

from conftest import resize_inputs, traced_zoo_model  # noqa: E402

TOL = {"atol": 1e-4, "rtol": 1e-4}


@functools.lru_cache(maxsize=None)
def eager_output(name: str):
    model, inputs, _ = traced_zoo_model(name)
    with torch.no_grad():
        return model(*inputs)


@functools.lru_cache(maxsize=None)
def compiled_zoo_model(name: str) -> gonnx.OrtModule:
    _, _, graph = traced_zoo_model(name)
    return gonnx.compile(graph, threads=2)


def leaves(out) -> list[torch.Tensor]:
    return [t for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]


def assert_matches(got, want) -> None:
    got, want = leaves(got), leaves(want)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, **TOL)


# ------------------------------------------------------------- zoo models
def test_zoo_model_on_onnxruntime_matches_torch(zoo_name):
    _, inputs, _ = traced_zoo_model(zoo_name)
    assert_matches(compiled_zoo_model(zoo_name)(*inputs), eager_output(zoo_name))


def test_zoo_model_on_onnxruntime_other_sizes(zoo_name):
    """Another batch size, and for token models (bert, llama) another sequence length, on the same ONNX model."""
    model, inputs, _ = traced_zoo_model(zoo_name)
    axes = models_zoo.spec(zoo_name).dynamic_axes
    other = resize_inputs(inputs, axes, {"batch": 3, "seq": 11})
    assert other[0].shape[0] == 3 != inputs[0].shape[0]
    if any("seq" in a.values() for a in axes.values()):
        assert other[0].shape[1] == 11 != inputs[0].shape[1]
    with torch.no_grad():
        assert_matches(compiled_zoo_model(zoo_name)(*other), model(*other))


@pytest.mark.parametrize("name", ["llama", "vit", "bert"])
def test_transformers_with_fused_ops_at_opset_23(name):
    """Attention, RMSNormalization and Gelu as single ONNX ops, on another batch and sequence length."""
    model, inputs, graph = traced_zoo_model(name)
    run = gonnx.compile(graph, opset=23, threads=2)
    assert run.model.opset_import[0].version == 23
    onnx_ops = {n.op_type for n in run.model.graph.node}
    assert ("Attention" in onnx_ops) == bool(graph.find_nodes("sdpa"))
    assert ("Gelu" in onnx_ops) == bool(graph.find_nodes("gelu"))
    other = resize_inputs(inputs, models_zoo.spec(name).dynamic_axes, {"batch": 3, "seq": 9})
    with torch.no_grad():
        assert_matches(run(*other), model(*other))


def test_zoo_model_inputs_are_named_and_dynamic(zoo_name):
    _, _, graph = traced_zoo_model(zoo_name)
    model = compiled_zoo_model(zoo_name).model
    assert [i.name for i in model.graph.input] == [v.name for v in graph.inputs]
    for value, info in zip(graph.inputs, model.graph.input):
        dims = info.type.tensor_type.shape.dim
        for d, want in zip(dims, value.shape):
            assert (d.dim_param == str(want)) if not isinstance(want, int) else d.dim_value == want
    assert {i.name for i in model.graph.initializer} >= {n for n, v in graph.params().items() if v.uses()}


# ---------------------------------------------------------------- files
def _small_graph(features: int = 4) -> Graph:
    g = Graph("small")
    x = g.add_input("x", [D.symbol("batch"), features], torch.float32)
    w = g.add_weight("fc.weight", torch.randn(3, features))
    b = g.add_weight("fc.bias", torch.randn(3))
    y = g.create_node("linear", [x, w, b], name="fc").output
    g.outputs = [g.create_node("relu", [y], name="act").output]
    return g


def test_export_writes_a_checked_model_with_named_dynamic_io(tmp_path):
    path = gonnx.export(_small_graph(), tmp_path / "m.onnx", input_names=["pixels"], output_names=["scores"])
    assert path == tmp_path / "m.onnx" and path.is_file()
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert [i.name for i in model.graph.input] == ["pixels"]
    assert [o.name for o in model.graph.output] == ["scores"]
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert {"fc.weight", "fc.bias"} <= {i.name for i in model.graph.initializer}
    assert model.opset_import[0].version == gonnx.DEFAULT_OPSET
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.randn(5, 4)
    (y,) = sess.run(None, {"pixels": x.numpy()})
    want = torch.relu(torch.nn.functional.linear(x, _w(model, "fc.weight"), _w(model, "fc.bias")))
    torch.testing.assert_close(torch.from_numpy(y), want)


def _w(model, name) -> torch.Tensor:
    init = next(i for i in model.graph.initializer if i.name == name)
    return torch.from_numpy(onnx.numpy_helper.to_array(init).copy())


def test_failed_export_leaves_no_file(tmp_path, monkeypatch):
    target = tmp_path / "m.onnx"

    def broken_save(model, f, *args, **kwargs):
        with open(f, "wb") as fh:
            fh.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(onnx, "save_model", broken_save)
    with pytest.raises(OSError, match="disk full"):
        gonnx.export(_small_graph(), target)
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []  # no temporary left behind


def test_failed_export_keeps_the_previous_file(tmp_path, monkeypatch):
    target = gonnx.export(_small_graph(), tmp_path / "m.onnx")
    before = target.read_bytes()
    monkeypatch.setattr(onnx, "save_model", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError):
        gonnx.export(_small_graph(), target)
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_external_data(tmp_path):
    path = gonnx.export(_small_graph(features=256), tmp_path / "m.onnx", external_data=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.data"]
    model = onnx.load(str(path), load_external_data=False)
    assert any(i.data_location == onnx.TensorProto.EXTERNAL for i in model.graph.initializer)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert sess.run(None, {"x": torch.randn(2, 256).numpy()})[0].shape == (2, 3)


def test_large_models_get_external_data_automatically(tmp_path, monkeypatch):
    """Past the protobuf limit (lowered here to 1 KiB) weights go to '<name>.data' without being asked."""
    export_module = importlib.import_module("graphopt.backends.onnx.export")  # the module, not the function
    monkeypatch.setattr(export_module, "EXTERNAL_DATA_THRESHOLD", 1024)
    gonnx.export(_small_graph(features=256), tmp_path / "big.onnx")
    gonnx.export(_small_graph(features=4), tmp_path / "small.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.onnx", "big.onnx.data", "small.onnx"]
    from graphopt.frontends.onnx import load

    graph = load(tmp_path / "big.onnx")  # the importer reads the external data back
    assert graph.weights["fc.weight"].shape == (3, 256)


def test_export_into_missing_directory_fails_clearly(tmp_path):
    with pytest.raises(GraphoptError, match="does not exist"):
        gonnx.export(_small_graph(), tmp_path / "nope" / "m.onnx")


# ------------------------------------------------------ static shapes, names
def test_static_export_needs_every_symbol_bound():
    with pytest.raises(GraphoptError, match="missing \\['batch'\\]"):
        gonnx.to_onnx(_small_graph(), dynamic=False)
    model = gonnx.to_onnx(_small_graph(), dynamic=False, bind={"batch": 7})
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 7
    with pytest.raises(GraphoptError, match="not symbols"):
        gonnx.to_onnx(_small_graph(), bind={"seq": 3})


def test_static_export_of_a_zoo_transformer():
    model, inputs, graph = traced_zoo_model("bert")
    b, s = inputs[0].shape
    onnx_model = gonnx.to_onnx(graph, dynamic=False, bind={"batch": b, "seq": s})
    assert not any(n.op_type == "Shape" for n in onnx_model.graph.node)
    with torch.no_grad():
        assert_matches(gonnx.compile(onnx_model)(*inputs), model(*inputs))


def test_outputs_that_are_inputs_or_repeated():
    g = Graph("passthrough")
    x = g.add_input("x", [D.symbol("batch"), 3], torch.float32)
    y = g.create_node("relu", [x]).output
    g.outputs = [x, y, y]
    run = gonnx.compile(g, output_names=["same", "a", "b"])
    t = torch.randn(2, 3)
    same, a, b = run(t)
    torch.testing.assert_close(same, t)
    torch.testing.assert_close(a, torch.relu(t))
    torch.testing.assert_close(b, torch.relu(t))


def test_bad_export_arguments():
    with pytest.raises(GraphoptError, match="opset 12 is not supported"):
        gonnx.to_onnx(_small_graph(), opset=12)
    with pytest.raises(GraphoptError, match="input_names has 2 names"):
        gonnx.to_onnx(_small_graph(), input_names=["a", "b"])


def test_op_without_lowering_names_the_node_and_the_fix():
    from graphopt.backends.torch.kernels import register_kernel
    from graphopt.ir.ops import OpDef, register_op

    # the autouse fixture in conftest.py restores the op registry and the op-table columns afterwards
    register_op(OpDef("my_swish", lambda node: [(node.inputs[0].shape, node.inputs[0].dtype)], "x"))
    register_kernel("my_swish", lambda x: x * torch.sigmoid(x))
    g = Graph("custom")
    x = g.add_input("x", [2, 3], torch.float32)
    g.outputs = [g.create_node("my_swish", [x], name="block.act").output]
    with pytest.raises(GraphoptError, match=r"no lowering for op 'my_swish'.*block\.act.*register_lowering"):
        gonnx.to_onnx(g)

    def lower(b, node, ins):
        return b.op("Mul", [ins[0], b.op("Sigmoid", ins, dtype=torch.float32)], dtype=torch.float32)

    gonnx.register_lowering("my_swish", lower)
    with pytest.raises(GraphoptError, match="already registered"):  # one duplicate policy: a second one raises
        gonnx.register_lowering("my_swish", lambda b, node, ins: ins[0])
    assert gonnx.LOWERINGS.get("my_swish") is lower
    t = torch.randn(2, 3)
    torch.testing.assert_close(gonnx.compile(g)(t), t * torch.sigmoid(t))
    gonnx.register_lowering("my_swish", lambda b, node, ins: ins[0], replace=True)
    torch.testing.assert_close(gonnx.compile(g)(t), t)


# ------------------------------------------------------------------ runtime
def test_compile_exposes_session_and_model():
    run = gonnx.compile(_small_graph(), threads=2, optimization_level="basic")
    assert isinstance(run.session, ort.InferenceSession)
    assert isinstance(run.model, onnx.ModelProto)
    opts = run.session.get_session_options()
    assert opts.intra_op_num_threads == 2
    assert opts.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    assert run.input_names == ["x"] and "OrtModule" in repr(run)


def test_compile_rejects_bad_calls():
    with pytest.raises(GraphoptError, match="optimization_level must be one of"):
        gonnx.compile(_small_graph(), optimization_level="max")
    run = gonnx.compile(_small_graph())
    with pytest.raises(GraphoptError, match="takes 1 inputs"):
        run(torch.randn(2, 4), torch.randn(2, 4))
    with pytest.raises(GraphoptError, match="input 'x' must be torch.float32"):
        run(torch.ones(2, 4, dtype=torch.int64))


def test_import_graphopt_does_not_import_onnx():
    code = ("import sys, graphopt, graphopt.backends.torch; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('onnx', 'onnxruntime', 'onnx_graphsurgeon')]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, env=dict(os.environ))


class IntegerBitmask(torch.nn.Module):
    """CPM-Ant builds its attention mask with `|` on int32 tensors: ONNX has BitwiseOr from opset 18."""

    def forward(self, x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return x * ((ids | 1) & 3).to(x.dtype)


def test_an_op_that_needs_a_newer_opset_raises_it_unless_one_was_asked_for():
    import graphopt
    from graphopt.backends.onnx import runtime
    from graphopt.backends.torch import to_module
    from graphopt.errors import GraphoptError

    x, ids = torch.randn(2, 5), torch.randint(0, 9, (2, 5), dtype=torch.int32)
    graph = graphopt.trace(IntegerBitmask(), (x, ids))
    model = gonnx.to_onnx(graph)
    assert model.opset_import[0].version == 18  # the default (17) was raised for BitwiseOr
    torch.testing.assert_close(runtime.compile(graph, threads=1)(x, ids), to_module(graph)(x, ids))
    with pytest.raises(GraphoptError, match="needs ONNX's BitwiseOr, opset 18 or later"):
        gonnx.to_onnx(graph, opset=17)  # asked for: an error that says what needs more


class EmptyRegisterTokens(torch.nn.Module):
    """DINOv3-style: a (1, 0, C) parameter of register tokens when the config asks for none."""

    def __init__(self) -> None:
        super().__init__()
        self.registers = torch.nn.Parameter(torch.zeros(1, 0, 4))
        self.cls = torch.nn.Parameter(torch.randn(1, 1, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[0]
        return torch.cat([self.cls.expand(batch, -1, -1), self.registers.expand(batch, -1, -1), x], dim=1)


def test_an_empty_weight_exports_and_runs_on_onnx_runtime(tmp_path):
    import graphopt
    from graphopt.backends.onnx import runtime

    x = torch.randn(2, 3, 4)
    model = EmptyRegisterTokens()
    graph = graphopt.trace(model, (x,))
    assert tuple(graph.weights["registers"].shape) == (1, 0, 4)
    torch.testing.assert_close(runtime.compile(graph, threads=1)(x), model(x))
    path = gonnx.export(graph, tmp_path / "m.onnx", external_data=True)
    assert onnx.load(str(path)).graph.input
