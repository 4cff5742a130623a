"""The `cost` analysis: MACs and params per node, checked by hand and against torch's flop counter."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from graphopt.analysis.cost import CostAnalysis, CostReport, estimate_cost
from graphopt.ir import Graph, dims as D
from graphopt.passmanager import AnalysisManager, RunContext

from conftest import traced_zoo_model

B = D.symbol("batch")


def dense_graph() -> Graph:
    """One node of each op the cost model counts, on a symbolic batch."""
    g = Graph("dense")
    x = g.add_input("x", (B, 3, 8, 8), torch.float32)
    ids = g.add_input("ids", (B, 5), torch.int64)
    conv_w = g.add_weight("conv.weight", torch.randn(4, 3, 3, 3))
    conv_b = g.add_weight("conv.bias", torch.randn(4))
    conv = g.create_node("conv", [x, conv_w, conv_b], {"stride": [1, 1], "padding": [1, 1], "dilation": [1, 1],
                                                       "groups": 1}, name="conv")
    dw_w = g.add_weight("dw.weight", torch.randn(4, 1, 3, 3))
    dw = g.create_node("conv", [conv.output, dw_w, None], {"stride": [2, 2], "padding": [1, 1], "dilation": [1, 1],
                                                          "groups": 4}, name="dw")  # -> [B,4,4,4]
    up_w = g.add_weight("up.weight", torch.randn(4, 2, 2, 2))
    up = g.create_node("conv_transpose", [dw.output, up_w, None], {"stride": [2, 2], "padding": [0, 0],
                       "dilation": [1, 1], "groups": 2, "output_padding": [0, 0]}, name="up")  # -> [B,4,8,8]
    flat = g.create_node("reshape", [up.output], {"shape": [B, 4, 64]}, name="flat")
    fc_w = g.add_weight("fc.weight", torch.randn(16, 64))
    fc = g.create_node("linear", [flat.output, fc_w, None], name="fc")  # [B,4,16]
    mm = g.create_node("matmul", [fc.output, g.create_node("permute", [fc.output], {"dims": [0, 2, 1]}).output],
                       name="mm")  # [B,4,4], K=16
    emb_w = g.add_weight("emb.weight", torch.randn(10, 16))
    emb = g.create_node("embedding", [ids, emb_w], name="emb")  # [B,5,16]
    ein = g.create_node("einsum", [fc.output, emb.output], {"equation": "bik,bjk->bij"}, name="ein")  # [B,4,5]
    q = g.create_node("reshape", [fc.output], {"shape": [B, 2, 2, 16]}, name="q")
    kv = g.create_node("reshape", [emb.output], {"shape": [B, 1, 5, 16]}, name="kv")
    att = g.create_node("sdpa", [q.output, kv.output, kv.output, None], {"is_causal": False, "scale": None,
                                                                           "enable_gqa": False}, name="att")
    g.outputs = [mm.output, ein.output, att.output]
    return g


def test_macs_and_params_per_node_by_hand():
    cost = estimate_cost(dense_graph(), bindings={"batch": 3})
    n = cost.nodes
    assert n["conv"].macs == 3 * 4 * 8 * 8 * (3 * 3 * 3) and n["conv"].params == 4 * 27 + 4
    assert n["dw"].macs == 3 * 4 * 4 * 4 * (1 * 3 * 3) and n["dw"].params == 36
    # conv_transpose: every input element scatters into C_out/groups * k*k outputs
    assert n["up"].macs == (3 * 4 * 4 * 4) * (2 * 2 * 2)
    assert n["fc"].macs == 3 * 4 * 16 * 64
    assert n["mm"].macs == 3 * 4 * 4 * 16
    assert n["emb"].macs == 0 and n["emb"].params == 160
    assert n["ein"].macs == 3 * 4 * 5 * 16
    # sdpa: q k^T (L*S*E) and attn v (L*S*Ev) per batch and head
    assert n["att"].macs == 3 * 2 * 2 * 5 * (16 + 16)
    assert n["flat"] == n["flat"].__class__("reshape", 0, 0)
    assert cost.total_macs == sum(c.macs for c in n.values())
    assert cost.total_params == 4 * 27 + 4 + 36 + 32 + 16 * 64 + 160
    assert cost.bindings == {"batch": 3}


def test_symbols_bound_from_example_inputs_else_counted_as_one():
    g = dense_graph()
    per_sample = estimate_cost(g)
    assert per_sample.bindings == {"batch": 1}
    from_inputs = estimate_cost(g, example_inputs=(torch.zeros(5, 3, 8, 8), torch.zeros(5, 5, dtype=torch.long)))
    assert from_inputs.total_macs == 5 * per_sample.total_macs
    assert estimate_cost(g, bindings={"batch": 5}).total_macs == from_inputs.total_macs


def test_shared_weight_counts_once_in_total():
    g = Graph("tied")
    x = g.add_input("x", (2, 8), torch.float32)
    w = g.add_weight("w", torch.randn(8, 8))
    a = g.create_node("linear", [x, w, None])
    b = g.create_node("linear", [a.output, w, None])
    g.outputs = [b.output]
    cost = estimate_cost(g)
    assert [c.params for c in cost.nodes.values()] == [64, 64]
    assert cost.total_params == 64


def test_cost_is_a_registered_analysis_using_manager_bindings():
    g = dense_graph()
    am = AnalysisManager(RunContext(example_inputs=(torch.zeros(4, 3, 8, 8), torch.zeros(4, 5, dtype=torch.long))))
    cost = am.get(CostAnalysis, g)
    assert isinstance(cost, CostReport) and cost.bindings == {"batch": 4}
    assert am.get(CostAnalysis, g) is cost and am.computations[CostAnalysis()] == 1
    table = cost.table(top=3)
    assert "total" in table and "batch=4" in table and len(table.splitlines()) == 6
    assert next(iter(cost.by_op())) == "conv"  # the op with the most MACs first


# torch's counter does not count CPU scaled_dot_product_attention, so models with sdpa are checked by hand above.
@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "unet", "bert", "convnext"])
def test_zoo_macs_match_torch_flop_counter(name):
    model, inputs, graph = traced_zoo_model(name)
    cost = estimate_cost(graph, example_inputs=inputs)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(*inputs)
    assert 2 * cost.total_macs == counter.get_total_flops()
    assert cost.total_params == sum(p.numel() for p in model.parameters())


def test_mac_rules_are_an_op_table_column_with_one_duplicate_policy():
    from graphopt.analysis import mac_rule
    from graphopt.errors import GraphoptError
    from graphopt.ir.op_table import get_op_attr

    assert get_op_attr("linear", "mac_rule") is not None and get_op_attr("relu", "mac_rule") is None
    with pytest.raises(GraphoptError, match="mac rule for 'linear' is already registered"):
        mac_rule("linear")(lambda node, numel: 0)
    g = dense_graph()
    before = estimate_cost(g).nodes["fc"].macs
    mac_rule("linear", replace=True)(lambda node, numel: 7)
    assert before != 7 and estimate_cost(g).nodes["fc"].macs == 7
