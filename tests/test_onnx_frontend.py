"""The ONNX front-end: models from torch.onnx.export and hand-built with onnx.helper import and run.

Round trip: torch model -> torch.onnx.export (TorchScript exporter,
dynamo=False, so onnxscript is not needed) -> graphopt.frontends.onnx.load ->
to_module matches the original; the imported graph exported again runs on
ONNX Runtime with the same output shapes.
Imported zoo models are also pruned (ratio 0.5) and must still export and run on ONNX Runtime
with the original output shapes.
"""

from __future__ import annotations

import functools
import io
import warnings

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx_graphsurgeon")

import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402
from onnx import TensorProto, helper  # noqa: E402
from torch.utils import _pytree as pytree  # noqa: E402

from graphopt import models_zoo  # noqa: E402
from graphopt.backends import onnx as gonnx  # noqa: E402
from graphopt.backends.torch import to_module  # noqa: E402
from graphopt.errors import GraphoptError, UnsupportedOpError  # noqa: E402
from graphopt.frontends import onnx as fonnx  # noqa: E402
from graphopt.ir import dims as D  # noqa: E402

from conftest import resize_inputs  # noqa: E402

TOL = {"atol": 1e-4, "rtol": 1e-4}


def torch_onnx_bytes(model: torch.nn.Module, inputs: tuple, dynamic_axes: dict, opset: int = 17) -> bytes:
    names = [f"input{i}" for i in range(len(inputs))]
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, inputs, buffer, dynamo=False, opset_version=opset, input_names=names,
                          dynamic_axes={names[i]: axes for i, axes in dynamic_axes.items()})
    return buffer.getvalue()


@functools.lru_cache(maxsize=None)
def zoo_via_torch_onnx(name: str):
    """(model, inputs, eager output, imported graph) for a tiny zoo model exported by torch.onnx."""
    model, inputs = models_zoo.get(name, "tiny")
    data = torch_onnx_bytes(model, inputs, models_zoo.spec(name).dynamic_axes)
    with torch.no_grad():
        want = first(model(*inputs))
    return model, inputs, want, fonnx.load(data)


def first(out) -> torch.Tensor:
    return [t for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor)][0]


# -------------------------------------------------------- torch round trip
def test_torch_onnx_export_round_trip(zoo_name):
    _, inputs, want, graph = zoo_via_torch_onnx(zoo_name)
    graph.verify()
    symbols = set(graph.symbols())
    assert symbols == {n for axes in models_zoo.spec(zoo_name).dynamic_axes.values() for n in axes.values()}
    with torch.no_grad():
        torch.testing.assert_close(first(to_module(graph)(*inputs)), want, **TOL)


def test_imported_model_exports_again_and_runs_on_onnxruntime(zoo_name):
    """IR -> ONNX -> ONNX Runtime: same outputs, and output shapes that follow the dynamic axes."""
    model, inputs, want, graph = zoo_via_torch_onnx(zoo_name)
    run = gonnx.compile(graph, threads=2)
    torch.testing.assert_close(first(run(*inputs)), want, **TOL)
    other = resize_inputs(inputs, models_zoo.spec(zoo_name).dynamic_axes, {"batch": 3, "seq": 11})
    got = first(run(*other))
    assert got.shape[0] == 3 and got.shape[1:] == want.shape[1:] or got.shape == (3, 11, *want.shape[2:])


def test_imported_model_prunes_exports_and_runs(zoo_name):
    """torch.onnx.export -> load -> prune 0.5 -> export -> ONNX Runtime: runs, output shapes unchanged."""
    from graphopt.passmanager import PassManager

    _, inputs, want, graph = zoo_via_torch_onnx(zoo_name)
    pruned, _ = PassManager.parse("canonicalize,prune{ratio=0.5}").run(graph, inputs)
    assert pruned.num_params() < graph.num_params()
    run = gonnx.compile(pruned, threads=2)
    got = first(run(*inputs))
    assert got.shape == want.shape
    with torch.no_grad():
        torch.testing.assert_close(got, first(to_module(pruned)(*inputs)), **TOL)


