"""Each canonicalisation pass on small hand-built graphs: golden text, numbers, and modified=False."""

from __future__ import annotations

import textwrap

import pytest
import torch

from graphopt.backends.torch import to_module
from graphopt.ir import Graph, SourceLocation, dims as D
from graphopt.passmanager import PassManager, Verify

B = D.symbol("batch")
CONV = {"stride": [1, 1], "padding": [1, 1], "dilation": [1, 1], "groups": 1}


def run(pipeline: str, graph: Graph, inputs=None):
    """Run under Verify (structure + outputs at the pass's tolerance); return (graph, report)."""
    return PassManager.parse(pipeline, instruments=[Verify(inputs)]).run(graph, inputs)


def golden(graph: Graph) -> str:
    return graph.format(weights=False)


def expect(text: str) -> str:
    return textwrap.dedent(text).strip("\n")


def unchanged(pipeline: str, graph: Graph) -> None:
    before = graph.format()
    new, report = run(pipeline, graph)
    assert not report.modified and new.format() == before


# ------------------------------------------------------------ remove-identity
def identity_graph() -> Graph:
    g = Graph("ids")
    x = g.add_input("x", (B, 4, 6), torch.float32)
    a = g.create_node("identity", [x], name="a")
    b = g.create_node("dropout", [a.output], {"p": 0.5}, name="b")
    c = g.create_node("reshape", [b.output], {"shape": [B, 4, 6]}, name="c")
    d = g.create_node("permute", [c.output], {"dims": [0, -2, 2]}, name="d")
    e = g.create_node("cast", [d.output], {"dtype": torch.float32}, name="e")
    f = g.create_node("slice", [e.output], {"axis": 2, "start": 0, "end": 6, "step": 1}, name="f")
    h = g.create_node("expand", [f.output], {"shape": [B, 4, 6]}, name="h")
    i = g.create_node("pad", [h.output], {"pad": [0, 0], "mode": "constant", "value": 0.0}, name="i")
    j = g.create_node("concat", [i.output], {"axis": 1}, name="j")
    kept = g.create_node("slice", [j.output], {"axis": 2, "start": 1, "end": 6, "step": 1}, name="kept")
    relu = g.create_node("relu", [kept.output], name="relu")
    g.outputs = [relu.output, e.output]
    return g


def test_remove_identity_golden():
    new, report = run("remove-identity", identity_graph())
    assert golden(new) == expect("""
        graph ids(%x: f32[batch,4,6]) {
          %kept: f32[batch,4,5] = slice(%x) {axis=2, end=6, start=1, step=1}
          %relu: f32[batch,4,5] = relu(%kept)
          return %relu, %x
        }""")
    assert report.records[0].nodes_before == 11 and report.records[0].nodes_after == 2


def test_remove_identity_keeps_real_casts_and_reshapes():
    g = Graph("real")
    x = g.add_input("x", (2, 6), torch.float32)
    c = g.create_node("cast", [x], {"dtype": torch.float16})
    r = g.create_node("reshape", [c.output], {"shape": [3, 4]})
    p = g.create_node("permute", [r.output], {"dims": [1, 0]})
    s = g.create_node("slice", [p.output], {"axis": 0, "start": 0, "end": 4, "step": 2})
    g.outputs = [s.output]
    unchanged("remove-identity", g)


# ------------------------------------------------------------ merge-reshapes
def reshape_graph() -> Graph:
    g = Graph("layout")
    x = g.add_input("x", (B, 4, 6), torch.float32)
    r1 = g.create_node("reshape", [x], {"shape": [B, 24]}, name="r1")
    r2 = g.create_node("reshape", [r1.output], {"shape": [B, 2, 12]}, name="r2")
    r3 = g.create_node("reshape", [r2.output], {"shape": [B, 4, 6]}, name="r3")  # back to x: disappears
    p1 = g.create_node("permute", [r3.output], {"dims": [0, 2, 1]}, name="p1")
    p2 = g.create_node("permute", [p1.output], {"dims": [2, 0, 1]}, name="p2")  # composed: [1, 0, 2]
    q1 = g.create_node("permute", [x], {"dims": [1, 0, 2]}, name="q1")
    q2 = g.create_node("permute", [q1.output], {"dims": [1, 0, 2]}, name="q2")  # composed: identity
    shared = g.create_node("reshape", [x], {"shape": [B, 24]}, name="shared")
    s2 = g.create_node("reshape", [shared.output], {"shape": [B, 6, 4]}, name="s2")
    out = g.create_node("sigmoid", [shared.output], name="other_reader")
    g.outputs = [p2.output, q2.output, s2.output, out.output]
    return g


