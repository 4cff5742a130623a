"""Weight prepacking on or off: best latency of a model's heaviest TVM tasks after the same random search.

Usage:
    python bench/bench_tvm_prepack.py --model resnet18 --trials 48 --tasks 3
    python bench/bench_tvm_prepack.py --model bert --seq 128 --trials 48 --tasks 3

Each variant tunes the `--tasks` heaviest tasks (by FLOPs x calls) from an empty database with
`--trials` random candidates (MetaSchedule's ReplayTrace, seed 0), so the two columns differ only
in whether the weights are layout-free (compile(prepack=True)).
"""

from __future__ import annotations

import argparse
import tempfile
import time

import graphopt
import graphopt.passes.canonicalize  # noqa: F401 - registers the pipeline's passes
from graphopt import models_zoo
from graphopt.backends import tvm as gtvm
from graphopt.backends.tvm import tuning
from graphopt.backends.tvm.build import fuse, prepare
from graphopt.backends.tvm.lowering import static_bind, to_relax
from graphopt.passmanager import PassManager


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--size", default="base")
    parser.add_argument("--seq", type=int, default=128, help="sequence length for models with a seq axis")
    parser.add_argument("--trials", type=int, default=48)
    parser.add_argument("--tasks", type=int, default=3)
    args = parser.parse_args()

    from tvm.s_tir import meta_schedule as ms

    model, inputs = models_zoo.get(args.model, args.size)
    graph = graphopt.trace(model, inputs, dynamic=models_zoo.spec(args.model).dynamic_axes)
    graph, _ = PassManager.parse("canonicalize").run(graph)
    bind = {name: (args.seq if name == "seq" else 1) for name in graph.symbols()}
    target = gtvm.detect_target()
    lowered = to_relax(graph, static_bind(graph, bind, None))
    print(f"| {args.model} task | GFLOP x calls | no prepack ms | prepack ms |\n|---|---|---|---|")
    results = {}
    for prepack in (False, True):
        mod = fuse(prepare(lowered.mod), target, prepack=prepack)
        database = tuning.TuningDatabase(target, tempfile.mkdtemp(prefix="graphopt-prepack-"))
        tasks = sorted(tuning.extract_tasks(mod, target, database), key=lambda t: -t.cost)[:args.tasks]
        started = time.monotonic()
        for task in tasks:
            tuning.tune([task], database, tuning.Budget(trials=args.trials), min_share=0.0, seed=0,
                        strategy=ms.search_strategy.ReplayTrace(), progress=False)
        results[prepack] = (tasks, time.monotonic() - started)
    for plain, packed in zip(results[False][0], results[True][0]):
        print(f"| {plain.name} | {plain.flops / 1e9:.3f} x {plain.weight} | {plain.best_seconds * 1e3:.3f} | "
              f"{packed.best_seconds * 1e3:.3f} |")
    print(f"\ntuning time: {results[False][1]:.0f} s without, {results[True][1]:.0f} s with prepacking")


if __name__ == "__main__":
    main()
