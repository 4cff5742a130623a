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

Criterion = Callable[[ChannelGroup], np.ndarray]
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


@register_criterion("bn_scale")
def bn_scale(group: ChannelGroup) -> np.ndarray:
    """|gamma| of the batch norms in the group (network slimming); L2 for groups without one."""
    gammas = [(s, lab) for s, lab in group.producers()
              if s.value.producer is None and any(u.op == "batch_norm" and u.inputs[1] is s.value for u in s.value.users)]
    return _norm(group, 1.0, gammas) if gammas else l2(group)
