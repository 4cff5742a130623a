"""Instruments: objects whose hooks run around every pass (timing, IR dumps, verification, progress).

Cross-cutting concerns live here rather than in the passes or the manager's
loop, so a pass stays a pure transformation and a user picks what to watch:

    PassManager.parse("canonicalize", instruments=[Verify(), DumpIR("ir/"), Timing()])

A hook that raises aborts the pipeline with a `PassFailedError` naming the pass
it was checking, exactly like a failing pass.
"""

from __future__ import annotations

import os
import re
import sys
import time
from collections import defaultdict
from typing import IO, TYPE_CHECKING, Any, Callable, Sequence

import torch

from graphopt.ir.graph import Graph
from graphopt.ir.interpreter import run_graph, run_graph_float64
from graphopt.passmanager.errors import PassVerificationError

if TYPE_CHECKING:  # the manager imports this module
    from graphopt.passmanager.context import RunContext
    from graphopt.passmanager.pass_base import Pass, PassResult, Tolerance
    from graphopt.passmanager.report import PipelineReport


class PassInstrument:
    """Base class: override the hooks you need; each default does nothing."""

    def before_pipeline(self, graph: Graph, ctx: RunContext) -> None:
        """Called once with the working copy of the input graph."""

    def before_pass(self, pass_: Pass, graph: Graph, ctx: RunContext) -> None:
        """Called before each pass, nested passes of a named pipeline included."""

    def after_pass(self, pass_: Pass, graph: Graph, result: PassResult, ctx: RunContext) -> None:
        """Called after each pass that returned normally (`graph` is `result.graph`)."""

    def on_failure(self, pass_: Pass, error: Exception, ctx: RunContext) -> None:
        """Called when a pass or an instrument failed, before the error propagates."""

    def after_pipeline(self, graph: Graph, report: PipelineReport, ctx: RunContext) -> None:
        """Called once after the last pass."""


# ------------------------------------------------------------------- timing
class Timing(PassInstrument):
    """Wall time per pass name, accumulated over runs; `summary()` lists the slowest first.

    Measured from before_pass to after_pass, so it includes the requested
    analyses (and, for instruments listed before this one, their hooks).
    """

    def __init__(self, stream: IO[str] | None = None) -> None:
        self.stream = stream
        self.seconds: dict[str, list[float]] = defaultdict(list)
        self._started = 0.0

    def before_pass(self, pass_: Pass, graph: Graph, ctx: RunContext) -> None:
        self._started = time.perf_counter()

    def after_pass(self, pass_: Pass, graph: Graph, result: PassResult, ctx: RunContext) -> None:
        self.seconds[pass_.name].append(time.perf_counter() - self._started)

    def after_pipeline(self, graph: Graph, report: PipelineReport, ctx: RunContext) -> None:
        if self.stream is not None:
            print(self.summary(), file=self.stream)

    def total(self, name: str) -> float:
        return sum(self.seconds.get(name, ()))

    def summary(self) -> str:
        rows = sorted(self.seconds.items(), key=lambda kv: -sum(kv[1]))
        width = max([len("pass")] + [len(k) for k, _ in rows])
        lines = [f"{'pass'.ljust(width)}  runs  total ms", f"{'-' * width}  ----  --------"]
        lines += [f"{k.ljust(width)}  {len(v):4d}  {sum(v) * 1e3:8.1f}" for k, v in rows]
        return "\n".join(lines)


# ------------------------------------------------------------------ IR dump
class DumpIR(PassInstrument):
    """Write the printed graph into `directory`: the input once, then after every pass that changed it.

    Files are numbered in execution order (`000-input.ir`, `003-fold-batchnorm.ir`),
    so `diff` between neighbours shows what each pass did. `before=True` also
    writes the graph before each changing pass (`...-before.ir`).
    """

    def __init__(self, directory: str | os.PathLike, *, before: bool = False, source: bool = True) -> None:
        self.directory = os.fspath(directory)
        self.before = before
        self.source = source
        self.files: list[str] = []
        self._before_text: str | None = None

    def _write(self, name: str, graph_text: str) -> None:
        os.makedirs(self.directory, exist_ok=True)
        path = os.path.join(self.directory, name)
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(graph_text + "\n")
        self.files.append(path)

    def _stem(self, ctx: RunContext) -> str:
        return f"{ctx.pass_index:03d}-" + re.sub(r"[^A-Za-z0-9_.\-]+", "_", ctx.path.replace("/", "."))

    def before_pipeline(self, graph: Graph, ctx: RunContext) -> None:
        self._write("000-input.ir", graph.format(source=self.source))

    def before_pass(self, pass_: Pass, graph: Graph, ctx: RunContext) -> None:
        self._before_text = graph.format(source=self.source) if self.before else None

    def after_pass(self, pass_: Pass, graph: Graph, result: PassResult, ctx: RunContext) -> None:
        if not result.modified:
            return
        stem = self._stem(ctx)
        if self._before_text is not None:
            self._write(f"{stem}-before.ir", self._before_text)
        self._write(f"{stem}.ir", graph.format(source=self.source))


