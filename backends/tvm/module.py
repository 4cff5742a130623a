"""TvmModule: a compiled model called like the torch back-end's module, and `compile()` that makes one."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import tvm
from graphopt.backends.tvm import artifact as _artifact
from graphopt.backends.tvm.build import build, fuse, prepare
from graphopt.backends.tvm.lowering import TensorSpec, static_bind, to_relax
from graphopt.backends.tvm.target import detect_target
from graphopt.backends.tvm.tuning import (
    Budget,
    TuneReport,
    TuningDatabase,
    extract_tasks,
)
from graphopt.backends.tvm.tuning import tune as _tune
from tvm import relax

from graphopt.errors import GraphoptError
from graphopt.ir.graph import Graph

DEFAULT_PIPELINE = "canonicalize"


class UntunedWarning(UserWarning):
    """A TVM build is using default (untuned) schedules for most of its work, and will be slow."""


@dataclass(frozen=True)
class KernelTime:
    """One function the VM called during a run: calls per run, ms per run, and the tuner's estimate."""

    name: str
    calls: int
    ms: float
    estimated_ms: float | None  # calls x best tuned latency, when the task has a record


class TvmModule:
    """A model compiled by TVM for one target: torch tensors (or numpy arrays) in, the same kind out."""

    def __init__(self, executable: relax.VMExecutable, inputs: list[TensorSpec], outputs: list[TensorSpec], *,
                 target: tvm.target.Target, graph_name: str, pipeline: str | None, bind: Mapping[str, int],
                 report: TuneReport, database: TuningDatabase, layout: str | None) -> None:
        self.executable = executable
        self.inputs = inputs
        self.outputs = outputs
        self.target = target
        self.graph_name = graph_name
        self.pipeline = pipeline
        self.bind = dict(bind)
        self.report = report
        self.database = database
        self.layout = layout
        self.device = tvm.cpu()
        self.vm = relax.VirtualMachine(executable, self.device)

    def __call__(self, *args: Any) -> Any:
        if len(args) != len(self.inputs):
            raise GraphoptError(f"the model takes {len(self.inputs)} inputs "
                                f"({', '.join(i.name for i in self.inputs)}), got {len(args)}")
        as_torch = any(hasattr(a, "detach") for a in args)
        tensors = [tvm.runtime.tensor(self._array(spec, a), self.device) for spec, a in zip(self.inputs, args)]
        outs = [r.numpy() for r in _artifact._flatten(self.vm["main"](*tensors))]
        if as_torch:
            import torch

            outs = [torch.from_numpy(o) for o in outs]
        return outs[0] if len(outs) == 1 else tuple(outs)

    @staticmethod
    def _array(spec: TensorSpec, value: Any) -> np.ndarray:
        array = value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)
        if list(array.shape) != spec.shape or array.dtype.name != spec.dtype:
            raise GraphoptError(f"input '{spec.name}' must be {spec.dtype}{spec.shape} (TVM compiles static shapes; "
                                f"recompile with bind=... for other sizes), got {array.dtype.name}{list(array.shape)}")
        return np.ascontiguousarray(array)

    def benchmark(self, *args: Any, repeat: int = 20, number: int = 1) -> float:
        """Median latency in milliseconds, measured by TVM's time_evaluator (no Python in the loop)."""
        tensors = [tvm.runtime.tensor(self._array(s, a), self.device) for s, a in zip(self.inputs, args)]
        timer = self.vm.time_evaluator("main", self.device, number=number, repeat=repeat, min_repeat_ms=0)
        return 1e3 * float(np.median(timer(*tensors).results))

    def profile(self, *args: Any, repeat: int = 5) -> list[KernelTime]:
        """Time every call the VM makes (kernels and VM builtins) over `repeat` runs, slowest first.

        Measured inside the model, where a kernel's weights come from memory rather than cache:
        this is what shows how far the tuner's per-kernel estimates are from the model's time.
        A second VM is instrumented, so this module's own calls stay untimed.
        """
        import time as _time

        vm = relax.VirtualMachine(self.executable, self.device)
        tensors = [tvm.runtime.tensor(self._array(s, a), self.device) for s, a in zip(self.inputs, args)]
        vm["main"](*tensors)  # warm-up: allocations, first-touch
        totals: dict[str, list[float]] = {}
        started: dict[str, float] = {}

        def instrument(_func, name, before, _ret, *_args):
            if before:
                started[name] = _time.perf_counter()
            else:
                entry = totals.setdefault(name, [0, 0.0])
                entry[0] += 1
                entry[1] += _time.perf_counter() - started[name]
            return 0  # carry on (tvm.runtime.profiling's instrument return code: no action)

        vm.set_instrument(instrument)
        for _ in range(repeat):
            vm["main"](*tensors)
        estimates = {t.name: t.weight * t.best_seconds for t in self.report.tasks if t.best_seconds is not None}
        # A kernel whose weights were prepacked is renamed '<task>_prepacked' by SplitLayoutRewritePreproc.
        rows = [KernelTime(name, calls // repeat, 1e3 * secs / repeat,
                           1e3 * estimates[task] if (task := name.removesuffix("_prepacked")) in estimates else None)
                for name, (calls, secs) in totals.items()]
        return sorted(rows, key=lambda r: -r.ms)

    def manifest(self) -> dict:
        tuned = [t for t in self.report.tasks if t.best_seconds is not None]
        return {
            "graph": self.graph_name,
            "inputs": [i.to_json() for i in self.inputs],
            "outputs": [o.to_json() for o in self.outputs],
            "bind": self.bind,
            "target": json.loads(str(self.target)),  # a Target prints as its JSON config
            "passes": self.pipeline or "",
            "layout": self.layout or "NCHW",
            "tuning": {"database": str(self.database.path), "tasks": len(self.report.tasks),
                       "tasks_with_records": len(tuned), "measured_this_compile": self.report.measured},
        }

    def save(self, directory, *, extra: Mapping[str, Any] | None = None) -> str:
        """Write a deployable artifact (library + manifest.json); load it with graphopt.load(directory).

        `extra`: more manifest fields (OptimizedModel.save adds the output structure). All or nothing: a
        failed save leaves the previous artifact at `directory` (or none); see artifact.save.
        """
        return _artifact.save(directory, self.executable, {**self.manifest(), **(extra or {})})

    def __repr__(self) -> str:
        sig = ", ".join(f"{i.name}: {i.dtype}{i.shape}" for i in self.inputs)
        return f"<TvmModule {self.graph_name}({sig}) target={self.target}>"


