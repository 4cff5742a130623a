"""How much each residual block matters, on calibration data: the score the drop ranking sorts by.

Lower means less important (dropped first), for every metric:

- `kl` (the default for a model whose output is logits): the KL divergence of the
  model's output distribution (softmax over the last axis of the first output)
  from the dense model's, measured with the block dropped. Unlabelled, and what a
  classifier's or a language model's accuracy follows: on a character LM trained on
  real text it kept 2-4 points more held-out accuracy than cosine or the last
  blocks (docs/benchmarks.md).
- `loss`: the measured change of the model with the block dropped: the increase
  of the run's loss on labelled calibration data, or without a loss the relative
  L2 change of the outputs (the default when the output is not logits).
- `cosine`: 1 - cos(skip, merge output), ShortGPT's Block Influence; LLM-Drop
  drops the blocks whose output is most similar to their input. The cosine is
  taken per position along the channel axis (the last axis of a token or
  feature tensor, axis 1 of a channels-first feature map) and averaged.
- `angular`: arccos(cos) / pi, the angular distance of Gromov et al.

The measured metrics (`kl`, `loss`) always compare with the dense model the pass
received, so measured on a graph that already lost some blocks they score the set
dropped together: greedy selection on them is SLEB's.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import torch

from graphopt.analysis.residual_blocks import ResidualBlock
from graphopt.errors import GraphoptError
from graphopt.ir.graph import Graph
from graphopt.ir.interpreter import GraphInterpreter, relative_error, run_graph

from .removal import drop_block

METRICS = ("auto", "kl", "loss", "cosine", "angular")
MEASURED = ("kl", "loss")  # scored by running the model with the block dropped


def similarity_scores(graph: Graph, blocks: Sequence[ResidualBlock], batches: Sequence[Sequence[torch.Tensor]],
                      metric: str = "cosine") -> dict[str, float]:
    """`cosine` or `angular` score of each block, in one run of the graph over the batches.

    A layer's skip is not an input of its merge, so each skip value is kept from
    when it is computed until its blocks' merges have run.
    """
    at_merge: dict[str, list[ResidualBlock]] = {}
    for block in blocks:
        at_merge.setdefault(block.merge, []).append(block)
    skips = {block.skip for block in blocks}
    readers = {name: sum(b.skip == name for b in blocks) for name in skips}  # merges still to read each skip
    run = GraphInterpreter(graph, batches)
    kept = {v.name: run.value(v) for v in graph.inputs if v.name in skips}
    sums = {b.name: [0.0, 0] for b in blocks}
    for node in graph.nodes:
        run.execute(node)
        for block in at_merge.get(node.name, ()):
            for skip, out in zip(kept[block.skip], run.value(node.output)):
                cos = _cosine(skip, out)
                values = torch.arccos(cos.clamp(-1, 1)) / math.pi if metric == "angular" else 1 - cos
                sums[block.name][0] += float(values.double().sum())
                sums[block.name][1] += values.numel()
            readers[block.skip] -= 1
            if not readers[block.skip]:
                kept.pop(block.skip)  # hold a skip only until its last block is scored
        kept.update({out.name: run.value(out) for out in node.outputs if out.name in skips})
    return {name: total / max(count, 1) for name, (total, count) in sums.items()}


def _cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine per position along the channel axis: axis 1 of a feature map (rank >= 4), else the last."""
    axis = 1 if a.dim() >= 4 else -1
    return torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=axis, eps=1e-12)