def test_merge_reshapes_golden():
    new, _ = run("merge-reshapes", reshape_graph())
    assert golden(new) == expect("""
        graph layout(%x: f32[batch,4,6]) {
          %p2: f32[4,batch,6] = permute(%x) {dims=[1,0,2]}
          %shared: f32[batch,24] = reshape(%x) {shape=[batch,24]}
          %s2: f32[batch,6,4] = reshape(%x) {shape=[batch,6,4]}
          %other_reader: f32[batch,24] = sigmoid(%shared)
          return %p2, %x, %s2, %other_reader
        }""")


def test_merge_reshapes_nothing_to_do():
    g = Graph("plain")
    x = g.add_input("x", (2, 6), torch.float32)
    r = g.create_node("reshape", [x], {"shape": [3, 4]})
    g.outputs = [g.create_node("relu", [r.output]).output]
    unchanged("merge-reshapes", g)


# ------------------------------------------------------------ fold-constants
def constant_graph() -> Graph:
    g = Graph("consts")
    x = g.add_input("x", (B, 8), torch.float32)
    w = g.add_weight("fc.weight", torch.randn(4, 8))
    scale = g.add_weight("scale", torch.full((4,), 2.0), kind="buffer")
    wt = g.create_node("permute", [w], {"dims": [1, 0]}, name="wt")  # from a param: stays a param
    s2 = g.create_node("mul", [scale, g.add_const(torch.tensor(3.0))], name="s2")  # buffer * const: a buffer
    idx = g.create_node("arange", [], {"start": 0, "end": 4, "step": 1, "dtype": torch.int64}, name="idx")
    big = g.create_node("expand", [s2.output], {"shape": [64, 4]}, name="big")  # 256 elements
    dyn = g.create_node("expand", [scale], {"shape": [B, 4]}, name="dyn")  # symbolic: never folded
    mm = g.create_node("matmul", [x, wt.output], name="mm")
    sel = g.create_node("index_select", [mm.output, idx.output], {"axis": 1}, name="sel")
    y = g.create_node("mul", [sel.output, dyn.output], name="y")
    z = g.create_node("mean", [big.output], {"axes": [0], "keepdim": False}, name="z")
    g.outputs = [g.create_node("add", [y.output, z.output], name="out").output]
    wt.meta["source"] = SourceLocation(module="fc", file="model.py", line=3)
    return g


def test_fold_constants_golden_and_kinds():
    new, report = run("fold-constants{max_elements=100}", constant_graph())
    assert golden(new) == expect("""
        graph consts(%x: f32[batch,8]) {
          %big: f32[64,4] = expand(%s2_folded) {shape=[64,4]}
          %dyn: f32[batch,4] = expand(%scale) {shape=[batch,4]}
          %mm: f32[batch,4] = matmul(%x, %wt_folded)
          %sel: f32[batch,4] = index_select(%mm, %idx_folded) {axis=1}
          %y: f32[batch,4] = mul(%sel, %dyn)
          %z: f32[4] = mean(%big) {axes=[0], keepdim=False}
          %out: f32[batch,4] = add(%y, %z)
          return %out
        }""")
    kinds = {name: v.kind for name, v in new.weights.items()}
    assert kinds == {"scale": "buffer", "wt_folded": "param", "s2_folded": "buffer", "idx_folded": "const"}
    assert "fc.weight" not in new.weights  # its only reader was folded
    assert new.weights["wt_folded"].meta["source"].module == "fc"
    # a larger limit folds the 256-element expand and then the mean of it
    new, _ = run("fold-constants", constant_graph())
    assert [n.op for n in new.nodes] == ["expand", "matmul", "index_select", "mul", "add"]


def test_fold_constants_nothing_to_do():
    g = Graph("g")
    x = g.add_input("x", (2, 3), torch.float32)
    g.outputs = [g.create_node("mul", [x, g.add_const(torch.tensor(2.0))]).output]
    unchanged("fold-constants", g)


