"""bench/bench_train_once.py, reduced: real digits, the CNN trained 4 epochs by each method."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_train_once.py"


@pytest.fixture(scope="module")
def bench():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    spec = importlib.util.spec_from_file_location("bench_train_once", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        torch.set_num_threads(threads)
        sys.modules.pop("bench_train_once", None)
        sys.modules.pop("bench_prune_accuracy", None)  # imported by the bench, from the folder it puts on the path
        if str(BENCH.parent) in sys.path:
            sys.path.remove(str(BENCH.parent))


def test_the_pruned_model_is_the_sparse_model(bench):
    result = bench.run("cnn", seed=0, epochs=4)
    rows = result.rows
    sparse, pruned = rows["train once: sparse"], rows["train once: pruned"]
    assert pruned.accuracy == sparse.accuracy and result.max_difference < 1e-4
    assert pruned.macs < 0.3 * rows["dense"].macs  # half of the units on both sides of every conv
    assert rows["dense"].accuracy > 90.0 and pruned.accuracy > 90.0
    assert "128/256 units exactly zero" in result.summary
    baseline = rows["train, prune (l2 + reconstruction)"]
    assert baseline.macs <= 1.01 * pruned.macs  # the comparison is at the same MACs
    assert "| train once: pruned | " in bench.table("cnn", [result], 4)
