"""Drop recipes: which blocks were dropped, by name, as JSON that replays on the same model.

Like a pruning recipe, a recipe holds the structure hash of the graph it was
made for and the block names (stable: the source module of each merge), so
a dropped model is saved as the original model plus this file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from graphopt.analysis.residual_blocks import find_blocks
from graphopt.errors import GraphoptError
from graphopt.ir.graph import Graph
from graphopt.ir.serialize import register_meta_decoder

from ..prune.recipe import structure_hash
from .removal import drop_block

DROP_RECIPE_FORMAT = 1


@dataclass
class DropRecipe:
    """The blocks one `drop-layers` run removed, in the order it removed them."""

    structure: str
    blocks: list[str] = field(default_factory=list)
    graphopt_version: str = ""

    def to_json(self) -> str:
        return json.dumps({"format": DROP_RECIPE_FORMAT, "kind": "drop-layers", "graphopt": self.graphopt_version,
                           "structure": self.structure, "blocks": self.blocks}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> DropRecipe:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise GraphoptError(f"not a drop recipe (invalid JSON: {exc})") from None
        if not isinstance(data, dict) or data.get("kind") != "drop-layers":
            raise GraphoptError("not a drop recipe (no \"kind\": \"drop-layers\")")
        if data.get("format") != DROP_RECIPE_FORMAT:
            raise GraphoptError(f"unsupported drop recipe format {data.get('format')!r} "
                                f"(this graphopt reads {DROP_RECIPE_FORMAT})")
        return cls(data["structure"], list(data["blocks"]), data.get("graphopt", ""))


def apply_drop_recipe(graph: Graph, recipe: DropRecipe) -> Graph:
    """Drop the recipe's blocks from `graph` (in place); it must have the structure the recipe was made for."""
    actual = structure_hash(graph)
    if actual != recipe.structure:
        raise GraphoptError(f"drop recipe was made for a graph with structure {recipe.structure}, this graph has "
                            f"{actual}: apply it to the same model, traced and simplified the same way")
    found, replaced = find_blocks(graph), {}  # names refer to the blocks of the graph the recipe was made for
    for name in recipe.blocks:
        block = found.get(name)
        if block is None:
            raise GraphoptError(f"drop recipe names block {name!r}, which this graph lacks")
        drop_block(graph, block, replaced)
    return graph


# a graph saved with graphopt.ir.serialize keeps its recipes as JSON text: loaded, they are recipes again
register_meta_decoder("drop_recipes", DropRecipe.from_json)
