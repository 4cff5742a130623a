"""MetaSchedule tuning: tasks, a budget split by where time goes, a database reused across graphs and runs.

The database lives in `work_dir/<target key>/` (default `~/.cache/graphopt/tvm`,
or `$GRAPHOPT_TVM_CACHE`): records are keyed by the task's TIR (structural hash)
inside a directory per target, so a pruned model whose channel counts were
rounded to shared values reuses every task it has in common, and compiling
the same graph twice measures nothing the second time.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import math
import os
import re
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tvm
from graphopt.backends.tvm.artifact import physical_cores
from graphopt.backends.tvm.target import target_key
from tvm.ir.utils import derived_object
from tvm.s_tir import meta_schedule as ms
from tvm.s_tir.analysis import estimate_tir_flops

from graphopt.errors import GraphoptError

# A task below this share of the model's FLOPs gets a quick random search instead of an
# evolutionary one: about 16 s of evolutionary search per task on 2 cores would not pay.
MIN_TASK_SHARE = 0.005
# Random candidates measured for each task below MIN_TASK_SHARE (~4 s a task here).
QUICK_TRIALS = 8
# Evolutionary steps in a row without a 1 % gain after which a task waits for the others.
STALE_STEPS = 2


def default_work_dir() -> Path:
    return Path(os.environ.get("GRAPHOPT_TVM_CACHE") or Path.home() / ".cache" / "graphopt" / "tvm")


@dataclass(frozen=True)
class Budget:
    """How much tuning to do: a number of measured trials, a wall-clock limit, or both."""

    trials: int | None = None
    seconds: float | None = None

    @classmethod
    def parse(cls, tune: Any) -> Budget | None:
        """None/0/False: no tuning; int: trials; '15min', '90s', '1h' or a timedelta: wall-clock time."""
        if tune is None or tune is False or (isinstance(tune, int) and not isinstance(tune, bool) and tune == 0):
            return None
        if isinstance(tune, Budget):
            return tune
        if isinstance(tune, bool):
            raise GraphoptError("tune=True is ambiguous: give a number of trials (e.g. tune=200) or a time ('10min')")
        if isinstance(tune, int):
            if tune < 0:
                raise GraphoptError(f"tune must be a positive number of trials, not {tune}")
            return cls(trials=tune)
        if isinstance(tune, _dt.timedelta):
            return cls(seconds=tune.total_seconds())
        if isinstance(tune, str):
            m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h)\s*", tune)
            if m:
                scale = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}[m.group(2)]
                return cls(seconds=float(m.group(1)) * scale)
        raise GraphoptError(f"tune={tune!r}: pass None, a number of trials (int), or a duration such as "
                            "'15min', '90s' or a datetime.timedelta")


@dataclass
class Task:
    """One tuning task: a fused TIR function, how often the model calls it, and its cost."""

    name: str
    weight: int
    flops: float
    mod: tvm.IRModule
    best_seconds: float | None = None   # best measured latency in the database, if any
    planned: int = 0                    # trials given to it in this run
    measured: int = 0                   # candidates measured in this run (successfully or not)
    failed: int = 0
    first_error: str | None = None

    @property
    def cost(self) -> float:
        return self.flops * self.weight


class TuningDatabase:
    """A MetaSchedule JSON database for one target, under `work_dir/<target key>/`."""

    def __init__(self, target: tvm.target.Target, work_dir: str | os.PathLike | None = None) -> None:
        self.target = target
        self.root = Path(work_dir) if work_dir is not None else default_work_dir()
        self.path = self.root / target_key(target)
        self.path.mkdir(parents=True, exist_ok=True)
        self.db = ms.database.JSONDatabase(
            path_workload=str(self.path / "database_workload.json"),
            path_tuning_record=str(self.path / "database_tuning_record.json"),
            module_equality="structural",
        )

    def best_seconds(self, mod: tvm.IRModule) -> float | None:
        """Mean latency of the best record for this workload, or None when it has none."""
        if not self.db.has_workload(mod):
            return None
        records = self.db.get_top_k(self.db.commit_workload(mod), 1)
        if not records or not records[0].run_secs:
            return None
        secs = [float(s) for s in records[0].run_secs]
        return sum(secs) / len(secs)

    def __len__(self) -> int:
        return len(self.db)

    def __repr__(self) -> str:
        return f"TuningDatabase({str(self.path)!r}, records={len(self)})"


def extract_tasks(mod: tvm.IRModule, target: tvm.target.Target, database: TuningDatabase) -> list[Task]:
    """The tuning tasks of a fused module (see build.fuse), with FLOP estimates and the database's best."""
    tasks = []
    for ext in ms.relax_integration.extract_tasks(mod, target, module_equality="structural"):
        dispatched = ext.dispatched[0]
        try:
            flops = float(estimate_tir_flops(dispatched))
        except Exception:  # noqa: BLE001 - an estimate only; unknown counts as free
            flops = 0.0
        tasks.append(Task(str(ext.task_name), int(ext.weight), flops, dispatched,
                          best_seconds=database.best_seconds(dispatched)))
    return tasks


