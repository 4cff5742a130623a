"""bench/bench_train_once.py, reduced: real digits, the CNN trained 4 epochs by each method."""

from __future__ import annotations

import pytest

from conftest import bench_module


@pytest.fixture(scope="module")
def bench(one_thread):
    with bench_module("bench_train_once", "bench_prune_accuracy") as module:
        yield module


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
