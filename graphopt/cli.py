"""The `graphopt` command line: optimize, bench, demo, inspect and zoo listing.

argparse (standard library) parses the commands; rich draws the tables. Errors are one line
on stderr: exit code 2 for a usage error (an invalid option, an unknown model or mode),
1 for a failure (a missing or unreadable file, a model that does not trace or compile).
docs/cli.md is the reference.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections import Counter
from typing import Sequence

import torch
from rich.console import Console
from rich.table import Table

import graphopt
from graphopt import models_zoo
from graphopt.backends.torch import to_module
from graphopt.errors import GraphoptError
from graphopt.timing import median_seconds


def _load_zoo(name: str, size: str, batch: int = 2):
    """A zoo model and its example inputs at `batch` (batch 1 keeps the batch axis dynamic too)."""
    if batch < 1:
        raise GraphoptError(f"--batch must be at least 1, not {batch}")
    try:
        return models_zoo.get(name, size, batch_size=batch)
    except KeyError as exc:
        raise GraphoptError(str(exc).strip("'\"")) from None


def _timed(fn, *args, repeat: int = 5) -> float:
    """Median seconds of `fn(*args)` after one warm-up call, without autograd."""
    with torch.no_grad():
        return median_seconds(fn, *args, repeat=repeat, warmup=1)


def cmd_explain(args: argparse.Namespace, console: Console) -> int:
    """The explain demo (`graphopt demo --explain`): trace a zoo model, canonicalise it, analyse its channels,
    lower it, check it, and report."""
    model, inputs = _load_zoo(args.model, args.size, args.batch)
    spec = models_zoo.spec(args.model)
    console.print(f"[bold]graphopt demo[/bold]: {args.model} ({args.size}, batch {args.batch}) - {spec.description}")

    start = time.perf_counter()
    traced = graphopt.trace(model, inputs, dynamic=spec.dynamic_axes)
    trace_s = time.perf_counter() - start
    traced.verify()

    pipeline = graphopt.PassManager.parse("canonicalize")
    graph, report = pipeline.run(traced, example_inputs=inputs)  # verified against the traced graph
    console.print(f"[bold]pipeline[/bold] {pipeline}")
    sys.stdout.write(f"{report}\n")

    from graphopt.analysis import analyse_with_stats

    channels = analyse_with_stats(graph)
    module = to_module(graph)
    with torch.no_grad():
        expected, got = model(*inputs), module(*inputs)
        wider = tuple(torch.cat([x] * 3) for x in inputs) if "batch" in graph.symbols() else None  # zoo: batch first
        expected_wide = model(*wider) if wider is not None else None
    torch.testing.assert_close(got, expected)
    max_diff = max((g - e).abs().max().item() for g, e in zip(_leaves(got), _leaves(expected)))

    table = Table(title=f"{args.model}: trace -> canonicalize -> torch")
    table.add_column("step")
    table.add_column("result", justify="right")
    table.add_row("trace (torch.export + import)", f"{trace_s:.2f} s")
    table.add_row("IR nodes traced -> canonical", f"{len(traced.nodes)} -> {len(graph.nodes)}")
    table.add_row("parameters", f"{graph.num_params():,}")
    table.add_row("dynamic axes", ", ".join(sorted(graph.symbols())) or "none")
    if wider is not None:
        _check(module, wider, expected_wide)
        table.add_row(f"graphopt torch module at batch {wider[0].shape[0]}", "checked")
    table.add_row("channel groups (prunable)", f"{len(channels.groups)} ({len(channels.prunable())})")
    table.add_row("max |graphopt - torch|", f"{max_diff:.2e}")
    table.add_row("torch eager latency (median)", f"{_timed(model, *inputs) * 1e3:.2f} ms")
    table.add_row("graphopt torch module latency", f"{_timed(module, *inputs) * 1e3:.2f} ms")
    ort = _onnx_runtime(graph)
    if ort is not None:
        with torch.no_grad():
            torch.testing.assert_close(ort(*inputs), expected, atol=1e-4, rtol=1e-4)
        table.add_row("ONNX Runtime latency (checked, 1e-4)", f"{_timed(ort, *inputs) * 1e3:.2f} ms")
        if wider is not None:
            _check(ort, wider, expected_wide, atol=1e-4, rtol=1e-4)
            table.add_row(f"ONNX Runtime at batch {wider[0].shape[0]}", "checked")
    console.print(table)

    ops = Counter(node.op for node in graph.nodes)
    op_table = Table(title="ops in the canonical graph")
    op_table.add_column("op")
    op_table.add_column("count", justify="right")
    for op, count in ops.most_common():
        op_table.add_row(op, str(count))
    console.print(op_table)
    return 0


def _check(runner, inputs, expected, **tolerance) -> None:
    """`runner` computes on `inputs` what the model did (`expected`, computed once for every runner)."""
    with torch.no_grad():
        got = runner(*inputs)
    torch.testing.assert_close(got, expected, **tolerance)


def _onnx_runtime(graph):
    """An ONNX Runtime callable for the graph, or None when the [onnx] extra is not installed."""
    try:
        from graphopt.backends import onnx as onnx_backend
    except ImportError:
        return None
    return onnx_backend.compile(graph)


def _leaves(out) -> list[torch.Tensor]:
    from torch.utils import _pytree as pytree

    return [t for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]


def cmd_inspect(args: argparse.Namespace, console: Console) -> int:
    """Print the IR of a model (zoo, ONNX file or factory), or its channel groups (`--groups`), optionally
    as a picture, or its residual blocks (`--blocks`)."""
    # a bare zoo name (`graphopt inspect resnet18`) is what inspect took first; it still works
    source = ModelSource(f"zoo:{args.model}" if args.model in models_zoo.list_models() else args.model)
    if args.picture:  # a path that cannot be written is a mistake to report before tracing
        from graphopt.analysis.channel_view import check_picture_path

        check_picture_path(args.picture)
    model, inputs, dynamic = source.load(size=args.size, batch=args.batch, input_shapes=args.input_shape or ())
    if source.kind == "onnx":
        from graphopt.frontends.onnx import load as load_onnx

        graph = load_onnx(model)
    else:
        graph = graphopt.trace(model, inputs, dynamic=dynamic)
    args.model = source.name
    if args.blocks:
        return _inspect_blocks(args.model, graph, inputs, console, args.metric)
    if not (args.groups or args.picture):
        sys.stdout.write(graph.format(source=args.source, weights=not args.no_weights) + "\n")
        return 0
    from graphopt.analysis import analyse_with_stats
    from graphopt.analysis.channel_view import group_rows, write_picture

    result = analyse_with_stats(graph)
    table = Table(title=f"{args.model}: {len(result.groups)} channel groups, {len(result.prunable())} prunable "
                        f"({result.seconds * 1e3:.0f} ms)")
    rows = group_rows(result.groups)
    for column in rows[0] if rows else ():
        table.add_column(column)
    for row in rows:
        table.add_row(*row.values())
    console.print(table)
    if args.picture:
        path = write_picture(graph, result.groups, args.picture)
        console.print(f"wrote {path}")
    return 0


def _inspect_blocks(name: str, graph, inputs, console: Console, metric: str = "auto") -> int:
    """The residual blocks `drop-layers` would rank: kind, params, MACs and its score on the example input."""
    from graphopt.analysis import bindings_from_inputs
    from graphopt.analysis.residual_blocks import find_blocks
    from graphopt.passes.drop_layers import block_scores

    found = find_blocks(graph, bindings=bindings_from_inputs(graph, inputs))
    label, scores = block_scores(graph, found.blocks, [inputs], metric) if found.blocks else (metric, {})
    table = Table(title=f"{name}: {len(found)} residual blocks, {len(found.droppable())} droppable",
                  caption=f"score: {label}, each block dropped alone, on the example input (low: droppable)")
    table.add_column("block", overflow="fold")
    table.add_column("kind")
    for column in ("params", "MACs", "score"):
        table.add_column(column, justify="right")
    table.add_column("droppable", overflow="fold")
    for block in found:
        score = scores.get(block.name)
        table.add_row(block.name, block.kind, f"{block.params:,}", f"{block.macs:,}",
                      "-" if score is None else f"{score:.4f}", "yes" if block.droppable else f"no: {block.why_not}")
    console.print(table if found.blocks else f"{name}: no residual blocks")
    return 0


def cmd_zoo(args: argparse.Namespace, console: Console) -> int:
    """List the reference models."""
    table = Table(title="graphopt.models_zoo")
    for column in ("name", "family", "sizes", "description"):
        table.add_column(column)
    for name in models_zoo.list_models():
        spec = models_zoo.spec(name)
        table.add_row(name, spec.family, ", ".join(spec.sizes), spec.description)
    console.print(table)
    return 0


# ============================================================================ errors and stage lines
class UsageError(GraphoptError):
    """An invalid command line (option value, model spec): exit code 2, before any work."""


class Failure(Exception):
    """A failure once the work started (tracing, passes, compiling, saving, a file): exit code 1."""


class _OneLineParser(argparse.ArgumentParser):
    """argparse with its errors as one line on stderr (exit code 2), not the usage block."""

    def error(self, message: str):  # noqa: D102 - argparse's hook
        _error_line(f"{self.prog}: {message} (see {self.prog} --help)")
        sys.exit(2)


_STARTED = time.perf_counter()


def _stage(text: str) -> None:
    """A short progress line on stderr: `[  1.2s] text`."""
    sys.stderr.write(f"[{time.perf_counter() - _STARTED:6.1f}s] {text}\n")
    sys.stderr.flush()


class _working:
    """Within it, any exception is a Failure (exit code 1) with a one-line reason (GRAPHOPT_TRACEBACK=1: raise)."""

    def __init__(self, what: str) -> None:
        self.what = what

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        import os

        if exc is None or isinstance(exc, (Failure, KeyboardInterrupt, SystemExit)) or os.environ.get("GRAPHOPT_TRACEBACK"):
            return False
        reason = str(exc) if isinstance(exc, (GraphoptError, OSError)) else f"{type(exc).__name__}: {exc}"
        raise Failure(f"{self.what} failed: {reason}") from exc


# ============================================================================ MODEL: zoo:NAME, FILE.onnx, module:factory
class ModelSource:
    """A MODEL argument, checked (`check`) before anything is loaded, then loaded (`load`)."""

    def __init__(self, text: str) -> None:
        import re
        from pathlib import Path

        self.text = text
        self.path = None
        if text.startswith("zoo:"):
            self.kind, self.name = "zoo", text[4:]
            if self.name not in models_zoo.list_models():
                raise UsageError(f"unknown zoo model {self.name!r}; `graphopt zoo` lists them "
                                 f"({', '.join(models_zoo.list_models())})")
        elif text.lower().endswith(".onnx"):
            self.kind, self.name, self.path = "onnx", Path(text).stem, Path(text)
            if not self.path.is_file():
                raise FileNotFoundError(f"no such ONNX file: {text}")
            with open(self.path, "rb") as handle:  # unreadable: an OSError now, not while tracing
                handle.read(1)
        elif re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", text):
            self.kind, self.name = "factory", text.split(":")[1]
            self.factory = _import_factory(text)  # an import error now, before any stage starts
        elif Path(text).exists():
            raise UsageError(f"MODEL {text!r} is not an .onnx file; give zoo:NAME, FILE.onnx or module.path:factory")
        else:
            raise UsageError(f"MODEL {text!r}: no such file, and not zoo:NAME, FILE.onnx or module.path:factory")

    def load(self, *, size: str = "tiny", batch: int = 2, input_shapes: Sequence[str] = ()) -> tuple:
        """(model, example_inputs, dynamic) for `optimize`: a torch module or an ONNX path, and its inputs."""
        if self.kind == "zoo":
            model, inputs = _load_zoo(self.name, size, batch)
            return model, tuple(inputs), models_zoo.spec(self.name).dynamic_axes
        if self.kind == "onnx":
            return str(self.path), _onnx_example_inputs(self.path, batch), "batch"
        return (*_load_factory(self.text, input_shapes), "batch")

    def runner(self, model: object):
        """A callable on torch tensors that runs the original model (torch module or ONNX Runtime)."""
        if self.kind != "onnx":
            model.eval()
            return lambda *xs: model(*xs)
        import onnxruntime as ort

        session = ort.InferenceSession(str(self.path), providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]
        return lambda *xs: session.run(None, {n: x.numpy() if hasattr(x, "numpy") else x for n, x in zip(names, xs)})


def _parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(part) for part in text.replace("x", ",").split(",") if part.strip())
    except ValueError:
        raise UsageError(f"--input-shape {text!r}: give sizes separated by commas, e.g. 1,3,224,224") from None
    if not shape or min(shape) < 1:
        raise UsageError(f"--input-shape {text!r}: give positive sizes, e.g. 1,3,224,224")
    return shape


def _import_factory(text: str):
    """The callable `factory` of `module.path:factory` (the current directory is on the import path)."""
    import importlib
    import os

    module_name, factory_name = text.split(":")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # `graphopt optimize mymodels:build` finds mymodels.py here
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise Failure(f"cannot import {module_name!r} for MODEL {text!r}: {exc}") from None
    factory = getattr(module, factory_name, None)
    if not callable(factory):
        raise UsageError(f"{module_name} has no callable {factory_name!r} (MODEL {text!r})")
    return factory


def _load_factory(text: str, input_shapes: Sequence[str]) -> tuple:
    """Call `factory()` of `module.path:factory`: (model, example_inputs), or a model plus --input-shape."""
    factory = _import_factory(text)
    with _working(f"calling {text}()"):
        made = factory()
    if isinstance(made, tuple) and len(made) == 2 and isinstance(made[0], torch.nn.Module):
        model, inputs = made
        inputs = (inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs)
    elif isinstance(made, torch.nn.Module):
        if not input_shapes:
            raise UsageError(f"{text}() returned a model without example inputs: give --input-shape "
                             f"(e.g. --input-shape 1,3,224,224), or return (model, example_inputs)")
        model = made
        generator = torch.Generator().manual_seed(0)
        inputs = tuple(torch.randn(_parse_shape(s), generator=generator) for s in input_shapes)
    else:
        raise UsageError(f"{text}() must return a torch module or (module, example_inputs), "
                         f"not {type(made).__name__}")
    return model.eval(), inputs


_ONNX_DTYPES = {1: "float32", 2: "uint8", 3: "int8", 5: "int16", 6: "int32", 7: "int64", 9: "bool", 10: "float16",
                11: "float64"}


def _onnx_example_inputs(path, batch: int) -> tuple:
    """Random example inputs for an ONNX file's inputs: symbolic axes of size `batch`, integers all ones."""
    try:
        import onnx
    except ImportError:
        raise Failure("an ONNX MODEL needs the [onnx] extra: pip install graphopt[onnx]") from None
    with _working(f"reading {path}"):
        proto = onnx.load(str(path), load_external_data=False)
    initializers = {i.name for i in proto.graph.initializer}
    generator = torch.Generator().manual_seed(0)
    inputs = []
    for value in proto.graph.input:
        if value.name in initializers:
            continue
        kind = value.type.tensor_type
        dtype = _ONNX_DTYPES.get(kind.elem_type)
        if dtype is None:
            raise Failure(f"{path}: input {value.name!r} has an ONNX element type {kind.elem_type} graphopt cannot feed")
        shape = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else batch for d in kind.shape.dim]
        if dtype.startswith("float"):
            inputs.append(torch.randn(shape, generator=generator).to(getattr(torch, dtype)))
        else:
            inputs.append(torch.ones(shape, dtype=getattr(torch, dtype)))
    return tuple(inputs)