def allocate(tasks: Sequence[Task], trials: int, *, min_share: float = MIN_TASK_SHARE) -> dict[int, list[Task]]:
    """Split `trials` over the tasks without records, in proportion to FLOPs x calls.

    Returns {trials per task: tasks}; per-task counts are rounded down to powers of two so that
    each group is one MetaSchedule run. Tasks below `min_share` of the model's FLOPs, and the
    smallest tasks when the budget cannot give each at least one trial, get none.
    """
    total = sum(t.cost for t in tasks) or 1.0
    todo = sorted((t for t in tasks if t.best_seconds is None and t.cost / total >= min_share),
                  key=lambda t: t.cost, reverse=True)
    while todo and len(todo) > trials:
        todo.pop()
    groups: dict[int, list[Task]] = {}
    todo_cost = sum(t.cost for t in todo) or 1.0
    for t in todo:
        share = trials * t.cost / todo_cost
        t.planned = 2 ** int(math.log2(share)) if share >= 1 else 1
        groups.setdefault(t.planned, []).append(t)
    return dict(sorted(groups.items(), reverse=True))


class Progress:
    """Prints one line per measured batch: the task, its best latency, and the model's estimated latency."""

    def __init__(self, tasks: Sequence[Task], *, deadline: float | None = None,
                 out: Callable[[str], None] | None = None) -> None:
        self.tasks = list(tasks)
        self.deadline = deadline
        self.started = time.monotonic()
        self.out = out
        self.stopped_by_deadline = False

    def estimate_ms(self) -> float | None:
        """Sum over tasks of calls x best latency, for tasks that have one (untuned tasks not counted)."""
        known = [t for t in self.tasks if t.best_seconds is not None]
        return 1e3 * sum(t.weight * t.best_seconds for t in known) if known else None

    def record(self, task: Task, builder_results, runner_results) -> None:
        for b, r in zip(builder_results, runner_results):
            task.measured += 1
            error = b.error_msg or r.error_msg
            if error:
                task.failed += 1
                task.first_error = task.first_error or str(error).strip().splitlines()[-1][:500]
                continue
            secs = [float(s) for s in r.run_secs]
            mean = sum(secs) / len(secs)
            if task.best_seconds is None or mean < task.best_seconds:
                task.best_seconds = mean
        if self.out is not None:
            best = f"{task.best_seconds * 1e3:.3f} ms" if task.best_seconds is not None else "no valid candidate"
            est = self.estimate_ms()
            tuned = sum(1 for t in self.tasks if t.best_seconds is not None)
            total = f", est. {est:.2f} ms over them" if est is not None else ""
            self.out(f"[tvm tune {time.monotonic() - self.started:5.0f}s] {task.name}: {task.measured}/{task.planned} "
                     f"trials, best {best} x{task.weight} | tuned tasks {tuned}/{len(self.tasks)}{total}")

    def past_deadline(self) -> bool:
        return self.deadline is not None and time.monotonic() > self.deadline


def _make_callback(progress: Progress, group: Sequence[Task]):
    # Records progress only: each run is one task with a small budget, and the deadline is
    # checked between runs. (Terminating tasks from here races with the scheduler's own
    # termination of a finished task, which TVM treats as a fatal error.)
    @derived_object
    class _GraphoptMeasure(ms.measure_callback.PyMeasureCallback):
        def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results):
            progress.record(group[task_id], builder_results, runner_results)

    return _GraphoptMeasure()


def make_builder(max_workers: int | None = None) -> ms.builder.LocalBuilder:
    """LocalBuilder whose workers build without importing tvm.s_tir.tensor_intrin (see _build_worker)."""
    import cloudpickle
    from graphopt.backends.tvm import _build_worker

    # By value: a worker unpickling it must not import graphopt (and with it torch).
    cloudpickle.register_pickle_by_value(_build_worker)
    return ms.builder.LocalBuilder(max_workers=max_workers, f_build=_build_worker.build_without_tensor_intrin,
                                   timeout_sec=60.0)


