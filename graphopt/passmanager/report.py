"""What a pipeline run did, pass by pass: printable as a table, inspectable in tests."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class PassRecord:
    """One pass execution: where it ran in the pipeline and how the graph changed."""

    path: str  # "fold-constants" or, inside a named pipeline, "canonicalize/fold-constants"
    pass_text: str  # the pass as pipeline text, options included
    nodes_before: int
    nodes_after: int
    weights_before: int
    weights_after: int
    seconds: float
    modified: bool
    iteration: int = 0  # round of a fixed-point named pipeline (0 outside one)
    stats: Any = None  # the pass's own report (PassResult.stats), e.g. prune's PruneReport


@dataclass
class PipelineReport:
    """The records of a `PassManager.run`, in execution order."""

    pipeline: str
    records: list[PassRecord] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def modified(self) -> bool:
        return any(r.modified for r in self.records)

    def __iter__(self):
        return iter(self.records)

    def __len__(self) -> int:
        return len(self.records)

    def for_pass(self, name: str) -> list[PassRecord]:
        """Records of the pass called `name` (its bare name, e.g. "fold-batchnorm")."""
        return [r for r in self.records if r.path.rsplit("/", 1)[-1] == name]

    def stats(self, name: str) -> list[Any]:
        """The reports (`PassResult.stats`) of the runs of the pass called `name`, in order (None left out)."""
        return [r.stats for r in self.for_pass(name) if r.stats is not None]

    def table(self) -> str:
        headers = ("pass", "nodes", "weights", "time ms", "modified")
        rows = []
        for r in self.records:
            label = r.path if not r.iteration else f"{r.path} (round {r.iteration + 1})"
            if r.pass_text != r.path.rsplit("/", 1)[-1]:
                label += f"  [{r.pass_text}]"
            rows.append((
                label,
                f"{r.nodes_before} -> {r.nodes_after}",
                f"{r.weights_before} -> {r.weights_after}",
                f"{r.seconds * 1e3:.1f}",
                "yes" if r.modified else "no",
            ))
        widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]
        line = lambda cells: "  ".join(  # noqa: E731
            str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(cells, widths))
        ).rstrip()
        out = [line(headers), line(["-" * w for w in widths])]
        out += [line(row) for row in rows]
        out.append(f"total {self.seconds * 1e3:.1f} ms, {len(self.records)} pass runs, "
                   f"{sum(r.modified for r in self.records)} modified the graph")
        return "\n".join(out)

    __str__ = table