# ------------------------------------------------------------------- verify
class Verify(PassInstrument):
    """After each pass: structural verification, output comparison at the pass's tolerance, honesty check.

    - `graph.verify()` must pass;
    - the graph, run by the core's interpreter (`graphopt.ir.interpreter.run_graph`), must reproduce the
      outputs of the graph before the pass on sample inputs, within the pass's
      `tolerance()`: exact -> `torch.testing.assert_close` defaults; bounded ->
      the pass's rtol/atol; shape -> output shapes only;
    - a pass that returns `modified=False` must not have changed the printed graph.

    Sample inputs: `example_inputs` given here, else those given to
    `PassManager.run`, else synthesised from the input types (floats from a
    seeded normal, integers zero, symbolic dims bound to `default_dim`).
    Graphs whose weights live on the meta device get the structural checks only.
    """

    def __init__(
        self,
        example_inputs: Sequence[Any] | None = None,
        *,
        outputs: bool = True,
        structure: bool = True,
        check_modified_flag: bool = True,
        default_dim: int = 2,
    ) -> None:
        self.example_inputs = example_inputs
        self.outputs = outputs
        self.structure = structure
        self.check_modified_flag = check_modified_flag
        self.default_dim = default_dim
        self.checked: list[str] = []  # passes whose outputs were compared, for tests and logs
        self._inputs: tuple | None = None
        self._reference: list[torch.Tensor] | None = None
        self._text_before: str | None = None
        self._graph_before: Graph | None = None
        self._numeric = outputs

    def before_pipeline(self, graph: Graph, ctx: RunContext) -> None:
        self.checked = []
        self._reference = None
        if self.structure:
            graph.verify()
        # A graph built on the meta device (a 7B model's skeleton) has no numbers to compare.
        self._numeric = self.outputs and not any(
            v.data is not None and v.data.device.type == "meta" for v in graph.weights.values()
        )
        if self._numeric:
            inputs = self.example_inputs if self.example_inputs is not None else ctx.example_inputs
            self._inputs = tuple(inputs) if inputs is not None else synthesize_inputs(
                graph, ctx.bindings(graph), self.default_dim
            )
            self._reference = run_graph(graph, self._inputs)

    def before_pass(self, pass_: Pass, graph: Graph, ctx: RunContext) -> None:
        self._text_before = graph.format() if self.check_modified_flag else None
        # A structural copy (tensors shared), kept for the float64 second look in compare_outputs.
        self._graph_before = graph.clone() if self._numeric else None

    def after_pass(self, pass_: Pass, graph: Graph, result: PassResult, ctx: RunContext) -> None:
        if not result.modified:
            if self._text_before is not None and graph.format() != self._text_before:
                raise PassVerificationError(
                    f"pass '{pass_.name}' returned modified=False but changed the graph; "
                    "return modified=True so cached analyses are invalidated"
                )
            return
        if self.structure:
            graph.verify()
        if not self.outputs or self._reference is None:
            return
        after = run_graph(graph, self._inputs)
        before_graph, inputs = self._graph_before, self._inputs
        exact = (lambda: run_graph_float64(before_graph, inputs)) if before_graph is not None else None
        compare_outputs(self._reference, after, pass_.tolerance(), pass_.name, exact)
        self._reference = after
        self._graph_before = None
        self.checked.append(ctx.path)


def synthesize_inputs(graph: Graph, bindings: dict[str, int], default_dim: int = 2) -> tuple[torch.Tensor, ...]:
    """Deterministic sample inputs matching the graph's input types."""
    from graphopt.ir import dims as D

    generator = torch.Generator().manual_seed(0)
    env = {str(s): bindings.get(str(s), default_dim) for v in graph.inputs for d in v.shape
           if not isinstance(d, int) for s in d.free_symbols}
    out = []
    for value in graph.inputs:
        shape = [D.evaluate(d, env) for d in value.shape]
        if value.dtype.is_floating_point:
            out.append(torch.randn(shape, generator=generator).to(value.dtype))
        elif value.dtype == torch.bool:
            out.append(torch.ones(shape, dtype=torch.bool))
        else:
            out.append(torch.zeros(shape, dtype=value.dtype))
    return tuple(out)


