"""bench/bench_sweep.py: families are classified, configs stay small, one model runs isolated, and the
document it writes has a row per model and a summary that counts them."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path

import pytest

pytest.importorskip("transformers")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import bench_sweep  # noqa: E402 - after the skip


def test_families_are_classified_with_reasons():
    found = {f.name: f for f in bench_sweep.families()}
    assert found["bert"].modality == "text" and found["gpt2"].modality == "text"
    assert found["vit"].modality == "vision" and found["swin"].modality == "vision"
    assert found["hubert"].modality == "" and "input_values" in found["hubert"].skip  # audio
    assert found["clip"].modality == "" and "multimodal" in found["clip"].skip
    assert all(f.skip.startswith("skip") for f in found.values() if not f.modality)
    # A sub-config that is not a second tower (MPT's attention config, DBRX's experts) is one modality.
    assert found["mpt"].modality == "text" and found["dbrx"].modality == "text"
    assert found["llava"].modality == "" and "multimodal" in found["llava"].skip


def test_small_config_keeps_an_override_over_its_alias():
    """Swin maps num_attention_heads onto num_heads: the generic 4 must not replace the per-stage list."""
    config = bench_sweep.small_config("swin", "vision")
    assert list(config.num_heads) == [2, 4] and list(config.depths) == [1, 1]
    assert bench_sweep.small_config("bert", "text").hidden_size == 32


def test_one_model_runs_isolated_and_is_tabled():
    fam = bench_sweep.Family("bert", "text")
    records, not_run = bench_sweep.sweep([fam], timeout_s=240, tp_seconds=30, budget_s=600)
    assert not_run == [] and len(records) == 1
    record = records[0]
    assert record.model == "bert" and 0 < record.params < bench_sweep.MAX_PARAMS
    assert set(record.cells) == set(bench_sweep.STAGES)
    assert record.cells["trace"].startswith("ok") and record.cells["round_trip"] == "ok", record.reasons
    assert record.cells["tp_prune"] != "—" and record.tp_s > 0  # Torch-Pruning was run
    for stage, cell in record.cells.items():  # a failure always says why
        assert not cell.startswith(("FAIL", "timeout")) or stage in record.reasons, (stage, record.reasons)

    skipped = [bench_sweep.Family("hubert", "", "skip: audio")]
    text = bench_sweep.document(records, skipped, ["vit"], "python bench/bench_sweep.py")
    rows = [line for line in text.splitlines() if line.startswith("| bert |")]
    assert len(rows) == 1 and rows[0].count("|") == bench_sweep.table([]).splitlines()[0].count("|")
    assert "| trace | 1 | 1 | 100 % |" in text
    assert "- skip: audio: hubert" in text and ": vit." in text


def test_a_model_past_its_timeout_is_recorded_not_fatal():
    record = bench_sweep.run_isolated(bench_sweep.Family("bert", "text"), timeout_s=0.5, tp_seconds=None)
    assert record.model == "bert"
    assert "timeout after 0.5 s" in record.reason()
    assert any(cell in ("timeout", "FAIL") for cell in record.cells.values())


def test_records_accumulate_and_a_rerun_skips_what_is_measured(tmp_path):
    """--records: each measured model is appended; a second run measures only what is missing (or failed)."""
    path = tmp_path / "records.jsonl"
    first = bench_sweep.Record("bert", "text", 10, {s: "ok" for s in bench_sweep.STAGES}, commit="abc")
    broken = bench_sweep.Record("gpt2", "text", 10, {**{s: "ok" for s in bench_sweep.STAGES}, "round_trip": "FAIL"},
                                {"round_trip": "max abs diff 1"})
    only_tp = bench_sweep.Record("opt", "text", 10, {**{s: "ok" for s in bench_sweep.STAGES}, "tp_match": "FAIL"})
    path.write_text("\n".join(json.dumps(asdict(r)) for r in (first, broken, only_tp)) + "\n")
    again = bench_sweep.Record("bert", "text", 10, {s: "ok" for s in bench_sweep.STAGES}, commit="def")
    with open(path, "a") as out:
        out.write(json.dumps(asdict(again)) + "\n")
    known = bench_sweep.load_records(str(path))
    assert set(known) == {"bert", "gpt2", "opt"} and known["bert"].commit == "def"  # the last line wins
    assert [name for name, r in known.items() if bench_sweep.failed(r)] == ["gpt2"]  # TP's failures are not ours
    assert bench_sweep.load_records(str(tmp_path / "missing.jsonl")) == {}