def make_local_runner(evaluator: ms.runner.EvaluatorConfig | None = None) -> ms.runner.LocalRunner:
    """LocalRunner whose workers fill integer arguments with zeros (valid gather indices; see _build_worker).

    evaluator: how each candidate is timed (default: make_evaluator(), caches flushed).
    """
    import cloudpickle
    from graphopt.backends.tvm import _build_worker

    cloudpickle.register_pickle_by_value(_build_worker)
    return ms.runner.LocalRunner(evaluator_config=evaluator or make_evaluator(),
                                 f_alloc_argument=_build_worker.alloc_arguments)


def make_evaluator(number: int = 1, repeat: int = 5, min_repeat_ms: int = 0,
                   cache_flush: bool = True) -> ms.runner.EvaluatorConfig:
    return ms.runner.EvaluatorConfig(number=number, repeat=repeat, min_repeat_ms=min_repeat_ms,
                                     enable_cpu_cache_flush=cache_flush)


def make_strategy(population_size: int = 256, genetic_num_iters: int = 3) -> ms.search_strategy.EvolutionarySearch:
    """Evolutionary search sized for 2 cores: half the stock population (512), one genetic round fewer."""
    return ms.search_strategy.EvolutionarySearch(population_size=population_size,
                                                 genetic_num_iters=genetic_num_iters)


@dataclass
class TuneReport:
    """What a tuning run did: tasks, measurements, time, and whether the deadline stopped it."""

    tasks: list[Task] = field(default_factory=list)
    seconds: float = 0.0
    stopped_by_deadline: bool = False

    @property
    def measured(self) -> int:
        return sum(t.measured for t in self.tasks)

    @property
    def tuned_tasks(self) -> list[Task]:
        return [t for t in self.tasks if t.planned]

    def summary(self) -> str:
        lines = [f"{'task':48} {'calls':>5} {'GFLOP':>8} {'trials':>7} {'best ms':>9}"]
        for t in sorted(self.tasks, key=lambda t: -t.cost):
            best = f"{t.best_seconds * 1e3:9.3f}" if t.best_seconds is not None else "        -"
            lines.append(f"{t.name[:48]:48} {t.weight:5d} {t.flops / 1e9:8.3f} {t.measured:7d} {best}")
        return "\n".join(lines)


def tune(tasks: list[Task], database: TuningDatabase, budget: Budget, *, runner: Any = None,
         progress: bool | Callable[[str], None] = True, max_workers: int | None = None,
         num_trials_per_iter: int = 32, seed: int | None = None, min_share: float = MIN_TASK_SHARE,
         strategy: Any = None) -> TuneReport:
    """Tune the tasks that have no record yet, within `budget`, committing results to `database`.

    Tasks at or above `min_share` of the FLOPs get evolutionary search (after a random first
    pass, under a time budget: see _timed_steps); the others get one quick pass of QUICK_TRIALS
    random candidates, because a default schedule is scalar and serial:
    ResNet-18's 1x1 downsampling convolutions and pooling cost 12 ms of a 49 ms run untuned,
    0.6 ms after a 26 s quick pass. One XGBoost cost model serves every run of the call and is
    kept next to the database, so later compiles (a pruned variant, a re-run) start from it.
    """
    target = database.target
    started = time.monotonic()
    deadline = started + budget.seconds if budget.seconds is not None else None
    heavy, quick = _split_untuned(tasks, min_share)
    if budget.trials is not None:
        quick = quick if budget.trials >= 2 * QUICK_TRIALS * len(quick) + len(heavy) else []
        groups = allocate(heavy, budget.trials - QUICK_TRIALS * len(quick), min_share=0.0)
        steps: Any = [(t, n, None) for n, group in groups.items() for t in group]
        steps += [(t, QUICK_TRIALS, "quick") for t in quick]
        for t in heavy + quick:
            t.planned = 0  # counted up step by step below
    else:
        steps = _timed_steps(heavy, quick, min(num_trials_per_iter, 16))
    out = None if progress is False else (progress if callable(progress) else _stderr)
    tracker = Progress(tasks, deadline=deadline, out=out)
    report = TuneReport(tasks=tasks)
    if not heavy and not quick:
        return report
    cores = int(target.attrs.get("num-cores", 0) or physical_cores())
    with _workers_without_torch():
        builder = make_builder(max_workers or cores)
        runner = runner if runner is not None else make_local_runner()
        cost_model = _load_cost_model(database.path, cores)
        _import_cpu_tensor_intrin_only(target)
        if out is not None:
            trials = "until the deadline" if deadline else f"{sum(n for _, n, _ in steps)} trials"
            out(f"[tvm tune] {len(heavy) + len(quick)} of {len(tasks)} tasks to tune ({len(quick)} small ones "
                f"with a quick pass), {trials}" + (f" ({budget.seconds:.0f} s)" if deadline else "")
                + f"; database {database.path}")
        # One MetaSchedule run per task and step: its scheduler joins a task's measurements only
        # after every task of a run has been sent once, so a run over many tasks reports nothing,
        # and cannot be stopped, for as long as the slowest searches take.
        for task, trials, kind in steps:
            if tracker.past_deadline():
                tracker.stopped_by_deadline = True
                break
            task.planned += trials
            search = ms.search_strategy.ReplayTrace() if kind == "quick" else (strategy or make_strategy())
            context = ms.TuneContext(
                mod=task.mod, target=target, space_generator="post-order-apply", search_strategy=search,
                task_name=task.name, logger=_task_logger(database.path, task.name),
                rand_state=-1 if seed is None else seed, num_threads=cores).clone()
            ms.tune.tune_tasks(
                tasks=[context], task_weights=[float(task.weight)], work_dir=str(database.path),
                max_trials_global=trials, max_trials_per_task=trials,
                num_trials_per_iter=min(trials, num_trials_per_iter),
                builder=builder, runner=runner, database=database.db, cost_model=cost_model,
                measure_callbacks=[*ms.measure_callback.MeasureCallback.create("default"),
                                   _make_callback(tracker, [task])],
                task_scheduler="round-robin",
            )
        _save_cost_model(cost_model, database.path)

    report.seconds = time.monotonic() - started
    report.stopped_by_deadline = tracker.stopped_by_deadline
    _raise_if_nothing_built(tasks)
    return report


