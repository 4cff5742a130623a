"""bench/bench_prune_speed.py runs end to end on a tiny zoo config and its rows make sense."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_prune_speed.py"


def _load_bench():
    spec = importlib.util.spec_from_file_location("bench_prune_speed", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def test_bench_prune_speed_rows_are_sane():
    bench = _load_bench()
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        rows = bench.bench_model("resnet18", "tiny", ratios=(0.5,), round_tos=(1, 8), batches=(1, 2), runs=2, warmup=1)
    finally:
        torch.set_num_threads(threads)

    assert [(r.round_to, r.batch) for r in rows] == [(1, 1), (8, 1), (1, 2), (8, 2)]
    columns = bench.HEADER.splitlines()[0].count("|") - 1
    for row in rows:
        assert row.model == "resnet18" and row.ratio == 0.5 and row.runs == 2
        assert row.eager_ms > 0 and row.dense_ms > 0 and row.pruned_ms > 0
        assert row.macs_reduction > 1
        assert row.params_pruned < row.params_dense
        assert row.latency_reduction == row.dense_ms / row.pruned_ms
        line = row.markdown()
        assert line.count("|") - 1 == columns
        assert re.match(r"\| resnet18 \| 0\.5 \| (1|8) \| (1|2) \| [\d.]+ \| [\d.]+ \| [\d.]+ \| "
                        r"[\d.]+x", line)
