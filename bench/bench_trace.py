"""Time graphopt.trace on large zoo configs built on the meta device (no weights are allocated).

Usage: python bench/bench_trace.py [--model llama] [--size 7b]
Prints a markdown row: model, size, nodes, parameters, export+import seconds.
"""

from __future__ import annotations

import argparse
import time

import torch

import graphopt
from graphopt import models_zoo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="llama")
    parser.add_argument("--size", default="7b")
    args = parser.parse_args()
    model, inputs = models_zoo.get(args.model, args.size, device="meta")
    params = sum(p.numel() for p in model.parameters())
    start = time.perf_counter()
    graph = graphopt.trace(model, inputs, dynamic=models_zoo.spec(args.model).dynamic_axes)
    seconds = time.perf_counter() - start
    graph.verify()
    print(f"| {args.model} | {args.size} | {len(graph.nodes)} | {params / 1e9:.2f} B | {seconds:.1f} s | {torch.get_num_threads()} |")


if __name__ == "__main__":
    main()
