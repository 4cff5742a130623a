"""bench/bench_sweep.py: families are classified, configs stay small, one model runs isolated, and the
document it writes has a row per model and a summary that counts them."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_sweep.py"


def _load_bench():
    if "bench_sweep" not in sys.modules:
        spec = importlib.util.spec_from_file_location("bench_sweep", BENCH)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
        spec.loader.exec_module(module)
    return sys.modules["bench_sweep"]


def test_families_are_classified_with_reasons():
    bench = _load_bench()
    found = {f.name: f for f in bench.families()}
    assert found["bert"].modality == "text" and found["gpt2"].modality == "text"
    assert found["vit"].modality == "vision" and found["swin"].modality == "vision"
    assert found["hubert"].modality == "" and "input_values" in found["hubert"].skip  # audio
    assert found["clip"].modality == "" and "multimodal" in found["clip"].skip
    assert all(f.skip.startswith("skip") for f in found.values() if not f.modality)


def test_small_config_keeps_an_override_over_its_alias():
    """Swin maps num_attention_heads onto num_heads: the generic 4 must not replace the per-stage list."""
    bench = _load_bench()
    config = bench.small_config("swin", "vision")
    assert list(config.num_heads) == [2, 4] and list(config.depths) == [1, 1]
    assert bench.small_config("bert", "text").hidden_size == 32


def test_one_model_runs_isolated_and_is_tabled():
    bench = _load_bench()
    fam = bench.Family("bert", "text")
    records, not_run = bench.sweep([fam], timeout_s=240, tp_seconds=30, budget_s=600)
    assert not_run == [] and len(records) == 1
    record = records[0]
    assert record.model == "bert" and 0 < record.params < bench.MAX_PARAMS
    assert set(record.cells) == set(bench.STAGES)
    assert record.cells["trace"].startswith("ok") and record.cells["round_trip"] == "ok", record.reasons
    assert record.cells["tp_prune"] != "—" and record.tp_s > 0  # Torch-Pruning was run
    for stage, cell in record.cells.items():  # a failure always says why
        assert not cell.startswith(("FAIL", "timeout")) or stage in record.reasons, (stage, record.reasons)

    text = bench.document(records, [bench.Family("hubert", "", "skip: audio")], ["vit"], "python bench/bench_sweep.py")
    rows = [line for line in text.splitlines() if line.startswith("| bert |")]
    assert len(rows) == 1 and rows[0].count("|") == bench.table([]).splitlines()[0].count("|")
    assert "| trace | 1 | 1 | 100 % |" in text
    assert "- skip: audio: hubert" in text and ": vit." in text


def test_a_model_past_its_timeout_is_recorded_not_fatal():
    bench = _load_bench()
    record = bench.run_isolated(bench.Family("bert", "text"), timeout_s=0.5, tp_seconds=None)
    assert record.model == "bert"
    assert "timeout after 0.5 s" in record.reason()
    assert any(cell in ("timeout", "FAIL") for cell in record.cells.values())