@pytest.mark.parametrize("name", ["mobilenet_v3", "unet", "bert"])
def test_torch_onnx_export_at_opset_11(name):
    """Older exporter output: axes as attributes, Resize-11, Clip with inputs, Pad-11."""
    model, inputs = models_zoo.get(name, "tiny")
    graph = fonnx.load(torch_onnx_bytes(model, inputs, models_zoo.spec(name).dynamic_axes, opset=11))
    assert graph.meta["onnx_opset"] == 11
    other = resize_inputs(inputs, models_zoo.spec(name).dynamic_axes, {"batch": 3, "seq": 11})
    with torch.no_grad():
        torch.testing.assert_close(first(to_module(graph)(*other)), first(model(*other)), **TOL)


def test_import_keeps_weight_names():
    model, _, _, graph = zoo_via_torch_onnx("resnet18")
    linear = graph.find_nodes("linear")[0]
    assert linear.inputs[1].name == "fc.weight" and linear.inputs[2].name == "fc.bias"
    assert graph.weights["fc.weight"].kind == "param"
    torch.testing.assert_close(graph.weights["fc.weight"].data, model.state_dict()["fc.weight"])


def test_matmul_and_bias_add_become_one_linear():
    _, _, _, graph = zoo_via_torch_onnx("bert")
    assert len(graph.find_nodes("linear")) == 14
    assert all(n.inputs[2] is not None for n in graph.find_nodes("linear"))


def test_graphopt_export_round_trips_weight_names():
    """graphopt writes a linear as MatMul(x, Transpose(W)); importing gives linear(x, W) back, W by name."""
    from conftest import traced_zoo_model

    model, inputs, graph = traced_zoo_model("llama")
    again = fonnx.load(gonnx.to_onnx(graph))
    used = {n for n, v in graph.params().items() if v.uses()}
    assert used <= set(again.params())
    assert len(again.find_nodes("linear")) == len(graph.find_nodes("linear"))
    for node in again.find_nodes("linear"):
        assert node.inputs[1].data is not None and not node.inputs[1].meta.get("onnx_transposed")
    with torch.no_grad():
        torch.testing.assert_close(first(to_module(again)(*inputs)), first(model(*inputs)), **TOL)


# ------------------------------------------------------ hand-built models
def _hand_built(opset: int = 17) -> onnx.ModelProto:
    """A small CNN written directly with onnx.helper, with the usual dynamic-batch reshape subgraph."""
    rng = np.random.default_rng(0)
    f32 = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    inits = [
        onnx.numpy_helper.from_array(f32(4, 3, 3, 3), "conv.w"),
        onnx.numpy_helper.from_array(f32(4), "conv.b"),
        onnx.numpy_helper.from_array(np.abs(f32(4)) + 0.5, "bn.scale"),
        onnx.numpy_helper.from_array(f32(4), "bn.bias"),
        onnx.numpy_helper.from_array(f32(4), "bn.mean"),
        onnx.numpy_helper.from_array(np.abs(f32(4)) + 0.5, "bn.var"),
        onnx.numpy_helper.from_array(f32(60, 5), "fc.w"),  # Gemm with transB=0: W is [in, out]
        onnx.numpy_helper.from_array(f32(5), "fc.b"),
        onnx.numpy_helper.from_array(np.array([0], dtype=np.int64), "zero"),
        onnx.numpy_helper.from_array(np.array([-1], dtype=np.int64), "minus_one"),
        onnx.numpy_helper.from_array(np.array(6.0, dtype=np.float32), "six"),
        onnx.numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero_f"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "conv.w", "conv.b"], ["c"], name="/conv/Conv", pads=[1, 0, 2, 1],
                         strides=[1, 1]),
        helper.make_node("BatchNormalization", ["c", "bn.scale", "bn.bias", "bn.mean", "bn.var"], ["n"],
                         name="/bn/BatchNormalization", epsilon=1e-3),
        helper.make_node("Clip", ["n", "zero_f", "six"], ["r"], name="/act/Clip"),
        helper.make_node("MaxPool", ["r"], ["p"], name="/pool/MaxPool", kernel_shape=[3, 3], strides=[2, 2],
                         pads=[1, 1, 1, 1]),
        helper.make_node("GlobalAveragePool", ["p"], ["g"], name="/gap"),
        helper.make_node("Shape", ["x"], ["shape"], name="/Shape"),
        helper.make_node("Gather", ["shape", "zero"], ["n_dim"], name="/Gather", axis=0),
        helper.make_node("Concat", ["n_dim", "minus_one"], ["target"], name="/Concat", axis=0),
        helper.make_node("Reshape", ["r", "target"], ["flat"], name="/Reshape"),
        helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["logits"], name="/fc/Gemm"),
        helper.make_node("Softmax", ["logits"], ["probs"], name="/Softmax", axis=-1),
        helper.make_node("Flatten", ["g"], ["pooled"], name="/Flatten", axis=1),
    ]
    graph = helper.make_graph(
        nodes, "hand_built",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4, 4])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 5]),
         helper.make_tensor_value_info("pooled", TensorProto.FLOAT, ["N", 4])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def _ort(model: onnx.ModelProto, *xs: np.ndarray) -> list[np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {i.name: x for i, x in zip(sess.get_inputs(), xs)})


