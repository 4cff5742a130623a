"""Real Hugging Face model code: trace -> round trip -> prune 0.5 (heads, within heads) -> ONNX Runtime.

A representative subset of the families bench/bench_sweep.py sweeps (docs/coverage_models.md), built the
same way: `bench_sweep.build` makes the small random config (no download), the wrapper that returns the
model's first output tensor, and a batch-1 and a batch-2 example. A family that fails today is marked
`xfail(strict=True)` with the exact error, so the test flips to a failure when the fix lands and the mark
must go. Each model is built and traced once (cached); pruning goes through
`graphopt.optimize`, which traces again, as a user's call would.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import bench_sweep  # noqa: E402 - after the skip: it imports transformers' config classes when used
import graphopt  # noqa: E402
from graphopt.backends.torch import to_module  # noqa: E402

TOLERANCE = 1e-4  # float32 reassociation only: the traced graph runs the same ops


# family -> modality; every family is traced, round-tripped and run on ONNX Runtime.
FAMILIES = {"bert": "text", "gpt2": "text", "llama": "text", "mistral": "text", "mixtral": "text", "t5": "text",
            "deberta-v2": "text", "falcon": "text", "fnet": "text", "vit": "vision", "swin": "vision",
            "convnext": "vision"}
# Pruning and batch-1 tracing on fewer, to keep the file near a minute on 2 cores: mistral prunes as llama
# does (its sliding-window mask matters to the trace); within heads on the patterns the zoo lacks (fused
# Conv1D qkv, GQA + RoPE, shifted windows). mixtral: transformers' grouped experts (sort, histc, grouped_mm,
# an inverse permutation) are a channel barrier, so only attention prunes; falcon: its multi-query split
# indexes fused_qkv[..., [-2], :] (a negative constant index fixed the batch at batch 1); fnet: fftn(...).real.
PRUNE_HEADS = [name for name in FAMILIES if name != "mistral"]
BATCH1 = ["bert", "llama", "swin", "falcon"]
WITHIN_HEADS = ["gpt2", "llama", "swin"]
# (test, family) -> the exact error it fails with today: xfail(strict=True, raises=that error), so the fix
# that lands flips the test to XPASS (a failure: remove the entry), and a different error fails it too.
KNOWN_FAILURES: dict[tuple[str, str], tuple[type, str]] = {}


def _params(test: str, names) -> list:
    def marks(name: str) -> list:
        if (test, name) not in KNOWN_FAILURES:
            return []
        error, reason = KNOWN_FAILURES[test, name]
        return [pytest.mark.xfail(strict=True, raises=error, reason=reason)]

    return [pytest.param(name, id=name, marks=marks(name)) for name in names]


@functools.lru_cache(maxsize=None)
def _built(name: str):
    """(model, batch-1 example, batch-2 example) of a family, built once."""
    return bench_sweep.build(name, FAMILIES[name])


@functools.lru_cache(maxsize=None)
def _traced(name: str):
    model, x1, x2 = _built(name)
    return graphopt.trace(model, x2)


def _assert_close(got: torch.Tensor, want: torch.Tensor) -> None:
    torch.testing.assert_close(got, want, rtol=TOLERANCE, atol=TOLERANCE)


@pytest.mark.parametrize("name", _params("trace", FAMILIES))
def test_trace_round_trip(name):
    """The batch-2 trace keeps the batch axis and computes what the model computes at batch 2 and 1."""
    model, x1, x2 = _built(name)
    graph = _traced(name)
    assert set(graph.symbols()) == {"batch"}, graph.symbols()
    module = to_module(graph)
    with torch.no_grad():
        _assert_close(module(*x2), model(*x2))
        _assert_close(module(*x1), model(*x1))


@pytest.mark.parametrize("name", _params("batch1", BATCH1))
def test_batch1_trace_keeps_batch_axis(name):
    model, x1, x2 = _built(name)
    graph = graphopt.trace(model, x1)
    assert set(graph.symbols()) == {"batch"}, graph.symbols()
    with torch.no_grad():
        _assert_close(to_module(graph)(*x2), model(*x2))


def _prune_half(name: str, heads: bool) -> None:
    """optimize(prune 0.5) removes parameters; the pruned model runs at batch 2 and 1 with the same output shape."""
    model, x1, x2 = _built(name)
    optimized = graphopt.optimize(model, x2, prune={"ratio": 0.5, "heads": heads})
    assert optimized.report.params_after < optimized.report.params_before
    with torch.no_grad():
        for x in (x2, x1):
            assert optimized(*x).shape == model(*x).shape


@pytest.mark.parametrize("name", _params("prune_heads", PRUNE_HEADS))
def test_prune_half_by_heads(name):
    _prune_half(name, heads=True)


@pytest.mark.parametrize("name", _params("prune_within", WITHIN_HEADS))
def test_prune_half_within_heads(name):
    _prune_half(name, heads=False)


@pytest.mark.parametrize("name", _params("ort", FAMILIES))
def test_onnx_runtime_matches_torch(name):
    pytest.importorskip("onnxruntime")
    from graphopt.backends.onnx import runtime

    model, _, x2 = _built(name)
    with torch.no_grad():
        _assert_close(runtime.compile(_traced(name), threads=1)(*x2), model(*x2))


def test_mixtral_experts_are_a_barrier_that_says_why():
    """Data-dependent routing: the grouped experts' channels are not pruned, and their group says which op and line."""
    from graphopt.analysis import channel_groups

    reasons = [r for group in channel_groups(_traced("mixtral")) if not group.prunable for r in group.reasons]
    assert any("op 'grouped_mm'" in r and "channel barrier" in r and "model.layers.0.mlp.experts" in r for r in reasons)


@pytest.mark.parametrize("name", ["bert", "llama", "swin"])
def test_a_macs_budget_holds_on_real_code(name):
    """target_macs lands within 5 % on transformers' own code (fused and GQA attention, windows), batch 1."""
    model, x1, _ = _built(name)
    [report] = graphopt.optimize(model, x1, prune={"target_macs": 0.5}).report.prune
    assert abs(report.macs_fraction / 0.5 - 1) <= 0.05, report.summary()


@pytest.mark.parametrize("name", ["bert", "llama"])
def test_train_once_then_removal_equals_the_sparse_model_on_real_code(name):
    """GroupSparseOptimizer zeroes half the units of transformers' BERT / Llama in a short run (batch-1 trace),
    and prune_zero_groups removes them without changing the outputs."""
    import copy

    from graphopt.train import GroupSparseOptimizer, prune_zero_groups, unit_groups

    model, x1, x2 = _built(name)
    model = copy.deepcopy(model).train()
    optimizer = GroupSparseOptimizer(torch.optim.AdamW(model.parameters(), lr=1e-3), unit_groups(model, x1),
                                     target_sparsity=0.5, total_steps=20)
    for _ in range(20):
        loss = model(*x2).float().pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    assert "exactly zero (50.0%" in optimizer.summary()
    pruned = prune_zero_groups(model, x1)
    assert pruned.report.params_after < 0.8 * pruned.report.params_before
    with torch.no_grad():
        torch.testing.assert_close(pruned.torch_module()(*x2), model(*x2), rtol=1e-4, atol=1e-5)