def _split_untuned(tasks: Sequence[Task], min_share: float) -> tuple[list[Task], list[Task]]:
    """Tasks without a record, split into those worth a search (heaviest first) and small ones."""
    total = sum(t.cost for t in tasks) or 1.0
    todo = sorted((t for t in tasks if t.best_seconds is None), key=lambda t: t.cost, reverse=True)
    return [t for t in todo if t.cost / total >= min_share], [t for t in todo if t.cost / total < min_share]


def _timed_steps(heavy: Sequence[Task], quick: Sequence[Task], per_step: int):
    """Steps for a time budget: a random-search pass over every task, then rounds where time goes.

    The first pass samples `per_step` random candidates for each heavy task (QUICK_TRIALS for
    the small ones): with no measurements yet the cost model cannot guide an evolutionary
    search, which costs ~13 s a task here against ~7 s for random candidates of the same
    quality, and the pass leaves no task on a default schedule.

    Then each round runs `per_step` evolutionary trials on every task, small ones included,
    whose share of the estimated run time (calls x best latency) is at least half the average,
    largest first, skipping tasks whose last STALE_STEPS steps gained under 1 %: on BERT the
    three largest matmuls stopped improving after 5 minutes, and the next 10 went to them for
    0.4 % while a softmax at 2.6 ms had 8 random trials. When every task above the threshold
    is stale, it halves, down to every task; when all of those are stale too, all start over.
    The generator is lazy, so each round reads the latencies the previous one measured.
    """
    for task in heavy:
        yield task, per_step, "quick"
    for task in quick:
        yield task, QUICK_TRIALS, "quick"
    tasks = [*heavy, *quick]
    stale: dict[int, int] = {}
    while tasks:
        timed = sorted(((t.weight * t.best_seconds, t) for t in tasks if t.best_seconds is not None),
                       key=lambda p: -p[0])
        if not timed:  # nothing built yet: keep trying the heavy tasks
            yield from ((t, per_step, None) for t in heavy or tasks)
            continue
        average = sum(cost for cost, _ in timed) / len(timed)
        fresh = [(cost, t) for cost, t in timed if stale.get(id(t), 0) < STALE_STEPS]
        chosen = next((picked for share in (0.5, 0.25, 0.125, 0.0)
                       if (picked := [t for cost, t in fresh if cost >= share * average])), [])
        if not chosen:
            stale.clear()
            continue
        for task in chosen:
            before = task.best_seconds
            yield task, per_step, None
            gained = task.best_seconds is not None and before is not None and task.best_seconds < 0.99 * before
            stale[id(task)] = 0 if gained else stale.get(id(task), 0) + 1


COST_MODEL_FILE = "cost_model.tar"


