"""What `drop-layers` did: every block with its kind, cost and score, which were dropped, and the cost after."""

from __future__ import annotations

from dataclasses import dataclass, field

from .recover import RecoveryReport


@dataclass
class BlockRow:
    """One block of the report's table."""

    name: str
    kind: str
    params: int
    macs: int
    score: float | None
    dropped: bool
    droppable: bool = True
    why_not: str = ""


@dataclass
class DropReport:
    """The `drop-layers` result: the table of blocks, the dropped ones in order, params/MACs before and after."""

    metric: str
    granularity: str
    rows: list[BlockRow] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    params_before: int = 0
    params_after: int = 0
    macs_before: int = 0
    macs_after: int = 0
    seconds: float = 0.0
    recovery: RecoveryReport | None = None
    message: str = ""  # why nothing was dropped, when nothing was

    def summary(self) -> str:
        if not self.dropped:
            return f"drop-layers: nothing dropped ({self.message})"
        lines = [f"drop-layers ({self.metric}, {self.granularity}): dropped {len(self.dropped)} blocks "
                 f"({', '.join(self.dropped)}), params {self.params_before:,} -> {self.params_after:,} "
                 f"({self.params_after / max(self.params_before, 1):.1%}), MACs {self.macs_before:,} -> "
                 f"{self.macs_after:,} ({self.macs_after / max(self.macs_before, 1):.1%}), {self.seconds:.2f} s"]
        if self.message:
            lines.append(f"  {self.message}")
        if self.recovery is not None:
            lines.append(f"  {self.recovery}")
        return "\n".join(lines)

    def table(self) -> str:
        """block, kind, params, MACs, score, dropped: one line per block."""
        width = max([5] + [len(r.name) for r in self.rows])
        lines = [f"{'block'.ljust(width)}  {'kind':<10}{'params':>12}{'MACs':>16}{'score':>10}  dropped"]
        for r in self.rows:
            score = f"{r.score:>10.4f}" if r.score is not None else f"{'-':>10}"
            status = "yes" if r.dropped else ("no" if r.droppable else f"no ({r.why_not})")
            lines.append(f"{r.name.ljust(width)}  {r.kind:<10}{r.params:>12,}{r.macs:>16,}{score}  {status}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary() + ("\n" + self.table() if self.rows else "")
