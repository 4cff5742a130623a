"""`prune_zero_groups`: remove exactly the units that are zero, and nothing else, through a prune recipe.

After `GroupSparseOptimizer` the redundant units are exactly zero; removing them
must give the model it trained, not a model pruned by some ratio. A criterion
and a ratio cannot say "these units, however many per group", but a prune
recipe can: it lists the removed channels of each group. So the zero units are
written as a recipe on the graph `optimize` prunes, and `optimize(recipe=...)`
replays it: the result is an ordinary `OptimizedModel` with that recipe, its
report and `torch_module()`, saved and rebuilt like any pruned model.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from graphopt import __version__
from graphopt.analysis.channels import ChannelGroup
from graphopt.api import OptimizedModel, optimize
from graphopt.errors import GraphoptError
from graphopt.ir.graph import Graph
from graphopt.passes.prune.widths import droppable_units
from graphopt.passes.prune.recipe import PruneRecipe, PruneStep, anchor_of, structure_hash

from .units import analysed_graph


def zero_units(group: ChannelGroup) -> np.ndarray:
    """The units of `group` whose every producer position is exactly zero (weights, biases, norm affine)."""
    nonzero = np.zeros(group.num_units, dtype=bool)
    for space, labels in group.producers():
        data = space.value.data
        others = [d for d in range(data.dim()) if d not in space.axes]
        touched = (data != 0).any(dim=others) if others else data != 0
        nonzero[group.unit_of[labels[touched.reshape(-1).cpu().numpy()]]] = True
    return np.flatnonzero(~nonzero)


def zero_recipe(graph: Graph, groups: list[ChannelGroup]) -> PruneRecipe | None:
    """A recipe removing every exactly-zero unit of the prunable, mask-exact groups of `graph` (None: no such unit).

    Groups that are not mask-exact are left whole: removing their zero units would
    change the outputs (a LayerNorm over the channels counts them). A tensor keeps
    at least one unit, zero or not, as pruning always does.
    """
    step = PruneStep(structure_hash(graph), heads=True)
    for group in groups:
        if not group.prunable or not group.exact:
            continue
        zero = zero_units(group)
        drop = droppable_units(group, zero, zero.size) if zero.size else []
        if drop:
            channels = np.concatenate([group.units[u] for u in drop])
            step.groups.append({"anchor": anchor_of(group), "removed": sorted(int(c) for c in channels)})
    return PruneRecipe([step], __version__) if step.groups else None


def prune_zero_groups(model: torch.nn.Module, example_inputs: Sequence[Any] | torch.Tensor,
                      **options: Any) -> OptimizedModel:
    """`optimize(model, example_inputs, recipe=...)` removing exactly the units of `model` that are zero.

    Its outputs equal `model`'s (eval mode) up to float rounding: only units whose
    producers are all zero go, and only from mask-exact groups. `options` go to
    `optimize` (`backend`, `quantize`, ...; not `prune` or `recipe`). The result's
    `recipe` rebuilds the pruned structure from the original model. No zero unit
    at all is an error (train with `GroupSparseOptimizer` first).
    """
    for name in ("prune", "recipe"):
        if name in options:
            raise GraphoptError(f"prune_zero_groups writes its own recipe: {name}= cannot be given")
    inputs = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
    graph, groups = analysed_graph(model, inputs, dynamic=options.get("dynamic", "batch"))  # optimize's trace
    recipe = zero_recipe(graph, groups)
    if recipe is None:
        raise GraphoptError(f"{type(model).__name__} has no exactly-zero unit in a prunable, mask-exact group: "
                            f"nothing to remove (train it with graphopt.train.GroupSparseOptimizer first)")
    return optimize(model, inputs, recipe=recipe, **options)