def _load_cost_model(directory: Path, cores: int):
    """The XGBoost cost model kept with the database (its training data included), or a new one."""
    model = ms.cost_model.CostModel.create("xgb", num_tuning_cores=cores, tree_method="auto")
    path = directory / COST_MODEL_FILE
    if path.exists():
        try:
            with warnings.catch_warnings():  # xgboost guesses the format from the .bin suffix, and says so
                warnings.simplefilter("ignore", UserWarning)
                model.load(str(path))
        except Exception as error:  # noqa: BLE001 - a stale or partial file only costs its head start
            warnings.warn(f"ignoring the saved TVM cost model {path}: {error}", stacklevel=3)
            model = ms.cost_model.CostModel.create("xgb", num_tuning_cores=cores, tree_method="auto")
    return model


def _save_cost_model(model, directory: Path) -> None:
    if getattr(model, "booster", None) is None:  # nothing trained (MetaSchedule's load needs a booster)
        return
    handle, temporary = tempfile.mkstemp(dir=directory, prefix=".cost_model-", suffix=".tar")
    os.close(handle)
    try:
        with warnings.catch_warnings():  # xgboost notes the file name has no .json/.ubj suffix
            warnings.simplefilter("ignore", UserWarning)
            model.save(temporary)
        os.replace(temporary, directory / COST_MODEL_FILE)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


@contextlib.contextmanager
def _workers_without_torch():
    """Worker processes started meanwhile cannot import torch.

    tvm_ffi imports torch, if installed, in every process that imports tvm: ~3 s
    of a ~4.5 s worker start-up here. MetaSchedule's LocalBuilder starts a fresh
    pool for every batch of candidates, so on a 15-minute budget that is minutes
    of tuning time. Workers only build and time TIR; a `torch` package that
    raises ImportError, first on their PYTHONPATH, lets tvm_ffi skip it. This
    process, which already imported torch, is unaffected.
    """
    with tempfile.TemporaryDirectory(prefix="graphopt-no-torch-") as stub:
        os.makedirs(os.path.join(stub, "torch"))
        with open(os.path.join(stub, "torch", "__init__.py"), "w") as handle:
            handle.write('raise ImportError("torch is not available in graphopt\'s TVM tuning workers")\n')
        saved = os.environ.get("PYTHONPATH")
        os.environ["PYTHONPATH"] = stub + (os.pathsep + saved if saved else "")
        try:
            yield
        finally:
            if saved is None:
                os.environ.pop("PYTHONPATH", None)
            else:
                os.environ["PYTHONPATH"] = saved


def _raise_if_nothing_built(tasks: Sequence[Task]) -> None:
    tried = [t for t in tasks if t.measured]
    if tried and all(t.failed == t.measured for t in tried):
        first = next(t for t in tried if t.first_error)
        raise GraphoptError(f"every tuning candidate failed to build or run ({sum(t.measured for t in tried)} "
                            f"tried); first error, in task {first.name}: {first.first_error}")


def _import_cpu_tensor_intrin_only(target: tvm.target.Target) -> None:
    """Register the x86 tensor intrinsics without importing tvm.s_tir.tensor_intrin's __init__.

    TuneContext imports the whole `tvm.s_tir.tensor_intrin` package, whose __init__ imports the
    CUDA, ROCm, Hexagon and Arm intrinsics too: 30-100 s on 2 cores, of which a CPU target
    uses none. Registering the package as an (unexecuted) module and importing only `x86` makes
    that import a no-op. Nothing here runs when the package is already imported.
    """
    import importlib
    import importlib.util

    name = "tvm.s_tir.tensor_intrin"
    if name in sys.modules or target.kind.name != "llvm":
        return
    spec = importlib.util.find_spec(name)
    if spec is None:  # pragma: no cover - a TVM without tensor intrinsics
        return
    package = importlib.util.module_from_spec(spec)
    sys.modules[name] = package
    try:
        importlib.import_module(name + ".x86")
    except Exception:  # noqa: BLE001 - fall back to the full, slow import
        del sys.modules[name]
        sys.modules.pop(name + ".x86", None)


def _task_logger(directory: Path, name: str):
    """A logger writing one task's MetaSchedule log to directory/logs/<task>.log, and nothing to the console.

    MetaSchedule's own helper (get_loggers_from_work_dir) reconfigures the logging tree with
    dictConfig on every call, and fails on handlers it did not name (pytest's, for one).
    """
    import hashlib
    import logging

    key = hashlib.sha1(str(directory).encode()).hexdigest()[:8]
    logger = logging.getLogger(f"graphopt.tvm.tune.{key}.{name}")
    if not logger.handlers:
        (directory / "logs").mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(directory / "logs" / f"{name[:100]}.log")
        handler.setFormatter(logging.Formatter("%(asctime)s [%(levelname)s] %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
        logger.propagate = False
    return logger


def _stderr(line: str) -> None:
    if line:
        print(line, file=sys.stderr, flush=True)
