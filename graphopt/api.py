"""`graphopt.optimize`: trace, canonicalise, prune and lower a model in one call.

The one-call API is a thin layer over the pieces a user can also drive by hand
(`trace`, `PassManager`, the back-ends); it exists so the common case needs no
knowledge of them, and it always checks each pass (`verify=True`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Mapping, Sequence

import numpy as np
import torch

from graphopt.errors import GraphoptError, InputError
from graphopt.ir.graph import Graph
from graphopt.ir.interpreter import structured_outputs
from graphopt.artifacts import order_inputs


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
    prune: list[Any] = field(default_factory=list)  # PruneReport per prune step: per-group kept/total
    drop: list[Any] = field(default_factory=list)  # DropReport of drop_layers: blocks, scores, dropped
    quantize: list[Any] = field(default_factory=list)  # QuantizeReport: layers quantized / left float, errors
    weight_bytes_before: dict[str, int] = field(default_factory=dict)  # by element type (model size)
    weight_bytes_after: dict[str, int] = field(default_factory=dict)
    # stage (pipeline text) -> relative output error against the original model on the example inputs, after it
    drift: dict[str, float] = field(default_factory=dict)

    def __str__(self) -> str:
        pruned = "".join(f"{r.summary()}\n" for r in [*self.drop, *self.prune, *self.quantize])
        if self.quantize:
            pruned += (f"weight bytes {sum(self.weight_bytes_before.values()):,} -> "
                       f"{sum(self.weight_bytes_after.values()):,} ({dict(sorted(self.weight_bytes_after.items()))})\n")
        drift = "".join(f"output drift after {stage}: {error:.4f}\n" for stage, error in self.drift.items())
        return (f"pipeline: {self.pipeline}  (backend: {self.backend})\n{self.passes}\n{pruned}{drift}"
                f"params {self.params_before:,} -> {self.params_after:,} "
                f"({self.params_after / max(self.params_before, 1):.1%}), "
                f"MACs {self.macs_before:,} -> {self.macs_after:,} ({self.macs_after / max(self.macs_before, 1):.1%})")


class OptimizedModel:
    """The optimized model: call it like the original; `.graph`, `.report`, `.torch_module()`.

    `graph` is the inference graph (BatchNorms folded); `trainable_graph` is the same function
    before that folding, which is what `torch_module()` gives to fine-tune.
    """

    def __init__(self, graph: Graph, report: OptimizeReport, runner: Callable[..., Any],
                 trainable_graph: Graph | None = None) -> None:
        self.graph = graph
        self.trainable_graph = trainable_graph if trainable_graph is not None else graph
        self.report = report
        self._runner = runner

    def __call__(self, *inputs: Any, **named: Any) -> Any:
        """Run on torch tensors or numpy arrays (as traced: count, dtype, static sizes are checked first).

        Inputs go positionally in the graph's input order, or by the names forward() gave them
        (`opt(input_ids=ids, attention_mask=mask)`). The outputs have the original model's structure
        (a dict stays a dict) on every back-end.
        """
        tensors = _as_tensors(self._ordered(inputs, named) if named else inputs)
        self.graph.check_inputs(tensors, what="calling the optimized model")
        with torch.no_grad():
            outputs = self._runner(*tensors)
        if self.report.backend == "torch":  # the torch module already rebuilds the structure
            return outputs
        return structured_outputs(self.graph, list(outputs) if isinstance(outputs, tuple) else [outputs])

    def _ordered(self, positional: tuple, named: Mapping[str, Any]) -> tuple:
        """Positional and named inputs in the graph's input order; an unknown or repeated name is an InputError."""
        return order_inputs([v.name for v in self.graph.inputs], positional, named)

    def save(self, directory: str | os.PathLike, *, external_data: bool | None = None) -> Path:
        """Save the model as an artifact directory that `graphopt.load` runs in a fresh process.

        backend="onnx": `model.onnx` (and its weights' data file when they pass protobuf's 2 GB limit),
        loaded without torch. backend="torch": the graph (`graph.json` + `weights.safetensors`, see
        `graphopt.ir.serialize`) and, when it differs, the trainable graph before BatchNorm folding
        (`trainable.graph.json` + `trainable.weights.safetensors`), loaded as an `OptimizedModel`
        without the original model's code. Both write `manifest.json`: kind, format version, the
        versions it was built with, the inputs (forward()'s names and order, dtypes, shapes with
        symbolic axes named), the outputs and the structure that rebuilds them (a dict stays a
        dict), the pipeline, the report's summary, and the size and SHA-256 of every file. The
        directory is written all or nothing (see `graphopt.artifacts.write_directory`): an artifact
        already there is replaced only once the new one is complete. `external_data=True` / `False`
        (ONNX) always / never writes the weights to `model.onnx.data` (None: only past 2 GB).
        Returns the directory's absolute path.
        """
        from graphopt.artifacts import write_directory

        if self.report.backend == "torch":
            return write_directory(directory, self._write_torch)
        if self.report.backend == "tvm":  # TVM's own artifact (library + manifest), loadable without graphopt
            extra = {"structure": self._structure(), "pipeline": self.report.pipeline}
            return Path(self._runner.save(directory, extra=extra))
        if self.report.backend != "onnx":
            raise GraphoptError(f"saving a backend={self.report.backend!r} model is not supported")
        return write_directory(directory, lambda staging: self._write_onnx(staging, external_data))

    def _write_torch(self, staging: Path) -> dict:
        """Serialize the graph(s) into `staging` and return the manifest (write_directory adds the files)."""
        from graphopt.artifacts import TORCH_FORMAT, TORCH_FORMAT_VERSION, TORCH_GRAPH, TORCH_KIND
        from graphopt.ir.serialize import save_graph

        save_graph(self.graph, staging)
        trainable = self.trainable_graph is not self.graph
        if trainable:
            save_graph(self.trainable_graph, staging, prefix=TRAINABLE_PREFIX)
        return {"format": TORCH_FORMAT, "kind": TORCH_KIND, "format_version": TORCH_FORMAT_VERSION,
                "model": TORCH_GRAPH, "trainable": trainable, **self._manifest_common({})}

    def _structure(self) -> dict:
        """The JSON-safe description of the output structure that a loaded artifact rebuilds (a dict stays one)."""
        from graphopt.artifacts import encode_structure
        from graphopt.ir.interpreter import output_spec

        count = len(self.graph.outputs)
        return encode_structure(output_spec(self.graph, count), count)

    def _manifest_common(self, onnx_names: Mapping[str, str], **versions: str) -> dict:
        """The manifest fields every artifact kind shares: versions, inputs/outputs, structure, pipeline, report."""
        from graphopt import __version__

        def spec(value: Any) -> dict:
            entry = {"name": value.name, "dtype": str(value.dtype).replace("torch.", ""),
                     "shape": [int(d) if isinstance(d, int) or getattr(d, "is_Integer", False) else str(d)
                               for d in value.shape]}
            if value.name in onnx_names:
                entry["onnx_name"] = onnx_names[value.name]
            return entry

        report = self.report
        outputs = self.graph.outputs
        return {
            "graph": self.graph.name,
            "versions": {"graphopt": __version__, "torch": torch.__version__, **versions},
            "inputs": [spec(v) for v in self.graph.inputs],
            "outputs": [spec(v) for v in outputs],
            "structure": self._structure(),
            "pipeline": report.pipeline,
            "report": {"summary": str(report), "params_before": report.params_before,
                       "params_after": report.params_after, "macs_before": report.macs_before,
                       "macs_after": report.macs_after, "weight_bytes_before": dict(report.weight_bytes_before),
                       "weight_bytes_after": dict(report.weight_bytes_after)},
        }

    def _write_onnx(self, staging: Path, external_data: bool | None = None) -> dict:
        """Export the graph into `staging` and return its manifest (write_directory adds the files)."""
        import onnx
        import onnxruntime

        from graphopt.artifacts import ONNX_FORMAT, ONNX_FORMAT_VERSION, ONNX_KIND, ONNX_MODEL
        from graphopt.backends import onnx as onnx_backend

        onnx_backend.export(self.graph, staging / ONNX_MODEL, external_data=external_data)
        proto = onnx.load(str(staging / ONNX_MODEL), load_external_data=False)
        names = {v.name: i.name for v, i in zip(self.graph.inputs, proto.graph.input)}
        names.update({v.name: o.name for v, o in zip(self.graph.outputs, proto.graph.output)})
        return {
            "format": ONNX_FORMAT, "kind": ONNX_KIND, "format_version": ONNX_FORMAT_VERSION, "model": ONNX_MODEL,
            "opset": max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=None),
            **self._manifest_common(names, onnx=onnx.__version__, onnxruntime=onnxruntime.__version__),
        }

    @property
    def recipe(self):
        """The pruning recipe (`graphopt.passes.prune.PruneRecipe`, every prune step in order), or None."""
        from graphopt.passes.prune import PruneRecipe

        recipes = self.trainable_graph.meta.get("prune_recipes") or []
        return PruneRecipe.chain(recipes) if recipes else None

    def save_recipe(self, path: str | os.PathLike) -> Path:
        """Write the pruning recipe as JSON: with the original model it rebuilds this one exactly."""
        if self.recipe is None:
            raise GraphoptError("nothing was pruned, so there is no recipe to save")
        return self.recipe.save(path)

    def torch_module(self, *, trainable: bool = True) -> torch.nn.Module:
        """A torch module of the optimized model, with its own copy of the weights.

        `trainable=True`: BatchNorms kept, to fine-tune; its state dict is what, with the saved
        recipe, rebuilds a fine-tuned pruned model. `trainable=False`: the inference graph
        (BatchNorms folded), the fastest eager module.
        """
        from graphopt.backends.torch import to_module

        return to_module(self.trainable_graph if trainable else self.graph)

    def plot(self, path: str | os.PathLike, original: Callable[..., Any], inputs: Sequence[Any], *,
             runs: int = 20) -> Path:
        """Write the report plot (a PNG; matplotlib, `pip install graphopt[plot]`): latency against output drift
        for `original` and this model, timed side by side on `inputs`, and parameters per layer before and after.
        Returns the PNG's absolute path."""
        from graphopt.ir.interpreter import relative_error
        from graphopt.plot import Stage, params_per_layer, plot_stages, require_matplotlib
        from graphopt.timing import interleaved_medians

        require_matplotlib()
        inputs = _as_tensors(inputs)
        with torch.no_grad():
            expected, got = original(*inputs), self(*inputs)
            latency = interleaved_medians([lambda: original(*inputs), lambda: self(*inputs)], runs, warmup=2)
        def leaves(out: Any) -> list[torch.Tensor]:
            return [t for t in torch.utils._pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]

        drift = relative_error([leaves(expected)], [leaves(got)])
        named = original.named_parameters() if isinstance(original, torch.nn.Module) else ()
        stages = [Stage("original", latency[0], drift=0.0, params=params_per_layer((n, p.shape) for n, p in named),
                        params_total=self.report.params_before),
                  Stage(f"optimized ({self.report.backend})", latency[1], drift=drift,
                        params=params_per_layer((n, v.shape) for n, v in self.trainable_graph.params().items()),
                        params_total=self.report.params_after)]
        return plot_stages(stages, path, title=self.report.pipeline)

    def __repr__(self) -> str:
        return f"<OptimizedModel {self.graph.name}: {self.report.params_after:,} params, backend {self.report.backend}>"