def test_hand_built_model_imports_and_runs():
    model = _hand_built()
    graph = fonnx.load(model)
    assert [v.name for v in graph.inputs] == ["x"] and graph.inputs[0].shape[0] == D.symbol("N")
    assert {"conv.w", "fc.w", "bn.scale"} <= set(graph.weights)
    assert not graph.find_nodes("full"), "the Shape->Gather->Concat->Reshape subgraph must fold away"
    (reshape,) = graph.find_nodes("reshape")[:1]
    assert reshape.attrs["shape"] == [D.symbol("N"), 60]
    assert graph.weights["conv.w"].kind == "param" and graph.weights["bn.mean"].kind == "buffer"
    assert graph.find_nodes("linear")[0].inputs[1].shape == (5, 60)  # stored [out, in] like torch
    module, run = to_module(graph), gonnx.compile(graph)
    for batch in (2, 5):
        x = np.random.default_rng(batch).standard_normal((batch, 3, 4, 4)).astype(np.float32)
        want = [torch.from_numpy(w) for w in _ort(model, x)]
        for got in (module(torch.from_numpy(x)), run(torch.from_numpy(x))):
            for g, w in zip(got, want):
                torch.testing.assert_close(g, w, **TOL)


def test_old_opset_spellings():
    """Opset 11: axes as attributes (Squeeze/Unsqueeze/ReduceMean), Split sizes as an attribute."""
    nodes = [
        helper.make_node("Unsqueeze", ["x"], ["u"], axes=[1]),
        helper.make_node("ReduceMean", ["u"], ["m"], axes=[3], keepdims=1),
        helper.make_node("Squeeze", ["m"], ["s"], axes=[1, 3]),
        helper.make_node("Split", ["s"], ["a", "b"], axis=1, split=[2, 4]),
        helper.make_node("Sub", ["b", "c"], ["d"]),
        helper.make_node("Pad", ["a"], ["p"], pads=[0, 1, 0, 2], mode="constant", value=0.5),
    ]
    graph = helper.make_graph(
        nodes, "old", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 6, 5])],
        [helper.make_tensor_value_info("d", TensorProto.FLOAT, ["batch", 4]),
         helper.make_tensor_value_info("p", TensorProto.FLOAT, ["batch", 5])],
        [onnx.numpy_helper.from_array(np.arange(4, dtype=np.float32), "c")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 10)])
    model.ir_version = 6
    # opset 10 has attribute-style Pad; 11+ moved pads to an input
    g = fonnx.load(model)
    x = np.random.default_rng(1).standard_normal((3, 6, 5)).astype(np.float32)
    want = _ort(model, x)
    for got, w in zip(to_module(g)(torch.from_numpy(x)), want):
        torch.testing.assert_close(got, torch.from_numpy(w), **TOL)


# ----------------------------------------------------------------- errors
def test_corrupted_file_is_reported(tmp_path):
    path = tmp_path / "garbage.onnx"
    path.write_bytes(b"\x08\x07\x12\xff\xff\xff this is not protobuf" * 3)
    with pytest.raises(GraphoptError, match="garbage.onnx"):
        fonnx.load(path)


