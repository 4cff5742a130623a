"""Latency of a zoo model under torch eager, ONNX Runtime and TVM (untuned, then tuned with a stated budget).

Usage:
    python bench/bench_tvm.py --model resnet18 --size base --batch 1 --tune 10min
    python bench/bench_tvm.py --model bert --size base --batch 1 --seq 128 --tune 8min --layout NHWC
    python bench/bench_tvm.py --model mobilenet_v2 --tune 5min --prune 0 0.5   # dense and 50%-pruned, one run
    python bench/bench_tvm.py ... --rpc-tracker HOST:9190 --rpc-key KEY   # measure candidates over RPC

Prints the tuning curve (elapsed seconds, estimated latency of the tuned tasks), the tasks by
share of FLOPs, and one markdown row for docs/benchmarks.md. The tuning database is --work-dir
(default: a fresh temporary directory, so the budget stated is all the tuning the number had).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings

import torch

import graphopt
from graphopt import models_zoo
from graphopt.timing import median_seconds


def median_ms(fn, args, repeat: int, warmup: int = 2) -> float:
    return 1e3 * median_seconds(fn, *args, repeat=repeat, warmup=warmup)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--size", default="base")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seq", type=int, default=None, help="sequence length for models with a seq axis")
    parser.add_argument("--tune", default="10min", help="trials (int) or time ('10min'); 0 skips tuning")
    parser.add_argument("--prune", type=float, nargs="+", default=[0.0],
                        help="prune ratios to measure in this run (0 = dense), e.g. --prune 0 0.5")
    parser.add_argument("--round-to", type=int, default=8, help="round_to for the pruned variants")
    parser.add_argument("--layout", default=None, choices=[None, "NCHW", "NHWC"])
    parser.add_argument("--no-prepack", dest="prepack", action="store_false",
                        help="keep the traced weight layouts (compile(prepack=False))")
    parser.add_argument("--warm-cache", action="store_true",
                        help="time candidates back to back with warm caches (default: caches flushed)")
    parser.add_argument("--work-dir", default=None, help="tuning database root (default: a fresh temp dir per variant)")
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-untuned", action="store_true", help="do not time the untuned build (slow)")
    parser.add_argument("--rpc-tracker", default=None, help="HOST:PORT of a TVM RPC tracker")
    parser.add_argument("--rpc-key", default=None)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    model, inputs = models_zoo.get(args.model, args.size)
    axes = models_zoo.spec(args.model).dynamic_axes
    graph = graphopt.trace(model, inputs, dynamic=axes)
    sizes = {"batch": args.batch}
    if args.seq is not None:
        sizes["seq"] = args.seq
    trace_inputs, inputs = inputs, _resize(inputs, axes, sizes)

    rows = []
    for ratio in args.prune:
        if ratio > 0:
            from graphopt.backends.torch import to_module
            from graphopt.passmanager import PassManager

            pipeline = f"canonicalize,prune{{ratio={ratio},round_to={args.round_to}}}"
            variant, _ = PassManager.parse(pipeline).run(graph, trace_inputs)
            eager_model = to_module(variant)
        else:
            variant, eager_model = graph, model
        rows.append(measure(args, f"{args.model}" + (f" pruned {ratio:.0%}" if ratio else ""), variant,
                            eager_model, inputs, sizes))
    print("\n| model | size | batch | torch eager | ORT | TVM untuned | TVM tuned | budget | tuning min | "
          "tasks tuned | trials | layout |\n|---|---|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))


def measure(args, label: str, graph, eager_model, inputs, sizes) -> str:
    """One row: torch eager, ONNX Runtime, TVM untuned and tuned, on `graph` at `inputs`."""
    from graphopt.backends import onnx as gonnx
    from graphopt.backends import tvm as gtvm

    bind = {k: v for k, v in sizes.items() if k in graph.symbols()}
    with torch.no_grad():
        eager = median_ms(eager_model, inputs, args.repeat)
        reference = eager_model(*inputs)
    ort = gonnx.compile(graph, threads=args.threads)
    ort_ms = median_ms(ort, inputs, args.repeat)

    untuned_ms = float("nan")
    if not args.skip_untuned:
        with tempfile.TemporaryDirectory() as empty, warnings.catch_warnings():
            warnings.simplefilter("ignore", gtvm.UntunedWarning)
            untuned = gtvm.compile(graph, bind=bind, work_dir=empty, layout=args.layout, progress=False,
                                   prepack=args.prepack)
            _check(untuned(*inputs), reference)
            untuned_ms = untuned.benchmark(*inputs, repeat=3)

    runner = gtvm.rpc_runner(args.rpc_tracker, args.rpc_key) if args.rpc_tracker else None
    if args.warm_cache:  # MetaSchedule's usual timing: back-to-back runs, weights left in cache
        from graphopt.backends.tvm.tuning import make_evaluator, make_local_runner

        runner = make_local_runner(make_evaluator(number=3, repeat=1, min_repeat_ms=50, cache_flush=False))
    work_dir = args.work_dir or tempfile.mkdtemp(prefix="graphopt-tvm-bench-")
    tune = int(args.tune) if args.tune.isdigit() else args.tune
    curve: list[tuple[float, float]] = []
    started = time.monotonic()

    def progress(line: str) -> None:
        print(line, file=sys.stderr, flush=True)
        if "est. " in line:
            curve.append((time.monotonic() - started, float(line.split("est. ")[1].split(" ms")[0])))

    tuned = gtvm.compile(graph, bind=bind, work_dir=work_dir, tune=tune, layout=args.layout, runner=runner,
                         progress=progress, prepack=args.prepack)
    tune_min = (time.monotonic() - started) / 60
    _check(tuned(*inputs), reference)
    tuned_ms = tuned.benchmark(*inputs, repeat=args.repeat)
    report = tuned.report

    print(f"\n# {label}: tuning curve (elapsed s, estimated ms over the tuned tasks)")
    for seconds, est in curve[:: max(1, len(curve) // 15)]:
        print(f"{seconds:7.0f} s  {est:9.2f} ms")
    print(f"\n# {label}: tasks\n" + report.summary(), flush=True)
    print(f"\n# {label}: the ten slowest calls in the model (ms per run; est. = calls x tuned latency)")
    for row in tuned.profile(*inputs, repeat=5)[:10]:
        est = f"{row.estimated_ms:8.3f}" if row.estimated_ms is not None else "       -"
        print(f"{row.name[:56]:56} {row.calls:5d} {row.ms:8.3f}  est. {est}", flush=True)
    tuned_tasks = sum(1 for t in report.tasks if t.best_seconds is not None)
    return (f"| {label} | {args.size} | {args.batch} | {eager:.2f} ms | {ort_ms:.2f} ms | {untuned_ms:.0f} ms | "
            f"{tuned_ms:.2f} ms | {args.tune} | {tune_min:.1f} | {tuned_tasks}/{len(report.tasks)} | "
            f"{report.measured} | {args.layout or 'NCHW'} |")


def _resize(inputs, axes, sizes):
    out = []
    for i, x in enumerate(inputs):
        for axis, name in axes.get(i, {}).items():
            if name in sizes:
                x = x.index_select(axis, torch.arange(sizes[name]) % x.shape[axis])
        out.append(x)
    return tuple(out)


def _check(got, expected) -> None:
    torch.testing.assert_close(got, expected, atol=1e-3, rtol=1e-3)


if __name__ == "__main__":
    main()