TRAINABLE_PREFIX = "trainable."  # the torch artifact's second graph: before BatchNorm folding


def load_torch_artifact(directory: str | os.PathLike, manifest: Mapping[str, Any]) -> OptimizedModel:
    """The `OptimizedModel` a backend="torch" artifact holds (what `graphopt.load` returns for kind "torch"),
    after every file is checked against the manifest; its report is the saved one's summary."""
    import graphopt.passes  # noqa: F401 - registers the decoders of the pruning / drop recipes in graph.meta
    from graphopt.artifacts import TORCH_FORMAT_VERSION, check_files, check_manifest
    from graphopt.backends.torch import to_module
    from graphopt.ir.serialize import load_graph

    directory = Path(directory)
    check_manifest(directory, dict(manifest), TORCH_FORMAT_VERSION)
    check_files(directory, dict(manifest))
    graph = load_graph(directory)
    trainable = load_graph(directory, prefix=TRAINABLE_PREFIX) if manifest.get("trainable") else graph
    saved = manifest.get("report", {})
    summary = f"loaded from {directory}; as saved:\n{saved.get('summary', '')}"
    report = OptimizeReport(manifest.get("pipeline", ""), summary, saved.get("params_before", 0),
                            saved.get("params_after", 0), saved.get("macs_before", 0), saved.get("macs_after", 0),
                            "torch",
                            weight_bytes_before=dict(saved.get("weight_bytes_before", {})),
                            weight_bytes_after=dict(saved.get("weight_bytes_after", {})))
    return OptimizedModel(graph, report, to_module(graph), trainable)


