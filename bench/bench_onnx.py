"""Latency of torch eager vs ONNX Runtime (graphopt's ONNX back-end) on base zoo configs.

Usage: python bench/bench_onnx.py [--models resnet50 mobilenet_v2 bert] [--runs 30] [--threads 2]
Prints a markdown table: batch 1, median of --runs timed calls after --warmup untimed ones,
torch and ONNX Runtime both limited to --threads intra-op threads. The two are timed in
alternation (one torch call, one ONNX Runtime call, ...) so that load from other processes
on a shared machine falls on both alike. The model is traced at batch 2 (so the batch axis
stays dynamic, as a deployed model's would) and run at batch 1.
"""

from __future__ import annotations

import argparse
import time
from typing import Callable

import torch
from torch.utils import _pytree as pytree

import graphopt
from graphopt import models_zoo, timing
from graphopt.backends import onnx as gonnx


def interleaved_medians(fns: list[Callable[[], object]], runs: int, warmup: int) -> list[float]:
    """Median milliseconds per function, timing them in alternation (graphopt.timing's timer)."""
    return [seconds * 1e3 for seconds in timing.interleaved_medians(fns, runs, warmup)]


def first_tensor(out) -> torch.Tensor:
    return next(t for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor))


def bench(name: str, size: str, runs: int, warmup: int, threads: int, opset: int) -> str:
    model, example = models_zoo.get(name, size, batch_size=2)
    graph = graphopt.trace(model, example, dynamic=models_zoo.spec(name).dynamic_axes)
    inputs = tuple(x[:1] for x in example)
    start = time.perf_counter()
    run = gonnx.compile(graph, threads=threads, opset=opset)
    compile_s = time.perf_counter() - start
    with torch.inference_mode():
        want = first_tensor(model(*inputs))
        eager, ort_ms = interleaved_medians([lambda: model(*inputs), lambda: run(*inputs)], runs, warmup)
    diff = (first_tensor(run(*inputs)) - want).abs().max().item()
    shape = "x".join(str(d) for d in inputs[0].shape)
    return (f"| {name} | {size} | {shape} | {eager:.1f} | {ort_ms:.1f} | {eager / ort_ms:.2f}x | "
            f"{compile_s:.1f} s | {diff:.1e} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet50", "mobilenet_v2", "bert"])
    parser.add_argument("--size", default="base")
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--opset", type=int, default=gonnx.DEFAULT_OPSET)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, onnxruntime {__import__('onnxruntime').__version__}, {args.threads} threads, "
          f"batch 1, median of {args.runs} runs after {args.warmup} warm-up, opset {args.opset}")
    print()
    print("| model | size | input | torch eager (ms) | ONNX Runtime (ms) | speed-up | export + session "
          "| max abs diff |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.models:
        print(bench(name, args.size, args.runs, args.warmup, args.threads, args.opset), flush=True)


if __name__ == "__main__":
    main()