def test_truncated_file_is_reported(tmp_path):
    data = _hand_built().SerializeToString()
    for cut in (len(data) // 2, len(data) - 7, 0):
        path = tmp_path / f"cut{cut}.onnx"
        path.write_bytes(data[:cut])
        with pytest.raises(GraphoptError, match=f"cut{cut}.onnx"):
            fonnx.load(path)


def test_missing_file_and_bad_bytes():
    with pytest.raises(GraphoptError, match="does not exist"):
        fonnx.load("/nonexistent/model.onnx")
    with pytest.raises(GraphoptError, match="not"):
        fonnx.load(b"\xff\xff\xff\xff")


def _with_op(op_type: str, domain: str = "") -> onnx.ModelProto:
    node = helper.make_node(op_type, ["x"], ["y"], name="block/weird", domain=domain or None)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])])
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 8
    return model


def test_unsupported_op_names_node_and_fix():
    with pytest.raises(UnsupportedOpError) as info:
        fonnx.load(_with_op("Softsign"))
    err = info.value
    assert err.op == "Softsign" and err.node == "block/weird"
    assert "register_onnx_op('Softsign')" in str(err)


def test_register_onnx_op_adds_a_converter():
    model = _with_op("Swish", domain="com.example")
    with pytest.raises(UnsupportedOpError, match="com.example::Swish"):
        fonnx.load(model, check=False)

    @fonnx.register_onnx_op("Swish", domain="com.example")
    def convert(ctx, node):
        x = ctx.value(node.input[0])
        return ctx.emit1("silu", [x])

    try:
        graph = fonnx.load(model, check=False)
        x = torch.randn(2, 3)
        torch.testing.assert_close(to_module(graph)(x), torch.nn.functional.silu(x))
        with pytest.raises(GraphoptError, match="already registered"):  # another converter for the same op
            fonnx.register_onnx_op("Swish", domain="com.example")(lambda ctx, node: ctx.value(node.input[0]))
        fonnx.register_onnx_op("Swish", domain="com.example", replace=True)(convert)
    finally:
        fonnx.CONVERTERS.unregister("com.example::Swish")


def test_converters_folders_and_lowerings_have_one_duplicate_policy():
    import graphopt.frontends.onnx_ops  # noqa: F401 - the built-in converters and folders

    before = (fonnx.CONVERTERS.snapshot(), fonnx.FOLDERS.snapshot(), gonnx.LOWERINGS.snapshot())
    with pytest.raises(GraphoptError, match="converter from ONNX for 'Relu' is already registered"):
        fonnx.register_onnx_op("Relu")(lambda ctx, node: ctx.value(node.input[0]))
    with pytest.raises(GraphoptError, match="folder of known values for 'Shape' is already registered"):
        fonnx.folder("Shape")(lambda ctx, node, ins: None)  # folders used to be overwritten silently
    with pytest.raises(GraphoptError, match="onnx lowering for 'relu' is already registered"):
        gonnx.register_lowering("relu", lambda b, node, ins: ins[0])
    assert (fonnx.CONVERTERS.snapshot(), fonnx.FOLDERS.snapshot(), gonnx.LOWERINGS.snapshot()) == before