def _prune_steps(prune: float | Mapping[str, Any], steps: int, backend: str = "torch") -> list[Any]:
    """The Prune pass of each step: `steps` equal steps that compound to the requested amount.

    Building the passes validates their options, so a bad value fails here, before tracing. A latency
    budget is measured on `backend` (optimize's) unless `latency_backend` says otherwise; that back-end
    is imported here, which registers its latency runner (the pass looks it up by name).
    """
    from graphopt.passes.prune import BUDGET_OPTIONS, Prune

    if isinstance(prune, (int, float)) and not isinstance(prune, bool):
        options: dict[str, Any] = {"ratio": float(prune)}
    elif isinstance(prune, Mapping):
        options = dict(prune)
    else:
        raise GraphoptError(f"prune must be a ratio or a dict of Prune options, not {type(prune).__name__}")
    if not isinstance(steps, int) or steps < 1:
        raise GraphoptError(f"steps must be a positive integer, not {steps!r}")
    if options.get("target_latency") is not None and options.get("latency_backend") is None:
        options["latency_backend"] = backend
    single = Prune(**options)  # the options as the user gave them: their errors name what the user wrote
    if single.target_latency is not None:
        _import_latency_backend(single.latency_backend)
    if steps == 1:
        return [single]
    # keep (1 - ratio) overall: keep (1 - ratio) ** (1 / steps) at each step (or the target's root)
    targets = [key for key in BUDGET_OPTIONS if options.get(key) is not None]
    for key in targets:
        options[key] = options[key] ** (1.0 / steps)
    if not targets:
        options["ratio"] = 1.0 - (1.0 - single.ratio) ** (1.0 / steps)
    return [Prune(**options) for _ in range(steps)]


