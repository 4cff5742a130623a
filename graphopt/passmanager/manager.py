"""PassManager: runs a pipeline on a copy of a graph, with instruments, a report and crash reproducers.

The caller's graph is never mutated: the manager clones it (a structural copy;
tensors are shared, which is safe because passes replace tensors rather than
write into them) and every pass works on the copy. When a pass raises, the
error names it and the passes before it, and a reproducer directory holds the
pipeline text and the printed graphs so the failure can be reported and replayed.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

from graphopt.errors import GraphoptError
from graphopt.ir.graph import Graph
from graphopt.passmanager.analysis import AnalysisManager, PreservedAnalyses
from graphopt.passmanager.errors import PassFailedError
from graphopt.passmanager.instruments import PassInstrument
from graphopt.passmanager.pass_base import Pass, PassResult
from graphopt.passmanager.pipeline import NamedPipeline, Step, format_steps, parse_steps
from graphopt.passmanager.report import PassRecord, PipelineReport


@dataclass
class RunContext:
    """What instruments can see about the run in progress."""

    pipeline: str
    input_graph: Graph
    analyses: AnalysisManager
    example_inputs: Sequence[Any] | None = None
    history: list[str] = field(default_factory=list)  # pass texts that completed, in order
    step_index: int = 0  # position of the current top-level step
    step_count: int = 0
    pass_index: int = 0  # executions so far, nested passes included (numbering for IR dumps)
    path: str = ""  # "canonicalize/fold-constants" for a pass inside a named pipeline
    iteration: int = 0


class PassManager:
    """An ordered list of passes (and named pipelines) with the instruments that watch them.

        pm = PassManager.parse("fold-batchnorm,eliminate-dead-code,canonicalize")
        new_graph, report = pm.run(graph, example_inputs)
        print(report)

    `verify_each` runs the structural verifier (`graph.verify()`) on the input
    and after every pass that modified the graph, as MLIR does; comparing outputs numerically
    is the `Verify` instrument's job. `reproducer_dir` is where crash
    reproducers go (a fresh temporary directory by default, None to disable).
    """

    def __init__(
        self,
        passes: Iterable[Pass | NamedPipeline | str] = (),
        *,
        instruments: Iterable[PassInstrument] = (),
        verify_each: bool = True,
        reproducer_dir: str | os.PathLike | None | bool = True,
    ) -> None:
        self.steps: list[Step] = []
        for item in passes:
            self.add(item)
        self.instruments: list[PassInstrument] = list(instruments)
        self.verify_each = verify_each
        self.reproducer_dir = reproducer_dir

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
    def run(
        self,
        graph: Graph,
        example_inputs: Sequence[Any] | None = None,
        *,
        analyses: AnalysisManager | None = None,
        calibration_data: Iterable[Any] | None = None,
        loss: Callable[[Any, Any], Any] | None = None,
    ) -> tuple[Graph, PipelineReport]:
        """Run the pipeline on a copy of `graph`; return the transformed copy and the report.

        `example_inputs` (optional) bind the symbolic dims for analyses such as
        cost, and are the sample inputs the Verify instrument compares outputs on.
        `calibration_data` (model inputs per item, or `(inputs, target)` pairs when
        `loss(output, target)` is given) feeds data-driven passes: activation and
        Taylor criteria, reconstruction after pruning.
        """
        if example_inputs is not None and not isinstance(example_inputs, (list, tuple)):
            example_inputs = (example_inputs,)
        analyses = analyses or AnalysisManager(example_inputs=example_inputs)
        if analyses.example_inputs is None:
            analyses.example_inputs = example_inputs
        if calibration_data is not None:
            analyses.calibration_data = list(calibration_data)
        if loss is not None:
            analyses.loss = loss
        if self.verify_each:
            graph.verify()  # an ill-formed input is the caller's problem, not the first pass's
        report = PipelineReport(str(self))
        ctx = RunContext(str(self), graph, analyses, example_inputs, step_count=len(self.steps))
        working = graph.clone()
        analyses.graph = working
        started = time.perf_counter()
        for instrument in self.instruments:
            instrument.before_pipeline(working, ctx)
        for index, step in enumerate(self.steps):
            ctx.step_index = index
            working, _ = self._run_step(step, working, ctx, report, prefix="", iteration=0)
        report.seconds = time.perf_counter() - started
        for instrument in self.instruments:
            instrument.after_pipeline(working, report, ctx)
        return working, report

    def _run_step(
        self, step: Step, graph: Graph, ctx: RunContext, report: PipelineReport, prefix: str, iteration: int
    ) -> tuple[Graph, bool]:
        if isinstance(step, NamedPipeline):
            definition = step.definition
            rounds = definition.max_iterations if definition.fixed_point else 1
            modified_any = False
            for round_ in range(rounds):
                changed = False
                for child in step.steps:
                    graph, modified = self._run_step(
                        child, graph, ctx, report, f"{prefix}{step.name}/", round_ if definition.fixed_point else 0
                    )
                    changed |= modified
                modified_any |= changed
                if not changed:
                    break
            return graph, modified_any
        return self._run_pass(step, graph, ctx, report, prefix + step.name, iteration)

    def _run_pass(
        self, pass_: Pass, graph: Graph, ctx: RunContext, report: PipelineReport, path: str, iteration: int
    ) -> tuple[Graph, bool]:
        text = pass_.pipeline_text()
        ctx.path, ctx.iteration = path, iteration
        ctx.pass_index += 1
        # A pristine copy of the pass's input, so a crash can be reported with the exact graph it saw.
        snapshot = graph.clone() if self.reproducer_dir else None
        nodes_before, weights_before = len(graph.nodes), len(graph.weights)
        analyses = ctx.analyses
        analyses.graph = graph

        def fail(exc: BaseException, stage: str) -> PassFailedError:
            where = self._write_reproducer(ctx, text, snapshot, exc)
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
            for required in pass_.requires:
                analyses.get(required, graph)
            result = pass_.run(graph, analyses)
            if not isinstance(result, PassResult) or not isinstance(result.graph, Graph):
                raise GraphoptError(
                    f"pass '{pass_.name}' must return PassResult(graph, modified, preserved), not {result!r}"
                )
        except Exception as exc:
            raise fail(exc, "run") from exc
        seconds = time.perf_counter() - started

        new_graph = result.graph
        if result.preserved is not None:
            preserved = result.preserved
        else:
            preserved = pass_.preserved_when_modified() if result.modified else PreservedAnalyses.all()
        if new_graph is not graph:
            analyses.forget(graph)  # results computed on the old object describe the old nodes
        else:
            analyses.invalidate(graph, preserved)
        analyses.graph = new_graph

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
        report.records.append(PassRecord(
            path, text, nodes_before, len(new_graph.nodes), weights_before, len(new_graph.weights),
            seconds, bool(result.modified), iteration,
        ))
        return new_graph, bool(result.modified)

    def _write_reproducer(self, ctx: RunContext, pass_text: str, snapshot: Graph | None, exc: BaseException) -> str | None:
        """Write pipeline + graphs for a bug report; never let a failure here hide the pass's error."""
        if not self.reproducer_dir:
            return None
        try:
            if self.reproducer_dir is True:
                directory = tempfile.mkdtemp(prefix="graphopt-reproducer-")
            else:
                directory = tempfile.mkdtemp(prefix="graphopt-reproducer-", dir=os.fspath(self.reproducer_dir))
            files = {
                "pipeline.txt": ctx.pipeline + "\n",
                "failing_pass.txt": pass_text + "\n",
                "passes_before.txt": "".join(f"{p}\n" for p in ctx.history),
                "error.txt": f"{type(exc).__name__}: {exc}\n",
                "input.ir": ctx.input_graph.format(source=True) + "\n",
            }
            if snapshot is not None:
                files["before_failing_pass.ir"] = snapshot.format(source=True) + "\n"
            files["README.txt"] = (
                f"graphopt pass '{pass_text}' failed.\n"
                "input.ir is the graph given to PassManager.run and pipeline.txt the whole pipeline;\n"
                "before_failing_pass.ir is the graph the failing pass received. If graph.pt exists,\n"
                "replay with:\n"
                "    import torch; from graphopt.passmanager import PassManager\n"
                "    graph = torch.load('graph.pt', weights_only=False)\n"
                "    PassManager.parse(open('failing_pass.txt').read().strip()).run(graph)\n"
            )
            for name, content in files.items():
                with open(os.path.join(directory, name), "w", encoding="utf-8") as fh:
                    fh.write(content)
            if snapshot is not None:
                try:
                    import torch

                    torch.save(snapshot, os.path.join(directory, "graph.pt"))
                except Exception:  # noqa: S110 - the text files are the reproducer; the pickle is a bonus
                    pass
            return directory
        except Exception:
            return None
