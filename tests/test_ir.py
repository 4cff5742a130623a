"""The IR's editing API, verifier and shape rules, on graphs built by hand."""

from __future__ import annotations

import pytest
import torch

from graphopt.errors import GraphoptError, ShapeError, VerificationError
from graphopt.ir import Graph, dims as D
from graphopt.backends.torch import to_module


def small_graph() -> Graph:
    g = Graph("small")
    x = g.add_input("x", (D.symbol("batch"), 3, 8, 8), torch.float32)
    w = g.add_weight("conv.weight", torch.randn(4, 3, 3, 3))
    b = g.add_weight("conv.bias", torch.randn(4))
    conv = g.create_node("conv", [x, w, b], {"stride": [1, 1], "padding": [1, 1], "dilation": [1, 1], "groups": 1})
    relu = g.create_node("relu", [conv.output])
    pool = g.create_node("adaptive_avg_pool", [relu.output], {"output_size": [1, 1]})
    flat = g.create_node("reshape", [pool.output], {"shape": [D.symbol("batch"), 4]})
    g.outputs = [flat.output]
    return g


def test_shape_inference_and_symbolic_batch():
    g = small_graph()
    g.verify()
    assert g.node("conv").output.type_str() == "f32[batch,4,8,8]"
    module = to_module(g)
    for batch in (1, 3):
        assert module(torch.randn(batch, 3, 8, 8)).shape == (batch, 4)


def test_uses_are_tracked_through_edits():
    g = small_graph()
    conv, relu = g.node("conv"), g.node("relu")
    assert conv.output.users == [relu]
    sig = g.create_node("sigmoid", [conv.output], after=conv)
    relu.set_input(0, sig.output)
    assert conv.output.users == [sig] and sig.output.users == [relu]
    g.verify()
    assert [n.op for n in g.nodes] == ["conv", "sigmoid", "relu", "adaptive_avg_pool", "reshape"]


def test_replace_node_and_erase():
    g = small_graph()
    relu = g.node("relu")
    gelu = g.create_node("gelu", [relu.inputs[0]], {"approximate": "none"}, before=relu)
    g.replace_node(relu, gelu.output)
    assert "relu" not in [n.op for n in g.nodes]
    g.verify()
    with pytest.raises(GraphoptError, match="still read by"):
        g.erase_node(g.node("conv"))


def test_replace_all_uses_updates_graph_outputs():
    g = small_graph()
    old = g.outputs[0]
    ident = g.create_node("identity", [old])
    old.replace_all_uses_with(ident.output)
    assert g.outputs == [ident.output]


def test_slice_weight_then_infer_shapes():
    g = small_graph()
    conv = g.node("conv")
    g.slice_weight(conv.inputs[1], 0, [0, 2])
    g.slice_weight(conv.inputs[2], 0, [0, 2])
    g.node("reshape").attrs["shape"] = [D.symbol("batch"), 2]
    g.infer_shapes()
    g.verify()
    assert g.outputs[0].type_str() == "f32[batch,2]"


def test_clone_is_independent_but_shares_tensors():
    g = small_graph()
    c = g.clone()
    assert str(c) == str(g)
    c.node("relu").op = "sigmoid"
    assert g.node("relu").op == "relu"
    assert c.weights["conv.weight"].data is g.weights["conv.weight"].data
    c.verify()
    g.verify()


def test_verifier_lists_each_problem():
    g = small_graph()
    g.node("conv").output.shape = (D.symbol("batch"), 5, 8, 8)
    g.weights["conv.bias"].shape = (7,)
    with pytest.raises(VerificationError) as info:
        g.verify()
    text = str(info.value)
    assert "3 problem(s)" in text  # the wrong conv type also disagrees with relu's rule
    assert "%conv.bias is typed f32[7] but holds a f32[4] tensor" in text
    assert "node %conv (conv)" in text and "f32[batch,5,8,8] but the shape rule gives f32[batch,4,8,8]" in text


def test_verifier_catches_use_before_def():
    g = small_graph()
    relu = g.node("relu")
    g.nodes.remove(relu)
    g.nodes.insert(0, relu)
    with pytest.raises(VerificationError, match="used before it is defined"):
        g.verify()


def test_shape_rule_rejects_bad_inputs_with_node_name():
    g = Graph("bad")
    x = g.add_input("x", (2, 5), torch.float32)
    w = g.add_weight("fc.weight", torch.randn(3, 4))
    with pytest.raises(ShapeError, match=r"node %linear \(linear\).*input features 5 != weight in-features 4"):
        g.create_node("linear", [x, w, None])


def test_broadcast_and_promotion():
    g = Graph("promo")
    a = g.add_input("a", (2, 1, 4), torch.float16)
    b = g.add_input("b", (3, 1), torch.float16)
    half = g.add_const(torch.tensor(0.5))
    ints = g.add_input("i", (3, 1), torch.int64)
    assert g.create_node("add", [a, b]).output.type_str() == "f16[2,3,4]"
    assert g.create_node("mul", [a, half]).output.dtype == torch.float16  # 0-d consts act as scalars
    assert g.create_node("div", [ints, ints]).output.dtype == torch.float32
    assert g.create_node("lt", [ints, ints]).output.dtype == torch.bool


def test_symbolic_dims_evaluate():
    batch, seq = D.symbol("batch"), D.symbol("seq")
    expr = D.prod([batch, seq, 3])
    assert D.dim_str(expr) == "3*batch*seq"
    assert D.evaluate(expr, {"batch": 2, "seq": 5}) == 30
    assert D.evaluate(D.floordiv(seq + 1, 2), {"seq": 5}) == 3
    assert D.dims_equal(batch * 2, 2 * batch) and not D.dims_equal(batch, seq)


def test_op_reference_doc_is_current():
    """docs/ir.md is generated from the op registry; regenerate with `python -m graphopt.ir.ops > docs/ir.md`."""
    from pathlib import Path

    from graphopt.ir.ops import markdown

    doc = (Path(__file__).resolve().parents[1] / "docs" / "ir.md").read_text()
    assert markdown() in doc