def _reaimed(step: Any, count: int, index: int, kept: float) -> Any:
    """Step `index` of `count` aimed at what the steps before it left of the whole budget.

    Each step lands within 5 % of its own target; aimed at the same root every
    time, three steps could miss the total by 15 % (the 48-channel CNN missed
    50 % by 7 %). Aimed at the rest of the total (`kept`: the fraction of the
    budget's metric the steps so far kept, latency as measured), the last
    step's tolerance is the total's. A ratio step is returned as is.
    """
    from graphopt.passes.prune import BUDGET_OPTIONS, Prune

    options = step.option_values()
    key = next((k for k in BUDGET_OPTIONS if options.get(k) is not None), None)
    if key is None or index == 0:
        return step
    total = options[key] ** count  # each step's option is the count-th root of the total
    rest = (total / kept) ** (1.0 / (count - index))
    given = {k: v for k, v in options.items() if k in step._given}
    return Prune(**{**given, key: min(1.0, rest)})


def _import_latency_backend(name: str) -> None:
    """Import back-end `name` so that its latency runner is registered; a missing dependency is named now."""
    import importlib

    if name in ("onnx", "torch", "tvm"):
        try:
            importlib.import_module(f"graphopt.backends.{name}")
            if name in ("onnx", "tvm"):  # the table of backend="tvm" is measured on ONNX Runtime
                importlib.import_module("graphopt.backends.onnx")
                importlib.import_module("onnxruntime")
        except ImportError as exc:
            raise GraphoptError(f"prune: target_latency on {name!r} needs {exc.name} ({exc}); pip install "
                                f"graphopt[{'onnx' if name != 'tvm' else 'tvm,onnx'}]") from None


