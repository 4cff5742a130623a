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
from graphopt.ir.graph import Graph
from graphopt.ir.interpreter import run_graph, structured_outputs, trainable_weights
from graphopt.passmanager import RunContext

from .activations import ActivationStats, activation_stats

Criterion = Callable[..., np.ndarray]  # fn(group) or fn(group, context) -> one score per channel


class CriterionContext:
    """What data-driven criteria need beyond the weights: the graph and its calibration data.

    Gradients and activation statistics are computed once per graph and shared
    by every group. `context` (the pass's `analyses.context`) supplies the calibration
    batches and the loss (`RunContext.calibration_batches`); without it only
    weight criteria work.
    """

    def __init__(self, graph: Graph, context: RunContext | None = None) -> None:
        self.graph = graph
        self.run_context = context
        self._grads: list[dict[str, torch.Tensor]] | None = None
        self._stats: dict[str, ActivationStats] | None = None

    def _batches(self, *, targets: bool = False) -> list:
        if self.run_context is None:
            raise GraphoptError("this criterion needs calibration data: run the pass with example inputs or "
                                "calibration_data (graphopt.optimize(..., calibration_data=...))")
        return self.run_context.calibration_batches(targets=targets)

    def gradients(self) -> dict[str, torch.Tensor]:
        """d(loss)/d(weight) for every parameter, summed over the calibration batches."""
        per_batch = self.batch_gradients()
        return {name: sum(batch[name] for batch in per_batch) for name in per_batch[0]}

    def batch_gradients(self) -> list[dict[str, torch.Tensor]]:
        """d(loss)/d(weight) for every parameter, one dict per calibration batch.

        The loss is the user's `loss(output, target)` when one is given, else the
        mean squared output (no labels needed: it measures how much each weight
        contributes to the output at all). Kept per batch because on a trained
        model the batches' gradients largely cancel: Taylor squares per batch.
        Memory: one gradient per parameter per batch.
        """
        if self._grads is None:
            weights = trainable_weights(self.graph)
            loss_fn = self.run_context.loss if self.run_context is not None else None
            self._grads = []
            for inputs, target in self._batches(targets=True):
                out = structured_outputs(self.graph, run_graph(self.graph, inputs, weights=weights, grad=True))
                if loss_fn is not None:
                    loss = loss_fn(out, target)
                else:
                    leaves = [t for t in torch.utils._pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]
                    loss = sum(t.float().pow(2).mean() for t in leaves if t.is_floating_point())
                grads = torch.autograd.grad(loss, list(weights.values()), allow_unused=True)
                self._grads.append({name: g for name, g in zip(weights, grads) if g is not None})
        return self._grads

    def activation_stats(self) -> dict[str, ActivationStats]:
        """Per consumer weight: statistics of each input channel of the layer that reads it."""
        if self._stats is None:
            self._stats = activation_stats(self.graph, self._batches())
        return self._stats


CRITERIA: dict[str, Criterion] = {}


def register_criterion(name: str, *, replace: bool = False) -> Callable[[Criterion], Criterion]:
    """Decorator: make `fn(group)` or `fn(group, context)` -> one score per channel usable as `criterion=name`.

    A name already taken by another function (a built-in such as "l2" included) is an error unless
    `replace=True`: the registry is process-wide, so a silent replacement would change every later prune.
    """
    if not isinstance(name, str) or not name:
        raise GraphoptError(f"a criterion name must be a non-empty string, got {name!r}")

    def wrap(fn: Criterion) -> Criterion:
        if not callable(fn):
            raise GraphoptError(f"criterion '{name}' must be a function fn(group[, context]), got {fn!r}")
        existing = CRITERIA.get(name)
        if existing is not None and existing is not fn and not replace:
            raise GraphoptError(f"pruning criterion '{name}' is already registered ({existing.__module__}."
                                f"{existing.__qualname__}); choose another name or pass replace=True")
        CRITERIA[name] = fn
        return fn

    return wrap


def checked_scores(name: str, group: ChannelGroup, scores: object) -> np.ndarray:
    """A criterion's result as float64 scores, one per channel of `group`, or a GraphoptError saying what is wrong."""
    where = f"criterion '{name}' on channel group {group.id} ({group.num_channels} channels)"
    if scores is None:
        raise GraphoptError(f"{where} returned None; it must return one score per channel")
    try:
        array = np.asarray(scores.detach().cpu() if isinstance(scores, torch.Tensor) else scores, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise GraphoptError(f"{where} returned {type(scores).__name__}, not numbers: {exc}") from None
    if array.shape != (group.num_channels,):
        raise GraphoptError(f"{where} returned scores of shape {array.shape}; it must return {group.num_channels}")
    bad = np.flatnonzero(~np.isfinite(array))
    if bad.size:
        raise GraphoptError(f"{where} returned {bad.size} non-finite scores (channel {int(bad[0])}: "
                            f"{array[bad[0]]}); scores must be finite numbers")
    return array


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
    """First-order Taylor (Molchanov et al., 2019): (sum of weight x gradient over the channel)^2,
    squared per calibration batch and summed over batches."""
    total = np.zeros(group.num_channels)
    for grads in context.batch_gradients():
        per_batch = np.zeros(group.num_channels)
        for space, labels in group.producers():
            grad = grads.get(space.value.name)
            if grad is None:
                continue
            product = space.value.data.detach().double() * grad.detach().double()
            others = [a for a in range(product.dim()) if a not in space.axes]
            per_position = (product.sum(dim=others) if others else product).reshape(-1).numpy()
            per_batch += np.bincount(labels, weights=per_position, minlength=group.num_channels)
        total += per_batch ** 2
    return total


@register_criterion("bn_scale")
def bn_scale(group: ChannelGroup) -> np.ndarray:
    """|gamma| of the batch norms in the group (network slimming); L2 for groups without one."""
    gammas = [(s, lab) for s, lab in group.producers()
              if s.value.producer is None and any(u.op == "batch_norm" and u.inputs[1] is s.value for u in s.value.users)]
    return _norm(group, 1.0, gammas) if gammas else l2(group)


def _consumers(group: ChannelGroup, context: CriterionContext) -> list[tuple[Space, np.ndarray, ActivationStats]]:
    stats = context.activation_stats()
    return [(s, lab, stats[s.value.name]) for s, lab in group.weights()
            if s.role == "consumer" and s.value.name in stats and len(s.axes) == 1]


@register_criterion("activation")
def activation(group: ChannelGroup, context: CriterionContext) -> np.ndarray:
    """Mean |activation| of the channel where layers read it, over the calibration data.

    Groups no layer reads (attention q/k dims) fall back to L2.
    """
    consumers = _consumers(group, context)
    if not consumers:
        return l2(group)
    total = np.zeros(group.num_channels)
    for space, labels, stats in consumers:
        total += np.bincount(labels, weights=stats.mean_abs, minlength=group.num_channels)
    return total


@register_criterion("fluctuation")
def fluctuation(group: ChannelGroup, context: CriterionContext) -> np.ndarray:
    """FLAP (An et al., 2024): variance of the input channel x the squared norm of the weight column reading it.

    A channel whose value hardly varies can be replaced by its mean, which
    reconstruction's bias compensation does; its weight column says how much
    the variation matters downstream. Groups no layer reads fall back to L2.
    """
    consumers = _consumers(group, context)
    if not consumers:
        return l2(group)
    total = np.zeros(group.num_channels)
    for space, labels, stats in consumers:
        column = _per_position(space, 2.0)
        total += np.bincount(labels, weights=stats.variance * column, minlength=group.num_channels)
    return total
