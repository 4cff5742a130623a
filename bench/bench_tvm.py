"""Latency of a zoo model under torch eager, ONNX Runtime and TVM (untuned, then tuned with a stated budget).

Usage:
    python bench/bench_tvm.py --model resnet18 --size base --batch 1 --tune 10min
    python bench/bench_tvm.py --model bert --size base --batch 1 --seq 128 --tune 8min --layout NHWC
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
    parser.add_argument("--layout", default=None, choices=[None, "NCHW", "NHWC"])
    parser.add_argument("--work-dir", default=None, help="tuning database root (default: a fresh temp dir)")
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-untuned", action="store_true", help="do not time the untuned build (slow)")
    parser.add_argument("--rpc-tracker", default=None, help="HOST:PORT of a TVM RPC tracker")
    parser.add_argument("--rpc-key", default=None)
    args = parser.parse_args()

    from graphopt.backends import onnx as gonnx
    from graphopt.backends import tvm as gtvm

    torch.set_num_threads(args.threads)
    model, inputs = models_zoo.get(args.model, args.size)
    axes = models_zoo.spec(args.model).dynamic_axes
    graph = graphopt.trace(model, inputs, dynamic=axes)
    sizes = {"batch": args.batch}
    if args.seq is not None:
        sizes["seq"] = args.seq
    inputs = _resize(inputs, axes, sizes)
    bind = {k: v for k, v in sizes.items() if k in graph.symbols()}

    with torch.no_grad():
        eager = median_ms(model, inputs, args.repeat)
        reference = model(*inputs)
    ort = gonnx.compile(graph, threads=args.threads)
    ort_ms = median_ms(ort, inputs, args.repeat)

    untuned_ms = float("nan")
    if not args.skip_untuned:
        with tempfile.TemporaryDirectory() as empty, warnings.catch_warnings():
            warnings.simplefilter("ignore", gtvm.UntunedWarning)
            untuned = gtvm.compile(graph, bind=bind, work_dir=empty, layout=args.layout, progress=False)
            _check(untuned(*inputs), reference)
            untuned_ms = untuned.benchmark(*inputs, repeat=3)

    runner = gtvm.rpc_runner(args.rpc_tracker, args.rpc_key) if args.rpc_tracker else None
    work_dir = args.work_dir or tempfile.mkdtemp(prefix="graphopt-tvm-bench-")
    tune = int(args.tune) if args.tune.isdigit() else args.tune
    curve: list[tuple[float, float]] = []
    started = time.monotonic()

    def progress(line: str) -> None:
        print(line, file=sys.stderr, flush=True)
        if "est. " in line:
            curve.append((time.monotonic() - started, float(line.split("est. ")[1].split(" ms")[0])))

    tuned = gtvm.compile(graph, bind=bind, work_dir=work_dir, tune=tune, layout=args.layout, runner=runner,
                         progress=progress)
    tune_min = (time.monotonic() - started) / 60
    _check(tuned(*inputs), reference)
    tuned_ms = tuned.benchmark(*inputs, repeat=args.repeat)
    report = tuned.report

    print("\n# tuning curve (elapsed s, estimated ms over the tuned tasks)")
    for seconds, est in curve[:: max(1, len(curve) // 15)]:
        print(f"{seconds:7.0f} s  {est:9.2f} ms")
    print("\n# tasks\n" + report.summary())
    tuned_tasks = sum(1 for t in report.tasks if t.best_seconds is not None)
    print("\n| model | size | batch | torch eager | ORT | TVM untuned | TVM tuned | budget | tuning min | "
          "tasks tuned | trials | layout |")
    print(f"| {args.model} | {args.size} | {args.batch} | {eager:.1f} ms | {ort_ms:.1f} ms | {untuned_ms:.0f} ms | "
          f"{tuned_ms:.1f} ms | {args.tune} | {tune_min:.1f} | {tuned_tasks}/{len(report.tasks)} | {report.measured} | "
          f"{args.layout or 'NCHW'} |")


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
