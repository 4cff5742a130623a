"""The rewrite-rule engine under canonicalisation: use/def helpers, rules applied directly, the worklist driver."""

from __future__ import annotations

import pytest
import torch

from graphopt.errors import GraphoptError
from graphopt.ir import Graph
from graphopt.passes.canonicalize.fold_batchnorm import fold_batchnorm_into_layer, fold_target
from graphopt.passes.canonicalize.merge_reshapes import merge_permute_chain, merge_reshape_chain
from graphopt.passes.canonicalize.remove_identity import REMOVE_NOOP
from graphopt.passmanager import PassManager
from graphopt.passmanager.rewrite import RewritePass, Rule, graph_rewrite, rule


@rule("drop-double-neg", "neg")
def drop_double_neg(node):
    inner = node.inputs[0].producer
    if inner is None or inner.op != "neg":
        return "its input is not a neg"
    return inner.inputs[0]


def neg_chain(length: int) -> Graph:
    g = Graph("negs")
    x = g.add_input("x", (2, 3), torch.float32)
    v = x
    for i in range(length):
        v = g.create_node("neg", [v], name=f"n{i}").output
    g.outputs = [g.create_node("relu", [v], name="out").output]
    return g


# ------------------------------------------------------------ use/def helpers
def test_use_def_helpers():
    g = Graph("ud")
    x = g.add_input("x", (2, 3), torch.float32)
    w = g.add_weight("w", torch.ones(2, 3))
    orphan = g.add_weight("orphan", torch.ones(3), kind="buffer")
    a = g.create_node("add", [x, w], name="a")
    dead = g.create_node("relu", [a.output], name="dead")
    g.outputs = [a.output]
    assert a.output.is_graph_output() and a.output.is_used() and not a.is_dead()
    assert not dead.output.is_graph_output() and not dead.output.is_used() and dead.is_dead()
    assert w.is_used() and not orphan.is_used() and not x.is_graph_output()

    assert not g.erase_if_dead(a)  # the graph returns it
    assert not g.erase_if_dead(None)
    assert g.erase_if_dead(dead) and dead.graph is None and [n.name for n in g.nodes] == ["a"]
    assert not g.erase_if_dead(dead)  # not in the graph any more

    assert not g.remove_weight_if_unused(w) and g.remove_weight_if_unused(orphan)
    assert set(g.weights) == {"w"} and not g.remove_weight_if_unused(x)


# ------------------------------------------------------------ rules applied directly
def test_rule_applied_directly_gives_a_reason_or_a_replacement():
    g = Graph("direct")
    x = g.add_input("x", (2, 12), torch.float32)
    r1 = g.create_node("reshape", [x], {"shape": [2, 3, 4]}, name="r1")
    r2 = g.create_node("reshape", [r1.output], {"shape": [6, 4]}, name="r2")
    keep = g.create_node("slice", [r2.output], {"axis": 0, "start": 1, "end": 6, "step": 1}, name="keep")
    ident = g.create_node("identity", [keep.output], name="ident")
    g.outputs = [ident.output]

    assert merge_reshape_chain(r1) == "its input is not a reshape"
    assert REMOVE_NOOP(keep) == "this slice changes its input"
    assert merge_permute_chain.applies_to("permute") and not merge_permute_chain.applies_to("reshape")
    assert REMOVE_NOOP(ident) is keep.output  # a replacement value: the graph is not touched yet
    assert ident.graph is g and g.outputs == [ident.output]

    assert merge_reshape_chain(r2) is r2  # edited in place: reads x directly now
    assert r2.inputs[0] is x and r1.is_dead()
    assert "merge_reshapes.py" in merge_reshape_chain.where


def test_fold_batchnorm_rule_says_why_not():
    g = Graph("bn")
    x = g.add_input("x", (2, 3, 4, 4), torch.float32)
    relu = g.create_node("relu", [x])
    stats = [g.add_weight(f"s{i}", torch.ones(3), kind="buffer") for i in range(4)]
    bn = g.create_node("batch_norm", [relu.output, *stats], {"eps": 1e-5}, name="bn")
    g.outputs = [bn.output]
    assert fold_target(bn) == "its input is not produced by a conv, conv_transpose or linear"
    assert fold_batchnorm_into_layer(bn) == fold_target(bn)


