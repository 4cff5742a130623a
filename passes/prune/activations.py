"""Which layers read channels through a weight, and statistics of those channels on calibration data.

Activation criteria (FLAP's fluctuation, mean |activation|) and reconstruction
both look at a layer's input channels: the tensor a linear, conv or
weight-matmul reads, along the axis its weight contracts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from graphopt.ir.graph import Graph, Node, Value
from graphopt.ir.interpreter import GraphInterpreter


@dataclass(frozen=True)
class Reader:
    """A layer that contracts channels of `activation` (along `axis`) with its weight's axis `weight_axis`."""

    node: Node
    weight: Value
    weight_axis: int
    activation_index: int  # position of the activation among node.inputs
    axis: int  # channel axis of the activation (negative: from the end)

    @property
    def activation(self) -> Value:
        return self.node.inputs[self.activation_index]


def readers(graph: Graph) -> list[Reader]:
    """Every layer whose weight reads channels: linear, ungrouped conv, matmul by a weight."""
    found = []
    for node in graph.nodes:
        ins = node.inputs
        if node.op == "linear" and ins[1].is_weight:
            found.append(Reader(node, ins[1], 1, 0, -1))
        elif node.op == "conv" and node.attrs.get("groups", 1) == 1 and ins[1].is_weight:
            found.append(Reader(node, ins[1], 1, 0, 1 - ins[0].rank))
        elif node.op == "matmul" and ins[1].is_weight and not ins[0].is_weight and ins[1].rank == 2:
            found.append(Reader(node, ins[1], 0, 0, -1))
    return found


@dataclass
class ActivationStats:
    """Per input channel of one layer: mean |x| and variance of x over every sample and position."""

    mean_abs: np.ndarray
    variance: np.ndarray


class _Moments:
    def __init__(self) -> None:
        self.count = 0
        self.total = self.total_abs = self.total_sq = None

    def add(self, x: torch.Tensor, axis: int) -> None:
        x = x.detach().double().movedim(axis, -1)
        x = x.reshape(-1, x.shape[-1])
        sums = (x.sum(0), x.abs().sum(0), (x * x).sum(0))
        if self.total is None:
            self.total, self.total_abs, self.total_sq = sums
        else:
            self.total, self.total_abs, self.total_sq = (a + b for a, b in zip((self.total, self.total_abs, self.total_sq), sums))
        self.count += x.shape[0]

    def stats(self) -> ActivationStats:
        n = max(self.count, 1)
        mean = self.total / n
        variance = (self.total_sq / n - mean * mean).clamp_min(0.0)
        return ActivationStats((self.total_abs / n).numpy(), variance.numpy())


def activation_stats(graph: Graph, batches: Sequence[Sequence[torch.Tensor]]) -> dict[str, ActivationStats]:
    """Statistics of each reader's input channels, keyed by the reader's weight name.

    A weight read by several layers (tied weights) accumulates over all of them.
    """
    by_node: dict[int, list[Reader]] = {}
    for r in readers(graph):
        by_node.setdefault(id(r.node), []).append(r)
    moments: dict[str, _Moments] = {}
    interpreter = GraphInterpreter(graph, batches)
    for node in interpreter.nodes():
        for r in by_node.get(id(node), ()):
            acc = moments.setdefault(r.weight.name, _Moments())
            for x in interpreter.value(r.activation):
                acc.add(x, r.axis)
    return {name: m.stats() for name, m in moments.items()}