# ------------------------------------------------------------ fold-batchnorm
def bn_weights(g: Graph, prefix: str, c: int, affine: bool = True):
    gen = torch.Generator().manual_seed(len(prefix) + c)
    gamma = g.add_weight(f"{prefix}.weight", torch.rand(c, generator=gen) + 0.5) if affine else None
    beta = g.add_weight(f"{prefix}.bias", torch.randn(c, generator=gen)) if affine else None
    mean = g.add_weight(f"{prefix}.running_mean", torch.randn(c, generator=gen), kind="buffer")
    var = g.add_weight(f"{prefix}.running_var", torch.rand(c, generator=gen) + 0.5, kind="buffer")
    return [gamma, beta, mean, var]


def bn_graph() -> Graph:
    """conv (no bias) + bn, conv_transpose (groups 2, bias) + bn, linear + bn1d, and a conv with two readers."""
    g = Graph("bn")
    x = g.add_input("x", (B, 4, 6, 6), torch.float32)
    conv = g.create_node("conv", [x, g.add_weight("conv.weight", torch.randn(6, 4, 3, 3)), None], CONV, name="conv")
    conv.meta["source"] = SourceLocation(module="conv", file="model.py", line=10)
    bn = g.create_node("batch_norm", [conv.output, *bn_weights(g, "bn", 6)], {"eps": 1e-5, "momentum": 0.1}, name="bn")
    up = g.create_node("conv_transpose", [bn.output, g.add_weight("up.weight", torch.randn(6, 2, 2, 2)),
                                          g.add_weight("up.bias", torch.randn(4))],
                       {"stride": [2, 2], "padding": [0, 0], "dilation": [1, 1], "groups": 2,
                        "output_padding": [0, 0]}, name="up")
    bn2 = g.create_node("batch_norm", [up.output, *bn_weights(g, "bn2", 4, affine=False)], {"eps": 1e-3}, name="bn2")
    pooled = g.create_node("mean", [bn2.output], {"axes": [2, 3], "keepdim": False}, name="pool")
    fc = g.create_node("linear", [pooled.output, g.add_weight("fc.weight", torch.randn(5, 4)), None], name="fc")
    bn3 = g.create_node("batch_norm", [fc.output, *bn_weights(g, "bn3", 5)], {"eps": 1e-5}, name="bn3")
    side = g.create_node("conv", [x, g.add_weight("side.weight", torch.randn(3, 4, 3, 3)), None], CONV, name="side")
    bn4 = g.create_node("batch_norm", [side.output, *bn_weights(g, "bn4", 3)], {"eps": 1e-5}, name="bn4")
    tap = g.create_node("relu", [side.output], name="tap")  # a second reader of side: bn4 cannot be folded
    g.outputs = [bn3.output, bn4.output, tap.output]
    return g


def test_fold_batchnorm_golden_numbers_and_meta():
    graph = bn_graph()
    inputs = (torch.randn(3, 4, 6, 6),)
    new, report = run("fold-batchnorm", graph, inputs)
    assert golden(new) == expect("""
        graph bn(%x: f32[batch,4,6,6]) {
          %conv: f32[batch,6,6,6] = conv(%x, %conv.weight, %conv.bias) {dilation=[1,1], groups=1, padding=[1,1], stride=[1,1]}
          %up: f32[batch,4,12,12] = conv_transpose(%conv, %up.weight, %up.bias) {dilation=[1,1], groups=2, output_padding=[0,0], padding=[0,0], stride=[2,2]}
          %pool: f32[batch,4] = mean(%up) {axes=[2,3], keepdim=False}
          %fc: f32[batch,5] = linear(%pool, %fc.weight, %fc.bias)
          %side: f32[batch,3,6,6] = conv(%x, %side.weight, None) {dilation=[1,1], groups=1, padding=[1,1], stride=[1,1]}
          %bn4: f32[batch,3,6,6] = batch_norm(%side, %bn4.weight, %bn4.bias, %bn4.running_mean, %bn4.running_var) {eps=1e-05}
          %tap: f32[batch,3,6,6] = relu(%side)
          return %fc, %bn4, %tap
        }""")
    assert not any(name.startswith(("bn.", "bn2.", "bn3.")) for name in new.weights)  # folded stats are gone
    assert new.weights["conv.bias"].kind == "param"
    conv = new.node("conv")
    assert conv.meta["source"].line == 10 and conv.meta["folded"] == ("bn",)
    assert "folded" not in graph.node("conv").meta  # the caller's graph is untouched
    # numbers: tighter than Verify's check, straight against the original graph
    with torch.no_grad():
        for a, b in zip(to_module(graph)(*inputs), to_module(new)(*inputs)):
            torch.testing.assert_close(b, a)
    assert report.records[0].nodes_before - report.records[0].nodes_after == 3