def _drop_pass(drop_layers: int | float | Mapping[str, Any], recipe: Any) -> Any:
    """The DropLayers pass for `drop_layers=` (a count, a fraction or options), built (so checked) before tracing."""
    from graphopt.passes.drop_layers import DropLayers

    if recipe is not None:
        raise GraphoptError("give either drop_layers= or recipe=, not both (a recipe replays on the undropped model)")
    if isinstance(drop_layers, bool) or not isinstance(drop_layers, (int, float, Mapping)):
        raise GraphoptError(f"drop_layers must be a block count, a fraction or a dict of DropLayers options, "
                            f"not {type(drop_layers).__name__}")
    if isinstance(drop_layers, Mapping):
        return DropLayers(**drop_layers)
    return DropLayers(count=drop_layers) if isinstance(drop_layers, int) else DropLayers(fraction=drop_layers)


def _quantize_pass(quantize: str | Mapping[str, Any]) -> Any:
    """The Quantize pass for `quantize=` (a mode or options), built (so checked) before tracing."""
    from graphopt.passes.quantize import Quantize

    if isinstance(quantize, str):
        return Quantize(mode=quantize)
    if isinstance(quantize, Mapping):
        return Quantize(**quantize)
    raise GraphoptError(f"quantize must be a mode or a dict of Quantize options, not {type(quantize).__name__}")


# The stage that structural passes (drop_layers, prune, a replayed recipe) run after: BatchNorms kept.
# A recipe is made on, and checked against, the graph this stage gives (graphopt.train writes one too).
STRUCTURAL_STAGE = "simplify"


def _shortcut_stages(run: _Pipeline, graph: Graph, drop_pass: Any, prune_passes: list[Any], recipe: Any,
                     finetune: Any, quantize_pass: Any) -> tuple[Graph, Graph]:
    """(trainable graph, optimized graph) of the shortcuts: canonicalise, drop layers, prune, quantize."""
    structural = bool(prune_passes) or recipe is not None or drop_pass is not None
    # Pruning (and fine-tuning between steps) works on the graph with its BatchNorms, which
    # `canonicalize` folds at the end: fine-tuning a pruned network without its norms loses points.
    trainable = run.stage(STRUCTURAL_STAGE if structural else "canonicalize", graph)
    if drop_pass is not None:  # depth first, then width: pruning ranks the channels of the blocks that stay
        trainable = run.stage(drop_pass, trainable)
    kept = 1.0  # of the budget's metric, by the steps so far (every step has the same budget)
    for index, step in enumerate(prune_passes):
        trainable = run.stage(_reaimed(step, len(prune_passes), index, kept), trainable)
        for stats in run.reports[-1].stats("prune"):
            if stats.achieved_fraction is not None:  # latency: as measured on its back-end
                kept *= stats.achieved_fraction
        if finetune is not None:
            _finetune(trainable, finetune, index)
    if recipe is not None:
        trainable = _replay(trainable, recipe)
    optimized = run.stage("canonicalize", trainable) if structural else trainable
    if quantize_pass is not None:  # last: pruning and fine-tuning work in float
        optimized = trainable = run.stage(quantize_pass, optimized)
    return trainable, optimized


def _check_passes(passes: str | None, **shortcuts: Any) -> None:
    """`passes=` replaces the shortcuts; its pipeline text is parsed (so checked) before tracing."""
    if passes is None:
        return
    given = [name for name, value in shortcuts.items() if value is not None]
    if given:
        raise GraphoptError(f"passes= is the whole pipeline; it replaces {'=, '.join(given)}=: put those passes in "
                            f"the pipeline text instead (e.g. 'canonicalize,prune{{ratio=0.3}}')")
    from graphopt.passmanager import PassManager

    pending = list(PassManager.parse(passes).steps)
    while pending:  # a latency budget's back-end registers its runner when imported (named pipelines too)
        step = pending.pop()
        pending.extend(getattr(step, "steps", None) or [])
        if getattr(step, "target_latency", None) is not None:
            _import_latency_backend(step.latency_backend or "onnx")


