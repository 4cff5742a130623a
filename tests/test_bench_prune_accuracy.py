"""bench/bench_prune_accuracy.py, reduced: real digits (scikit-learn, the dev extra), real training and pruning."""

from __future__ import annotations

import copy
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_prune_accuracy.py"
MAGNITUDE, RECONSTRUCTED = "magnitude (l2)", "magnitude (l2) + reconstruction"


def _load_bench():
    spec = importlib.util.spec_from_file_location("bench_prune_accuracy", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield _load_bench()
    finally:
        torch.set_num_threads(threads)
        sys.modules.pop("bench_prune_accuracy", None)


def test_pruned_to_half_the_macs_reconstruction_beats_magnitude(bench):
    result = bench.run(seed=0, epochs=4, finetune_epochs=1, methods=[MAGNITUDE, RECONSTRUCTED])

    assert result.dense_acc > 90.0
    rows = {row.method: row for row in result.rows}
    assert set(rows) == {MAGNITUDE, RECONSTRUCTED}
    for row in rows.values():
        assert row.target == "macs 50%"  # the PruneReport says which budget chose the ratio
        assert row.macs_after <= 0.5 * row.macs_before  # ... and it was met
        assert row.params_after < row.params_before
        assert 0.0 < row.ratio < 1.0
    magnitude, reconstructed = rows[MAGNITUDE], rows[RECONSTRUCTED]
    assert "8 refitted" in reconstructed.reconstruction and not magnitude.reconstruction
    # Without fine-tuning, magnitude pruning at half the MACs is near chance on this model (about 10%);
    # least-squares reconstruction on 512 training images keeps it near the dense accuracy.
    assert reconstructed.acc_pruned >= magnitude.acc_pruned + 30.0
    assert reconstructed.acc_pruned >= result.dense_acc - 5.0
    # One epoch of fine-tuning the pruned torch module recovers much of the magnitude-pruned model.
    assert magnitude.acc_finetuned >= magnitude.acc_pruned + 30.0


def test_batchnorm_control_computes_what_the_pruned_model_computes(bench):
    data = bench.load_digits(seed=0)
    torch.manual_seed(0)
    model = bench.train(bench.DigitsResNet(), data, epochs=2, lr=3e-3, seed=0)
    pruned = bench.prune(copy.deepcopy(model), data, MAGNITUDE, target_macs=0.5, calibration=256)

    control = bench.masked_with_batchnorm(model, pruned, data).eval()
    x = data.x_test[:64]
    with torch.no_grad():
        torch.testing.assert_close(control(x), pruned(x), atol=1e-4, rtol=1e-4)
        assert not torch.allclose(model(x), pruned(x), atol=1e-2)  # channels really went