# assert_close's default tolerances per dtype (rtol, atol)
_DEFAULT_TOL = {
    torch.float32: (1.3e-6, 1e-5), torch.float16: (1e-3, 1e-5), torch.bfloat16: (1.6e-2, 1e-5),
    torch.float64: (1e-7, 1e-7),
}


def compare_outputs(
    before: list[torch.Tensor],
    after: list[torch.Tensor],
    tolerance: Tolerance,
    pass_name: str,
    exact_reference: Callable[[], list[torch.Tensor]] | None = None,
) -> None:
    """Raise PassVerificationError when `after` is not `before` within `tolerance`.

    For an exact pass, a mismatch at the default fp32 tolerances gets a second
    look when `exact_reference` (the graph before the pass, run in float64) is
    given: a deep fp32 network carries rounding noise near atol=1e-5 by itself
    (the tiny U-Net does), so the pass is accepted if its outputs are within
    twice that noise of the float64 result. A real bug is orders of magnitude off.
    """
    if len(before) != len(after):
        raise PassVerificationError(f"pass '{pass_name}' changed the number of outputs from {len(before)} to {len(after)}")
    reference: list[torch.Tensor] | None = None
    for i, (old, new) in enumerate(zip(before, after)):
        if tuple(old.shape) != tuple(new.shape):
            raise PassVerificationError(
                f"pass '{pass_name}' changed output {i}'s shape from {list(old.shape)} to {list(new.shape)}"
            )
        if tolerance.kind == "shape":
            continue
        kwargs = {"rtol": tolerance.rtol, "atol": tolerance.atol} if tolerance.kind == "bounded" else {}
        if kwargs and getattr(tolerance, "relative_atol", False) and old.numel():  # a fraction of the output's range
            kwargs["atol"] = tolerance.atol * float(old.double().abs().max())
        try:
            torch.testing.assert_close(new, old, **kwargs)
            continue
        except AssertionError as exc:
            first_failure = str(exc)
        if tolerance.kind == "exact" and exact_reference is not None and new.is_floating_point():
            reference = reference if reference is not None else exact_reference()
            truth = reference[i]
            noise = float((old.double() - truth).abs().max()) if old.numel() else 0.0
            rtol, atol = _DEFAULT_TOL.get(old.dtype, (1.3e-6, 1e-5))
            try:
                torch.testing.assert_close(new.double(), truth, rtol=rtol, atol=max(atol, 2 * noise))
                continue
            except AssertionError as exc:
                first_failure += (
                    f"\nand it is not within twice the graph's own rounding noise ({noise:.3g}) of the "
                    f"float64 result either:\n{exc}"
                )
        raise PassVerificationError(
            f"pass '{pass_name}' changed output {i} beyond its {tolerance} tolerance:\n{first_failure}"
        )


# ----------------------------------------------------------------- progress
class Progress(PassInstrument):
    """A one-line progress display on stderr for long pipelines (one line per pass when not a terminal)."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self.stream = stream
        self._started = 0.0
        self._width = 0

    @property
    def _out(self) -> IO[str]:
        return self.stream if self.stream is not None else sys.stderr

    def _tty(self) -> bool:
        return bool(getattr(self._out, "isatty", lambda: False)())

    def _show(self, text: str) -> None:
        if self._tty():
            self._out.write("\r" + text.ljust(self._width))
            self._width = len(text)
        else:
            self._out.write(text + "\n")
        self._out.flush()

    def before_pipeline(self, graph: Graph, ctx: RunContext) -> None:
        self._started = time.perf_counter()

    def before_pass(self, pass_: Pass, graph: Graph, ctx: RunContext) -> None:
        self._show(f"[{ctx.step_index + 1}/{ctx.step_count}] {ctx.path} ({len(graph.nodes)} nodes)")

    def on_failure(self, pass_: Pass, error: Exception, ctx: RunContext) -> None:
        self._show(f"[{ctx.step_index + 1}/{ctx.step_count}] {ctx.path} FAILED")
        if self._tty():
            self._out.write("\n")

    def after_pipeline(self, graph: Graph, report: PipelineReport, ctx: RunContext) -> None:
        self._show(f"[{ctx.step_count}/{ctx.step_count}] done: {len(report)} pass runs in "
                   f"{time.perf_counter() - self._started:.2f}s, {len(graph.nodes)} nodes")
        if self._tty():
            self._out.write("\n")
