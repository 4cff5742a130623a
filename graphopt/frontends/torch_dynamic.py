"""torch.export with dynamic axes that stay dynamic: size-1 examples, and a warning for each axis that does not.

torch.export makes an axis whose example size is 0 or 1 a constant (it cannot tell a broadcast
from a batch of one), so `trace(model, (torch.randn(1, 3, 224, 224),))` used to give a graph
that only runs at batch 1. Batch 1 is how most users write an example, so an axis asked to be
dynamic that has size 1 is traced on the example repeated to size 2 along it, and the graph
imported from that program is run against the model on the user's own example
(`differs_at_example`, called by `trace`): code that computes something else at size 1 (a
`squeeze()`, an `if x.shape[0] == 1`) is caught there, and that axis is traced as given, static.

When torch.export still makes an asked-for axis static, graphopt says which (input, axis,
symbol) and the source line that forced it: torch logs each specialisation from inside the frame
that caused it, so the Python stack at that moment holds the model's own line; an export that
fails names the line its exception came from.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import sys
import sysconfig
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Collection, Iterator, Mapping, Sequence

import torch
import torch.fx.experimental._config as shape_config
from torch.fx.experimental.symbolic_shapes import is_concrete_int
from torch.utils import _pytree as pytree

from graphopt.errors import GraphoptError
from graphopt.ir.graph import Graph
from graphopt.ir.interpreter import mismatch, run_graph

DynamicMap = Mapping[int, Mapping[int, str]]

# The size an asked-for dynamic axis of size 1 is traced at: the smallest torch keeps symbolic.
WIDE = 2

_INTERNAL_PATHS = ("/torch/", "/graphopt/frontends/")
_STDLIB = sysconfig.get_paths()["stdlib"]
_PACKAGE = str(Path(__file__).resolve().parents[1])  # graphopt/
_SPECIALISING = "Specializing %s to %s"  # torch's log message when `print_specializations` is on


class StaticAxisWarning(UserWarning):
    """An axis `trace` was asked to keep dynamic is static in the graph; the message says which and why."""


@dataclass
class Failure:
    """Why an axis could not stay dynamic: what torch said, and the model's source line that caused it."""

    message: str
    line: str | None = None

    def __str__(self) -> str:
        return f"{self.message}, at {self.line}" if self.line else self.message


def dynamic_shapes(model: torch.nn.Module, args: Sequence[Any], kwargs: Mapping[str, Any], dynamic: DynamicMap):
    """torch.export's `dynamic_shapes` for the asked-for axes (inputs numbered over args, then kwargs)."""
    def spec(i: int, a: Any):
        if not isinstance(a, torch.Tensor):
            return None
        return {axis: torch.export.Dim.AUTO for axis in dynamic.get(i, {})} or None

    specs = [spec(i, a) for i, a in enumerate(args)]
    signature = list(inspect.signature(model.forward).parameters.values())
    varargs = next((k for k, p in enumerate(signature) if p.kind is p.VAR_POSITIONAL), None)
    if varargs is not None:  # forward(self, x, *rest): torch.export wants rest's specs as one tuple
        specs = specs[:varargs] + [tuple(specs[varargs:])]
    if not kwargs:
        return tuple(specs)
    shapes: dict[str, Any] = {signature[i].name: s for i, s in enumerate(specs)}
    for j, (k, a) in enumerate(kwargs.items()):
        shapes[k] = spec(len(args) + j, a)
    return shapes


def export_static(model: torch.nn.Module, args: tuple, kwargs: dict) -> torch.export.ExportedProgram:
    """torch.export with every size fixed; a failure is a GraphoptError that says what failed first."""
    try:
        return torch.export.export(model, args, kwargs or None, strict=False)
    except Exception as exc:  # export errors are long; keep them, but say what failed first, and where
        line = failure_of(exc).line
        where = f" (at {line})" if line and line not in str(exc) else ""
        raise GraphoptError(f"torch.export could not trace {type(model).__name__}{where}: {exc}") from exc


