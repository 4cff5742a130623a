"""SmoothQuant: move activation outliers into the weights of the linear layers that read them.

Pretrained transformers have a few activation channels far larger than the
rest; a per-tensor int8 scale sized for them rounds every other channel to a
handful of levels. For a linear layer y = x W^T, dividing input channel j by
s_j and multiplying weight column j by s_j leaves y unchanged. The division
must fold into whatever makes x, so the rewrite stays exact in float:
- a norm (layer norm, RMS norm, or the `x * rsqrt(.) * weight` of a decomposed
  one): its per-channel weight and bias (Xiao et al., 2023);
- a gated MLP (SwiGLU, GeGLU: x = act(gate(h)) * up(h), read by `down_proj`):
  the rows of `up`'s weight and its bias, since x is linear in up(h). This is
  where trained Llama-style models put their largest outliers (measured on a
  character LM: 417x the median channel at `down_proj`'s input, 4x at the
  norms; docs/benchmarks.md), which norm smoothing alone cannot reach.
With s_j = max|x_j|^alpha / max|W_:,j|^(1 - alpha) the activation ranges shrink
and the weights (quantized per output channel) absorb the rest.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from graphopt.ir import dims as D
from graphopt.ir.graph import Graph, Node, Value

from .calibrate import channel_absmax, observe
from .targets import Layer

NORMS = ("layer_norm", "rms_norm")


def scale_input(node: Node | None) -> int | None:
    """The input index of the per-channel weight a norm multiplies by: a layer/RMS norm's weight, or the
    1-d weight of a `mul` (an RMSNorm the front-end decomposed, as in Llama: x * rsqrt(...) * weight)."""
    if node is None:
        return None
    if node.op in NORMS:
        return 1 if len(node.inputs) > 1 and node.inputs[1] is not None else None
    if node.op == "mul" and len(node.inputs) == 2:
        for i, v in enumerate(node.inputs):
            other = node.inputs[1 - i]
            if (v is not None and v.is_weight and v.rank == 1 and other is not None and not other.is_weight
                    and other.rank >= 1 and v.shape[0] == other.shape[-1]):
                return i
    return None


@dataclass
class Absorber:
    """Where x / s folds in: the per-channel weights, as (node, input index, channel axis), dividing which
    divides x's last axis by s; `node` is what the report names (the norm, or the gated MLP's `up`)."""

    node: Node
    weights: list[tuple[Node, int, int]]


def absorber(x: Value) -> Absorber | None:
    """What makes x and can absorb a per-channel division of its last axis exactly, or None."""
    node = x.producer
    index = scale_input(node)
    if index is not None:
        weights = [(node, index, 0)]
        if node.op == "layer_norm" and len(node.inputs) > 2 and node.inputs[2] is not None:
            weights.append((node, 2, 0))
        return Absorber(node, weights)
    if node is None or node.op != "mul" or len(node.inputs) != 2 or None in node.inputs:
        return None
    if not D.shapes_equal(node.inputs[0].shape, node.inputs[1].shape):
        return None  # a broadcast factor would need its own scaling
    for up in node.inputs[::-1]:  # act(gate) * up: the linear factor is usually the second
        linear = up.producer
        if (linear is not None and linear.op == "linear" and linear.inputs[1].is_weight and len(up.users) == 1
                and not up.is_graph_output()):
            weights = [(linear, 1, 0)]
            if len(linear.inputs) > 2 and linear.inputs[2] is not None:
                weights.append((linear, 2, 0))
            return Absorber(linear, weights)
    return None


def smoothable(layers: Sequence[Layer]) -> dict[int, tuple[Absorber, list[Layer]]]:
    """id(absorbing node) -> (its absorber, the linear layers reading x), for an x whose every reader is such
    a layer and whose producer can absorb the division."""
    by_input: dict[int, list[Layer]] = {}
    for layer in layers:
        if layer.node.op == "linear":
            by_input.setdefault(id(layer.node.inputs[0]), []).append(layer)
    groups: dict[int, tuple[Absorber, list[Layer]]] = {}
    for members in by_input.values():
        x = members[0].node.inputs[0]
        found = absorber(x)
        if found is None:
            continue
        readers = {id(n) for n in x.users}
        if readers != {id(m.node) for m in members} or x.is_graph_output():
            continue
        groups[id(found.node)] = (found, members)
    return groups


def _rescaled(graph: Graph, node: Node, index: int, tensor: torch.Tensor) -> None:
    """Give `node` input `index` the new tensor, as a new weight if another node reads the old one."""
    old = node.inputs[index]
    if len(old.uses()) == 1 and not old.is_graph_output():
        old.set_data(tensor)
    else:
        node.set_input(index, graph.add_weight(f"{old.name}.smoothed", tensor, kind=old.kind))


def _along(s: torch.Tensor, rank: int, axis: int) -> torch.Tensor:
    """s shaped to broadcast along `axis` of a rank-`rank` tensor."""
    shape = [1] * rank
    shape[axis] = -1
    return s.reshape(shape)


def smooth(graph: Graph, layers: Sequence[Layer], batches: Sequence[tuple], alpha: float, *,
           progress: bool = True) -> list[str]:
    """Apply SmoothQuant in place; the names of the nodes that absorbed a scaling (norms, gated MLPs' `up`)."""
    groups = smoothable(layers)
    if not groups:
        return []
    values: list[Value] = [members[0].node.inputs[0] for _, members in groups.values()]
    watchers, absmax = channel_absmax(values)
    observe(graph, batches, watchers, label="smooth", progress=progress)
    done = []
    for (found, members), x in zip(groups.values(), values):
        act = absmax.get(x.name)
        if act is None:
            continue
        wmax = torch.stack([m.node.inputs[1].data.detach().abs().amax(0).float() for m in members]).amax(0)
        s = (act.clamp(min=1e-5) ** alpha / wmax.clamp(min=1e-5) ** (1.0 - alpha)).clamp(min=1e-5)
        for node, index, axis in found.weights:
            w = node.inputs[index]
            _rescaled(graph, node, index, (w.data.float() / _along(s, w.rank, axis)).to(w.dtype))
        for m in members:
            w = m.node.inputs[1]
            _rescaled(graph, m.node, 1, (w.data.float() * s).to(w.dtype))
        done.append(found.node.name)
    return done
