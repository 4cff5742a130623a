"""The Pass contract: a small class with a name, typed options, declared analyses and a tolerance.

Options are annotated class attributes (`ratio: float = 0.5`), so the same
declaration gives keyword arguments in Python, options in pipeline text and
a printed form that parses back; `validate()` checks their values together
when the pass is built, so a bad value fails before any work is done.
`verify_tolerance` says how closely the graph after the pass must reproduce
the graph before it; the `Verify` instrument enforces it.
"""

from __future__ import annotations

import copy
import re
import typing
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from graphopt.ir.graph import Graph
from graphopt.passmanager.analysis import AnalysisManager, PreservedAnalyses, as_preserved
from graphopt.passmanager.errors import (
    InvalidOptionError, PassDefinitionError, PipelineError, UnknownOptionError, did_you_mean,
)
from graphopt.passmanager.options import MISSING, Option, OptionSpec, check_supported, coerce, format_value

ToleranceKind = Literal["exact", "bounded", "shape"]
_RESERVED = frozenset({
    "name", "requires", "preserves", "verify_tolerance", "rtol", "atol", "options",
    "run", "tolerance", "option_values", "pipeline_text", "preserved_when_modified", "validate", "invalid",
})


@dataclass(frozen=True)
class Tolerance:
    """How the outputs after a pass may differ from before it.

    exact: `torch.testing.assert_close` defaults (fp32: rtol 1.3e-6, atol 1e-5);
    bounded: the pass's own rtol/atol (quantization); shape: only output
    shapes must match (pruning changes the function on purpose).
    """

    kind: ToleranceKind = "exact"
    rtol: float | None = None
    atol: float | None = None

    def __str__(self) -> str:
        return f"bounded(rtol={self.rtol}, atol={self.atol})" if self.kind == "bounded" else self.kind


@dataclass
class PassResult:
    """What a pass returns: the graph (usually the one it was given), whether it changed, what stays valid.

    `preserved=None` means: everything if `modified` is False, otherwise what
    the pass class declares in `preserves`. `stats` is the pass's own report
    (MLIR's pass statistics): the PassManager files it in the pipeline report,
    where `report.stats("prune")` finds it.
    """

    graph: Graph
    modified: bool
    preserved: PreservedAnalyses | None = None
    stats: Any = None


def _kebab(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "-", name).lower()