def _check_arguments(prune: Any, recipe: Any, finetune: Any, backend: str, tune: Any) -> None:
    """The argument errors `optimize` can see before tracing the model."""
    if recipe is not None and prune is not None:
        raise GraphoptError("give either prune= or recipe=, not both")
    if finetune is not None and prune is None:
        raise GraphoptError("finetune= runs between pruning steps; give prune= too")
    if backend not in ("torch", "onnx", "tvm"):
        raise GraphoptError(f"unknown backend '{backend}'; choose 'torch', 'onnx' or 'tvm'")
    if tune is not None and backend != "tvm":
        raise GraphoptError(f"tune= is TVM's tuning budget; backend={backend!r} does not tune (use backend='tvm')")
    if backend == "tvm":
        try:
            from graphopt.backends.tvm.tuning import Budget
        except ImportError as exc:
            raise GraphoptError(f"backend='tvm' needs Apache TVM ({exc}); pip install graphopt[tvm]") from None
        Budget.parse(tune)  # a malformed budget fails now, not after tracing


def _is_onnx_model(model: Any) -> bool:
    """Whether `model` is an ONNX model (a .onnx path or a ModelProto) rather than a torch module; a path that
    is not an ONNX file is a mistake named now."""
    if isinstance(model, torch.nn.Module):
        return False
    if isinstance(model, (str, os.PathLike)):
        path = Path(model)
        if path.suffix != ".onnx":
            raise GraphoptError(f"model {str(model)!r} is a path but not an .onnx file: give a torch module or an "
                                f"ONNX model (.onnx path or onnx.ModelProto)")
        if not path.is_file():
            raise GraphoptError(f"ONNX file {path} does not exist")
        return True
    if type(model).__name__ == "ModelProto" and type(model).__module__.startswith("onnx"):
        return True
    raise GraphoptError(f"model must be a torch.nn.Module or an ONNX model (.onnx path or onnx.ModelProto), "
                        f"not {type(model).__name__}")


def _inputs_like(graph: Graph, size: int = 2) -> tuple:
    """Example inputs for an imported graph: random floats, integers all ones, booleans true; symbolic axes
    of `size`."""
    inputs = []
    generator = torch.Generator().manual_seed(0)
    for value in graph.inputs:
        shape = [int(d) if isinstance(d, int) or getattr(d, "is_Integer", False) else size for d in value.shape]
        if value.dtype.is_floating_point:
            inputs.append(torch.randn(shape, generator=generator).to(value.dtype))
        else:
            inputs.append(torch.ones(shape, dtype=value.dtype))
    return tuple(inputs)


