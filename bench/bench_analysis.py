"""Time the channel-group analysis on large graphs (models built on the meta device: no weights).

Usage: python bench/bench_analysis.py
Prints markdown rows: model, IR nodes, channel positions, groups (prunable), analysis seconds
(median of 3 runs), and for the Llama-style decoder at 4096 hidden, 8/16/32/64 layers, to show
that the time grows linearly with the graph.
"""

from __future__ import annotations

import statistics
import time

import torch

import graphopt
from graphopt import models_zoo
from graphopt.analysis import channel_groups
from graphopt.models_zoo.llama import LlamaConfig, LlamaForCausalLM


def timed_analysis(graph) -> tuple[float, list]:
    times, groups = [], []
    for _ in range(3):
        start = time.perf_counter()
        groups = channel_groups(graph)
        times.append(time.perf_counter() - start)
    return statistics.median(times), groups


def row(label: str, graph) -> None:
    seconds, groups = timed_analysis(graph)
    atoms = sum(s.size for g in groups for s in g.spaces)
    prunable = sum(g.prunable for g in groups)
    print(f"| {label} | {len(graph.nodes)} | {atoms:,} | {len(groups)} ({prunable}) | {seconds:.2f} s |", flush=True)


def main() -> None:
    print("| model | IR nodes | channel positions | groups (prunable) | analysis time |")
    print("|---|---|---|---|---|")
    for name in ("resnet50", "vit", "bert"):
        model, inputs = models_zoo.get(name, "base", device="meta")
        row(f"{name} base", graphopt.trace(model, inputs, dynamic=models_zoo.spec(name).dynamic_axes))
    for layers in (8, 16, 32, 64):
        with torch.device("meta"):
            model = LlamaForCausalLM(LlamaConfig(num_hidden_layers=layers)).eval()
        ids = torch.zeros(2, 128, dtype=torch.long, device="meta")
        graph = graphopt.trace(model, (ids,), dynamic=models_zoo.spec("llama").dynamic_axes)
        row(f"llama 4096 hidden, {layers} layers", graph)


if __name__ == "__main__":
    main()
