"""How much each residual block matters, on calibration data: the score the drop ranking sorts by.

Lower means less important (dropped first), for every metric:

- `cosine`: 1 - cos(skip, merge output), ShortGPT's Block Influence; LLM-Drop
  drops the blocks whose output is most similar to their input. The cosine is
  taken per position along the channel axis (the last axis of a token or
  feature tensor, axis 1 of a channels-first feature map) and averaged.
- `angular`: arccos(cos) / pi, the angular distance of Gromov et al.
- `loss`: the measured change of the model when the block alone is dropped:
  the increase of the run's loss on labelled calibration data, or without a
  loss the relative L2 change of the outputs.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import torch

from graphopt.analysis.residual_blocks import ResidualBlock
from graphopt.ir.graph import Graph
from graphopt.ir.interpreter import GraphInterpreter, relative_error, run_graph

from .removal import drop_block

METRICS = ("cosine", "angular", "loss")


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


def loss_scores(graph: Graph, blocks: Sequence[ResidualBlock], batches: Sequence[Sequence[torch.Tensor]],
                targets: Sequence[Any] | None = None,
                loss: Callable[[Any, Any], torch.Tensor] | None = None) -> dict[str, float]:
    """Each block's measured effect: the loss increase (with `loss` and `targets`), else relative output change."""
    reference = [run_graph(graph, batch) for batch in batches]
    base = _loss(reference, targets, loss) if loss is not None else 0.0
    scores = {}
    for block in blocks:
        trial = graph.clone()
        drop_block(trial, block)
        outputs = [run_graph(trial, batch) for batch in batches]
        if loss is not None:
            scores[block.name] = _loss(outputs, targets, loss) - base
        else:
            scores[block.name] = relative_error(reference, outputs)
    return scores


def _loss(outputs: Sequence[Sequence[torch.Tensor]], targets: Sequence[Any] | None,
          loss: Callable[[Any, Any], torch.Tensor]) -> float:
    values = [float(loss(out[0] if len(out) == 1 else out, target)) for out, target in zip(outputs, targets or ())]
    return sum(values) / max(len(values), 1)
