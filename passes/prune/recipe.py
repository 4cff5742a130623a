"""Pruning recipes: which channels of which groups were removed, as JSON that replays exactly.

A pruned model is saved as the original model (and checkpoint) plus a recipe,
never as a pickle. The recipe names each group by an anchor (a weight and axis
that produces its channels) and lists the removed channel ids in the group's
own numbering, which is deterministic for a graph of the same structure; the
structure hash refuses a recipe made for a different model.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from graphopt.analysis.channels import ChannelGroup, channel_groups
from graphopt.analysis.removal import remove_channels
from graphopt.errors import GraphoptError
from graphopt.ir.graph import Graph
from graphopt.ir.serialize import register_meta_decoder

RECIPE_FORMAT = 2  # 1: a single step, read as such


def structure_hash(graph: Graph) -> str:
    """Hash of the printed graph (ops, attributes, shapes, weight names and types; not weight values)."""
    return hashlib.sha256(graph.format().encode()).hexdigest()[:16]


def anchor_of(group: ChannelGroup) -> dict[str, Any]:
    space = group.producers()[0][0] if group.producers() else group.spaces[0]
    return {"weight": space.value.name, "axes": list(space.axes)}


@dataclass
class PruneStep:
    """One prune pass: the channels removed per group of a graph with the given structure."""

    structure: str
    groups: list[dict[str, Any]] = field(default_factory=list)
    heads: bool = True  # which analysis numbered the groups (whole heads, or within heads)

    def to_dict(self) -> dict[str, Any]:
        return {"structure": self.structure, "heads": self.heads, "groups": self.groups}


@dataclass
class PruneRecipe:
    """The prune steps that made a model, in order (iterative pruning has one per step)."""

    steps: list[PruneStep] = field(default_factory=list)
    graphopt_version: str = ""

    @classmethod
    def chain(cls, recipes: list[PruneRecipe]) -> PruneRecipe:
        """One recipe doing the given ones in order."""
        return cls([step for r in recipes for step in r.steps], recipes[-1].graphopt_version if recipes else "")

    def to_json(self) -> str:
        return json.dumps({"format": RECIPE_FORMAT, "graphopt": self.graphopt_version,
                           "steps": [step.to_dict() for step in self.steps]}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> PruneRecipe:
        """Parse and check a recipe: every field is validated before anything is applied (`RecipeError`)."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise RecipeError(f"not a pruning recipe (invalid JSON: {exc})") from None
        if not isinstance(data, dict):
            raise RecipeError(f"not a pruning recipe: expected a JSON object, got {type(data).__name__}")
        version = data.get("format")
        if version == 1:
            steps_data = [data]
        elif version == RECIPE_FORMAT:
            steps_data = data.get("steps")
            if not isinstance(steps_data, list) or not steps_data:
                raise RecipeError("recipe 'steps' must be a non-empty list of prune steps")
        else:
            raise RecipeError(f"unsupported recipe format {version!r} (this graphopt reads 1 and {RECIPE_FORMAT})")
        steps = [_step_from(d, f"steps[{i}]") for i, d in enumerate(steps_data)]
        return cls(steps, str(data.get("graphopt", "")))

    def save(self, path: str | os.PathLike) -> Path:
        """Write atomically: a temporary file in the same folder, then a rename."""
        path = Path(path)
        if not path.parent.is_dir():
            raise RecipeError(f"cannot write the recipe to {path}: the folder {path.parent} does not exist")
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(self.to_json())
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> PruneRecipe:
        path = Path(path)
        if not path.is_file():
            raise RecipeError(f"recipe file {path} " + ("is a folder" if path.is_dir() else "does not exist"))
        return cls.from_json(path.read_text())


class RecipeError(GraphoptError):
    """A pruning recipe that cannot be read or does not fit the graph; the message names the field."""


def _step_from(data: Any, where: str) -> PruneStep:
    if not isinstance(data, dict):
        raise RecipeError(f"recipe {where} must be an object, got {type(data).__name__}")
    structure, groups, heads = data.get("structure"), data.get("groups"), data.get("heads", True)
    if not isinstance(structure, str) or not structure:
        raise RecipeError(f"recipe {where}.structure must be the structure hash (a string), got {structure!r}")
    if not isinstance(heads, bool):
        raise RecipeError(f"recipe {where}.heads must be true or false, got {heads!r}")
    if not isinstance(groups, list):
        raise RecipeError(f"recipe {where}.groups must be a list, got {type(groups).__name__}")
    for k, group in enumerate(groups):
        _check_group(group, f"{where}.groups[{k}]")
    return PruneStep(structure, groups, heads)


def _check_group(group: Any, where: str) -> None:
    anchor = group.get("anchor") if isinstance(group, dict) else None
    if not isinstance(anchor, dict) or not isinstance(anchor.get("weight"), str) or not (
            isinstance(anchor.get("axes"), list) and all(_is_int(a) for a in anchor["axes"])):
        raise RecipeError(f"recipe {where}.anchor must be {{\"weight\": name, \"axes\": [ints]}}, "
                          f"got {anchor!r:.120}")
    removed = group.get("removed")
    if not isinstance(removed, list) or not all(_is_int(c) and c >= 0 for c in removed):
        raise RecipeError(f"recipe {where}.removed must be a list of channel ids (integers >= 0), got {removed!r:.120}")
    if len(set(removed)) != len(removed):
        twice = next(c for c in removed if removed.count(c) > 1)
        raise RecipeError(f"recipe {where}.removed lists channel {twice} more than once")


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def apply_recipe(graph: Graph, recipe: PruneRecipe) -> Graph:
    """Remove the recipe's channels from `graph` (in place), step by step; it must have the recipe's structure.

    All or nothing: the steps run on a copy, which `graph` takes over only when every step succeeded,
    so a recipe that fails half way leaves `graph` exactly as it was.
    """
    if not recipe.steps:
        raise RecipeError("the recipe has no steps: nothing to apply")
    work = graph.clone()
    for index, step in enumerate(recipe.steps):
        _apply_step(work, step, index, len(recipe.steps))
    graph.take_over(work)
    return graph


def _apply_step(graph: Graph, step: PruneStep, index: int, count: int) -> None:
    where = "" if count == 1 else f" (at step {index + 1} of {count})"
    actual = structure_hash(graph)
    if actual != step.structure:
        raise RecipeError(f"recipe was made for a graph with structure {step.structure}, this graph has {actual}"
                          f"{where}: apply it to the same model, traced and canonicalised the same way")
    groups = channel_groups(graph, heads=step.heads)
    by_anchor = {(a["weight"], tuple(a["axes"])): g for g in groups for a in [anchor_of(g)]}
    for k, entry in enumerate(step.groups):
        _check_group(entry, f"steps[{index}].groups[{k}]")
        key = (entry["anchor"]["weight"], tuple(entry["anchor"]["axes"]))
        group = by_anchor.get(key)
        if group is None:
            raise RecipeError(f"recipe names a group anchored at {key[0]} axes {list(key[1])}, which this graph "
                              f"lacks{where}")
        removed = np.asarray(entry["removed"], dtype=np.int64)
        if removed.size and int(removed.max()) >= group.num_channels:
            raise RecipeError(f"recipe removes channel {int(removed.max())} of the group anchored at {key[0]}, which "
                              f"has {group.num_channels} channels{where}")
        remove_channels(graph, group, removed)


# a graph saved with graphopt.ir.serialize keeps its recipes as JSON text: loaded, they are recipes again
register_meta_decoder("prune_recipes", PruneRecipe.from_json)
