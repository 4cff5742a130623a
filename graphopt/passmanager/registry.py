"""The registry of passes and named pipelines, and discovery of third-party passes via entry points.

A pipeline names passes by string, so every pass must be findable by name:
graphopt's own passes register when their modules under `graphopt.passes`
are imported (all of them, on the first lookup of an unknown name), and other
distributions add theirs through the `graphopt.passes` entry-point group:

    [project.entry-points."graphopt.passes"]
    my-pass = "my_package.passes"              # a module whose import registers passes
    other-pass = "my_package.passes:OtherPass"  # or a Pass subclass, registered under the entry name
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import pkgutil
import re
import threading
import warnings
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

from graphopt.passmanager.errors import PassDefinitionError, UnknownPassError, did_you_mean
from graphopt.passmanager.pass_base import Pass

P = TypeVar("P", bound=type)

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")

PASSES: dict[str, type[Pass]] = {}
PIPELINES: dict[str, PipelineDef] = {}
# one lock for both tables and the loading below; reentrant, since a pass module's import registers passes
_load_lock = threading.RLock()


@dataclass(frozen=True)
class PipelineDef:
    """A named pipeline (e.g. `canonicalize`): pipeline text run as one step.

    With `fixed_point`, the sequence repeats until no pass in it modifies the
    graph, at most `max_iterations` times.
    """

    name: str
    text: str
    fixed_point: bool = False
    max_iterations: int = 8
    doc: str = ""


def _check_name(name: str, what: str) -> None:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise PassDefinitionError(
            f"{what} name {name!r} is not valid: use letters, digits, '-', '_' and '.', starting with a letter or digit"
        )


def _same_class(a: Any, b: Any) -> bool:
    return a is b or (a.__module__, a.__qualname__) == (b.__module__, b.__qualname__)


def register_pass(name: str | type | None = None, *, replace: bool = False) -> Callable[[P], P] | Any:
    """Class decorator: make a Pass subclass available under `name` in pipelines.

    Registering a different class under a taken name is an error unless
    `replace=True`; re-registering the same class (a reloaded module) is fine.
    """
    if isinstance(name, type):  # used bare: @register_pass
        return register_pass(None, replace=replace)(name)

    def wrap(cls: P) -> P:
        if not (isinstance(cls, type) and issubclass(cls, Pass)):
            raise PassDefinitionError(f"register_pass expects a graphopt Pass subclass, got {cls!r}")
        key = name or cls.name
        _check_name(key, "pass")
        if "run" not in {k for c in cls.__mro__ if c is not Pass for k in c.__dict__}:
            raise PassDefinitionError(f"pass class {cls.__qualname__} registered as '{key}' does not define run()")
        with _load_lock:
            existing = PASSES.get(key) or PIPELINES.get(key)
            if existing is not None and not replace and not (isinstance(existing, type) and _same_class(existing, cls)):
                raise PassDefinitionError(f"pass name '{key}' is already registered by {existing!r}; pass replace=True")
            cls.name = key
            PIPELINES.pop(key, None)
            PASSES[key] = cls  # type: ignore[assignment]
        return cls

    return wrap


def register_pipeline(
    name: str,
    text: str,
    *,
    fixed_point: bool = False,
    max_iterations: int = 8,
    doc: str = "",
    replace: bool = False,
) -> PipelineDef:
    """Give a pipeline a name usable inside other pipelines (like MLIR's pass pipelines)."""
    _check_name(name, "pipeline")
    definition = PipelineDef(name, text, fixed_point, max_iterations, doc)
    with _load_lock:
        existing = PASSES.get(name) or PIPELINES.get(name)
        if existing is not None and not replace and existing != definition:
            raise PassDefinitionError(f"pipeline name '{name}' is already registered by {existing!r}; pass replace=True")
        PASSES.pop(name, None)
        PIPELINES[name] = definition
    return definition


def unregister(name: str) -> None:
    """Remove a pass or pipeline (tests use this to clean up after themselves)."""
    with _load_lock:
        PASSES.pop(name, None)
        PIPELINES.pop(name, None)


_builtin_loaded = False
_importing = False  # this thread (the one holding _load_lock) is importing the pass modules
_loaded_groups: set[str] = set()


def ensure_loaded() -> None:
    """Import graphopt's own passes and the `graphopt.passes` plug-ins, once.

    Every module and package directly under `graphopt.passes` is imported, so a
    new pass module registers its passes without an edit anywhere else; one
    that fails to import warns (naming itself) instead of hiding the others.
    Other threads wait until the imports have finished: the loaded flag is set
    only then, so no thread sees a half-filled registry.
    """
    global _builtin_loaded, _importing
    with _load_lock:
        if not _builtin_loaded and not _importing:  # not done yet, and not a lookup from inside the imports below
            _importing = True
            try:
                package = importlib.import_module("graphopt.passes")
                for info in pkgutil.iter_modules(package.__path__):
                    if info.name.startswith("_"):
                        continue
                    try:
                        importlib.import_module(f"graphopt.passes.{info.name}")
                    except Exception as exc:
                        warnings.warn(f"graphopt: could not import pass module graphopt.passes.{info.name}: "
                                      f"{type(exc).__name__}: {exc}", stacklevel=2)
            finally:
                _importing = False
            _builtin_loaded = True
        load_entry_points("graphopt.passes")


def load_entry_points(group: str = "graphopt.passes", *, force: bool = False) -> list[str]:
    """Load every entry point of `group`; return their names. A broken plug-in warns, it does not break graphopt."""
    with _load_lock:
        if group in _loaded_groups and not force:
            return []
        _loaded_groups.add(group)
        return _load_group(group)


def _load_group(group: str) -> list[str]:
    loaded = []
    for ep in importlib.metadata.entry_points(group=group):
        dist = getattr(getattr(ep, "dist", None), "name", None) or "an unknown distribution"
        try:
            obj = ep.load()
        except Exception as exc:  # a plug-in's import error must name the plug-in
            warnings.warn(f"graphopt: could not load {group} plug-in '{ep.name}' from {dist}: "
                          f"{type(exc).__name__}: {exc}", stacklevel=2)
            continue
        if group == "graphopt.passes" and inspect.isclass(obj) and issubclass(obj, Pass):
            if ep.name not in PASSES or not _same_class(PASSES[ep.name], obj):
                register_pass(ep.name)(obj)
        loaded.append(ep.name)
    return loaded


def lookup(name: str) -> type[Pass] | PipelineDef:
    """The pass class or named pipeline called `name`; the error lists close matches."""
    if name not in PASSES and name not in PIPELINES:
        ensure_loaded()
    found = PASSES.get(name) or PIPELINES.get(name)
    if found is None:
        known = sorted({*PASSES, *PIPELINES})
        raise UnknownPassError(f"unknown pass '{name}'{did_you_mean(name, known)} (registered: {', '.join(known)})")
    return found


def list_passes() -> dict[str, str]:
    """Every registered pass and pipeline name with its one-line description."""
    ensure_loaded()
    out: dict[str, str] = {}
    for key, cls in PASSES.items():
        out[key] = (inspect.getdoc(cls) or "").split("\n")[0]
    for key, definition in PIPELINES.items():
        out[key] = definition.doc or f"pipeline: {definition.text}"
    return dict(sorted(out.items()))