def export_dynamic(model: torch.nn.Module, args: tuple, kwargs: dict, dynamic: DynamicMap, *,
                   asked: Collection[tuple[int, int]] | None = None,
                   rejected: Failure | None = None) -> torch.export.ExportedProgram:
    """torch.export keeping the `dynamic` axes symbolic where it can; warn for each asked-for one that is not.

    `asked`: the (input, axis) the caller means to be dynamic (default: all of `dynamic`; the
    others are only allowed to be). An asked-for axis of size 1 is traced at size `WIDE` (the
    example repeated along it); if that fails, or the caller `rejected` such a program (it computes
    something else at size 1), the example is traced as given, those axes static. If that fails
    too, every shape is static.
    """
    flat = list(args) + list(kwargs.values())
    asked = _asked(dynamic, asked)
    widened = size_one_axes(flat, dynamic, asked)
    reasons: dict[tuple[int, int], Failure] = {}
    if widened and rejected is None:
        wide = widen(flat, widened)
        ep, found, failure = _attempt(model, tuple(wide[:len(args)]), dict(zip(kwargs, wide[len(args):])), dynamic)
        if ep is not None:
            _warn_static(model, args, kwargs, ep, dynamic, asked, found, reasons)
            return ep
        rejected = failure
    if widened and rejected is not None:
        why = Failure(f"traced at size {WIDE} (the example repeated along it), {rejected.message}", rejected.line)
        reasons = {axis: why for axis in widened}
    ep, found, failure = _attempt(model, args, kwargs, dynamic)
    if ep is None:
        assert failure is not None
        ep = export_static(model, args, kwargs)
        why = Failure(f"torch.export failed with dynamic axes ({failure.message}); traced with static shapes",
                      failure.line)
        reasons = {(i, axis): reasons.get((i, axis), why) for i, axes in dynamic.items() for axis in axes}
    _warn_static(model, args, kwargs, ep, dynamic, asked, found, reasons)
    return ep


def _asked(dynamic: DynamicMap, asked: Collection[tuple[int, int]] | None) -> frozenset[tuple[int, int]]:
    return frozenset((i, axis) for i, axes in dynamic.items() for axis in axes) if asked is None else frozenset(asked)


def batch_axes(flat: Sequence[Any]) -> set[tuple[int, int]]:
    """What dynamic="batch" asks for: axis 0 of each tensor input whose size there is the batch.

    The batch is the first tensor input's axis 0. Another size there (an (S, S) mask, a (1, N)
    table shared by a batch of 4) is not a batch axis: it stays marked dynamic, as it always was,
    but it is not widened, nor warned about when torch.export fixes it.
    """
    tensors = [(i, v) for i, v in enumerate(flat) if isinstance(v, torch.Tensor) and v.dim() > 0]
    return {(i, 0) for i, v in tensors if v.shape[0] == tensors[0][1].shape[0]} if tensors else set()


def size_one_axes(flat: Sequence[Any], dynamic: DynamicMap,
                  asked: Collection[tuple[int, int]] | None = None) -> list[tuple[int, int]]:
    """The asked-for dynamic (input, axis) whose example size is 1, which torch.export would fix."""
    asked = _asked(dynamic, asked)
    return [(i, axis) for i, value in enumerate(flat) if isinstance(value, torch.Tensor)
            for axis in dynamic.get(i, {}) if (i, axis) in asked and 0 <= axis < value.dim() and value.shape[axis] == 1]


def widen(flat: Sequence[Any], axes: Sequence[tuple[int, int]]) -> list[Any]:
    """The example with each of `axes` (size 1) repeated to size `WIDE`."""
    wide = list(flat)
    for i, axis in axes:
        repeats = [1] * wide[i].dim()
        repeats[axis] = WIDE
        wide[i] = wide[i].repeat(*repeats)
    return wide


def differs_at_example(graph: Graph, model: torch.nn.Module, args: tuple, kwargs: dict, dynamic: DynamicMap,
                       asked: Collection[tuple[int, int]] | None = None) -> Failure | None:
    """Why `graph`, traced at size `WIDE` for size-1 axes, does not compute the model on the given example.

    None when it does, or when no axis was widened. The graph (not only the program) is run: a
    converter may bake in a shape that only holds from size 2 on (a `squeeze()` keeps the axis).
    """
    flat = list(args) + list(kwargs.values())
    tensors = [k for k, value in enumerate(flat) if isinstance(value, torch.Tensor)]
    if len(tensors) != len(graph.inputs):
        return None
    symbolic = [(i, axis) for i, axis in size_one_axes(flat, dynamic, asked)
                if not isinstance(graph.inputs[tensors.index(i)].shape[axis], int)]
    if not symbolic:
        return None
    try:
        with torch.no_grad():
            got = run_graph(graph, [flat[k] for k in tensors])
            expected = [t for t in pytree.tree_leaves(model(*args, **kwargs)) if isinstance(t, torch.Tensor)]
    except Exception as exc:  # the graph fails at size 1: reported, and the axis traced as given
        failure = failure_of(exc)
        return Failure(f"the graph then fails at size 1 ({failure.message})", failure.line)
    if len(got) != len(expected):
        return Failure(f"the graph returns {len(got)} tensors at size 1 and the model {len(expected)}")
    for k, (a, b) in enumerate(zip(got, expected)):
        if not _same(a, b):
            what = "values" if (a.shape, a.dtype) == (b.shape, b.dtype) else \
                f"{a.dtype}{list(a.shape)}, the model's {b.dtype}{list(b.shape)}"
            return Failure(f"the graph's output {k} at size 1 differs from the model's ({what}): "
                           "the model computes something else at size 1",
                           _first_divergence(model, args, kwargs, flat, size_one_axes(flat, dynamic, asked)))
    return None


