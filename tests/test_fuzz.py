"""Property and fuzz tests (issue 17): random inputs get a GraphoptError or a correct result, never a crash.

A bounded number of cases runs here (well under two minutes together); `python bench/bench_fuzz.py`
runs the same generators for longer. Cases that load untrusted files run in a subprocess.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import graphopt  # noqa: E402
from graphopt.errors import GraphoptError  # noqa: E402
from graphopt.passmanager import PassManager, list_passes  # noqa: E402

BENCH = Path(__file__).resolve().parent.parent / "bench" / "bench_fuzz.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_fuzz", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_fuzz"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


bench_fuzz = _bench()
PIECES = sorted(list_passes()) + ["{", "}", ",", "=", " ", "ratio", "0.5", "true", "-1", "'", "\\", "\u00e9",
                                  "iterations", "criterion=l2", "1e309", "nan", ",,"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(PIECES), max_size=12).map("".join))
def test_pipeline_text_parses_or_is_refused_and_round_trips(text):
    try:
        manager = PassManager.parse(text)
    except GraphoptError:
        return
    assert str(PassManager.parse(str(manager))) == str(manager)


def test_mutated_onnx_models_are_loaded_or_refused_in_a_subprocess():
    """300 structural mutations of five zoo models' ONNX files; a crash would show as a signal here."""
    done = subprocess.run([sys.executable, str(BENCH), "--targets", "onnx", "--cases", "300", "--seed", "1",
                           "--json"], capture_output=True, text=True, timeout=240)
    assert done.returncode in (0, 1), done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["cases"] == 300 and result["bad"] == 0, result["findings"]
    assert result["counts"].get("ok", 0) > 0 and result["counts"].get("GraphoptError", 0) > 0  # both kinds ran


def test_mutated_recipes_are_applied_or_refused_without_touching_the_graph():
    outcomes = bench_fuzz.fuzz_recipes(cases=300, seed=2)
    assert outcomes.bad == 0, outcomes.findings
    assert outcomes.counts["GraphoptError"] > 100


@pytest.fixture(scope="module")
def tiny_models():
    from graphopt import models_zoo

    return {name: models_zoo.get(name, "tiny") for name in ("resnet18", "llama")}


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(["resnet18", "llama"]), ratio=st.sampled_from([0.0, 0.3, 0.7, 0.99]),
       criterion=st.sampled_from(["l1", "l2", "taylor", "activation"]), scope=st.sampled_from(["local", "global"]),
       heads=st.booleans(), round_to=st.sampled_from([1, 8]))
def test_random_prune_options_give_a_graph_that_verifies(tiny_models, name, ratio, criterion, scope, heads, round_to):
    model, inputs = tiny_models[name]
    options = {"ratio": ratio, "criterion": criterion, "scope": scope, "heads": heads, "round_to": round_to}
    optimized = graphopt.optimize(model, inputs, prune=options)
    optimized.graph.verify()
    assert optimized.report.params_after <= optimized.report.params_before
    assert optimized(*inputs).shape == model(*inputs).shape


@pytest.fixture(scope="module")
def traced_mlp():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.GELU(), torch.nn.Linear(8, 8), torch.nn.LayerNorm(8),
                                torch.nn.Linear(8, 3)).eval()
    x = torch.randn(4, 6)
    return graphopt.trace(model, (x,)), x


EDITS = ["identity", "double-negate", "clone", "erase-dead", "dead-branch"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edits=st.lists(st.tuples(st.sampled_from(EDITS), st.integers(0, 10**6)), max_size=8))
def test_random_valid_ir_edits_keep_the_graph_verified_and_its_function(traced_mlp, edits):
    """Value-preserving edits in any order: the graph verifies after each and computes the same outputs."""
    from graphopt.ir.interpreter import run_graph

    graph, x = traced_mlp
    work = graph.clone()
    for edit, pick in edits:
        values = [v for n in work.nodes for v in n.outputs if v.dtype.is_floating_point]
        value = values[pick % len(values)]
        if edit in ("identity", "double-negate"):
            uses = list(value.uses())
            first = work.create_node("identity" if edit == "identity" else "neg", [value], after=value.producer)
            last = first if edit == "identity" else work.create_node("neg", [first.output], after=first)
            for node, index in uses:
                node.set_input(index, last.output)
            if value in work.outputs:
                work.outputs[work.outputs.index(value)] = last.output
        elif edit == "clone":
            work = work.clone()
        elif edit == "dead-branch":
            work.create_node("relu", [value], after=value.producer)
        else:
            for node in reversed(list(work.nodes)):
                work.erase_if_dead(node)
        work.verify()
    torch.testing.assert_close(run_graph(work, (x,))[0], run_graph(graph, (x,))[0], rtol=0, atol=0)


def test_mutated_tvm_manifests_are_loaded_or_refused_in_a_subprocess():
    """300 manifests of a tiny compiled TVM artifact with fields deleted or retyped; loading runs native code,
    so a crash would show as a signal here."""
    pytest.importorskip("tvm")
    done = subprocess.run([sys.executable, str(BENCH), "--targets", "manifest", "--cases", "300", "--seed", "3",
                           "--json"], capture_output=True, text=True, timeout=240)
    assert done.returncode in (0, 1), done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["cases"] == 300 and result["bad"] == 0, result["findings"]
    assert result["counts"].get("ok", 0) > 0 and result["counts"].get("GraphoptError", 0) > 0
