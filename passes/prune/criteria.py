"""Importance criteria for structured pruning: a score per channel of a channel group.

A criterion sees the whole group, so a channel's score aggregates every weight
that produces it (a conv's filters, its bias, the batch-norm scale and shift
after it, the rows of q/k/v for an attention head), not one layer in isolation.
Register your own with `register_criterion`.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from graphopt.analysis.channels import ChannelGroup, Space
from graphopt.errors import GraphoptError

Criterion = Callable[..., np.ndarray]  # fn(group) or fn(group, context) -> one score per channel


class CriterionContext:
    """What data-driven criteria need beyond the weights: the graph and calibration inputs.

    Gradients are computed once per graph and shared by every group.
    """

    def __init__(self, graph, inputs) -> None:
        self.graph = graph
        self.inputs = inputs
        self._grads: dict[str, torch.Tensor] | None = None

    def gradients(self) -> dict[str, torch.Tensor]:
        """d(loss)/d(weight) for every parameter, loss = mean squared output (no labels needed)."""
        if self._grads is None:
            if self.inputs is None:
                raise GraphoptError("this criterion needs calibration inputs: pass example inputs to the pass "
                                    "manager (or calibration_data to graphopt.optimize)")
            from graphopt.backends.torch import to_module

            module = to_module(self.graph)
            params = dict(module.named_parameters())
            loss = 0.0
            batches = self.inputs if isinstance(self.inputs, list) else [self.inputs]
            for batch in batches:
                out = module(*batch)
                leaves = [t for t in torch.utils._pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]
                loss = loss + sum(t.float().pow(2).mean() for t in leaves if t.is_floating_point())
            loss.backward()
            by_path = {path: p.grad for path, p in params.items() if p.grad is not None}
            self._grads = {name: by_path[_path(name)] for name in self.graph.params() if _path(name) in by_path}
        return self._grads


def _path(name: str) -> str:
    from graphopt.backends.torch import _attr_path

    return ".".join(_attr_path(name))
CRITERIA: dict[str, Criterion] = {}


def register_criterion(name: str) -> Callable[[Criterion], Criterion]:
    def wrap(fn: Criterion) -> Criterion:
        CRITERIA[name] = fn
        return fn

    return wrap


def get_criterion(name: str) -> Criterion:
    try:
        return CRITERIA[name]
    except KeyError:
        raise GraphoptError(f"unknown pruning criterion '{name}'; known: {', '.join(sorted(CRITERIA))}") from None


def _per_position(space: Space, power: float) -> np.ndarray:
    """|w|^power summed over the axes outside the space, one value per position (row-major)."""
    data = space.value.data.detach().abs().to(torch.float64) ** power
    others = [a for a in range(data.dim()) if a not in space.axes]
    reduced = data.sum(dim=others) if others else data
    return reduced.reshape(-1).cpu().numpy()


def _norm(group: ChannelGroup, power: float, spaces=None) -> np.ndarray:
    total = np.zeros(group.num_channels)
    for space, labels in spaces if spaces is not None else group.producers():
        if space.value.data is None or space.value.data.device.type == "meta":
            raise GraphoptError(f"criterion needs weight values, but %{space.value.name} has none (meta tensor)")
        total += np.bincount(labels, weights=_per_position(space, power), minlength=group.num_channels)
    return total ** (1.0 / power)


@register_criterion("l1")
def l1(group: ChannelGroup) -> np.ndarray:
    """Sum of |w| over every producer weight of the channel."""
    return _norm(group, 1.0)


@register_criterion("l2")
def l2(group: ChannelGroup) -> np.ndarray:
    """Euclidean norm of every producer weight of the channel taken together."""
    return _norm(group, 2.0)


@register_criterion("taylor")
def taylor(group: ChannelGroup, context: CriterionContext) -> np.ndarray:
    """First-order Taylor (Molchanov et al.): (sum of weight x gradient over the channel)^2."""
    grads = context.gradients()
    total = np.zeros(group.num_channels)
    for space, labels in group.producers():
        grad = grads.get(space.value.name)
        if grad is None:
            continue
        product = (space.value.data.detach().double() * grad.detach().double())
        others = [a for a in range(product.dim()) if a not in space.axes]
        per_position = (product.sum(dim=others) if others else product).reshape(-1).numpy()
        total += np.bincount(labels, weights=per_position, minlength=group.num_channels)
    return total ** 2


@register_criterion("bn_scale")
def bn_scale(group: ChannelGroup) -> np.ndarray:
    """|gamma| of the batch norms in the group (network slimming); L2 for groups without one."""
    gammas = [(s, lab) for s, lab in group.producers()
              if s.value.producer is None and any(u.op == "batch_norm" and u.inputs[1] is s.value for u in s.value.users)]
    return _norm(group, 1.0, gammas) if gammas else l2(group)