def _first_divergence(model: torch.nn.Module, args: tuple, kwargs: dict, flat: Sequence[Any],
                      axes: Sequence[tuple[int, int]]) -> str | None:
    """The model's line where its program at the example's sizes first departs from its program at size WIDE.

    Both are exported with static shapes and compared op by op (target, source line, output rank): the
    first op that differs is where the model computes something else at size 1 (a `squeeze()` that
    drops the batch axis, a branch on `x.shape[0] == 1`). None when they cannot be compared.
    """
    import difflib

    from graphopt.frontends.torch import source_location  # torch.py imports this module

    wide = widen(flat, axes)
    try:
        programs = [export_static(model, tuple(a[:len(args)]), dict(zip(kwargs, a[len(args):]))) for a in (flat, wide)]
    except GraphoptError:
        return None

    def ops(ep: torch.export.ExportedProgram) -> list[tuple]:
        found = []
        for fx in ep.graph.nodes:
            val = fx.meta.get("val")
            if fx.op == "call_function" and isinstance(val, torch.Tensor):
                where = source_location(fx)
                found.append((str(fx.target), where.file, where.line, val.dim(), where.code))
        return found

    at_example, at_wide = (ops(ep) for ep in programs)
    keys = [[op[:4] for op in side] for side in (at_example, at_wide)]
    for tag, i, _, j, _ in difflib.SequenceMatcher(None, *keys, autojunk=False).get_opcodes():
        if tag != "equal":
            op = at_example[i] if i < len(at_example) else at_wide[j] if j < len(at_wide) else None
            return f"{op[1]}:{op[2]}: {op[4]}" if op is not None and op[1] else None
    return None


# torch's own log lines about what graphopt reports itself: a failed meta kernel (the export error
# that follows names it) and 0/1 specialisation (graphopt's warning names the input and axis).
_QUIETED = {"torch._subclasses.fake_tensor": "failed while attempting to run meta",
            "torch._export.non_strict_utils": "0/1 specialized"}


@contextlib.contextmanager
def _specialisations() -> Iterator[list[tuple[str, int, str | None]]]:
    """Record each size torch.export makes a constant: (torch's source name, value, the model's line).

    With `print_specializations` on, torch logs a warning from inside the frame that specialised
    the size; a filter on its logger reads the Python stack there, and drops the record, since
    graphopt's own warning names the input and axis.
    """
    found: list[tuple[str, int, str | None]] = []

    def capture(record: logging.LogRecord) -> bool:
        if record.msg != _SPECIALISING or not isinstance(record.args, tuple) or len(record.args) != 2:
            return True
        source, value = record.args
        found.append((str(source), int(value), user_line(traceback.extract_stack())))
        return False

    filters = [(logging.getLogger("torch.fx.experimental.symbolic_shapes"), capture)]
    filters += [(logging.getLogger(name), _dropping(text)) for name, text in _QUIETED.items()]
    for logger, keep in filters:
        logger.addFilter(keep)
    try:
        with shape_config.patch(print_specializations=True):
            yield found
    finally:
        for logger, keep in filters:
            logger.removeFilter(keep)


def _dropping(text: str):
    return lambda record: text not in str(record.msg)


def user_line(frames: Sequence[traceback.FrameSummary]) -> str | None:
    """'file:line: code' of the innermost frame of the model's code (under torch.export, if it is on the stack)."""
    start = next((k for k, f in enumerate(frames) if "/torch/export/" in f.filename), 0)
    for frame in reversed(frames[start:]):
        if _is_internal(frame.filename):
            continue
        return f"{frame.filename}:{frame.lineno}: {(frame.line or '').strip()}"
    return None


