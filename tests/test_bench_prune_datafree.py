"""bench/bench_prune_datafree.py, reduced: one zoo transformer, one ratio, so the benchmark does not rot."""

from __future__ import annotations

import pytest

from conftest import bench_module


@pytest.fixture(scope="module")
def bench(one_thread):
    with bench_module("bench_prune_datafree", "bench_prune_accuracy") as module:
        yield module


def test_vit_mlp_hidden_units_data_free_beats_magnitude(bench):
    rows = bench.run_transformer("vit", 0, [0.25], ["single-producer"], ["magnitude", "data-free"])
    errors = {row.method: row.error for row in rows}
    assert set(errors) == {"magnitude", "data-free"}
    assert errors["data-free"] < 0.5 * errors["magnitude"]
    assert "data-free recovery: 2 groups compensated" in rows[1].recovery
    text = bench.table(rows)
    assert "| vit | single-producer | 0.25 | data-free |" in text