def test_fold_batchnorm_copies_a_shared_weight():
    g = Graph("shared")
    x = g.add_input("x", (2, 4, 5, 5), torch.float32)
    w = g.add_weight("w", torch.randn(4, 4, 3, 3))
    a = g.create_node("conv", [x, w, None], CONV, name="a")
    bn = g.create_node("batch_norm", [a.output, *bn_weights(g, "bn", 4)], {"eps": 1e-5}, name="bn")
    b = g.create_node("conv", [bn.output, w, None], CONV, name="b")  # reads the same weight
    g.outputs = [b.output]
    new, _ = run("fold-batchnorm", g, (torch.randn(2, 4, 5, 5),))
    assert new.node("a").inputs[1].name == "w.bn_folded" and new.node("b").inputs[1].name == "w"
    assert new.weights["w"].data is g.weights["w"].data


def test_fold_batchnorm_nothing_to_do():
    g = Graph("g")
    x = g.add_input("x", (2, 3, 4, 4), torch.float32)
    relu = g.create_node("relu", [x])
    bn = g.create_node("batch_norm", [relu.output, *bn_weights(g, "bn", 3)], {"eps": 1e-5})
    g.outputs = [bn.output]
    unchanged("fold-batchnorm", g)


# ------------------------------------------------------------ eliminate-dead-code
def test_eliminate_dead_code_golden():
    g = Graph("dce")
    x = g.add_input("x", (2, 6), torch.float32)
    unused_input = g.add_input("unused", (2,), torch.float32)
    w = g.add_weight("w", torch.randn(6, 6))
    g.add_weight("orphan", torch.randn(3), kind="buffer")
    a = g.create_node("linear", [x, w, None], name="a")
    d1 = g.create_node("sigmoid", [a.output], name="d1")
    g.create_node("tanh", [d1.output], name="d2")  # a dead chain
    parts = g.create_node("split", [a.output], {"sizes": [3, 3], "axis": 1}, name="parts")  # one output used
    g.outputs = [parts.outputs[1]]
    assert unused_input is g.inputs[1]
    new, report = run("eliminate-dead-code", g)
    assert new.format() == expect("""
        graph dce(%x: f32[2,6], %unused: f32[2]) {
          %w: f32[6,6] = param
          %a: f32[2,6] = linear(%x, %w, None)
          %parts.0: f32[2,3], %parts.1: f32[2,3] = split(%a) {axis=1, sizes=[3,3]}
          return %parts.1
        }""")
    assert (report.records[0].weights_before, report.records[0].weights_after) == (2, 1)
    unchanged("eliminate-dead-code", new)


# ------------------------------------------------------------ the pipeline
def test_canonicalize_reaches_a_fixed_point_on_hand_graphs():
    for graph in (identity_graph(), reshape_graph(), constant_graph(), bn_graph()):
        new, report = run("canonicalize", graph)
        unchanged("canonicalize", new)
        assert report.records[-1].path == "canonicalize/eliminate-dead-code"


@pytest.mark.parametrize("name", ["remove-identity", "merge-reshapes", "fold-constants", "fold-batchnorm",
                                  "eliminate-dead-code", "canonicalize"])
def test_every_pass_keeps_source_locations_of_kept_nodes(name):
    graph = bn_graph()
    for i, node in enumerate(graph.nodes):
        node.meta["source"] = SourceLocation(module=f"m{i}", file="model.py", line=i)
    new, _ = run(name, graph)
    for node in new.nodes:
        assert node.meta["source"] == graph.node(node.name).meta["source"]
