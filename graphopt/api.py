"""`graphopt.optimize`: trace, canonicalise, prune and lower a model in one call.

The one-call API is a thin layer over the pieces a user can also drive by hand
(`trace`, `PassManager`, the back-ends); it exists so the common case needs no
knowledge of them, and it always checks each pass (`verify=True`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Sequence

import torch

from graphopt.errors import GraphoptError
from graphopt.ir.graph import Graph


@dataclass
class OptimizeReport:
    """What `optimize` did: the pipeline, each pass's effect, and params/MACs before and after."""

    pipeline: str
    passes: Any  # graphopt.passmanager.PipelineReport
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    backend: str

    def __str__(self) -> str:
        return (f"pipeline: {self.pipeline}  (backend: {self.backend})\n{self.passes}\n"
                f"params {self.params_before:,} -> {self.params_after:,} "
                f"({self.params_after / max(self.params_before, 1):.1%}), "
                f"MACs {self.macs_before:,} -> {self.macs_after:,} ({self.macs_after / max(self.macs_before, 1):.1%})")


class OptimizedModel:
    """The optimized model: call it like the original; `.graph`, `.report`, `.torch_module()`."""

    def __init__(self, graph: Graph, report: OptimizeReport, runner: Callable[..., Any]) -> None:
        self.graph = graph
        self.report = report
        self._runner = runner

    def __call__(self, *inputs: Any) -> Any:
        with torch.no_grad():
            return self._runner(*inputs)

    @property
    def recipe(self):
        """The pruning recipe (`graphopt.passes.prune.PruneRecipe`), or None if nothing was pruned."""
        recipes = self.graph.meta.get("prune_recipes") or []
        if len(recipes) > 1:
            raise GraphoptError("several prune passes ran; their recipes are in graph.meta['prune_recipes']")
        return recipes[0] if recipes else None

    def save_recipe(self, path: str | os.PathLike) -> Path:
        """Write the pruning recipe as JSON: with the original model it rebuilds this one exactly."""
        if self.recipe is None:
            raise GraphoptError("nothing was pruned, so there is no recipe to save")
        return self.recipe.save(path)

    def torch_module(self) -> torch.nn.Module:
        """A trainable torch module of the optimized graph (fresh weights copy), e.g. to fine-tune."""
        from graphopt.backends.torch import to_module

        return to_module(self.graph)

    def __repr__(self) -> str:
        return f"<OptimizedModel {self.graph.name}: {self.report.params_after:,} params, backend {self.report.backend}>"


def _prune_step(prune: float | Mapping[str, Any]) -> Any:
    from graphopt.passes.prune import Prune

    if isinstance(prune, (int, float)) and not isinstance(prune, bool):
        return Prune(ratio=float(prune))
    if isinstance(prune, Mapping):
        return Prune(**dict(prune))
    raise GraphoptError(f"prune must be a ratio or a dict of Prune options, not {type(prune).__name__}")


def optimize(
    model: torch.nn.Module,
    example_inputs: Sequence[Any] | torch.Tensor,
    *,
    prune: float | Mapping[str, Any] | None = None,
    recipe: str | os.PathLike | Any | None = None,
    backend: Literal["torch", "onnx"] = "torch",
    verify: bool = True,
    dynamic: Any = "batch",
) -> OptimizedModel:
    """Trace `model`, canonicalise it, optionally prune it, and lower it to `backend`.

    `prune`: a ratio (`0.5`) or `Prune` options (`{"ratio": 0.5, "scope": "global", "round_to": 8}`).
    `recipe`: a saved pruning recipe (path or `PruneRecipe`) to replay instead of pruning afresh.
    With `verify`, every pass is checked against the graph before it on the example inputs
    (exact for canonicalisation, output shapes for pruning).
    """
    from graphopt.analysis.cost import estimate_cost
    from graphopt.frontends.torch import trace
    from graphopt.passmanager import PassManager, Verify
    from graphopt.passmanager.analysis import bindings_from_inputs

    inputs = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
    graph = trace(model, inputs, dynamic=dynamic)
    manager = PassManager.parse("canonicalize", instruments=[Verify()] if verify else [])
    if prune is not None:
        manager.add(_prune_step(prune))
    optimized, pass_report = manager.run(graph, inputs)
    if recipe is not None:
        if prune is not None:
            raise GraphoptError("give either prune= or recipe=, not both")
        from graphopt.passes.prune import PruneRecipe, apply_recipe

        loaded = recipe if isinstance(recipe, PruneRecipe) else PruneRecipe.load(recipe)
        apply_recipe(optimized, loaded)
        optimized.meta["prune_recipes"] = [loaded]

    bindings = bindings_from_inputs(graph, inputs)
    before, after = estimate_cost(graph, bindings=bindings), estimate_cost(optimized, bindings=bindings)
    report = OptimizeReport(str(manager), pass_report, before.total_params, after.total_params,
                            before.total_macs, after.total_macs, backend)
    if backend == "torch":
        from graphopt.backends.torch import to_module

        runner: Callable[..., Any] = to_module(optimized)
    elif backend == "onnx":
        from graphopt.backends import onnx as onnx_backend

        runner = onnx_backend.compile(optimized)
    else:
        raise GraphoptError(f"unknown backend '{backend}'; choose 'torch' or 'onnx'")
    return OptimizedModel(optimized, report, runner)