def test_data_dependent_reshape_is_reported():
    nodes = [helper.make_node("Cast", ["s"], ["shape"], to=TensorProto.INT64),
             helper.make_node("Reshape", ["x", "shape"], ["y"], name="/dyn/Reshape")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3]),
                                           helper.make_tensor_value_info("s", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    with pytest.raises(GraphoptError, match="/dyn/Reshape.*computed from tensor data"):
        fonnx.load(model)


# ------------------------------------------- what graphopt's own lowering emits reads back
class SelectionAndRounding(torch.nn.Module):
    """Ops whose ONNX lowering emits TopK, GatherElements, ScatterElements, Mod, rounding, inverse trig and
    bitwise operators: graphopt's ONNX files must import into graphopt again."""

    def forward(self, x: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, ...]:
        values, index = x.topk(3, dim=-1)
        picked = torch.gather(x, 1, index)
        spread = torch.zeros_like(x).scatter_add(1, index, values)
        rounded = torch.floor(x) + torch.ceil(x) * torch.round(x) + torch.sign(x)
        trig = torch.atan(x) + torch.asin(x.clamp(-1, 1)) + torch.acos(x.clamp(-1, 1))
        bits = (ids & 6) | (ids ^ 3)
        return picked.sum(-1, keepdim=True) + spread + rounded + trig, bits + ids // 3 + torch.bitwise_not(ids)


def test_graphopt_lowering_of_selection_rounding_and_bitwise_ops_imports_again():
    import graphopt

    x, ids = torch.randn(2, 8), torch.randint(-20, 20, (2, 8))
    graph = graphopt.trace(SelectionAndRounding().eval(), (x, ids))
    exported = gonnx.to_onnx(graph, opset=18)  # BitwiseAnd/Or/Xor/Not on integers need 18
    emitted = {n.op_type for n in exported.graph.node}
    assert {"TopK", "GatherElements", "ScatterElements", "Mod", "Floor", "Ceil", "Round", "Sign", "Atan",
            "BitwiseAnd", "BitwiseOr", "BitwiseXor", "BitwiseNot"} <= emitted, emitted
    again = fonnx.load(exported)
    x2, ids2 = torch.randn(5, 8), torch.randint(-20, 20, (5, 8))  # another batch: the axis stayed dynamic
    with torch.no_grad():
        for got, want in zip(to_module(again)(x2, ids2), SelectionAndRounding()(x2, ids2)):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_onnx_mod_and_negative_gather_elements_indices_follow_the_spec():
    x = helper.make_tensor_value_info("x", TensorProto.INT64, [2, 4])
    y = helper.make_tensor_value_info("y", TensorProto.INT64, [2, 4])
    idx = helper.make_tensor("idx", TensorProto.INT64, [2, 2], [-1, 0, 1, -4])
    nodes = [helper.make_node("Mod", ["x", "y"], ["py_mod"], fmod=0),
             helper.make_node("Mod", ["x", "y"], ["c_mod"], fmod=1),
             helper.make_node("GatherElements", ["x", "idx"], ["picked"], axis=1)]
    outs = [helper.make_tensor_value_info(n, TensorProto.INT64, [2, k]) for n, k in (("py_mod", 4), ("c_mod", 4),
                                                                            ("picked", 2))]
    model = helper.make_model(helper.make_graph(nodes, "m", [x, y], outs, [idx]),
                              opset_imports=[helper.make_opsetid("", 17)])
    a = np.array([[7, -7, 5, -5], [9, -9, 0, 3]], dtype=np.int64)
    b = np.array([[3, 3, -2, -2], [4, 4, 5, -2]], dtype=np.int64)
    got = to_module(fonnx.load(model))(torch.from_numpy(a), torch.from_numpy(b))
    for mine, theirs in zip(got, _ort(model, a, b)):
        np.testing.assert_array_equal(mine.numpy(), theirs)


class Recurrent(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = torch.nn.LSTM(6, 8, num_layers=2, batch_first=True, bidirectional=True)
        self.gru = torch.nn.GRU(16, 5)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        y, (h, c) = self.lstm(x)
        z, g = self.gru(y.transpose(0, 1))
        return z, h, c, g


@pytest.mark.parametrize("source", ["graphopt", "torch.onnx"])
def test_lstm_and_gru_import_from_onnx(source):
    """graphopt's own export (one ONNX node per layer) and torch.onnx's both read back as torch's recurrence."""
    import graphopt

    torch.manual_seed(0)
    model, x = Recurrent().eval(), torch.randn(2, 7, 6)
    if source == "graphopt":
        exported = gonnx.to_onnx(graphopt.trace(model, (x,)))
    else:
        exported = onnx.load_from_string(torch_onnx_bytes(model, (x,), {}))
    assert {"LSTM", "GRU"} <= {n.op_type for n in exported.graph.node}
    again = fonnx.load(exported)
    assert again.find_nodes("lstm") and again.find_nodes("gru")
    with torch.no_grad():
        for got, want in zip(to_module(again)(x), model(x)):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_an_onnx_lstm_torch_cannot_run_is_refused_by_name():
    h = 3
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [5, 1, 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [5, 1, 1, h])
    inits = [helper.make_tensor("W", TensorProto.FLOAT, [1, 4 * h, 2], np.zeros(8 * h).tolist()),
             helper.make_tensor("R", TensorProto.FLOAT, [1, 4 * h, h], np.zeros(4 * h * h).tolist())]
    lstm = helper.make_node("LSTM", ["x", "W", "R"], ["y"], hidden_size=h, clip=1.0)
    model = helper.make_model(helper.make_graph([lstm], "m", [x], [y], inits),
                              opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(GraphoptError, match="LSTM with clip has no torch equivalent"):
        fonnx.load(model)