def compile(graph: Graph, target: Any = None, tune: Any = None, work_dir: Any = None, runner: Any = None, *,
            bind: Mapping[str, int] | None = None, example_inputs: Sequence[Any] | None = None,
            pipeline: str | None = DEFAULT_PIPELINE, layout: str | None = None,
            progress: bool | Callable[[str], None] = True, min_share: float | None = None,
            prepack: bool = True) -> TvmModule:
    """Compile `graph` with TVM for `target` (default: this CPU), tuning with MetaSchedule if asked.

    tune: None (apply what the tuning database already has; warns when that leaves the build
    slow), a number of trials, or a duration ('15min', '600s'). Trials go to the tasks that have
    no record yet, in proportion to their share of the model's FLOPs. work_dir: the tuning
    database root (default ~/.cache/graphopt/tvm, or $GRAPHOPT_TVM_CACHE), shared by every
    graph compiled for the same target. runner: where candidates are measured: None (this
    machine) or a MetaSchedule runner such as `rpc.rpc_runner("host:9190", "key")`.
    bind / example_inputs: sizes of the dynamic axes (default: the traced example's sizes, else batch=1). pipeline: graphopt passes
    run first (textual pipeline; None for none). layout: None/'NCHW' or 'NHWC' for convolutions.
    prepack: let tuned kernels choose their weights' layout, transformed once at compile time.
    """
    from graphopt.backends.tvm.tuning import MIN_TASK_SHARE

    budget = Budget.parse(tune)
    target = detect_target(target)
    if pipeline:
        import graphopt.passes.canonicalize  # noqa: F401 - registers the canonicalisation passes

        from graphopt.passmanager import PassManager

        graph, _ = PassManager.parse(pipeline).run(graph)
    sizes = static_bind(graph, bind, example_inputs)
    lowered = to_relax(graph, sizes)
    mod = fuse(prepare(lowered.mod, layout), target, prepack=prepack)
    database = TuningDatabase(target, work_dir)
    tasks = extract_tasks(mod, target, database)
    report = TuneReport(tasks=tasks)
    if budget is not None:
        report = _tune(tasks, database, budget, runner=runner, progress=progress,
                       min_share=MIN_TASK_SHARE if min_share is None else min_share)
    else:
        _warn_if_untuned(graph.name, tasks, database)
    started = time.monotonic()
    executable = build(mod, target, database.db)
    report.build_seconds = time.monotonic() - started
    return TvmModule(executable, lowered.inputs, lowered.outputs, target=target, graph_name=graph.name,
                     pipeline=pipeline, bind=sizes, report=report, database=database, layout=layout)


def _warn_if_untuned(name: str, tasks, database: TuningDatabase) -> None:
    total = sum(t.cost for t in tasks)
    if not total:
        return
    missing = [t for t in tasks if t.best_seconds is None]
    share = sum(t.cost for t in missing) / total
    if share > 0.05:
        warnings.warn(UntunedWarning(
            f"graph '{name}': {len(missing)} of {len(tasks)} TVM tasks ({share:.0%} of the FLOPs) have no tuning "
            f"records in {database.path}, so they get default schedules; untuned TVM CPU builds are typically "
            f"tens to hundreds of times slower than ONNX Runtime. Pass tune=200 or tune='15min' to compile() "
            f"or graphopt.optimize() (records are reused by later compiles), or use the ONNX Runtime back-end "
            f"(graphopt.backends.onnx, backend='onnx')."),
            stacklevel=3)