class Pass:
    """Base class of every graph transformation; subclass it and implement `run`.

    Class attributes a pass may set:
      name             registry and pipeline name (`register_pass` sets it)
      requires         analyses computed before `run` (Analysis classes or instances)
      preserves        analyses still valid after a run that modified the graph:
                       "all", "none" (default), Analysis classes, or a PreservedAnalyses
      verify_tolerance "exact" (default), "bounded" (set rtol/atol) or "shape"
    Every other annotated, public class attribute is an option.
    """

    name: ClassVar[str] = "pass"
    requires: ClassVar[tuple] = ()
    preserves: ClassVar[Any] = "none"
    verify_tolerance: ClassVar[ToleranceKind] = "exact"
    rtol: ClassVar[float | None] = None
    atol: ClassVar[float | None] = None
    options: ClassVar[dict[str, Option]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" not in cls.__dict__:
            cls.name = _kebab(cls.__name__)
        cls.options = _collect_options(cls)
        if cls.verify_tolerance not in ("exact", "bounded", "shape"):
            raise PassDefinitionError(
                f"pass class {cls.__qualname__}: verify_tolerance must be 'exact', 'bounded' or 'shape', "
                f"not {cls.verify_tolerance!r}"
            )
        if cls.verify_tolerance == "bounded" and (cls.rtol is None or cls.atol is None) and cls.tolerance is Pass.tolerance:
            raise PassDefinitionError(
                f"pass class {cls.__qualname__} declares verify_tolerance='bounded' but no rtol/atol; "
                "set both class attributes (or override tolerance())"
            )

    def __init__(self, **options: Any) -> None:
        declared = type(self).options
        for key, value in options.items():
            if key not in declared:
                raise UnknownOptionError(_unknown_option_message(type(self), key))
            setattr(self, key, declared[key].coerce(value, self.name))
        for key, opt in declared.items():
            if key in options:
                continue
            if opt.required:
                raise PipelineError(f"pass '{self.name}' needs option '{key}' ({opt.type_name()})")
            setattr(self, key, copy.deepcopy(opt.default))  # a list default must not be shared
        # The options given explicitly, in order: what the pipeline text prints back.
        self._given: tuple[str, ...] = tuple(options)
        self.validate()

    # ------------------------------------------------------------ the contract
    def run(self, graph: Graph, analyses: AnalysisManager) -> PassResult:
        """Transform `graph` (in place is fine: the manager runs passes on a copy) and say what changed.

        `analyses.get(SomeAnalysis, graph)` reads cached analyses; `analyses.context`
        holds the run's example inputs, calibration data and loss.
        """
        raise NotImplementedError(f"pass '{self.name}' ({type(self).__qualname__}) does not implement run()")

    def validate(self) -> None:
        """Check option values beyond their types (ranges, exclusive options); called when the pass is built.

        Raise `self.invalid(option, why)`: the user learns which option is wrong
        before tracing or any pass has run. The PassManager calls it again before
        a run, for options assigned after construction.
        """

    def invalid(self, option: str, message: str) -> InvalidOptionError:
        """The error for a bad value of `option`: one line naming the pass and the option."""
        return InvalidOptionError(f"pass '{self.name}', option '{option}': {message}", option=option)

    def tolerance(self) -> Tolerance:
        """The tolerance the Verify instrument applies; override when it depends on options."""
        return Tolerance(self.verify_tolerance, self.rtol, self.atol)

    def preserved_when_modified(self) -> PreservedAnalyses:
        return as_preserved(self.preserves)

    # ----------------------------------------------------------------- helpers
    def __call__(self, graph: Graph, analyses: AnalysisManager | None = None) -> PassResult:
        """Run this pass IN PLACE on `graph` (PassManager.run works on a copy and calls this on it).

        Options are checked, the required analyses computed, and the result's type checked.
        """
        analyses = analyses if analyses is not None else AnalysisManager()
        self.validate()
        for required in self.requires:
            analyses.get(required, graph)
        result = self.run(graph, analyses)
        if not isinstance(result, PassResult) or not isinstance(result.graph, Graph):
            raise PassDefinitionError(
                f"pass '{self.name}' must return PassResult(graph, modified, preserved), not {result!r}"
            )
        return result

    def option_values(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in type(self).options}

    def pipeline_text(self) -> str:
        """`name{opt=value,...}`: parses back to a pass with the same option values.

        Prints the options given explicitly (in the order given, so parsed text
        prints back unchanged), then any other option whose value now differs
        from its default (set after construction).
        """
        declared = type(self).options
        keys = list(self._given) + [
            k for k, o in declared.items() if k not in self._given and getattr(self, k) != o.default
        ]
        if not keys:
            return self.name
        body = ",".join(f"{key}={format_value(getattr(self, key))}" for key in keys)
        return f"{self.name}{{{body}}}"

    __str__ = pipeline_text

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.option_values().items())
        return f"{type(self).__name__}({opts})"


def _collect_options(cls: type) -> dict[str, Option]:
    try:
        hints = typing.get_type_hints(cls)
    except Exception as exc:
        raise PassDefinitionError(f"pass class {cls.__qualname__}: cannot resolve option annotations: {exc}") from exc
    found: dict[str, Option] = {}
    for key, tp in hints.items():
        if key.startswith("_") or typing.get_origin(tp) is ClassVar or tp is ClassVar:
            continue
        if key in _RESERVED:
            raise PassDefinitionError(f"pass class {cls.__qualname__}: '{key}' is reserved; annotate it ClassVar")
        try:
            check_supported(tp)
        except TypeError as exc:
            raise PassDefinitionError(f"pass class {cls.__qualname__}, option '{key}': {exc}") from None
        default = getattr(cls, key, MISSING)
        help_text = ""
        if isinstance(default, OptionSpec):
            help_text = default.help
            default = default.default
            setattr(cls, key, default)
        if default is not MISSING:
            try:
                default = coerce(tp, default)
            except (TypeError, ValueError) as exc:
                raise PassDefinitionError(f"pass class {cls.__qualname__}, option '{key}': bad default: {exc}") from None
        found[key] = Option(key, tp, default, help_text)
    return found


def _unknown_option_message(cls: type[Pass], key: str) -> str:
    declared = cls.options
    listing = ", ".join(f"{k} ({o.type_name()})" for k, o in declared.items()) or "none"
    return f"pass '{cls.name}' has no option '{key}'{did_you_mean(key, declared)} (its options: {listing})"
