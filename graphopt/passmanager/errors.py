"""Errors raised by the pass infrastructure, each worded for the person who has to act on it.

`PipelineError` is for whoever wrote the pipeline text (it quotes the text and
points at the problem); `PassDefinitionError` is for the author of a pass
class; `PassFailedError` is for a user whose pipeline crashed, and says which
pass failed, what ran before it and where the reproducer is.
"""

from __future__ import annotations

from typing import Iterable, Sequence

from graphopt.errors import GraphoptError
from graphopt.registry import close_matches


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    matches = close_matches(word, candidates)
    if not matches:
        return ""
    return "; did you mean " + " or ".join(f"'{m}'" for m in matches) + "?"


class PipelineError(GraphoptError):
    """Pipeline text (or a pass's options) could not be understood."""

    def __init__(self, message: str, text: str | None = None, position: int | None = None) -> None:
        self.text = text
        self.position = position
        if text is not None and position is not None:
            message += f"\n  {text}\n  {' ' * position}^"
        super().__init__(message)


class UnknownPassError(PipelineError):
    """A pipeline names a pass that no module or plug-in registered."""


class UnknownOptionError(PipelineError):
    """A pipeline gives a pass an option it does not declare."""


class InvalidOptionError(PipelineError):
    """An option's value is out of range, or conflicts with another option (found when the pass is built)."""

    def __init__(self, message: str, text: str | None = None, position: int | None = None, *, option: str = "") -> None:
        self.option = option
        super().__init__(message, text, position)


class PassDefinitionError(GraphoptError):
    """A pass class breaks the Pass contract (found when the class is defined or registered)."""


class PassFailedError(GraphoptError):
    """A pass (or an instrument checking it) raised; the caller's graph is unchanged.

    `pass_name` is the failing pass as pipeline text, `previous` the passes that
    ran before it (in order), `stage` says what failed ("run", "verify", or an
    instrument's name) and `reproducer` is the directory holding the pipeline
    and the input graph, when one could be written.
    """

    def __init__(
        self,
        pass_name: str,
        previous: Sequence[str],
        cause: BaseException,
        *,
        stage: str = "run",
        reproducer: str | None = None,
    ) -> None:
        self.pass_name = pass_name
        self.previous = list(previous)
        self.cause = cause
        self.stage = stage
        self.reproducer = reproducer
        what = {"run": "failed", "verify": "broke the graph (caught by verification after it ran)"}.get(
            stage, f"failed in instrument {stage}"
        )
        lines = [f"pass '{pass_name}' {what}: {type(cause).__name__}: {cause}"]
        lines.append(
            "  passes that ran before it: " + (", ".join(self.previous) if self.previous else "none (it ran first)")
        )
        lines.append("  the caller's graph is unchanged (passes run on a copy)")
        if reproducer:
            lines.append(
                f"  reproducer written to {reproducer} (pipeline.txt, input.ir, before_failing_pass.ir); "
                "attach it to a bug report"
            )
        super().__init__("\n".join(lines))


class PassVerificationError(GraphoptError):
    """The graph after a pass is ill-formed or computes something different from the graph before it."""
