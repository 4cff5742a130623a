"""Budget sweep: target_macs / target_params in {0.1, 0.25, 0.5, 0.75} on every zoo model (tiny) and a
48-channel residual CNN; prints achieved / target per model and the worst |achieved/target - 1| per target.

    python bench/bench_prune_budgets.py [model ...]

A budget either lands within 5 % of its target or fails with a GraphoptError saying why (printed as
"error: ..."). Results: docs/benchmarks.md ("Pruning budgets").
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import graphopt  # noqa: E402
from graphopt import GraphoptError, models_zoo  # noqa: E402
from graphopt.passmanager import PassManager  # noqa: E402

TARGETS = (0.1, 0.25, 0.5, 0.75)
METRICS = ("macs", "params")


@dataclass
class Row:
    model: str
    metric: str
    target: float
    achieved: float | None  # None: the pass raised (error says why)
    seconds: float
    error: str = ""

    @property
    def miss(self) -> float:
        return abs(self.achieved / self.target - 1) if self.achieved is not None else float("nan")


def narrow_cnn():
    """The 48-channel residual CNN for 8x8 digits (six identity blocks), random weights: budgets need no training."""
    from bench_drop_layers import DigitsCNN

    torch.manual_seed(0)
    return DigitsCNN(width=48).eval(), (torch.randn(4, 1, 8, 8),)


def traced(name: str):
    if name == "cnn48":
        model, inputs = narrow_cnn()
        return graphopt.trace(model, inputs), inputs
    model, inputs = models_zoo.get(name, "tiny")
    return graphopt.trace(model, inputs, dynamic=models_zoo.spec(name).dynamic_axes), inputs


def sweep(name: str, graph=None, inputs=None, targets=TARGETS, metrics=METRICS) -> list[Row]:
    if graph is None:
        graph, inputs = traced(name)
    rows = []
    for metric in metrics:
        for target in targets:
            start = time.perf_counter()
            try:
                _, runs = PassManager.parse(f"prune{{target_{metric}={target}}}").run(graph.clone(), inputs)
                report = runs.stats("prune")[-1]
                rows.append(Row(name, metric, target, report.achieved_fraction, time.perf_counter() - start))
            except GraphoptError as exc:
                rows.append(Row(name, metric, target, None, time.perf_counter() - start, str(exc)))
    return rows


def main(names: list[str]) -> None:
    torch.set_num_threads(1)
    rows = []
    for name in names or ["cnn48", *models_zoo.list_models()]:
        start = time.perf_counter()
        got = sweep(name)
        rows += got
        cells = "  ".join(f"{r.metric[0]}{r.target:g}:" + (f"{r.achieved:.3f}" if r.achieved is not None else "ERR")
                          for r in got)
        print(f"{name:<14} {time.perf_counter() - start:6.1f} s  {cells}", flush=True)
        for r in got:
            if r.error:
                print(f"    {r.metric} {r.target}: error: {r.error}")
    for metric in METRICS:
        for target in TARGETS:
            hit = [r for r in rows if r.metric == metric and r.target == target and r.achieved is not None]
            worst = max(hit, key=lambda r: r.miss, default=None)
            errors = sum(1 for r in rows if r.metric == metric and r.target == target and r.achieved is None)
            print(f"target_{metric}={target}: worst |achieved/target - 1| = "
                  + (f"{worst.miss:.3f} ({worst.model})" if worst else "-") + f", errors {errors}")


if __name__ == "__main__":
    main(sys.argv[1:])
