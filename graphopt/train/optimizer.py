"""`GroupSparseOptimizer`: train once, and the redundant units end exactly zero, so pruning them changes nothing.

Pruning a trained model and fine-tuning it costs a second training run and
loses what the removed channels knew. HESSO (Chen et al., Only-Train-Once v3)
instead decides during training which units are redundant and drives them to
exactly zero while the rest of the network learns to do without them; removal
afterwards is then an identity on the outputs. This is graphopt's take on it,
over graphopt's own units (channels, whole heads, conv groups from the
channel-group analysis) and around any torch optimizer:

- warm-up: the wrapped optimizer alone (`Schedule` says when each phase starts);
- pruning periods: at each period's start the units of every group are ranked by
  saliency (magnitude plus first-order Taylor |x·g| accumulated since the last
  ranking, each over its group's mean) and the redundant set grows to its share
  of the target; during the period the redundant units take the wrapped
  optimizer's step and are then shrunk, linearly, so they reach zero by the
  period's end (HESSO's hybrid step: the network keeps learning while it
  forgets them). A half-space projection zeroes a unit earlier when its update
  crosses the half-space of its previous value, x·x_new < epsilon·|x|², which
  is when the step itself says the unit wants to go to zero;
- afterwards: redundant units are exactly zero, their gradients and optimizer
  state masked, so they stay zero for the rest of the run.

The target is per group by default (`floor(target · units)` of each group, never
every unit of a tensor), as `prune{ratio=...}` does; `scope="global"` ranks units
across groups instead (selection.py).
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import numpy as np
import torch

from graphopt.errors import GraphoptError

from .schedule import Schedule
from .selection import Scope, Targets, grow
from .units import UnitGroup, UnitGroups


class GroupSparseOptimizer(torch.optim.Optimizer):
    """Wraps a torch optimizer so that `target_sparsity` of every group's units end exactly zero (see the module).

    `groups`: from `graphopt.train.unit_groups(model, example_inputs)`. The run
    length is `total_steps` optimizer steps (or `epochs` x `steps_per_epoch`);
    `warmup` and `pruning` are fractions of it and `periods` the pruning periods;
    `epsilon` is the half-space projection's threshold. `scope="local"` zeroes
    `target_sparsity` of every group, `"global"` of all units together, ranked
    across groups, keeping `min_keep` of each. Use it as the optimizer
    it wraps (`zero_grad`, `step`, learning-rate schedulers, `state_dict`).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, groups: UnitGroups | Iterable[UnitGroup], *,
                 target_sparsity: float = 0.5, total_steps: int | None = None, epochs: int | None = None,
                 steps_per_epoch: int | None = None, warmup: float = 0.1, pruning: float = 0.5, periods: int = 5,
                 epsilon: float = 0.05, scope: Scope = "local", min_keep: float = 0.1) -> None:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise GraphoptError(f"GroupSparseOptimizer wraps a torch optimizer (torch.optim.SGD(...), AdamW(...)), "
                                f"not {type(optimizer).__name__}")
        if not 0.0 < target_sparsity < 1.0:
            raise GraphoptError(f"target_sparsity is the fraction of each group's units driven to zero, in (0, 1); "
                                f"got {target_sparsity}")
        if epsilon < 0.0:
            raise GraphoptError(f"epsilon (the half-space projection's threshold) cannot be negative, got {epsilon}")
        self.groups = list(groups)
        if not self.groups:
            raise GraphoptError("no unit groups to train sparse: give graphopt.train.unit_groups(model, inputs)")
        self.schedule = Schedule.of(total_steps, epochs=epochs, steps_per_epoch=steps_per_epoch, warmup=warmup,
                                    pruning=pruning, periods=periods)
        self.target_sparsity = target_sparsity
        self.epsilon = epsilon
        _check_params(optimizer, self.groups)
        self.targets = Targets.of(self.groups, target_sparsity, scope, min_keep)
        if not self.targets.total:
            largest = max(g.num_units for g in self.groups)
            raise GraphoptError(f"target_sparsity {target_sparsity} removes no unit of any group (the largest has "
                                f"{largest} units): raise it")
        super().__init__(optimizer.param_groups, optimizer.defaults)
        self.base = optimizer
        self.param_groups = optimizer.param_groups  # one set of groups and state: schedulers see the wrapped ones
        self.state = optimizer.state
        self.step_count = 0
        # per group, on its parameters' device; `_until` (a Python int: no host sync per step) is the
        # deadline of its last redundant units, 0 while it has none
        self.redundant = [torch.zeros(g.num_units, dtype=torch.bool, device=g.device) for g in self.groups]
        self.zero = [torch.zeros(g.num_units, dtype=torch.bool, device=g.device) for g in self.groups]
        self._deadline = [torch.zeros(g.num_units, dtype=torch.long, device=g.device) for g in self.groups]
        self._taylor = [torch.zeros(g.num_units, dtype=torch.float64, device=g.device) for g in self.groups]
        self._until = [0] * len(self.groups)
        # units the half-space projection zeroed before their period's end (the shrink zeroes the rest)
        self._projected = torch.zeros((), dtype=torch.long, device=self.groups[0].device)

    # ------------------------------------------------------------ the optimizer interface
    def zero_grad(self, set_to_none: bool = True) -> None:
        self.base.zero_grad(set_to_none=set_to_none)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if hasattr(self, "base"):  # Optimizer.__init__ calls it before the wrapped optimizer is shared
            self.base.add_param_group(param_group)
        else:
            super().add_param_group(param_group)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One step of the wrapped optimizer, with the redundant units shrunk, projected, or held at zero."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        step, schedule = self.step_count, self.schedule
        if step < schedule.pruned_by:
            self._accumulate_saliency()
        period = schedule.period_at(step)
        if period is not None and step == schedule.start(period):
            self._grow_redundant(period)
        sparse = [i for i, until in enumerate(self._until) if until]
        for i in sparse:
            self.groups[i].mask_grads_(self.zero[i])
        shrinking = [i for i in sparse if step < self._until[i]]
        before = {id(s.param): s.param.detach().clone() for i in shrinking for s in self.groups[i].slices}
        self.base.step()
        for i in shrinking:
            self._shrink_and_project(i, before)
        for i in sparse:
            self.groups[i].scale_((~self.zero[i]).to(torch.float32))
        self.step_count += 1
        return loss

    # ------------------------------------------------------------ HESSO's phases
    def _accumulate_saliency(self) -> None:
        """Add each unit's |x·g| of this step: the first-order change of the loss if the unit were zeroed."""
        for g, taylor in zip(self.groups, self._taylor):
            taylor += g.per_unit(lambda s: None if s.param.grad is None else s.param.detach() * s.param.grad).abs()

    def saliency(self, index: int) -> np.ndarray:
        """Scores of group `index`'s units (low: redundant): magnitude and Taylor, each over the group's mean."""
        group = self.groups[index]
        magnitude = group.squared_norms().sqrt()
        taylor = self._taylor[index]
        return (_over_mean(magnitude) + _over_mean(taylor)).cpu().numpy()

    def _grow_redundant(self, period: int) -> None:
        """Grow the redundant sets to `period`'s share of the target, least salient units first; each new one
        is due at zero by the period's end, and its group's Taylor scores start again."""
        deadline = self.schedule.start(period + 1)
        chosen = [r.cpu().numpy() for r in self.redundant]
        scores = [self.saliency(i) for i in range(len(self.groups))]
        for i, new in enumerate(grow(self.groups, chosen, scores, self.targets, self.schedule.fraction_at(period))):
            if new:
                index = torch.as_tensor(new, device=self.redundant[i].device)
                self.redundant[i][index] = True
                self._deadline[i][index] = deadline
                self._until[i] = deadline
                self._taylor[i].zero_()

    def _shrink_and_project(self, index: int, before: dict[int, torch.Tensor]) -> None:
        """Shrink group `index`'s redundant units towards zero by their deadline; zero those whose step crosses
        the half-space of their previous value (x·x_new < epsilon·|x|²)."""
        g, redundant, zero = self.groups[index], self.redundant[index], self.zero[index]
        shrinking = redundant & ~zero
        remaining = (self._deadline[index] - self.step_count).clamp(min=1).to(torch.float64)
        factors = torch.where(shrinking, (remaining - 1) / remaining, torch.ones_like(remaining))
        g.scale_(factors)
        old = g.per_unit(lambda s: before[id(s.param)] ** 2)
        dot = g.per_unit(lambda s: before[id(s.param)] * s.param.detach())
        projected = shrinking & (dot < self.epsilon * old)
        crossed = projected | (shrinking & (remaining <= 1))
        self._projected += (projected & (remaining > 1)).sum().to(self._projected.device)
        zero |= crossed
        self._clear_state(g, crossed)

    def _clear_state(self, group: UnitGroup, units: torch.Tensor) -> None:
        """Zero the optimizer's state (momenta) of `units`: a zeroed unit must not drift back through them."""
        keep = (~units).to(torch.float32)
        for s in group.slices:
            for value in self.base.state.get(s.param, {}).values():
                if isinstance(value, torch.Tensor) and value.shape == s.param.shape and value.is_floating_point():
                    value.mul_(s.expand(keep.to(value.device, value.dtype)))

    # ------------------------------------------------------------ progress and checkpoints
    @property
    def sparsity(self) -> float:
        """The fraction of the groups' units that are exactly zero now."""
        return sum(int(z.sum()) for z in self.zero) / sum(g.num_units for g in self.groups)

    @property
    def projected(self) -> int:
        """How many units the half-space projection zeroed before their period's end (the shrink did the rest)."""
        return int(self._projected)

    @property
    def target_units(self) -> int:
        """How many units the target zeroes in all (local: each group's floor(target · units))."""
        return self.targets.total

    def summary(self) -> str:
        """Where the run stands: the phase, and zero / redundant units per group."""
        step, schedule = self.step_count, self.schedule
        if step < schedule.warmup:
            phase = f"warm-up until step {schedule.warmup}"
        elif step < schedule.pruned_by:
            phase = f"pruning period {schedule.period_at(step) + 1}/{schedule.periods}"
        else:
            phase = "sparse training"
        zero = sum(int(z.sum()) for z in self.zero)
        total = sum(g.num_units for g in self.groups)
        lines = [f"step {step}/{schedule.total_steps} ({phase}): {zero}/{total} units exactly zero "
                 f"({zero / total:.1%}; target {self.target_units}; {self.projected} zeroed early by the "
                 f"half-space projection)"]
        for g, redundant, z in zip(self.groups, self.redundant, self.zero):
            lines.append(f"  group {g.group.id} ({g.group.kind}, {g.name}): {int(z.sum())} zero, "
                         f"{int(redundant.sum())} redundant of {g.num_units}")
        return "\n".join(lines)

    def state_dict(self) -> dict[str, Any]:
        return {"base": self.base.state_dict(),
                "train_once": {"step": self.step_count, "redundant": [r.clone() for r in self.redundant],
                               "zero": [z.clone() for z in self.zero],
                               "deadline": [d.clone() for d in self._deadline],
                               "taylor": [t.clone() for t in self._taylor]}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        ours = state_dict.get("train_once") if isinstance(state_dict, dict) else None
        if ours is None or len(ours["zero"]) != len(self.groups):
            raise GraphoptError("not a GroupSparseOptimizer state dict for these groups")
        self.base.load_state_dict(state_dict["base"])
        self.step_count = int(ours["step"])
        def placed(key: str) -> list[torch.Tensor]:
            return [t.clone().to(g.device) for t, g in zip(ours[key], self.groups)]

        self.redundant, self.zero = placed("redundant"), placed("zero")
        self._deadline, self._taylor = placed("deadline"), placed("taylor")
        self._until = [int(d.max()) if d.numel() else 0 for d in self._deadline]

    def __repr__(self) -> str:
        return (f"GroupSparseOptimizer({type(self.base).__name__}, {len(self.groups)} groups, target "
                f"{self.target_sparsity:g}, {self.schedule})")


def _check_params(optimizer: torch.optim.Optimizer, groups: list[UnitGroup]) -> None:
    """Every parameter the groups zero must be trained by `optimizer`: one it does not train would never shrink."""
    trained = {id(p) for group in optimizer.param_groups for p in group["params"]}
    missing = sorted({s.name for g in groups for s in g.slices if id(s.param) not in trained})
    if missing:
        raise GraphoptError(f"the wrapped optimizer does not train {', '.join(missing[:5])}"
                            f"{' ...' if len(missing) > 5 else ''}: give it the parameters of the model that "
                            f"unit_groups analysed")


def _over_mean(values: torch.Tensor) -> torch.Tensor:
    mean = float(values.mean()) if values.numel() else 0.0
    return values / mean if mean > 0 else torch.zeros_like(values)
