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


def test_outlier_rows_compare_int8_dynamic_smoothing_and_ort_on_a_char_llama(bench):
    """The outliers part on a tiny setting: a few training steps on a slice of the repository's README."""
    Text = bench._text_bench().Text
    chars = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")[:12_000]
    vocab = ["<unk>", *sorted(set(chars))]
    ids = torch.tensor([vocab.index(c) for c in chars])
    seqs = ids[:(len(ids) - 1) // 33 * 33 + 1].unfold(0, 33, 32)
    text = Text(seqs[:-40, :-1], seqs[:-40, 1:], seqs[-40:, :-1], seqs[-40:, 1:], vocab, "README slice")
    outliers, rows, seconds = bench.outlier_rows(text, steps=30, batch=8, calibration=64, alphas=(0.5,),
                                                 layers=2)
    assert seconds > 0
    assert {r[0] for r in outliers} >= {"lm_head", "model.layers.0.self_attn.q_proj/k_proj/v_proj",
                                        "model.layers.0.mlp.gate_proj/up_proj", "model.layers.1.mlp.down_proj"}
    assert len(outliers) == 2 * 4 + 1, "per layer: q/k/v, o, gate/up, down; and the head"
    assert all(top >= median > 0 and ratio >= 1.0 for _, top, median, _, ratio in outliers)
    assert [r[4] for r in outliers] == sorted((r[4] for r in outliers), reverse=True)
    by_label = {r[0]: r for r in rows}
    assert list(by_label) == ["fp32", "graphopt int8-dynamic", "graphopt int8-dynamic + smooth 0.5",
                              "ORT quantize_dynamic (defaults)", "ORT quant_pre_process + quantize_dynamic (defaults)"]
    fp32 = by_label["fp32"]
    assert fp32[3] == pytest.approx(1.0) and fp32[4] == 100.0
    for label, acc, loss, cos, agree, note in rows:
        assert 0.0 <= acc <= 100.0 and 0.0 < loss < 10.0 and 50.0 <= agree <= 100.0, label
        assert cos > 0.99 and abs(acc - fp32[1]) < 5.0, label
    assert "15 linears int8" in by_label["graphopt int8-dynamic"][5]
    assert "7 inputs smoothed" in by_label["graphopt int8-dynamic + smooth 0.5"][5]
    assert "15 MatMulInteger" in by_label["ORT quant_pre_process + quantize_dynamic (defaults)"][5]
