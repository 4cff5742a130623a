"""The `graphopt` command line: demo, inspect and zoo listing.

argparse (standard library) parses the commands; rich draws the tables.
"""

from __future__ import annotations

import argparse
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


def cmd_demo(args: argparse.Namespace, console: Console) -> int:
    """Trace a zoo model, canonicalise it, analyse its channels, lower it, check it, and report."""
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
    """Print the IR of a zoo model, or its channel groups (`--groups`), optionally as a picture."""
    if args.picture:  # a path that cannot be written is a mistake to report before tracing
        from graphopt.analysis.channel_view import check_picture_path

        check_picture_path(args.picture)
    model, inputs = _load_zoo(args.model, args.size, args.batch)
    graph = graphopt.trace(model, inputs, dynamic=models_zoo.spec(args.model).dynamic_axes)
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="graphopt", description="Trace, analyse, transform and lower neural networks.")
    parser.add_argument("--version", action="version", version=f"graphopt {graphopt.__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="run graphopt end to end on a zoo model and print the report")
    demo.add_argument("--model", default="resnet18", help="zoo model name (see `graphopt zoo`)")
    demo.add_argument("--size", default="tiny", help="zoo config: tiny or base")
    demo.add_argument("--batch", type=int, default=2, help="batch size of the example inputs (the axis stays dynamic)")
    demo.set_defaults(func=cmd_demo)

    inspect = sub.add_parser("inspect", help="print the IR of a zoo model")
    inspect.add_argument("model")
    inspect.add_argument("--size", default="tiny")
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
    console = Console()
    try:
        return args.func(args, console)
    except GraphoptError as exc:  # the user's mistake: the reason on stderr, unwrapped, for scripts too
        _error(exc)
        return 2
    except OSError as exc:  # a file that cannot be read or written: the user's environment
        _error(exc)
        return 1


def _error(exc: BaseException) -> None:
    from rich.markup import escape

    Console(stderr=True, soft_wrap=True, highlight=False).print(f"[red]error:[/red] {escape(str(exc))}")


if __name__ == "__main__":
    sys.exit(main())
