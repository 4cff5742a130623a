"""Typed pass options: declared as annotated class attributes, read from and written to pipeline text.

A pass declares `ratio: float = 0.5`; that one line makes `prune{ratio=0.3}`
parse, type-check and print back. Supported types are int, float, bool, str,
`Literal[...]` (a closed set of strings), `list[int|float|str|bool]` and any of
these `| None`. Keeping the set small keeps the text syntax unambiguous.
"""

from __future__ import annotations

import re
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal, Union

from graphopt.passmanager.errors import PipelineError, did_you_mean

MISSING: Any = type("MISSING", (), {"__repr__": lambda self: "MISSING"})()

_SCALARS = (bool, int, float, str)
_BARE = re.compile(r"[A-Za-z0-9_.+\-/:*@]+")


class QuotedStr(str):
    """A pipeline value that was written in quotes: always a string, never `none`/`true`/a number."""


@dataclass(frozen=True)
class OptionSpec:
    """What `option(...)` returns: a default plus help text, unpacked when the class is created."""

    default: Any = MISSING
    help: str = ""


def option(default: Any = MISSING, help: str = "") -> Any:  # noqa: A002 - reads naturally at call sites
    """Declare an option with help text: `ratio: float = option(0.5, "fraction of channels to drop")`."""
    return OptionSpec(default, help)


@dataclass(frozen=True)
class Option:
    """One declared option of a pass: its name, annotation, default and help."""

    name: str
    type: Any
    default: Any = MISSING
    help: str = ""

    @property
    def required(self) -> bool:
        return self.default is MISSING

    def type_name(self) -> str:
        return type_name(self.type)

    def coerce(self, value: Any, owner: str) -> Any:
        """Check (and lightly convert, e.g. int -> float) a Python value given for this option."""
        try:
            return coerce(self.type, value)
        except (TypeError, ValueError) as exc:
            raise PipelineError(f"option '{self.name}' of pass '{owner}' expects {self.type_name()}: {exc}") from None

    def parse(self, raw: Any, owner: str) -> Any:
        """Convert a raw pipeline value (a string, or a list of strings) to this option's type."""
        try:
            return parse_value(self.type, raw)
        except (TypeError, ValueError) as exc:
            raise PipelineError(f"option '{self.name}' of pass '{owner}' expects {self.type_name()}: {exc}") from None


# ------------------------------------------------------------------ types
def _optional_inner(tp: Any) -> Any | None:
    """T for `T | None` / `Optional[T]`, else None."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0]
    return None


def check_supported(tp: Any) -> None:
    """Raise TypeError unless `tp` is an option type the pipeline syntax can express."""
    inner = _optional_inner(tp)
    if inner is not None:
        return check_supported(inner)
    if tp in _SCALARS:
        return
    origin = typing.get_origin(tp)
    if origin is Literal and all(isinstance(a, str) for a in typing.get_args(tp)):
        return
    if origin is list and len(typing.get_args(tp)) == 1 and typing.get_args(tp)[0] in _SCALARS:
        return
    raise TypeError(
        f"unsupported option type {type_name(tp)}; use int, float, bool, str, Literal['a', 'b'], "
        "list[int|float|str|bool] or one of these | None"
    )


def type_name(tp: Any) -> str:
    inner = _optional_inner(tp)
    if inner is not None:
        return f"{type_name(inner)} | None"
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(typing.get_args(tp))
    if origin is list:
        return f"list[{type_name(typing.get_args(tp)[0])}]"
    return getattr(tp, "__name__", str(tp))


def coerce(tp: Any, value: Any) -> Any:
    inner = _optional_inner(tp)
    if inner is not None:
        return None if value is None else coerce(inner, value)
    origin = typing.get_origin(tp)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ValueError(f"{value!r} is not one of {', '.join(choices)}{did_you_mean(str(value), choices)}")
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"got {type(value).__name__} {value!r}, not a list")
        item = typing.get_args(tp)[0]
        return [coerce(item, v) for v in value]
    if tp is bool:
        if not isinstance(value, bool):
            raise TypeError(f"got {type(value).__name__} {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"got {type(value).__name__} {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"got {type(value).__name__} {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise TypeError(f"got {type(value).__name__} {value!r}")
        return value
    raise TypeError(f"unsupported option type {type_name(tp)}")


_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def parse_value(tp: Any, raw: Any) -> Any:
    """Pipeline text -> typed value. `raw` is a str, or a list of str for `[a,b]`."""
    inner = _optional_inner(tp)
    if inner is not None:
        if isinstance(raw, str) and not isinstance(raw, QuotedStr) and raw.lower() == "none":
            return None
        return parse_value(inner, raw)
    origin = typing.get_origin(tp)
    if origin is list:
        if not isinstance(raw, list):
            raise ValueError(f"got {raw!r}; write a list as [a,b,c]")
        item = typing.get_args(tp)[0]
        return [parse_value(item, r) for r in raw]
    if isinstance(raw, list):
        raise ValueError(f"got a list {raw!r}")
    if origin is Literal:
        return coerce(tp, raw)
    if tp is bool:
        low = raw.lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise ValueError(f"got {raw!r}; write true or false")
    if tp is int:
        try:
            return int(raw, 0)
        except ValueError:
            raise ValueError(f"got {raw!r}, not an integer") from None
    if tp is float:
        try:
            return float(raw)
        except ValueError:
            raise ValueError(f"got {raw!r}, not a number") from None
    if tp is str:
        return raw
    raise TypeError(f"unsupported option type {type_name(tp)}")


def format_value(value: Any) -> str:
    """Typed value -> pipeline text; `parse_value(format_value(v)) == v` for every supported type."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(format_value(v) for v in value) + "]"
    text = str(value)
    if _BARE.fullmatch(text) and text.lower() != "none":
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