# ============================================================================ --calib FILE.npz
def _read_calibration(path: str, batch_size: int) -> list[list]:
    """The batches of a .npz calibration file, as lists of numpy arrays (one per model input).

    Arrays named `batch<i>_input<j>` are taken as given (batch i, input j). Otherwise each array
    is one model input, in the file's order (`np.savez(f, x)` or `np.savez(f, input_ids=..., mask=...)`),
    and their first axis is split into batches of `batch_size`.
    """
    import re
    import zipfile

    import numpy as np

    if batch_size < 1:
        raise UsageError(f"--calib-batch must be at least 1, not {batch_size}")
    try:
        with open(path, "rb") as handle:
            if handle.read(4) != b"PK\x03\x04":
                raise ValueError("not a .npz file (numpy.savez writes a zip archive)")
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except FileNotFoundError:
        raise Failure(f"no such calibration file: {path}") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        raise Failure(f"cannot read calibration file {path} (a .npz of input arrays, numpy.savez): "
                      f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    if not isinstance(arrays, dict) or not arrays:
        raise Failure(f"calibration file {path} holds no arrays")
    named = [re.fullmatch(r"batch(\d+)_input(\d+)", name) for name in arrays]
    if all(named):
        batches: dict[int, dict[int, np.ndarray]] = {}
        for match, array in zip(named, arrays.values()):
            batches.setdefault(int(match[1]), {})[int(match[2])] = array
        result = []
        for index in sorted(batches):
            parts = batches[index]
            if sorted(parts) != list(range(len(parts))):
                raise Failure(f"calibration file {path}: batch{index} has inputs {sorted(parts)}; expected 0..n-1")
            result.append([parts[j] for j in range(len(parts))])
        return result
    lengths = {name: (array.shape[0] if array.ndim else None) for name, array in arrays.items()}
    if None in lengths.values() or len(set(lengths.values())) != 1:
        raise Failure(f"calibration file {path}: every array is one input with the samples on its first axis, "
                      f"and they must agree; got {lengths}")
    total = next(iter(lengths.values()))
    if total == 0:
        raise Failure(f"calibration file {path} has no samples")
    return [[array[start:start + batch_size] for array in arrays.values()] for start in range(0, total, batch_size)]


def _calibration_tensors(batches: list[list], inputs: tuple, path: str) -> list[tuple]:
    """The batches as torch tensors, float arrays cast to the example inputs' dtype; a count mismatch fails."""
    tensors = [x for x in inputs if isinstance(x, torch.Tensor)]
    result = []
    for index, batch in enumerate(batches):
        if len(batch) != len(tensors):
            raise Failure(f"calibration file {path}: batch {index} has {len(batch)} input(s), the model takes "
                          f"{len(tensors)}")
        converted = []
        for array, example in zip(batch, tensors):
            tensor = torch.from_numpy(array.copy())
            if tensor.is_floating_point() and example.is_floating_point():
                tensor = tensor.to(example.dtype)
            converted.append(tensor)
        result.append(tuple(converted))
    return result


# ============================================================================ the report as JSON
def report_json(report) -> dict:
    """The OptimizeReport's fields as JSON-ready data (built from the fields, not from its text)."""
    from graphopt.passes.prune.datafree import RecoveryReport
    from graphopt.passes.prune.reconstruct import ReconstructionReport

    passes = [{"pass": r.path, "options": r.pass_text, "seconds": r.seconds, "modified": r.modified,
               "nodes_before": r.nodes_before, "nodes_after": r.nodes_after}
              for r in getattr(report.passes, "records", [])]
    before, after = dict(report.weight_bytes_before), dict(report.weight_bytes_after)
    data = {
        "pipeline": report.pipeline,
        "backend": report.backend,
        "params": {"before": report.params_before, "after": report.params_after},
        "macs": {"before": report.macs_before, "after": report.macs_after},
        "weight_bytes": {"before": sum(before.values()), "after": sum(after.values()),
                         "before_by_dtype": before, "after_by_dtype": after},
        "passes": passes,
        "pass_seconds": sum(p["seconds"] for p in passes),
        "prune": [{"ratio": r.ratio, "target": r.target, "achieved_ratio": r.achieved_ratio,
                   "target_fraction": r.target_fraction, "achieved_fraction": r.achieved_fraction,
                   "why": list(r.why), "groups_pruned": len(r.decisions),
                   "params_before": r.params_before, "params_after": r.params_after,
                   "macs_before": r.macs_before, "macs_after": r.macs_after,
                   "reconstructed": isinstance(r.reconstruction, ReconstructionReport),
                   "recovered_data_free": isinstance(r.reconstruction, RecoveryReport), "seconds": r.seconds,
                   "latency": dataclasses.asdict(r.latency) if r.latency is not None else None}
                  for r in report.prune],
        "drop": [{"metric": r.metric, "granularity": r.granularity, "dropped": list(r.dropped),
                  "params_before": r.params_before, "params_after": r.params_after,
                  "macs_before": r.macs_before, "macs_after": r.macs_after, "message": r.message,
                  "seconds": r.seconds} for r in report.drop],
        "quantize": [{"mode": r.mode, "quantized": len(r.quantized), "left_float": dict(r.left_float),
                      "relative_error": r.error, "calibration_batches": r.batches} for r in report.quantize],
    }
    return data


def _layer_params(named_shapes) -> dict[str, int]:
    from graphopt.plot import params_per_layer

    return params_per_layer(named_shapes)


def _graph_layer_params(graph) -> dict[str, int]:
    return _layer_params((name, value.shape) for name, value in graph.params().items())


def _relative_drift(got, expected) -> float:
    """||got - expected|| / ||expected|| over every output leaf."""
    import numpy as np

    def leaves(out):
        from torch.utils import _pytree as pytree

        return [np.asarray(t.detach() if isinstance(t, torch.Tensor) else t, dtype=np.float64)
                for t in pytree.tree_leaves(out) if isinstance(t, (torch.Tensor, np.ndarray))]

    diff = sum(float(((g - e) ** 2).sum()) for g, e in zip(leaves(got), leaves(expected)))
    norm = sum(float((e ** 2).sum()) for e in leaves(expected))
    return (diff / max(norm, 1e-30)) ** 0.5


def _alternating(runners: Sequence, arguments: Sequence[tuple], runs: int, warmup: int) -> list[float]:
    """Median seconds of each runner on its arguments, timed in one loop, one call of each in turn."""
    from graphopt.timing import interleaved_medians

    with torch.no_grad():
        return interleaved_medians([lambda r=r, a=a: r(*a) for r, a in zip(runners, arguments)], runs, warmup)


def _print_json(data: dict) -> None:
    import json

    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
    sys.stdout.flush()


# ============================================================================ graphopt optimize
def _optimize_kwargs(args: argparse.Namespace) -> dict:
    """optimize()'s keyword arguments from the options, each checked before anything is traced."""
    from graphopt.passes.quantize.targets import MODES

    kwargs: dict = {"backend": args.backend}
    if args.prune is not None:
        if not 0.0 <= args.prune < 1.0:
            raise UsageError(f"--prune {args.prune}: the fraction of channels to remove must be in [0, 1)")
        kwargs["prune"] = args.prune
    from graphopt.passes.prune import BUDGET_OPTIONS, Prune

    budgets = {key: getattr(args, key) for key in BUDGET_OPTIONS if getattr(args, key) is not None}
    if budgets:
        flags = [f"--{key.replace('_', '-')}" for key in budgets]
        if args.prune is not None or len(budgets) > 1:
            raise UsageError(f"give one of --prune, --target-macs, --target-params, --target-latency "
                             f"(got {', '.join((['--prune'] if args.prune is not None else []) + flags)})")
        try:
            Prune(**budgets)  # the pass's own checks, before tracing
        except GraphoptError as exc:
            raise UsageError(f"{flags[0]}: {str(exc).splitlines()[0]}") from None
        kwargs["prune"] = budgets
    if args.drop_layers is not None:
        if args.drop_layers < 1:
            raise UsageError(f"--drop-layers {args.drop_layers}: give the number of blocks to drop (at least 1)")
        kwargs["drop_layers"] = args.drop_layers
    if args.quantize is not None:
        if args.quantize not in MODES:
            raise UsageError(f"--quantize {args.quantize!r}: unknown mode; choose from {', '.join(MODES)}")
        kwargs["quantize"] = args.quantize
    if args.passes is not None:  # an unknown pass or option is named before anything else
        from graphopt.passmanager import PassManager

        try:
            PassManager.parse(args.passes)
        except GraphoptError as exc:
            raise UsageError(f"--passes: {str(exc).splitlines()[0]}") from None
    if args.tune is not None and args.backend != "tvm":
        raise UsageError(f"--tune {args.tune}: tuning is TVM's; give --backend tvm too")
    if args.passes is not None and any(k in kwargs for k in ("prune", "drop_layers", "quantize")):
        raise UsageError("--passes is the whole pipeline: give --prune/--target-*/--drop-layers/--quantize inside it "
                         "instead")
    for key, value in (("tune", args.tune), ("target", args.target), ("passes", args.passes)):
        if value is not None:
            kwargs[key] = value
    return kwargs


def _check_output_dir(directory: str | None) -> None:
    from pathlib import Path

    if directory is None:
        return
    parent = Path(directory).resolve().parent
    if not parent.is_dir():
        raise Failure(f"cannot write -o {directory}: the directory {parent} does not exist")
    if Path(directory).exists() and not Path(directory).is_dir():
        raise Failure(f"cannot write -o {directory}: it is a file, not a directory")


def cmd_optimize(args: argparse.Namespace, console: Console) -> int:
    """Optimize MODEL (prune, drop layers, quantize, lower), report, and save the artifact."""
    # every option is checked before the model is loaded or traced
    source = ModelSource(args.model)
    kwargs = _optimize_kwargs(args)
    if args.batch < 1:
        raise UsageError(f"--batch must be at least 1, not {args.batch}")
    _check_output_dir(args.output)
    if args.plot:
        from graphopt.plot import require_matplotlib

        require_matplotlib()
    batches = _read_calibration(args.calib, args.calib_batch) if args.calib else None

    _stage(f"loading {args.model}")
    with _working(f"loading {args.model}"):
        model, inputs, dynamic = source.load(size=args.size, batch=args.batch, input_shapes=args.input_shape or ())
    if batches is not None:
        kwargs["calibration_data"] = _calibration_tensors(batches, inputs, args.calib)
    steps = ["trace", "canonicalize"] + [f"{k} {kwargs[k]}" for k in ("drop_layers", "prune", "quantize") if k in kwargs]
    _stage(f"tracing and running passes ({', '.join(steps)}), compiling for {args.backend}")
    started = time.perf_counter()
    with _working(f"optimizing {args.model}"):
        optimized = graphopt.optimize(model, inputs, dynamic=dynamic, **kwargs)
    seconds = time.perf_counter() - started
    _stage(f"optimized in {seconds:.1f} s: params {optimized.report.params_before:,} -> "
           f"{optimized.report.params_after:,}")
    saved = None
    if args.output:
        _stage(f"saving to {args.output}")
        with _working(f"saving to {args.output}"):
            saved = str(optimized.save(args.output))
    plotted = None
    if args.plot:
        _stage(f"timing the original and the optimized model for the plot ({args.runs} runs)")
        with _working("plotting"):
            plotted = str(_plot_optimized(source, model, inputs, optimized, args.plot, args.runs))
    if args.json:
        data = report_json(optimized.report)
        data.update({"model": args.model, "seconds": seconds, "output": saved, "plot": plotted})
        _print_json(data)
        return 0
    sys.stdout.write(f"{optimized.report}\n")
    if saved:
        console.print(f"saved [bold]{saved}[/bold] (run it: graphopt bench {args.output} --original {args.model})")
    if plotted:
        console.print(f"wrote {plotted}")
    return 0


def _plot_optimized(source: ModelSource, model, inputs: tuple, optimized, path: str, runs: int):
    """Two stages, original and optimized: latency (alternating), drift on the example inputs, params per layer."""
    from graphopt.plot import Stage, plot_stages

    original = source.runner(model)
    with torch.no_grad():
        drift = _relative_drift(optimized(*inputs), original(*inputs))
    latency = _alternating([original, optimized], [inputs, inputs], runs, warmup=2)
    if source.kind == "onnx":
        import onnx
        from onnx import numpy_helper

        proto = onnx.load(str(source.path))
        before = _layer_params((i.name, numpy_helper.to_array(i).shape) for i in proto.graph.initializer)
    else:
        before = _layer_params((name, p.shape) for name, p in model.named_parameters())
    stages = [Stage(f"original ({'onnx' if source.kind == 'onnx' else 'torch'})", latency[0], drift=0.0,
                    params=before),
              Stage(f"optimized ({optimized.report.backend})", latency[1], drift=drift,
                    params=_graph_layer_params(optimized.trainable_graph))]
    return plot_stages(stages, path, title=f"graphopt optimize {source.text}")


# ============================================================================ graphopt bench
def _random_inputs(specs: Sequence[dict], batch: int, seed: int = 0) -> list:
    """Random numpy inputs matching a manifest's input specs; symbolic axes get size `batch`."""
    import numpy as np

    rng = np.random.default_rng(seed)
    arrays = []
    for spec in specs:
        shape = [d if isinstance(d, int) else batch for d in spec["shape"]]
        dtype = np.dtype(spec["dtype"])
        if dtype.kind == "f":
            arrays.append(rng.standard_normal(shape).astype(dtype))
        else:  # token ids, masks, flags: 1 is valid everywhere
            arrays.append(np.ones(shape, dtype=dtype))
    return arrays


def cmd_bench(args: argparse.Namespace, console: Console) -> int:
    """Latency of a saved artifact (median after warm-up), and of the original model in the same run."""
    from pathlib import Path

    for name in ("runs", "batch"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name} must be at least 1, not {getattr(args, name)}")
    if args.warmup < 0:
        raise UsageError(f"--warmup must be at least 0, not {args.warmup}")
    if not Path(args.directory).is_dir():
        raise Failure(f"no such artifact directory: {args.directory}")
    source = ModelSource(args.original) if args.original else None
    from graphopt.artifacts import read_manifest

    with _working(f"reading {args.directory}"):  # not an artifact: one line, before any stage
        manifest = read_manifest(args.directory)
    _stage(f"loading {args.directory}")
    with _working(f"loading {args.directory}"):
        artifact = graphopt.load(args.directory)
    arrays = _random_inputs(manifest["inputs"], args.batch)
    runners, arguments, labels = [artifact], [tuple(arrays)], [f"artifact ({manifest.get('kind', 'tvm')})"]
    if source is not None:
        _stage(f"loading the original {args.original}")
        with _working(f"loading {args.original}"):
            model, _, _ = source.load(size=args.size, batch=args.batch)
            runners.append(source.runner(model))
            arguments.append(tuple(torch.from_numpy(a) for a in arrays))
            labels.append(f"original ({'onnx' if source.kind == 'onnx' else 'torch'})")
    _stage(f"timing {' and '.join(labels)}: {args.warmup} warm-up + {args.runs} runs"
           + (", alternating" if source is not None else ""))
    with _working("benchmarking"):
        medians = _alternating(runners, arguments, args.runs, args.warmup)
    shapes = {spec["name"]: list(a.shape) for spec, a in zip(manifest["inputs"], arrays)}
    data = {"artifact": str(Path(args.directory).resolve()), "inputs": shapes, "runs": args.runs,
            "warmup": args.warmup, "latency_ms": medians[0] * 1e3}
    if source is not None:
        data.update({"original": args.original, "original_latency_ms": medians[1] * 1e3,
                     "speedup": medians[1] / medians[0]})
    if args.json:
        _print_json(data)
        return 0
    table = Table(title=f"graphopt bench {args.directory}",
                  caption=f"inputs {shapes}; median of {args.runs} runs after {args.warmup} warm-up"
                          + (", alternating" if source is not None else ""))
    table.add_column("model")
    table.add_column("latency (ms)", justify="right")
    for label, seconds in zip(labels, medians):
        table.add_row(label, f"{seconds * 1e3:.3f}")
    console.print(table)
    sys.stdout.write(f"latency: {medians[0] * 1e3:.3f} ms\n")
    if source is not None:
        sys.stdout.write(f"speed-up over the original: {medians[1] / medians[0]:.2f}x\n")
    return 0


# ============================================================================ graphopt demo
def _digits(seed: int, size: int):
    """scikit-learn's digits as (N, 3, size, size) standardised float images, split 75/25; None without sklearn."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        return None
    import torch.nn.functional as F

    images, labels = load_digits(return_X_y=True)
    x = torch.tensor(images, dtype=torch.float32).view(-1, 1, 8, 8) / 16.0
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).repeat(1, 3, 1, 1)
    x = (x - x.mean()) / x.std()
    y = torch.tensor(labels)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    cut = len(x) * 3 // 4
    return x[order[:cut]], y[order[:cut]], x[order[cut:]], y[order[cut:]]


def _train(model, x, y, epochs: int, seed: int) -> None:
    import torch.nn.functional as F

    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    steps = epochs * ((len(x) + 63) // 64)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=max(steps, 1))
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), 64):
            batch = order[start:start + 64]
            loss = F.cross_entropy(model(x[batch]), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
        _stage(f"  epoch {epoch + 1}/{epochs}: loss {loss.item():.3f}")
    model.eval()


def cmd_demo(args: argparse.Namespace, console: Console) -> int:
    """The real job on a zoo convnet: dense -> pruned -> pruned + int8, with accuracy, latency and the plot."""
    if args.explain or args.model is not None:
        args.model = args.model or "resnet18"
        args.batch = args.batch or 2
        return cmd_explain(args, console)
    from pathlib import Path

    from graphopt.plot import PlotDependencyError, require_matplotlib

    batch = args.batch or 32
    if batch < 1 or args.runs < 1 or args.epochs < 0 or args.threads < 1:
        raise UsageError("--batch, --runs and --threads must be at least 1, --epochs at least 0")
    plot_path = args.plot or "graphopt-demo.png"
    try:
        require_matplotlib()
    except PlotDependencyError:
        if args.plot:
            raise
        plot_path = None
    if plot_path and not Path(plot_path).resolve().parent.is_dir():
        raise Failure(f"cannot write --plot {plot_path}: its directory does not exist")
    started = time.perf_counter()
    if not console.is_terminal:  # a log or CI: wide enough for the table on one line per stage
        console = Console(width=120, stderr=console.stderr)
    torch.manual_seed(args.seed)
    # one thread count for torch and ONNX Runtime: a fair comparison, and no spinning thread pools on a busy machine
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return _demo(args, console, batch, plot_path, started)
    finally:
        torch.set_num_threads(threads)


def _demo(args: argparse.Namespace, console: Console, batch: int, plot_path: str | None, started: float) -> int:
    from graphopt.plot import Stage, plot_stages

    name = "resnet18"
    model, example = _load_zoo(name, "tiny", batch)
    size = example[0].shape[-1]
    data = _digits(args.seed, size)
    console.print(f"[bold]graphopt demo[/bold]: zoo {name} (tiny) "
                  + ("on scikit-learn's digits (8x8 upsampled to "
                     f"{size}x{size}, 3 channels)" if data else "on random data (scikit-learn is not installed: "
                                                                 "output drift against the dense model, not accuracy)"))
    with _working("the demo"):
        if data is not None:
            x_train, y_train, x_test, y_test = data
            _stage(f"training {name} for {args.epochs} epochs on {len(x_train)} digits")
            _train(model, x_train, y_train, args.epochs, args.seed)
        else:
            generator = torch.Generator().manual_seed(args.seed)
            x_train = torch.randn(512, *example[0].shape[1:], generator=generator)
            x_test, y_test = torch.randn(256, *example[0].shape[1:], generator=generator), None
            model.eval()
        calibration = [x_train[i:i + 64] for i in range(0, min(len(x_train), 1024), 64)]
        timing_batch = (x_test[:batch],)
        prune = {"ratio": 0.5, "reconstruct": True}
        plans = [("dense, ORT", {"backend": "onnx"}),
                 ("pruned 50%, torch", {"prune": prune, "backend": "torch"}),
                 ("pruned 50% + int8, ORT", {"prune": prune, "quantize": "int8", "backend": "onnx"})]
        with torch.no_grad():
            reference = model(x_test)
        stages = [{"name": "dense, torch", "runner": model, "report": None,
                   "params": _layer_params((n, p.shape) for n, p in model.named_parameters()),
                   "total_params": sum(p.numel() for p in model.parameters())}]
        for label, options in plans:
            _stage(f"{label}: tracing, passes, compiling")
            optimized = graphopt.optimize(model, timing_batch, calibration_data=calibration, **options)
            runner = optimized
            if options["backend"] == "onnx":  # the same session at --threads intra-op threads
                from graphopt.backends import onnx as onnx_backend

                runner = onnx_backend.compile(optimized.graph, threads=args.threads)
            stages.append({"name": label, "runner": runner, "report": optimized.report,
                           "params": _graph_layer_params(optimized.trainable_graph),
                           "total_params": optimized.report.params_after})
        for stage in stages:
            with torch.no_grad():
                out = torch.as_tensor(stage["runner"](x_test))
            stage["drift"] = _relative_drift(out, reference)
            stage["accuracy"] = None if y_test is None else (out.argmax(1) == y_test).float().mean().item()
        _stage(f"timing {len(stages)} stages at batch {batch}: {args.runs} runs each, alternating")
        medians = _alternating([s["runner"] for s in stages], [timing_batch] * len(stages), args.runs, warmup=3)
    for stage, seconds in zip(stages, medians):
        stage["latency"] = seconds

    import os

    table = Table(title=f"graphopt demo: {name} (tiny), batch {batch}, median of {args.runs} runs",
                  caption=f"{args.threads} thread(s) for torch and ONNX Runtime ({os.cpu_count()} cores here); "
                          f"speed-up against the dense torch model")
    for column in ("stage", "accuracy" if y_test is not None else "drift", "params", "weight bytes",
                   "latency (ms)", "speed-up"):
        table.add_column(column, justify="left" if column == "stage" else "right")
    for stage in stages:
        report = stage["report"]
        weight_bytes = (sum(report.weight_bytes_after.values()) if report is not None
                        else sum(p.numel() * p.element_size() for p in model.parameters()))
        metric = f"{stage['accuracy']:.1%}" if stage["accuracy"] is not None else f"{stage['drift']:.2e}"
        table.add_row(stage["name"], metric, f"{stage['total_params']:,}", f"{weight_bytes:,}",
                      f"{stage['latency'] * 1e3:.3f}", f"{medians[0] / stage['latency']:.2f}x")
    console.print(table)
    for stage in stages[1:]:
        report = stage["report"]
        lines = [r.summary().splitlines()[0] for r in [*report.drop, *report.prune, *report.quantize]]
        console.print(f"[bold]{stage['name']}[/bold]: pipeline {report.pipeline}; "
                      f"output drift vs dense {stage['drift']:.2e}", highlight=False, soft_wrap=True)
        for line in lines:
            console.print(f"  {line}", highlight=False, soft_wrap=True)
    if plot_path:
        written = plot_stages([Stage(s["name"], s["latency"], s["accuracy"], s["drift"], s["params"], s["total_params"])
                               for s in stages],
                              plot_path, title=f"graphopt demo: {name} (tiny) on "
                              + ("scikit-learn digits" if y_test is not None else "random data"))
        console.print(f"wrote the plot to [bold]{written}[/bold]")
    else:
        console.print("no plot: matplotlib is not installed (pip install graphopt[plot])")
    console.print(f"demo done in {time.perf_counter() - started:.1f} s")
    return 0


# ============================================================================ the parser
def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(prog="graphopt", description="Trace, analyse, transform and lower neural networks.")
    parser.add_argument("--version", action="version", version=f"graphopt {graphopt.__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    model_help = "zoo:NAME (see `graphopt zoo`), FILE.onnx, or module.path:factory"
    opt = sub.add_parser("optimize", help="optimize a model (prune, drop layers, quantize, lower) and save it")
    opt.add_argument("model", metavar="MODEL", help=model_help)
    opt.add_argument("--size", default="tiny", help="zoo config: tiny or base (zoo: models)")
    opt.add_argument("--batch", type=int, default=2,
                     help="batch size of the example inputs (zoo, ONNX symbolic axes); the axis stays dynamic")
    opt.add_argument("--input-shape", action="append", metavar="N,C,H,W",
                     help="a factory's example input shape (random float32), once per input")
    opt.add_argument("--prune", type=float, metavar="RATIO", help="fraction of channels to remove, in [0, 1)")
    opt.add_argument("--target-macs", type=float, metavar="FRACTION",
                     help="instead of --prune: keep this fraction of the MACs (within 5 %%)")
    opt.add_argument("--target-params", type=float, metavar="FRACTION",
                     help="instead of --prune: keep this fraction of the parameters (within 5 %%)")
    opt.add_argument("--target-latency", type=float, metavar="FRACTION",
                     help="instead of --prune: keep this fraction of the latency measured on --backend (within 10 %%)")
    opt.add_argument("--drop-layers", type=int, metavar="N", help="number of residual blocks to drop")
    opt.add_argument("--quantize", metavar="MODE", help="int8, int8-dynamic, int8-weight or int4-weight")
    opt.add_argument("--backend", default="onnx", choices=("torch", "onnx", "tvm"), help="where it runs (default onnx)")
    opt.add_argument("--tune", metavar="BUDGET", help="TVM tuning budget, e.g. 10min (passed to optimize)")
    opt.add_argument("--target", help="compilation target (passed to optimize)")
    opt.add_argument("--passes", metavar="PIPELINE", help="a pipeline string that overrides the shortcuts")
    opt.add_argument("--calib", metavar="FILE.npz", help="calibration inputs (see docs/cli.md)")
    opt.add_argument("--calib-batch", type=int, default=32, help="samples per calibration batch (default 32)")
    opt.add_argument("-o", "--output", metavar="DIR", help="save the artifact to DIR (graphopt.load reads it)")
    opt.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    opt.add_argument("--plot", metavar="FILE.png", help="write latency/drift and params per layer, original vs optimized")
    opt.add_argument("--runs", type=int, default=20, help="timed runs for --plot (default 20)")
    opt.set_defaults(func=cmd_optimize)

    bench = sub.add_parser("bench", help="latency of a saved artifact, optionally against the original model")
    bench.add_argument("directory", metavar="DIR", help="an artifact directory (optimize -o DIR)")
    bench.add_argument("--original", metavar="MODEL", help=f"time the original too: {model_help}")
    bench.add_argument("--size", default="tiny", help="zoo config of --original")
    bench.add_argument("--runs", type=int, default=50, help="timed runs (default 50)")
    bench.add_argument("--warmup", type=int, default=5, help="untimed runs first (default 5)")
    bench.add_argument("--batch", type=int, default=1, help="size of the symbolic (batch) axes (default 1)")
    bench.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    bench.set_defaults(func=cmd_bench)

    demo = sub.add_parser("demo", help="train a zoo convnet on digits, prune and quantize it, time it, plot it")
    demo.add_argument("--plot", metavar="FILE.png", help="where to write the plot (default graphopt-demo.png)")
    demo.add_argument("--runs", type=int, default=30, help="timed runs per stage (default 30)")
    demo.add_argument("--epochs", type=int, default=6, help="training epochs on digits (default 6)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--threads", type=int, default=1, help="threads for torch and ONNX Runtime alike (default 1)")
    demo.add_argument("--explain", action="store_true",
                      help="instead: trace, canonicalise, analyse and lower one zoo model, checked, with a report")
    demo.add_argument("--model", default=None, help="--explain: zoo model name (default resnet18; implies --explain)")
    demo.add_argument("--size", default="tiny", help="--explain: zoo config, tiny or base")
    demo.add_argument("--batch", type=int, default=None,
                      help="batch size (default 32 for timing; --explain: 2, the axis stays dynamic)")
    demo.set_defaults(func=cmd_demo)

    inspect = sub.add_parser("inspect", help="print the IR of a model, its channel groups or residual blocks")
    inspect.add_argument("model", metavar="MODEL", help=f"{model_help}; a bare zoo NAME works too")
    inspect.add_argument("--size", default="tiny", help="zoo config: tiny or base (zoo: models)")
    inspect.add_argument("--input-shape", action="append", metavar="N,C,H,W",
                         help="a factory's example input shape (random float32), once per input")
    inspect.add_argument("--batch", type=int, default=2, help="batch size of the example inputs")
    inspect.add_argument("--source", action="store_true", help="annotate nodes with module path and file:line")
    inspect.add_argument("--no-weights", action="store_true", help="omit the weight declarations")
    inspect.add_argument("--groups", action="store_true", help="show the coupled channel groups instead of the IR")
    inspect.add_argument("--blocks", action="store_true",
                         help="show the residual blocks (kind, params, MACs, drop-layers' score) instead of the IR")
    inspect.add_argument("--metric", default="auto",
                         help="the score --blocks shows (drop-layers' metric; auto: kl on logits, else loss)")
    inspect.add_argument("--picture", metavar="FILE", help="write the graph coloured by channel group (.dot, .svg, .png)")
    inspect.set_defaults(func=cmd_inspect)

    zoo = sub.add_parser("zoo", help="list the reference models")
    zoo.set_defaults(func=cmd_zoo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    console = Console(stderr=bool(getattr(args, "json", False)))  # --json: stdout holds the JSON only
    try:
        return args.func(args, console)
    except Failure as exc:  # the work failed (a file, tracing, compiling): exit 1
        _error(exc)
        return 1
    except GraphoptError as exc:  # the user's mistake: the reason on stderr, unwrapped, for scripts too
        from graphopt.plot import PlotDependencyError

        _error(exc)
        return 1 if isinstance(exc, PlotDependencyError) else 2
    except OSError as exc:  # a file that cannot be read or written: the user's environment
        _error(exc)
        return 1


def _error(exc: BaseException) -> None:
    _error_line(str(exc))


def _error_line(message: str) -> None:
    """`error: message` as one line on stderr (a multi-line reason is joined with ' | ')."""
    from rich.markup import escape

    text = " | ".join(line.strip() for line in message.splitlines() if line.strip()) or "failed"
    Console(stderr=True, soft_wrap=True, highlight=False).print(f"[red]error:[/red] {escape(text)}")


if __name__ == "__main__":
    sys.exit(main())
