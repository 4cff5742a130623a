"""bench/bench_tvm.py and bench/bench_tvm_prepack.py run end to end on a tiny zoo config.

A handful of trials each: these check that the benches run and print rows whose numbers
parse and make sense, not the numbers themselves (those are in docs/benchmarks.md).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("tvm")
pytest.importorskip("onnx")

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _run(script: str, *args: str) -> str:
    done = subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_bench_tvm_prints_a_row_per_variant(tmp_path):
    out = _run("bench_tvm.py", "--model", "resnet18", "--size", "tiny", "--tune", "2", "--prune", "0", "0.5",
               "--repeat", "3", "--skip-untuned", "--work-dir", str(tmp_path))
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in out.splitlines() if line.startswith("| resnet18")]
    assert [r[0] for r in rows] == ["resnet18", "resnet18 pruned 50%"]
    for cells in rows:
        eager, ort, untuned, tuned = (c.removesuffix(" ms") for c in cells[3:7])
        assert float(eager) > 0 and float(ort) > 0 and float(tuned) > 0
        assert untuned == "nan"  # --skip-untuned
    assert "GFLOP" in out  # the task table


def test_bench_tvm_prepack_compares_the_same_tasks():
    out = _run("bench_tvm_prepack.py", "--model", "resnet18", "--size", "tiny", "--trials", "4", "--tasks", "2")
    rows = [line for line in out.splitlines() if line.startswith("| fused_")]
    assert len(rows) == 2
    for row in rows:
        cells = [c.strip() for c in row.split("|")[1:-1]]
        assert float(cells[2]) > 0 and float(cells[3]) > 0
    assert "tuning time" in out
