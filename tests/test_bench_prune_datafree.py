"""bench/bench_prune_datafree.py, reduced: one zoo transformer, one ratio, so the benchmark does not rot."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_prune_datafree.py"


@pytest.fixture(scope="module")
def bench():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    spec = importlib.util.spec_from_file_location("bench_prune_datafree", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        torch.set_num_threads(threads)
        sys.modules.pop("bench_prune_datafree", None)


def test_vit_mlp_hidden_units_data_free_beats_magnitude(bench):
    rows = bench.run_transformer("vit", 0, [0.25], ["single-producer"], ["magnitude", "data-free"])
    errors = {row.method: row.error for row in rows}
    assert set(errors) == {"magnitude", "data-free"}
    assert errors["data-free"] < 0.5 * errors["magnitude"]
    assert "data-free recovery: 2 groups compensated" in rows[1].recovery
    text = bench.table(rows)
    assert "| vit | single-producer | 0.25 | data-free |" in text
