"""Pipeline text: `fold-batchnorm,prune{ratio=0.5,criterion=l2},canonicalize` to steps and back.

Grammar (whitespace around tokens is ignored):
    pipeline := step ("," step)*
    step     := NAME ("{" [option ("," option)*] "}")?
    option   := KEY "=" value
    value    := BARE | "quoted \\"string\\"" | "[" [value ("," value)*] "]"
BARE is a run of characters other than whitespace and `,{}[]="'`; anything
else goes in quotes.
Printing a parsed pipeline gives the same text back (modulo whitespace and
number spelling: `ratio=.5` prints as `ratio=0.5`), so a pipeline can be
logged, stored in a reproducer and replayed.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Sequence, Union

from graphopt.passmanager.errors import InvalidOptionError, PipelineError, UnknownOptionError, UnknownPassError
from graphopt.passmanager.options import QuotedStr
from graphopt.passmanager.pass_base import Pass, _unknown_option_message
from graphopt.passmanager.registry import PipelineDef, lookup


@dataclass
class NamedPipeline:
    """A step that runs a registered pipeline (e.g. `canonicalize`); prints as its name."""

    definition: PipelineDef
    steps: list[Step] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.definition.name

    def pipeline_text(self) -> str:
        return self.definition.name

    __str__ = pipeline_text


Step = Union[Pass, NamedPipeline]

_SPECIAL = set(",{}[]=\"'")


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def error(self, message: str, pos: int | None = None, cls: type[PipelineError] = PipelineError) -> PipelineError:
        return cls(message, self.text, self.pos if pos is None else pos)

    def skip_ws(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def peek(self) -> str:
        self.skip_ws()
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def expect(self, char: str) -> None:
        if self.peek() != char:
            found = repr(self.peek()) if self.peek() else "the end of the text"
            raise self.error(f"expected '{char}' but found {found}")
        self.pos += 1

    def bare(self, what: str) -> tuple[str, int]:
        self.skip_ws()
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos] not in _SPECIAL and not self.text[self.pos].isspace():
            self.pos += 1
        word = self.text[start:self.pos]
        if not word:
            found = repr(self.text[start]) if start < len(self.text) else "the end of the text"
            raise self.error(f"expected {what} but found {found}", start)
        return word, start

    def quoted(self) -> QuotedStr:
        quote = self.text[self.pos]
        start = self.pos
        self.pos += 1
        out = []
        while self.pos < len(self.text):
            ch = self.text[self.pos]
            if ch == "\\" and self.pos + 1 < len(self.text):
                out.append(self.text[self.pos + 1])
                self.pos += 2
                continue
            if ch == quote:
                self.pos += 1
                return QuotedStr("".join(out))
            out.append(ch)
            self.pos += 1
        raise self.error("unterminated string", start)

    def value(self) -> Any:
        ch = self.peek()
        if ch in ("'", '"'):
            return self.quoted()
        if ch == "[":
            self.pos += 1
            items: list[Any] = []
            if self.peek() == "]":
                self.pos += 1
                return items
            while True:
                item = self.value()
                if isinstance(item, list):
                    raise self.error("lists cannot be nested")
                items.append(item)
                if self.peek() == ",":
                    self.pos += 1
                    continue
                self.expect("]")
                return items
        return self.bare("a value")[0]

    def step(self) -> Step:
        name, start = self.bare("a pass name")
        try:
            found = lookup(name)
        except UnknownPassError as exc:
            raise self.error(str(exc), start, UnknownPassError) from None
        raw: dict[str, tuple[Any, int]] = {}
        if self.peek() == "{":
            self.pos += 1
            if self.peek() != "}":
                while True:
                    key, key_pos = self.bare("an option name")
                    if key in raw:
                        raise self.error(f"option '{key}' is given twice", key_pos)
                    self.expect("=")
                    raw[key] = (self.value(), key_pos)
                    if self.peek() == ",":
                        self.pos += 1
                        continue
                    break
            self.expect("}")
        if isinstance(found, PipelineDef):
            if raw:
                key, (_, key_pos) = next(iter(raw.items()))
                raise self.error(f"pipeline '{name}' takes no options", key_pos, UnknownOptionError)
            return NamedPipeline(found, parse_steps(found.text, _within=name))
        options: dict[str, Any] = {}
        for key, (value, key_pos) in raw.items():
            declared = found.options.get(key)
            if declared is None:
                raise self.error(_unknown_option_message(found, key), key_pos, UnknownOptionError)
            try:
                options[key] = declared.parse(value, found.name)
            except PipelineError as exc:
                raise self.error(str(exc), key_pos) from None
        try:
            return found(**options)
        except InvalidOptionError as exc:  # point at the option that is wrong
            where = raw[exc.option][1] if exc.option in raw else start
            raise InvalidOptionError(str(exc), self.text, where, option=exc.option) from None
        except PipelineError as exc:
            raise self.error(str(exc), start) from None

    def pipeline(self) -> list[Step]:
        steps: list[Step] = []
        if not self.peek():
            return steps
        while True:
            steps.append(self.step())
            if self.peek() == ",":
                self.pos += 1
                continue
            if self.peek():
                raise self.error(f"expected ',' between passes but found {self.peek()!r}")
            return steps


class _Expanding(threading.local):
    """The named pipelines being expanded by this thread, outermost first (to catch one containing itself)."""

    def __init__(self) -> None:
        self.names: list[str] = []


_expanding = _Expanding()


def parse_steps(text: str, *, _within: str | None = None) -> list[Step]:
    """Parse pipeline text into pass instances and named-pipeline steps."""
    if _within is not None:
        if _within in _expanding.names:
            chain = " -> ".join(_expanding.names + [_within])
            raise PipelineError(f"pipeline '{_within}' contains itself: {chain}")
        _expanding.names.append(_within)
    try:
        return _Parser(text).pipeline()
    finally:
        if _within is not None:
            _expanding.names.pop()


def format_steps(steps: Sequence[Step]) -> str:
    return ",".join(step.pipeline_text() for step in steps)