def optimize(
    model: torch.nn.Module | str | os.PathLike | Any,
    example_inputs: Sequence[Any] | torch.Tensor | None = None,
    *,
    prune: float | Mapping[str, Any] | None = None,
    drop_layers: int | float | Mapping[str, Any] | None = None,
    recipe: str | os.PathLike | Any | None = None,
    quantize: str | Mapping[str, Any] | None = None,
    calibration_data: Iterable[Any] | None = None,
    loss: Callable[[Any, Any], torch.Tensor] | None = None,
    steps: int = 1,
    finetune: Callable[[torch.nn.Module, int], Any] | None = None,
    backend: Literal["torch", "onnx", "tvm"] = "torch",
    target: Any = None,
    tune: Any = None,
    passes: str | None = None,
    verify: bool = True,
    dynamic: Any = "batch",
) -> OptimizedModel:
    """Trace `model`, canonicalise it, optionally prune it, and lower it to `backend`.

    `model`: a torch module, or an ONNX model (a `.onnx` path or an `onnx.ModelProto`), imported with
    its own symbolic axes; for an ONNX model `example_inputs` may be omitted (random floats, integer
    inputs all ones, symbolic axes of size 2: give real examples when the values matter).

    `prune`: a ratio (`0.5`) or `Prune` options (`{"ratio": 0.5, "scope": "global", "round_to": 8}`,
    `{"target_macs": 0.5, "criterion": "taylor", "reconstruct": True}`); they are checked before tracing.
    `drop_layers`: drop residual blocks before pruning: a count (`2`), a fraction (`0.25`) or `DropLayers`
    options (`{"count": 2, "granularity": "mlp", "recover": True}`); checked before tracing.
    `recipe`: a saved pruning recipe (path or `PruneRecipe`) to replay instead of pruning afresh.
    `quantize`: a mode ("int8", "int8-dynamic", "int8-weight", "int4-weight") or `Quantize` options
    (`{"mode": "int8", "observer": "percentile", "keep_float": 2}`); runs last, after pruning, on the
    calibration data; checked before tracing. `torch_module()` then simulates the quantized arithmetic.
    `calibration_data`: batches of model inputs for data-driven criteria (taylor, activation,
    fluctuation) and reconstruction; with `loss(output, target)`, `(inputs, target)` pairs, and
    Taylor scores use that loss. Without it the example inputs are the calibration batch.
    `steps` / `finetune`: prune in `steps` equal steps; after each, `finetune(module, step)` gets the
    trainable torch module of the pruned graph, and its weights are read back before the next step.
    With `verify`, every pass is checked against the graph before it on the example inputs
    (exact for canonicalisation, output shapes for pruning).
    `passes`: a pipeline text (`"canonicalize,prune{ratio=0.3,criterion=taylor},quantize"`) run instead of
    the shortcuts (prune=, drop_layers=, quantize=, recipe=, which it replaces), parsed before tracing.
    `dynamic`: the axes that stay symbolic, as for `trace`: "batch" (axis 0 of every tensor input,
    kept dynamic even in a batch-1 example), a mapping {input_index: {axis: name}}, or None (static).
    `backend="tvm"`: compiled by Apache TVM for `target` (default: this CPU) at the example inputs'
    sizes, tuned for `tune` (trials, or a time such as "10min"; the records are kept and reused
    across compiles); convolutional graphs are compiled in NHWC, measured faster on this CPU. Without
    a tuning budget the build runs on TVM's default schedules, far slower than ONNX Runtime: a
    warning says so and what to pass.
    """
    onnx_model = _is_onnx_model(model)
    _check_arguments(prune, recipe, finetune, backend, tune)
    _check_passes(passes, prune=prune, drop_layers=drop_layers, quantize=quantize, recipe=recipe)
    inputs = _example_tuple(example_inputs) if example_inputs is not None or not onnx_model else None
    prune_passes = _prune_steps(prune, steps, backend) if prune is not None else []
    drop_pass = _drop_pass(drop_layers, recipe) if drop_layers is not None else None
    quantize_pass = _quantize_pass(quantize) if quantize is not None else None
    if onnx_model:
        from graphopt.frontends.onnx import load as load_onnx

        graph = load_onnx(model)
        inputs = _inputs_like(graph) if inputs is None else inputs
    else:
        from graphopt.frontends.torch import trace

        graph = trace(model, inputs, dynamic=dynamic)
    # non-tensor arguments (flags, sizes) are constants of the trace: the graph's inputs are the tensors
    tensors = tuple(x for x in inputs if isinstance(x, torch.Tensor))
    inputs = tensors if len(tensors) == len(graph.inputs) else inputs
    run = _Pipeline(inputs, None if calibration_data is None else list(calibration_data), loss, verify, graph)
    if passes is not None:
        optimized = trainable = run.stage(passes, graph)
    else:
        trainable, optimized = _shortcut_stages(run, graph, drop_pass, prune_passes, recipe, finetune, quantize_pass)
    report = _report(run, graph, optimized, inputs, backend)
    return OptimizedModel(optimized, report, _runner(optimized, backend, inputs, target, tune), trainable)


def _example_tuple(example_inputs: Any) -> tuple:
    """The example inputs as a tuple (one tensor is a 1-tuple); anything else is a mistake named now."""
    if isinstance(example_inputs, (torch.Tensor, np.ndarray)):
        return _as_tensors([example_inputs])
    if not isinstance(example_inputs, (tuple, list)) or not example_inputs:
        raise InputError(f"example_inputs must be a tensor or a non-empty tuple of the model's inputs, "
                         f"e.g. (torch.randn(1, 3, 224, 224),); got {example_inputs!r:.80}")
    return _as_tensors(example_inputs)


def _as_tensors(values: Sequence[Any]) -> tuple:
    """`values` with numpy arrays as torch tensors (sharing memory); everything else as given."""
    return tuple(torch.from_numpy(x) if isinstance(x, np.ndarray) else x for x in values)


