"""Graph build time, side by side in one process: graphopt's trace + channel groups vs Torch-Pruning's.

graphopt: `graphopt.trace(model, inputs)` (torch.export + import) + `channel_groups(graph)`.
Torch-Pruning: `DependencyGraph().build_dependency(model, example_inputs)` + `get_all_groups()`.
Each is run `--repeat` times, alternating, after one warm-up of each; the table gives medians and
graphopt / Torch-Pruning. Torch-Pruning is the `bench` extra (`pip install torch-pruning`). A
Torch-Pruning build that runs past `--tp-timeout-s` is stopped (SIGALRM) and not repeated; its cell
then reads "> T s (stopped)" and the ratio is an upper bound.

Usage: python bench/bench_trace_vs_torch_pruning.py [--models resnet50 densenet201 ...] [--repeat 3]
           [--tp-timeout-s 600]
"""

from __future__ import annotations

import argparse
import signal
import statistics
import time
from typing import Any, Callable

import torch

import graphopt
from graphopt import models_zoo
from graphopt.analysis import channel_groups



def _densenet201() -> tuple[torch.nn.Module, tuple]:
    from graphopt.models_zoo.densenet import DenseNet

    return DenseNet(block_config=(6, 12, 48, 32)), (torch.randn(2, 3, 224, 224),)


def _llama_32_layers() -> tuple[torch.nn.Module, tuple]:
    """The zoo's Llama at 32 layers, narrow so that Torch-Pruning's real forward stays small."""
    from graphopt.models_zoo.llama import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=32000, hidden_size=256, intermediate_size=688, num_hidden_layers=32,
                         num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=2048)
    return LlamaForCausalLM(config), (torch.randint(0, 32000, (2, 128)),)


# name -> how to build it: zoo models at their base size, and DenseNet-201 / a 32-layer Llama, which
# are zoo architectures at other depths
MODELS: dict[str, Callable[[], tuple[torch.nn.Module, tuple]]] = {
    "resnet50": lambda: models_zoo.get("resnet50", "base"),
    "densenet201": _densenet201,
    "mobilenet_v2": lambda: models_zoo.get("mobilenet_v2", "base"),
    "vit_b16": lambda: models_zoo.get("vit", "base"),
    "llama_32_layers": _llama_32_layers,
}


def build(name: str) -> tuple[torch.nn.Module, tuple]:
    model, inputs = MODELS[name]()
    return model.eval(), tuple(inputs)


def graphopt_build(model: torch.nn.Module, inputs: tuple) -> int:
    graph = graphopt.trace(model, inputs)
    return len(channel_groups(graph))


def torch_pruning_build(model: torch.nn.Module, inputs: tuple) -> int:
    import torch_pruning as tp

    graph = tp.DependencyGraph().build_dependency(model, example_inputs=inputs[0] if len(inputs) == 1 else inputs)
    return len(list(graph.get_all_groups()))


def timed(fn: Callable[..., int], *args: Any) -> tuple[float, int]:
    start = time.perf_counter()
    groups = fn(*args)
    return time.perf_counter() - start, groups


class Stopped(Exception):
    """A build stopped at its time limit."""


def timed_with_limit(seconds: int, fn: Callable[..., int], *args: Any) -> tuple[float, int | None]:
    """`timed`, stopped after `seconds` (then (seconds, None)); Torch-Pruning's build is pure Python, so it stops."""
    def stop(*_: Any) -> None:
        raise Stopped

    previous = signal.signal(signal.SIGALRM, stop)
    signal.alarm(seconds)
    try:
        return timed(fn, *args)
    except Stopped:
        return float(seconds), None
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--tp-timeout-s", type=int, default=600, help="stop one Torch-Pruning build after this")
    args = parser.parse_args()
    print(f"torch threads: {torch.get_num_threads()}, repeats: {args.repeat} (median after one warm-up), "
          f"Torch-Pruning stopped after {args.tp_timeout_s} s\n")
    print("| model | graphopt trace + groups | Torch-Pruning build + groups | graphopt / TP | groups (graphopt, TP) |")
    print("|---|---|---|---|---|")
    for name in args.models:
        model, inputs = build(name)
        ours, theirs = [], []  # Torch-Pruning traces through autograd, so no torch.no_grad() here
        groups_theirs: int | None = 0
        for round_ in range(args.repeat + 1):
            seconds_ours, groups_ours = timed(graphopt_build, model, inputs)
            if groups_theirs is not None:
                seconds_theirs, groups_theirs = timed_with_limit(args.tp_timeout_s, torch_pruning_build, model, inputs)
                if groups_theirs is None or round_:  # the first round warms caches and imports
                    theirs.append(seconds_theirs)
            if round_:
                ours.append(seconds_ours)
        a, b = statistics.median(ours), statistics.median(theirs)
        if groups_theirs is None:
            print(f"| {name} | {a:.2f} s | > {b:.0f} s (stopped) | < {a / b:.3f}x | {groups_ours}, — |", flush=True)
        else:
            print(f"| {name} | {a:.2f} s | {b:.2f} s | {a / b:.2f}x | {groups_ours}, {groups_theirs} |", flush=True)


if __name__ == "__main__":
    main()
