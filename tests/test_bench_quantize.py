"""bench/bench_quantize.py, reduced: real digits training and quantization, and the speed table on a tiny model."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_quantize.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_quantize", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        torch.set_num_threads(threads)


def test_accuracy_rows_quantize_a_trained_cnn_within_a_point(bench):
    pytest.importorskip("sklearn")
    rows = dict(bench.accuracy_rows(epochs=3, calibration=256))
    assert rows["fp32"] > 80.0, "three epochs train the digits CNN"
    assert abs(rows["int8 static (ONNX Runtime)"] - rows["fp32"]) <= 1.0
    assert abs(rows["pruned 50 % MACs + int8 (ONNX Runtime)"] - rows["pruned 50 % MACs, fp32"]) <= 1.5


def test_speed_rows_time_fp32_against_quantized(bench):
    rows = bench.speed_rows("mobilenet_v2", [1], runs=1, warmup=0, threads=1, size="tiny")
    assert rows[0].startswith("| mobilenet_v2 | int8 | 1 |") and rows[0].endswith("x |")
    assert "fp32" in rows[-1] and "int8" in rows[-1]


def test_against_ort_quantizer_times_three_models(bench):
    rows = bench.against_ort_quantizer("mobilenet_v2", [1], runs=1, warmup=0, threads=1, size="tiny")
    cells = rows[0].strip("|").split("|")
    assert cells[0].strip() == "mobilenet_v2" and all(float(c) > 0 for c in cells[2:])