# ------------------------------------------------------------ the driver
def test_driver_reaches_the_fixed_point_and_erases_what_rules_bypass():
    g = neg_chain(5)
    stats = graph_rewrite(g, [drop_double_neg])
    # n1 cancels n0, n3 cancels n2, and each bypassed pair went without the rule erasing anything
    assert [n.name for n in g.nodes] == ["n4", "out"] and g.node("n4").inputs[0] is g.inputs[0]
    assert stats.applied == {"drop-double-neg": 2} and stats.erased == 2 and stats.modified
    g.verify()
    assert not graph_rewrite(g, [drop_double_neg]).modified  # a fixed point: nothing left to do


def test_driver_revisits_a_producer_that_lost_a_reader():
    """exp-sole needs exp's output to have one reader; only after zero-mul removes the other does it match."""

    @rule("zero-mul", "mul")
    def zero_mul(node):
        w = node.inputs[1]
        if not w.is_weight or bool(w.data.any()) or w.shape != node.output.shape:
            return "not a multiplication by a zero tensor of the output's shape"
        return w

    @rule("exp-sole", "exp")
    def exp_sole(node):
        if len(node.output.uses()) != 1:
            return "its output has several readers"
        return node.graph.create_node("sigmoid", node.inputs, name="sig", after=node)

    g = Graph("revisit")
    x = g.add_input("x", (2, 3), torch.float32)
    e = g.create_node("exp", [x], name="e")
    m = g.create_node("mul", [e.output, g.add_weight("zeros", torch.zeros(2, 3))], name="m")
    r = g.create_node("relu", [e.output], name="r")
    g.outputs = [g.create_node("add", [m.output, r.output], name="out").output]

    stats = graph_rewrite(g, [zero_mul, exp_sole])
    assert stats.applied == {"zero-mul": 1, "exp-sole": 1}
    assert [n.op for n in g.nodes] == ["sigmoid", "relu", "add"]
    assert g.node("out").inputs[0] is g.weights["zeros"]
    g.verify()


def test_driver_modified_false_when_nothing_matched():
    g = neg_chain(1)
    before = g.format()
    stats = graph_rewrite(g, [drop_double_neg, REMOVE_NOOP])
    assert not stats.modified and not stats and stats.applied == {} and g.format() == before


def test_driver_stops_with_an_error_naming_the_rule_when_it_does_not_converge():
    @rule("claims-a-change", "relu")
    def claims_a_change(node):
        return node  # says it edited the node in place, changes nothing: would loop for ever

    g = neg_chain(1)
    with pytest.raises(GraphoptError, match=r"did not converge.*'claims-a-change'") as info:
        graph_rewrite(g, [claims_a_change], max_rewrites=10)
    assert "more than 10 rewrites" in str(info.value)


def test_driver_rejects_bad_rules_and_bad_replacements():
    with pytest.raises(GraphoptError, match="takes Rule objects"):
        graph_rewrite(neg_chain(1), [lambda node: "no"])

    @rule("returns-none", "neg")
    def returns_none(node):
        return None

    with pytest.raises(GraphoptError, match="rule 'returns-none'.*expected a failure reason"):
        graph_rewrite(neg_chain(1), [returns_none])

    @rule("two-for-one", "neg")
    def two_for_one(node):
        return [node.inputs[0], node.inputs[0]]

    with pytest.raises(GraphoptError, match="rule 'two-for-one'.*1 output"):
        graph_rewrite(neg_chain(1), [two_for_one])


def test_erase_dead_sweeps_long_dead_chains_and_unread_weights():
    g = neg_chain(1)
    v = g.inputs[0]
    for i in range(3000):  # deeper than Python's recursion limit: the driver must not recurse per node
        v = g.create_node("tanh", [v], name=f"d{i}").output
    g.add_weight("orphan", torch.ones(2))
    stats = graph_rewrite(g, [], erase_dead=True)
    assert stats.erased == 3000 and stats.weights_removed == 1 and [n.name for n in g.nodes] == ["n0", "out"]


def test_a_user_rewrite_pass_runs_in_a_pipeline():
    class DropDoubleNeg(RewritePass):
        def rules(self) -> list[Rule]:
            return [drop_double_neg]

    new, report = PassManager([DropDoubleNeg()]).run(neg_chain(4))
    assert report.modified and [n.name for n in new.nodes] == ["out"]
    _, again = PassManager([DropDoubleNeg()]).run(new)
    assert not again.modified
