"""When train-once does what: warm-up, the pruning periods, and training of the sparse model, in steps.

The phases are fractions of the run the user states (`total_steps`, or epochs
times steps per epoch), so the defaults hold for a short run as for a long one
and need no tuning: plain training first (the saliency of a unit means little
on random weights), then `periods` equal periods in which the redundant set
grows to the target and its units shrink to exactly zero by each period's end,
then the rest of the run trains the important units with the redundant ones
held at zero (it recovers what removing them cost).
"""

from __future__ import annotations

from dataclasses import dataclass

from graphopt.errors import GraphoptError


@dataclass(frozen=True)
class Schedule:
    """Step boundaries: warm-up `[0, warmup)`, period p `[start(p), start(p + 1))`, then sparse training."""

    total_steps: int
    warmup: int
    period_steps: int
    periods: int

    @classmethod
    def of(cls, total_steps: int | None, *, epochs: int | None = None, steps_per_epoch: int | None = None,
           warmup: float = 0.1, pruning: float = 0.5, periods: int = 5) -> Schedule:
        """The schedule of a run of `total_steps` (or `epochs * steps_per_epoch`) optimizer steps.

        `warmup` and `pruning` are fractions of the run; the pruning part is cut into
        `periods` periods of at least one step each.
        """
        if total_steps is None:
            if epochs is None or steps_per_epoch is None:
                raise GraphoptError("give total_steps (the optimizer steps of the whole run), or epochs and "
                                    "steps_per_epoch: the warm-up and pruning periods are fractions of the run")
            total_steps = epochs * steps_per_epoch
        if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
            raise GraphoptError(f"total_steps must be a positive number of optimizer steps, got {total_steps!r}")
        if not 0.0 <= warmup < 1.0:
            raise GraphoptError(f"warmup is the fraction of the run trained dense first, in [0, 1); got {warmup}")
        if not 0.0 < pruning <= 1.0 - warmup:
            raise GraphoptError(f"pruning is the fraction of the run that grows the redundant set, in (0, "
                                f"{1.0 - warmup:g}] after a warm-up of {warmup:g}; got {pruning}")
        if isinstance(periods, bool) or not isinstance(periods, int) or periods < 1:
            raise GraphoptError(f"periods must be a positive integer, got {periods!r}")
        first = int(round(warmup * total_steps))
        if total_steps - first < periods:
            raise GraphoptError(f"a run of {total_steps} steps is too short for {periods} pruning periods after "
                                f"{first} warm-up steps; give the real total_steps, or fewer periods")
        period_steps = max(1, int(round(pruning * total_steps)) // periods)
        return cls(total_steps, first, period_steps, periods)

    def start(self, period: int) -> int:
        """The first step of `period` (period `periods` is the first step of sparse training)."""
        return self.warmup + period * self.period_steps

    @property
    def pruned_by(self) -> int:
        """The step from which every redundant unit is exactly zero."""
        return self.start(self.periods)

    def period_at(self, step: int) -> int | None:
        """The pruning period `step` falls in, or None in warm-up and after pruning."""
        if step < self.warmup or step >= self.pruned_by:
            return None
        return (step - self.warmup) // self.period_steps

    def fraction_at(self, period: int) -> float:
        """The fraction of the target the redundant set reaches in `period`: it grows by equal parts."""
        return (period + 1) / self.periods