def resolve_metric(graph: Graph, metric: str) -> tuple[str, str]:
    """(the metric in force, how a report names it): `auto` is kl on logits, else the measured relative change."""
    if metric not in METRICS:
        raise GraphoptError(f"drop-layers: unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
    if metric != "auto":
        return metric, metric
    why = logits_output(graph)
    if why:
        return "kl", f"kl (auto: {why})"
    return "loss", "loss (auto: output 0 is not a linear layer's logits, so the relative output change)"


def block_scores(graph: Graph, blocks: Sequence[ResidualBlock], batches: Sequence[Sequence[torch.Tensor]],
                 metric: str = "auto") -> tuple[str, dict[str, float]]:
    """Every block's score under `metric` (measured ones: droppable blocks only, each dropped alone), with the
    metric's report name: what `drop-layers` ranks by, for `graphopt inspect --blocks`."""
    metric, label = resolve_metric(graph, metric)
    if metric in MEASURED:
        droppable = [b for b in blocks if b.droppable]
        return label, measured_scores(graph, droppable, batches, Baseline(graph, batches), metric)
    return label, similarity_scores(graph, blocks, batches, metric)


def measured_scores(graph: Graph, blocks: Sequence[ResidualBlock], batches: Sequence[Sequence[torch.Tensor]],
                    baseline: "Baseline", metric: str) -> dict[str, float]:
    """Each block's `kl` or `loss` score: how far the model with that block (also) dropped is from the dense one."""
    scores = {}
    for block in blocks:
        trial = graph.clone()
        drop_block(trial, block)
        scores[block.name] = baseline.distance([run_graph(trial, batch) for batch in batches], metric)
    return scores


class Baseline:
    """The dense model's outputs on the calibration batches (and its loss on their targets), computed once, so
    every measured score, at every greedy step, is a distance from the model the pass received."""

    def __init__(self, graph: Graph, batches: Sequence[Sequence[torch.Tensor]], targets: Sequence[Any] | None = None,
                 loss: Callable[[Any, Any], torch.Tensor] | None = None) -> None:
        self.outputs = [run_graph(graph, batch) for batch in batches]
        self.targets, self.loss = targets, loss
        self.base = _loss(self.outputs, targets, loss) if loss is not None else 0.0

    def distance(self, outputs: Sequence[Sequence[torch.Tensor]], metric: str) -> float:
        if self.loss is not None:
            return _loss(outputs, self.targets, self.loss) - self.base
        if metric == "kl":
            return kl_divergence(self.outputs, outputs)
        return relative_error(self.outputs, outputs)


def kl_divergence(reference: Sequence[Sequence[torch.Tensor]], outputs: Sequence[Sequence[torch.Tensor]]) -> float:
    """Mean over positions of KL(softmax(reference) || softmax(output)) on the last axis of the first outputs."""
    total, count = 0.0, 0
    for ref, out in zip(reference, outputs):
        p = torch.log_softmax(ref[0].double(), dim=-1)
        q = torch.log_softmax(out[0].double(), dim=-1)
        kl = (p.exp() * (p - q)).sum(-1)
        total += float(kl.sum())
        count += kl.numel()
    return total / max(count, 1)


def logits_output(graph: Graph) -> str:
    """Why the first output reads as logits ("" when it does not): a float tensor whose last axis is a linear
    layer's output features, possibly through a cast, a scale or a tanh soft-cap (Gemma's)."""
    if not graph.outputs:
        return ""
    value = graph.outputs[0]
    if not value.dtype.is_floating_point or value.rank < 2:
        return ""
    while value.producer is not None and value.producer.op in _THROUGH:
        node = value.producer
        inputs = [v for v in node.inputs if v is not None and not v.is_weight]
        if len(inputs) != 1:
            return ""
        value = inputs[0]
    node = value.producer
    if node is None:
        return ""
    if node.op == "linear" or (node.op == "matmul" and node.inputs[1].is_weight):
        return f"output 0 is the output of {node.op} {node.name}: logits"
    return ""


_THROUGH = ("cast", "mul", "div", "tanh", "identity")


def _loss(outputs: Sequence[Sequence[torch.Tensor]], targets: Sequence[Any] | None,
          loss: Callable[[Any, Any], torch.Tensor]) -> float:
    values = [float(loss(out[0] if len(out) == 1 else out, target)) for out, target in zip(outputs, targets or ())]
    return sum(values) / max(len(values), 1)
