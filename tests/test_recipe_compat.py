"""Recipes written by an earlier graphopt replay to the identical model.

The files in tests/golden/recipes were written by commit 6e72941 (before the op table, typed
analyses and rewrite-rule canonicalisation): `graphopt.optimize(model, inputs, prune=...)` on the
zoo's tiny models, then `save_recipe`. Replaying each recipe on the same model must give the same
inference graph, printed, and the same weights, bit for bit.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

import graphopt
from graphopt import models_zoo

GOLDEN = Path(__file__).parent / "golden" / "recipes"


def weights_digest(graph: graphopt.Graph) -> str:
    digest = hashlib.sha256()
    for name in sorted(graph.weights):
        tensor = graph.weights[name].data.detach().contiguous()
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


@pytest.mark.parametrize("name", ["resnet18", "llama"])  # channels with residuals; GQA + RoPE within heads
def test_a_recipe_from_before_replays_to_the_identical_model(name):
    model, inputs = models_zoo.get(name, "tiny")
    replayed = graphopt.optimize(model, inputs, recipe=GOLDEN / f"{name}_recipe.json")
    assert str(replayed.graph) + "\n" == (GOLDEN / f"{name}_graph.txt").read_text()
    expected = json.loads((GOLDEN / f"{name}_expected.json").read_text())
    assert weights_digest(replayed.graph) == expected["weights_sha256"]
