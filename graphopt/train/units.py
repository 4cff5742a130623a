"""The prunable units of a torch module, as slices of its parameters: what train-once drives to zero.

The channel-group analysis works on graphopt's IR; training happens on the user's
torch module. This module traces the module the way `optimize` prunes it (the
`simplify` stage: BatchNorms kept, so their affine weights belong to the groups
they normalise) and maps every producer of a group's channels (conv filters,
biases, norm weights, q/k/v rows of a head) to the module's parameter and the
unit each position along its axes belongs to. Zeroing those slices is exactly
`mask_channels`, which for a mask-exact group gives the outputs removal gives:
that is why only exact groups are trained towards zero (a group through a
LayerNorm over its channels is not: LayerNorm's statistics see the zeros).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from graphopt.analysis.channels import ChannelGroup, channel_groups
from graphopt.errors import GraphoptError
from graphopt.ir.graph import Graph

@dataclass(eq=False)
class UnitSlice:
    """One producer of a group: `param`'s positions along `axes`, each labelled with its unit."""

    name: str
    param: torch.nn.Parameter
    axes: tuple[int, ...]
    unit_index: torch.Tensor  # long, one entry per position along `axes` (row-major), the unit it belongs to

    def view_shape(self) -> list[int]:
        """Shape that broadcasts a per-position tensor over the parameter's other axes."""
        shape = [1] * self.param.dim()
        for axis in self.axes:
            shape[axis] = self.param.shape[axis]
        return shape

    def reduce(self, tensor: torch.Tensor, num_units: int) -> torch.Tensor:
        """Sum `tensor` (shaped like the parameter) over every position of each unit: (num_units,)."""
        others = [d for d in range(tensor.dim()) if d not in self.axes]
        per_position = tensor.sum(dim=others) if others else tensor
        out = torch.zeros(num_units, dtype=torch.float64, device=tensor.device)
        return out.index_add_(0, self.unit_index, per_position.reshape(-1).to(torch.float64))

    def expand(self, per_unit: torch.Tensor) -> torch.Tensor:
        """A per-unit tensor as a tensor that broadcasts over the parameter."""
        return per_unit[self.unit_index].reshape(self.view_shape())


@dataclass(eq=False)
class UnitGroup:
    """A prunable, mask-exact channel group of a module: its units and the parameter slices that produce them."""

    group: ChannelGroup  # on the analysed graph; `prune_zero_groups` finds it again by its anchor
    slices: list[UnitSlice]
    name: str = ""  # the first producer, for reports

    @property
    def num_units(self) -> int:
        return self.group.num_units

    @property
    def device(self) -> torch.device:
        """Where the group's per-unit tensors live: its parameters' device (no host sync in a training step)."""
        return self.slices[0].param.device

    def per_unit(self, fn: Any) -> torch.Tensor:
        """Σ fn(slice) over each unit's positions, in float64: fn maps a slice to a tensor shaped like its param."""
        total = torch.zeros(self.num_units, dtype=torch.float64, device=self.device)
        for s in self.slices:
            value = fn(s)
            if value is not None:
                total += s.reduce(value, self.num_units).to(total.device)
        return total

    def squared_norms(self) -> torch.Tensor:
        return self.per_unit(lambda s: s.param.detach() ** 2)

    def scale_(self, factors: torch.Tensor) -> None:
        """Multiply each unit's parameters by its factor (1: untouched, 0: zeroed), in place."""
        for s in self.slices:
            s.param.data.mul_(s.expand(factors.to(s.param.device, s.param.dtype)))

    def mask_grads_(self, zero: torch.Tensor) -> None:
        """Zero the gradients of the units marked in `zero`: the optimizer never moves them again."""
        keep = (~zero).to(torch.float32)
        for s in self.slices:
            if s.param.grad is not None:
                s.param.grad.mul_(s.expand(keep.to(s.param.grad.device, s.param.grad.dtype)))


@dataclass
class UnitGroups:
    """What `unit_groups` found: the trainable groups and, for every other group, why it is left alone."""

    groups: list[UnitGroup]
    skipped: list[str] = field(default_factory=list)

    @property
    def num_units(self) -> int:
        return sum(g.num_units for g in self.groups)

    def __iter__(self) -> Iterator[UnitGroup]:
        return iter(self.groups)

    def __len__(self) -> int:
        return len(self.groups)


def analysed_graph(model: torch.nn.Module, example_inputs: Sequence[Any], *,
                   dynamic: Any = "batch") -> tuple[Graph, list[ChannelGroup]]:
    """`model` traced as `optimize` traces it, at the stage where it prunes (so the structure a recipe names),
    and its channel groups (whole heads)."""
    from graphopt.api import STRUCTURAL_STAGE
    from graphopt.frontends.torch import trace
    from graphopt.passmanager import PassManager

    inputs = tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
    graph = trace(model, inputs, dynamic=dynamic)
    graph, _ = PassManager.parse(STRUCTURAL_STAGE).run(graph, inputs)
    return graph, channel_groups(graph)


def unit_groups(model: torch.nn.Module, example_inputs: Sequence[Any]) -> UnitGroups:
    """The prunable, mask-exact channel groups of `model`, mapped onto its parameters.

    Left out, each with its reason in `skipped`: groups that are not prunable
    (graph inputs and outputs, barriers, a single unit), groups that are not
    mask-exact (zeroing them would not equal removing them), and groups whose
    producers are not parameters of `model` (a constant made while tracing).
    A model with no group left is an error: there is nothing to train sparse.
    """
    if not isinstance(model, torch.nn.Module):
        raise GraphoptError(f"unit_groups needs a torch.nn.Module, not {type(model).__name__}")
    _, groups = analysed_graph(model, example_inputs)
    params = dict(model.named_parameters())
    found, skipped = [], []
    for group in groups:
        head = f"group {group.id} ({group.num_units} {group.kind})"
        if not group.prunable:
            skipped.append(f"{head}: not prunable: {'; '.join(group.reasons)}")
            continue
        if not group.exact:
            skipped.append(f"{head}: not mask-exact, zeroing it would not equal removing it: {'; '.join(group.inexact)}")
            continue
        slices, missing = [], []
        for space, labels in group.producers():
            param = params.get(space.value.name)
            if param is None:
                missing.append(space.value.name)
                continue
            units = torch.as_tensor(group.unit_of[labels].astype(np.int64), device=param.device)
            slices.append(UnitSlice(space.value.name, param, tuple(space.axes), units))
        if missing:
            skipped.append(f"{head}: produced by {', '.join(missing)}, not parameters of the module")
            continue
        found.append(UnitGroup(group, slices, slices[0].name))
    if not found:
        listing = "".join(f"\n  {reason}" for reason in skipped)
        raise GraphoptError(f"{type(model).__name__} has no prunable, mask-exact channel group to train sparse:"
                            f"{listing}")
    return UnitGroups(found, skipped)
