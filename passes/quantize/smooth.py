"""SmoothQuant: move activation outliers into the weights of the linear layers a norm feeds.

Pretrained transformers have a few activation channels far larger than the
rest; a per-tensor int8 scale sized for them rounds every other channel to a
handful of levels. For a linear layer y = x W^T fed by a norm, dividing input
channel j by s_j and multiplying weight column j by s_j leaves y unchanged, and
the division folds into the norm's own weight and bias, so the rewrite is exact
in float. With s_j = max|x_j|^alpha / max|W_:,j|^(1 - alpha) the activation
ranges shrink and the weights (quantized per output channel) absorb the rest
(Xiao et al., 2023).
"""

from __future__ import annotations

from typing import Sequence

import torch

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


def smoothable(layers: Sequence[Layer]) -> dict[int, tuple[Node, list[Layer]]]:
    """id(norm) -> (norm, the linear layers reading it), for norms whose every reader is such a layer."""
    by_input: dict[int, list[Layer]] = {}
    for layer in layers:
        if layer.node.op == "linear":
            by_input.setdefault(id(layer.node.inputs[0]), []).append(layer)
    groups: dict[int, tuple[Node, list[Layer]]] = {}
    for members in by_input.values():
        x = members[0].node.inputs[0]
        norm = x.producer
        if scale_input(norm) is None:
            continue
        readers = {id(n) for n in x.users}
        if readers != {id(m.node) for m in members} or x.is_graph_output():
            continue
        groups[id(norm)] = (norm, members)
    return groups


def _rescaled(graph: Graph, node: Node, index: int, tensor: torch.Tensor) -> None:
    """Give `node` input `index` the new tensor, as a new weight if another node reads the old one."""
    old = node.inputs[index]
    if len(old.uses()) == 1 and not old.is_graph_output():
        old.set_data(tensor)
    else:
        node.set_input(index, graph.add_weight(f"{old.name}.smoothed", tensor, kind=old.kind))


def smooth(graph: Graph, layers: Sequence[Layer], batches: Sequence[tuple], alpha: float, *,
           progress: bool = True) -> list[str]:
    """Apply SmoothQuant in place; the names of the norms that were rescaled."""
    groups = smoothable(layers)
    if not groups:
        return []
    values: list[Value] = [norm.outputs[0] for norm, _ in groups.values()]
    watchers, absmax = channel_absmax(values)
    observe(graph, batches, watchers, label="smooth", progress=progress)
    done = []
    for norm, members in groups.values():
        act = absmax.get(norm.outputs[0].name)
        if act is None:
            continue
        wmax = torch.stack([m.node.inputs[1].data.detach().abs().amax(0).float() for m in members]).amax(0)
        s = (act.clamp(min=1e-5) ** alpha / wmax.clamp(min=1e-5) ** (1.0 - alpha)).clamp(min=1e-5)
        index = scale_input(norm)
        gamma = norm.inputs[index]
        _rescaled(graph, norm, index, (gamma.data.float() / s).to(gamma.dtype))
        if norm.op == "layer_norm" and len(norm.inputs) > 2 and norm.inputs[2] is not None:
            beta = norm.inputs[2]
            _rescaled(graph, norm, 2, (beta.data.float() / s).to(beta.dtype))
        for m in members:
            w = m.node.inputs[1]
            _rescaled(graph, m.node, 1, (w.data.float() * s).to(w.dtype))
        done.append(norm.name)
    return done