def _is_internal(filename: str) -> bool:
    """A frame of torch, of graphopt's front-end, of the standard library, or of generated code."""
    stdlib = filename.startswith(_STDLIB) and "-packages" not in filename
    return filename.startswith("<") or stdlib or any(p in filename for p in _INTERNAL_PATHS)


def failure_of(exc: BaseException) -> Failure:
    """An exception as a failure: its type and first line, and the model's line it came from (or its cause's)."""
    first = (str(exc).strip().splitlines() or [""])[0].rstrip(".")
    line, cause = None, exc
    while cause is not None and line is None:
        line = user_line(traceback.extract_tb(cause.__traceback__))
        cause = cause.__cause__ or cause.__context__
    return Failure(f"{type(exc).__name__}: {first}", line)


def _attempt(model: torch.nn.Module, args: tuple, kwargs: dict, dynamic: DynamicMap):
    """Export with the asked-for axes as Dim.AUTO: (program or None, specialisations, failure or None)."""
    shapes = dynamic_shapes(model, args, kwargs, dynamic)
    with _specialisations() as found:
        try:
            ep = torch.export.export(model, args, kwargs or None, dynamic_shapes=shapes, strict=False)
        except Exception as exc:  # any export error: the caller falls back, and says why
            return None, found, failure_of(exc)
    return ep, found, None


def _same(a: Any, b: Any) -> bool:
    if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor):
        return type(a) is type(b) and bool(a == b)
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.device.type == "meta" or a.numel() == 0:
        return True
    return mismatch(a.detach(), b.detach(), rtol=1e-4, atol=1e-5, min_scale=1.0) is None


def input_names(model: torch.nn.Module, args: Sequence[Any], kwargs: Mapping[str, Any]) -> list[str]:
    """The name of each input as forward() calls it (positional, then keyword)."""
    try:
        params = [p.name for p in inspect.signature(model.forward).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):  # a forward without a readable signature
        params = []
    return [params[i] if i < len(params) else f"args[{i}]" for i in range(len(args))] + list(kwargs)


def _specialised(found, name: str, axis: int) -> Failure | None:
    """torch's own record of making axis `axis` of input `name` a constant, if it logged one."""
    for source, value, line in found:
        if f"['{name}']" in source and source.endswith(f".size()[{axis}]"):
            return Failure(f"torch.export specialised it to {value}", line)
    return None


def static_axes(ep: torch.export.ExportedProgram, dynamic: DynamicMap) -> dict[tuple[int, int], int]:
    """Each asked-for dynamic axis that is a constant in the program, with its size."""
    users = {s.arg.name for s in ep.graph_signature.input_specs if s.kind.name == "USER_INPUT"}
    vals = [n.meta.get("val") for n in ep.graph.nodes if n.op == "placeholder" and n.name in users]
    static: dict[tuple[int, int], int] = {}
    for i, axes in dynamic.items():
        val = vals[i] if i < len(vals) else None
        if not isinstance(val, torch.Tensor):
            continue
        for axis in axes:
            if 0 <= axis < val.dim() and is_concrete_int(val.shape[axis]):  # an int, or a SymInt replaced by one
                static[(i, axis)] = int(val.shape[axis])
    return static


def _warn_static(model, args, kwargs, ep, dynamic: DynamicMap, asked, found, reasons) -> None:
    """One StaticAxisWarning listing every asked-for axis that the program has as a constant, and why."""
    static = {axis: size for axis, size in static_axes(ep, dynamic).items() if axis in asked}
    if not static:
        return
    names = input_names(model, args, kwargs)
    lines = []
    for (i, axis), size in static.items():
        why = reasons.get((i, axis)) or _specialised(found, names[i], axis) or Failure(
            "torch.export fixes an axis of example size 0 or 1" if size in (0, 1) else "torch.export made it static")
        lines.append(f"  input {i} '{names[i]}' axis {axis} ('{dynamic[i][axis]}') is fixed at {size}: {why}")
    warnings.warn(StaticAxisWarning(
        f"tracing {type(model).__name__}: {len(lines)} axis(es) asked to stay dynamic are static in the graph, "
        f"so it only runs at these sizes:\n" + "\n".join(lines)), stacklevel=_outside_graphopt())


def _outside_graphopt() -> int:
    """The warnings stacklevel of the first caller outside the graphopt package (trace's or optimize's caller)."""
    frame, level = sys._getframe(2), 2  # level 1 is the function that warns
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE):
        frame, level = frame.f_back, level + 1
    return level
