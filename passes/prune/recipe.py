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
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise GraphoptError(f"not a pruning recipe (invalid JSON: {exc})") from None
        version = data.get("format") if isinstance(data, dict) else None
        if version == 1:
            return cls([PruneStep(data["structure"], data["groups"])], data.get("graphopt", ""))
        if version != RECIPE_FORMAT:
            raise GraphoptError(f"unsupported recipe format {version!r} (this graphopt reads 1 and {RECIPE_FORMAT})")
        steps = [PruneStep(d["structure"], d["groups"], d.get("heads", True)) for d in data["steps"]]
        return cls(steps, data.get("graphopt", ""))

    def save(self, path: str | os.PathLike) -> Path:
        """Write atomically: a temporary file in the same folder, then a rename."""
        path = Path(path)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(self.to_json())
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> PruneRecipe:
        return cls.from_json(Path(path).read_text())


def apply_recipe(graph: Graph, recipe: PruneRecipe) -> Graph:
    """Remove the recipe's channels from `graph` (in place), step by step; it must have the recipe's structure."""
    for index, step in enumerate(recipe.steps):
        actual = structure_hash(graph)
        if actual != step.structure:
            where = "" if index == 0 else f" (at step {index + 1} of {len(recipe.steps)})"
            raise GraphoptError(
                f"recipe was made for a graph with structure {step.structure}, this graph has {actual}{where}: "
                "apply it to the same model, traced and canonicalised the same way"
            )
        groups = channel_groups(graph, heads=step.heads)
        by_anchor = {(a["weight"], tuple(a["axes"])): g for g in groups for a in [anchor_of(g)]}
        for entry in step.groups:
            key = (entry["anchor"]["weight"], tuple(entry["anchor"]["axes"]))
            group = by_anchor.get(key)
            if group is None:
                raise GraphoptError(f"recipe names a group anchored at {key[0]} axes {list(key[1])}, which this graph lacks")
            remove_channels(graph, group, np.asarray(entry["removed"], dtype=np.int64))
    return graph