@dataclass
class _Pipeline:
    """The stages `optimize` runs, each a PassManager over the same inputs, and their reports."""

    inputs: tuple
    calibration: list | None
    loss: Callable[[Any, Any], Any] | None
    verify: bool
    original: Graph | None = None  # the traced graph: each stage's drift is measured against it
    managers: list[Any] = field(default_factory=list)
    reports: list[Any] = field(default_factory=list)
    drift: dict[str, float] = field(default_factory=dict)  # stage -> relative output error vs the original
    reference: list | None = None  # the original's outputs on the inputs, computed at the first stage that changes

    def stage(self, step: Any, graph: Graph) -> Graph:
        """Run one stage (pipeline text or a pass) on `graph`; its report joins the others, and how far its
        result's outputs are from the original model's on the example inputs joins `drift`."""
        from graphopt.passmanager import PassManager, Verify

        manager = PassManager([step], instruments=[Verify()] if self.verify else [])
        self.managers.append(manager)
        result, report = manager.run(graph, self.inputs, calibration_data=self.calibration, loss=self.loss)
        self.reports.append(report)
        if self.original is not None and report.modified:
            self.drift[str(manager)] = self._drift(result)
        return result

    def _drift(self, graph: Graph) -> float:
        from graphopt.ir.interpreter import relative_error, run_graph

        if self.reference is None:
            self.reference = [run_graph(self.original, self.inputs)]
        return relative_error(self.reference, [run_graph(graph, self.inputs)])


def _finetune(graph: Graph, finetune: Callable[[torch.nn.Module, int], Any], step: int) -> None:
    """Hand the user the trainable module of `graph`, then read its weights back into the graph."""
    from graphopt.backends.torch import load_weights, to_module

    module = to_module(graph)
    finetune(module, step)
    load_weights(graph, module)


def _replay(graph: Graph, recipe: str | os.PathLike | Any) -> Graph:
    """`graph` with a saved recipe's channels removed (in place), and the recipe kept in its meta."""
    from graphopt.passes.prune import PruneRecipe, apply_recipe

    loaded = recipe if isinstance(recipe, PruneRecipe) else PruneRecipe.load(recipe)
    apply_recipe(graph, loaded)
    graph.meta["prune_recipes"] = [loaded]
    return graph


def _report(run: _Pipeline, graph: Graph, optimized: Graph, inputs: tuple, backend: str) -> OptimizeReport:
    """Every stage's pass records in one pipeline report, with params/MACs before and after."""
    from graphopt.analysis import bindings_from_inputs, estimate_cost
    from graphopt.passmanager import PipelineReport

    pipeline = ",".join(str(m) for m in run.managers)
    merged = PipelineReport(pipeline, [r for report in run.reports for r in report.records],
                            sum(r.seconds for r in run.reports))
    bindings = bindings_from_inputs(graph, inputs)
    before, after = estimate_cost(graph, bindings=bindings), estimate_cost(optimized, bindings=bindings)
    return OptimizeReport(pipeline, merged, before.total_params, after.total_params,
                          before.total_macs, after.total_macs, backend, merged.stats("prune"),
                          drop=merged.stats("drop-layers"), quantize=merged.stats("quantize"),
                          weight_bytes_before=before.weight_bytes, weight_bytes_after=after.weight_bytes,
                          drift=dict(run.drift))


def _runner(graph: Graph, backend: str, inputs: tuple = (), target: Any = None,
            tune: Any = None) -> Callable[..., Any]:
    """The callable that runs `graph` on `backend` (TVM: compiled at the sizes of `inputs`)."""
    if backend == "onnx":
        from graphopt.backends import onnx as onnx_backend

        return onnx_backend.compile(graph)
    if backend == "tvm":
        from graphopt.backends import tvm as tvm_backend

        convolutional = any(n.op == "conv" and n.inputs[1].rank == 4 for n in graph.nodes)
        return tvm_backend.compile(graph, target=target, tune=tune, example_inputs=inputs, pipeline=None,
                                   layout="NHWC" if convolutional else None)
    from graphopt.backends.torch import to_module

    return to_module(graph)
