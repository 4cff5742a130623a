"""PassManager: runs a pipeline on a copy of a graph, with instruments, a report and crash reproducers.

The caller's graph is never mutated: the manager clones it (a structural copy;
tensors are shared, which is safe because passes replace tensors rather than
write into them) and every pass works on the copy. Options are validated
before anything runs. When a pass raises, the error names it and the passes
before it; for graphopt's own failures a reproducer directory holds the
pipeline text and the printed graphs so the failure can be reported and replayed.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

from graphopt.ir.graph import Graph
from graphopt.passmanager.analysis import AnalysisManager, PreservedAnalyses
from graphopt.passmanager.context import RunContext
from graphopt.passmanager.errors import PassFailedError
from graphopt.passmanager.instruments import PassInstrument
from graphopt.passmanager.pass_base import Pass, PassResult
from graphopt.passmanager.pipeline import NamedPipeline, Step, format_steps, parse_steps
from graphopt.passmanager.report import PassRecord, PipelineReport
from graphopt.passmanager.reproducer import deserves_reproducer, write_reproducer


class PassManager:
    """An ordered list of passes (and named pipelines) with the instruments that watch them.

        pm = PassManager.parse("fold-batchnorm,eliminate-dead-code,canonicalize")
        new_graph, report = pm.run(graph, example_inputs)
        print(report)

    `verify_each` runs the structural verifier (`graph.verify()`) on the input
    and after every pass that modified the graph, as MLIR does; comparing outputs numerically
    is the `Verify` instrument's job. `reproducer_dir` is where crash
    reproducers go (a fresh temporary directory by default, None to disable);
    `reproducer_weights=True` pickles the weights into them too.
    """

    def __init__(
        self,
        passes: Iterable[Pass | NamedPipeline | str] = (),
        *,
        instruments: Iterable[PassInstrument] = (),
        verify_each: bool = True,
        reproducer_dir: str | os.PathLike | None | bool = True,
        reproducer_weights: bool = False,
    ) -> None:
        self.steps: list[Step] = []
        for item in passes:
            self.add(item)
        self.instruments: list[PassInstrument] = list(instruments)
        self.verify_each = verify_each
        self.reproducer_dir = reproducer_dir
        self.reproducer_weights = reproducer_weights

    @classmethod
    def parse(cls, text: str, **kwargs: Any) -> PassManager:
        """Build a manager from pipeline text; unknown passes/options raise with close matches."""
        return cls(parse_steps(text), **kwargs)

    def add(self, item: Pass | NamedPipeline | str) -> PassManager:
        """Append a pass instance, a named-pipeline step, or pipeline text."""
        if isinstance(item, str):
            self.steps.extend(parse_steps(item))
        elif isinstance(item, (Pass, NamedPipeline)):
            self.steps.append(item)
        elif isinstance(item, type) and issubclass(item, Pass):
            self.steps.append(item())
        else:
            raise TypeError(f"PassManager takes Pass instances or pipeline text, not {item!r}")
        return self

    def add_instrument(self, instrument: PassInstrument) -> PassManager:
        self.instruments.append(instrument)
        return self

    def __str__(self) -> str:
        return format_steps(self.steps)

    def __repr__(self) -> str:
        return f"PassManager({str(self)!r})"

    def __len__(self) -> int:
        return len(self.steps)

    # ------------------------------------------------------------------ running
    def validate(self) -> None:
        """Check every pass's options (`Pass.validate`), named pipelines included; raises InvalidOptionError."""
        pending = list(self.steps)
        while pending:
            step = pending.pop()
            if isinstance(step, NamedPipeline):
                pending.extend(step.steps)
            else:
                step.validate()

    def run(
        self,
        graph: Graph,
        example_inputs: Sequence[Any] | None = None,
        *,
        analyses: AnalysisManager | None = None,
        calibration_data: Iterable[Any] | None = None,
        loss: Callable[[Any, Any], Any] | None = None,
        bindings: Mapping[str, int] | None = None,
    ) -> tuple[Graph, PipelineReport]:
        """Run the pipeline on a copy of `graph`; return the transformed copy and the report.

        `example_inputs` (optional) bind the symbolic dims for analyses such as
        cost, and are the sample inputs the Verify instrument compares outputs on;
        `bindings` size symbols by name instead. `calibration_data` (model inputs
        per item, or `(inputs, target)` pairs when `loss(output, target)` is given)
        feeds data-driven passes: activation and Taylor criteria, reconstruction
        after pruning. Passes read all of these as `analyses.context` (a RunContext).
        """
        self.validate()  # options assigned after construction are checked before any work
        ctx = RunContext(example_inputs, calibration_data, loss, bindings or {}, pipeline=str(self),
                         input_graph=graph, step_count=len(self.steps))
        _check_run_inputs(graph, ctx)
        analyses = analyses if analyses is not None else AnalysisManager()
        analyses.bind_context(ctx)
        if self.verify_each:
            graph.verify()  # an ill-formed input is the caller's problem, not the first pass's
        run = _Run(ctx, analyses, PipelineReport(str(self)))
        working = graph.clone()
        started = time.perf_counter()
        for instrument in self.instruments:
            instrument.before_pipeline(working, ctx)
        for index, step in enumerate(self.steps):
            ctx.step_index = index
            working, _ = self._run_step(step, working, run, prefix="", iteration=0)
        run.report.seconds = time.perf_counter() - started
        for instrument in self.instruments:
            instrument.after_pipeline(working, run.report, ctx)
        return working, run.report

    def _run_step(self, step: Step, graph: Graph, run: _Run, prefix: str, iteration: int) -> tuple[Graph, bool]:
        if isinstance(step, NamedPipeline):
            definition = step.definition
            rounds = definition.max_iterations if definition.fixed_point else 1
            modified_any = False
            for round_ in range(rounds):
                changed = False
                for child in step.steps:
                    graph, modified = self._run_step(
                        child, graph, run, f"{prefix}{step.name}/", round_ if definition.fixed_point else 0
                    )
                    changed |= modified
                modified_any |= changed
                if not changed:
                    break
            return graph, modified_any
        return self._run_pass(step, graph, run, prefix + step.name, iteration)

    def _run_pass(self, pass_: Pass, graph: Graph, run: _Run, path: str, iteration: int) -> tuple[Graph, bool]:
        ctx, analyses = run.ctx, run.analyses
        text = pass_.pipeline_text()
        ctx.path, ctx.iteration = path, iteration
        ctx.pass_index += 1
        # A pristine copy of the pass's input, so a crash can be reported with the exact graph it saw.
        snapshot = graph.clone() if self.reproducer_dir else None
        nodes_before, weights_before = len(graph.nodes), len(graph.weights)

        def fail(exc: BaseException, stage: str) -> PassFailedError:
            where = None
            if self.reproducer_dir and deserves_reproducer(exc, stage):
                where = write_reproducer(self.reproducer_dir, ctx, text, snapshot, exc, weights=self.reproducer_weights)
            error = PassFailedError(text, ctx.history, exc, stage=stage, reproducer=where)
            for instrument in self.instruments:
                try:
                    instrument.on_failure(pass_, error, ctx)
                except Exception:  # noqa: S110 - an instrument must not mask the real failure
                    pass
            return error

        for instrument in self.instruments:
            try:
                instrument.before_pass(pass_, graph, ctx)
            except Exception as exc:
                raise fail(exc, type(instrument).__name__) from exc
        started = time.perf_counter()
        try:
            result = pass_(graph, analyses)  # options, required analyses, run, result checked
        except Exception as exc:
            raise fail(exc, "run") from exc
        seconds = time.perf_counter() - started

        new_graph = result.graph
        _invalidate(pass_, result, graph, analyses)
        if self.verify_each and result.modified:
            try:
                new_graph.verify()
            except Exception as exc:
                raise fail(exc, "verify") from exc
        for instrument in self.instruments:
            try:
                instrument.after_pass(pass_, new_graph, result, ctx)
            except Exception as exc:
                raise fail(exc, type(instrument).__name__) from exc

        ctx.history.append(text)
        run.report.records.append(PassRecord(
            path, text, nodes_before, len(new_graph.nodes), weights_before, len(new_graph.weights),
            seconds, bool(result.modified), iteration, result.stats,
        ))
        return new_graph, bool(result.modified)


@dataclass
class _Run:
    """One `PassManager.run` in progress: its context, analyses and the report being filled."""

    ctx: RunContext
    analyses: AnalysisManager
    report: PipelineReport


def _invalidate(pass_: Pass, result: PassResult, graph: Graph, analyses: AnalysisManager) -> None:
    """Drop the analyses of `graph` the pass did not preserve (all of them if it returned a new graph)."""
    if result.graph is not graph:
        analyses.forget(graph)  # results computed on the old object describe the old nodes
        return
    if result.preserved is not None:
        preserved = result.preserved
    else:
        preserved = pass_.preserved_when_modified() if result.modified else PreservedAnalyses.all()
    analyses.invalidate(graph, preserved)


def _check_run_inputs(graph: Graph, ctx: RunContext) -> None:
    """Example inputs and every calibration batch must fit the graph: a mistake is named before any pass runs."""
    if ctx.example_inputs is not None:
        graph.check_inputs(ctx.example_inputs, what="example_inputs")
    if ctx.calibration_data is not None:
        for index, batch in enumerate(ctx.calibration_batches()):
            graph.check_inputs(batch, what=f"calibration batch {index}")

