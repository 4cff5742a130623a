"""Hostile but realistic use (issue 17): each case crashed, misbehaved or said nothing useful before.

Cases that can kill or poison the interpreter run in a subprocess.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

import graphopt
from graphopt.errors import GraphoptError


def run_python(code: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout)


def test_pipeline_parsing_is_thread_safe_from_a_cold_registry():
    """10 threads parsing at once, the pass modules not imported yet (a fresh process): no spurious errors.

    Before: a module-global stack of pipelines being expanded ("pipeline 'canonicalize' contains itself") and
    a loaded flag set before the pass modules were imported ("unknown pass 'canonicalize'"): 5,048 of 6,000
    parses failed.
    """
    done = run_python("""
        import collections, threading
        from graphopt.passmanager import PassManager
        errors = collections.Counter()
        def work():
            for _ in range(50):
                try:
                    PassManager.parse("canonicalize,simplify")
                except Exception as exc:
                    errors[str(exc)[:80]] += 1
        threads = [threading.Thread(target=work) for _ in range(10)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        print(sum(errors.values()), errors.most_common(2))
    """)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "0 []"


def test_registering_over_a_builtin_criterion_needs_replace():
    from graphopt.passes.prune import CRITERIA, register_criterion

    builtin = CRITERIA["l2"]
    with pytest.raises(GraphoptError, match="'l2' is already registered.*replace=True"):
        register_criterion("l2")(lambda group: None)
    assert CRITERIA["l2"] is builtin
    try:
        replaced = register_criterion("l2", replace=True)(lambda group: builtin(group))
        assert CRITERIA["l2"] is replaced
    finally:
        CRITERIA["l2"] = builtin


@pytest.mark.parametrize("result,said", [(None, "returned None"), ("nan", "non-finite"), ("short", "shape"),
                                         ("text", "not numbers")])
def test_a_criterion_returning_no_usable_scores_is_named(result, said):
    import numpy as np
    import torch

    from graphopt.passes.prune import CRITERIA, register_criterion

    def bad(group):
        return {"nan": np.full(group.num_channels, np.nan), "short": np.ones(1), "text": ["a"] * group.num_channels,
                None: None}[result]

    register_criterion("broken-for-test")(bad)
    try:
        model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        with pytest.raises(GraphoptError, match=f"criterion 'broken-for-test' on channel group .*{said}"):
            graphopt.optimize(model, (torch.randn(2, 4),), prune={"ratio": 0.5, "criterion": "broken-for-test"})
    finally:
        CRITERIA.pop("broken-for-test")


def _dynamic_linear():
    import torch

    model = torch.nn.Sequential(torch.nn.Linear(4, 3)).eval()
    return graphopt.trace(model, (torch.randn(2, 4),))


@pytest.mark.parametrize("bind,said", [({"batch": -1}, "integer >= 1"), ({"batch": 0}, "integer >= 1"),
                                       ({"batch": 2.5}, "integer >= 1"), ({"batch": True}, "integer >= 1"),
                                       ({"seq": 3}, "not symbols"), ([1], "must map")])
def test_bad_bind_sizes_are_rejected_by_every_back_end(tmp_path, bind, said):
    """Before: TVM died with a segmentation fault on batch=-1 and compiled batch=0; ONNX export blamed -2 on
    "a graphopt exporter bug"."""
    from graphopt.backends import onnx as gonnx
    from graphopt.errors import BindError

    graph = _dynamic_linear()
    with pytest.raises(BindError, match=said):
        gonnx.export(graph, tmp_path / "m.onnx", bind=bind)
    assert not (tmp_path / "m.onnx").exists()
    tvm = pytest.importorskip("graphopt.backends.tvm")
    with pytest.raises(BindError, match=said):
        tvm.compile(graph, bind=bind)


def test_an_unknown_onnx_runtime_provider_is_rejected():
    """Before: providers=["NoSuchProvider"] ran silently on the CPU."""
    from graphopt.backends.onnx import compile as ort_compile

    graph = _dynamic_linear()
    with pytest.raises(GraphoptError, match="'NoSuchProvider' is not available.*available: .*CPUExecutionProvider"):
        ort_compile(graph, providers=["NoSuchProvider"])
    with pytest.raises(GraphoptError, match="did you mean 'CPUExecutionProvider'"):
        ort_compile(graph, providers=["CpuExecutionProvider"])
    with pytest.raises(GraphoptError, match="a list of provider names"):
        ort_compile(graph, providers="CPUExecutionProvider")
    assert ort_compile(graph, providers=[("CPUExecutionProvider", {})]).session.get_providers() == ["CPUExecutionProvider"]
