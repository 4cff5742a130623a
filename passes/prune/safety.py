"""The prune pass's safety net: check the pruned graph on the example inputs, bisect out the groups that break it.

The channel analysis can be wrong for a pattern it does not know (a fused
projection split by slicing, a relative-position table indexed by heads). A
wrong group is then removed "successfully" and gives a model that fails to run,
or that runs but no longer equals the original with those channels zeroed. The
net turns such an analysis gap into lost compression instead of a broken model:

- a *check* of a subset of the plan removes its groups from a copy of the
  original graph and runs it on the example inputs (the core interpreter). It
  passes when removal succeeds, the graph runs, its outputs have the original's
  shapes, and, when the subset has exact groups, the outputs equal the
  reference: the original with the exact groups masked (`mask_channels`) and the
  inexact ones (through layer_norm, ...) removed, which only need to run;
- the whole plan is checked once (on the graph the pass returns, so a sound
  plan gives exactly the graph it gave without the net); when it fails, the plan
  is bisected (apply half, check, recurse), each failing group is excluded with
  the failure that condemned it, and the rest is applied. One bad group among n
  costs about log2(n) + 1 checks; `max_checks` caps the total with an error.

Tolerance ("removal equals masking"): in the model's precision, every element
within 1e-4 x |reference| + 1e-4 x max|reference|; an output outside it gets a
second look in float64, where it must be within 1e-8 of the same scales (the
float32 gap of a deep model is rounding, the float64 gap of a wrong coupling is
not). Integer and boolean outputs must be equal.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from graphopt.analysis.base import bindings_from_inputs
from graphopt.analysis.channels import ChannelGroup
from graphopt.analysis.removal import mask_channels, remove_channels
from graphopt.errors import GraphoptError
from graphopt.ir import dims as D
from graphopt.ir.graph import Graph
from graphopt.ir.interpreter import GraphInterpreter, mismatch

Plan = list[tuple[ChannelGroup, np.ndarray]]  # per group, the channel ids to remove

# (rtol, atol relative to the output's largest magnitude) for the model's precision, then for float64
TOLERANCE = (1e-4, 1e-4)
TOLERANCE_FLOAT64 = (1e-8, 1e-8)


@dataclass
class Exclusion:
    """A group the net left unpruned, the node that anchors it, and the check it failed."""

    group: int
    node: str
    reason: str

    def __str__(self) -> str:
        return f"group {self.group} at node {self.node}: analysis unsound for this pattern, left unpruned ({self.reason})"


@dataclass
class SafetyReport:
    """What the safety net did: checks run, their time, the groups it excluded (or why it did not run)."""

    checks: int = 0
    seconds: float = 0.0
    excluded: list[Exclusion] = field(default_factory=list)
    skipped: str = ""  # why the net did not run ("no example inputs")

    def __str__(self) -> str:
        if self.skipped:
            return f"safety net: skipped ({self.skipped})"
        runs = f"{self.checks} check{'s' * (self.checks != 1)} in {self.seconds:.2f} s"
        if not self.excluded:
            return f"safety net: {runs}, every group sound"
        listing = "".join(f"\n    {e}" for e in self.excluded)
        return f"safety net: {runs}, {len(self.excluded)} group(s) excluded:{listing}"


class _Failed(Exception):
    """A check failed; the message says how (internal: becomes an Exclusion's reason)."""


class SafetyNet:
    """Checks subsets of a prune plan against `original` on one batch of example inputs."""

    def __init__(self, original: Graph, inputs: Sequence[Any], *, max_checks: int) -> None:
        self.original = original
        self.inputs = tuple(inputs)
        self.max_checks = max_checks
        self.report = SafetyReport()
        self._shapes = _expected_shapes(original, self.inputs)
        self._last_pass: Graph | None = None  # the graph of the last subset that passed

    # ------------------------------------------------------------ the public steps
    def accept(self, graph: Graph, plan: Plan, failure: str | None) -> tuple[Graph, Plan]:
        """The graph to return and the part of `plan` it has removed.

        `graph` is the original with the whole plan removed in place, or `failure`
        says why that removal raised. A sound plan returns `graph` itself.
        """
        start = time.perf_counter()
        try:
            if failure is None:
                failure = self._failure(plan, graph)
            if failure is None:
                return graph, plan
            self._baseline_runs()
            kept = self._bisect(plan, [], failure)
            if not kept:
                raise GraphoptError(
                    f"prune safety net: every group of the plan fails its check on the example inputs "
                    f"({len(self.report.excluded)} groups; first: {self.report.excluded[0]}); nothing was pruned. "
                    "The channel analysis is wrong for this model as a whole: please report it with the model")
            return self._last_pass, kept
        finally:
            self.report.seconds += time.perf_counter() - start

    # ------------------------------------------------------------ bisection
    def _bisect(self, pending: Plan, accepted: Plan, failure: str | None) -> Plan:
        """The part of `pending` that can join `accepted`; `failure`: `accepted + pending` is known to fail so.

        When the left half joins whole and the two halves together failed, the
        right half is known to fail too, so it is split without a check: one bad
        group costs one check per level of the bisection.
        """
        if failure is None:
            failure = self._failure(accepted + pending)
            if failure is None:
                return pending
        if len(pending) == 1:
            group = pending[0][0]
            self.report.excluded.append(Exclusion(group.id, anchor_node(group), failure))
            return []
        middle = len(pending) // 2
        left = self._bisect(pending[:middle], accepted, None)
        known = failure if len(left) == middle else None
        return left + self._bisect(pending[middle:], accepted + left, known)

    def _baseline_runs(self) -> None:
        """Before blaming groups: the graph must run, with its own output shapes, with nothing removed."""
        self.report.checks += 1
        try:
            self._run(self.original)
        except _Failed as exc:
            raise GraphoptError(f"prune safety net: the graph before pruning already fails on the example inputs "
                                f"({exc}); no group can be blamed. Check the example inputs") from None

    # ------------------------------------------------------------ one check
    def _failure(self, plan: Plan, candidate: Graph | None = None) -> str | None:
        """Why removing `plan` gives a wrong graph, or None. `candidate`: the plan already removed."""
        self.report.checks += 1
        if self.report.checks > self.max_checks:
            found = "; ".join(str(e) for e in self.report.excluded) or "none yet"
            raise GraphoptError(
                f"prune safety net: more than max_checks={self.max_checks} checks needed to isolate the unsound "
                f"groups (found so far: {found}); raise safety_max_checks, or leave the failing layers whole "
                "with ignore=[...]")
        try:
            if candidate is None:
                candidate = _removed(self.original.clone(), plan, mask=False)
            got = self._run(candidate)
            exact = [(g, c) for g, c in plan if g.exact]
            if exact:
                inexact = [(g, c) for g, c in plan if not g.exact]
                reference = _removed(_removed(self.original.clone(), inexact, mask=False), exact, mask=True)
                _compare(candidate, reference, got, self._run(reference), self.inputs)
        except _Failed as exc:
            return str(exc)
        self._last_pass = candidate
        return None

    def _run(self, graph: Graph) -> list[Any]:
        """The graph's outputs on the example inputs, which must have the original's shapes."""
        outputs = _outputs(graph, self.inputs)
        for i, (out, want) in enumerate(zip(outputs, self._shapes)):
            if want is not None and isinstance(out, torch.Tensor) and tuple(out.shape) != want:
                raise _Failed(f"output {i} has shape {tuple(out.shape)}, the model's is {want}")
        return outputs


def _outputs(graph: Graph, inputs: tuple, *, float64: bool = False) -> list[Any]:
    """The graph's outputs on one batch; a failure names the node that raised."""
    weights = {}
    if float64:
        inputs = tuple(_double(x) for x in inputs)
        weights = {n: v.data.double() for n, v in graph.weights.items()
                   if v.data is not None and v.data.is_floating_point()}
    interpreter = GraphInterpreter(graph, [inputs], weights=weights)
    node = None
    try:
        for node in interpreter.nodes():
            pass
    except Exception as exc:  # noqa: BLE001 - any kernel error (torch's RuntimeError too) is the verdict
        where = node.where() if node is not None else f"graph '{graph.name}'"
        raise _Failed(f"running it fails at {where}: {type(exc).__name__}: {_first_line(exc)}") from None
    return interpreter.outputs()[0]


def _removed(graph: Graph, plan: Plan, *, mask: bool) -> Graph:
    """`graph` (a copy) with `plan` removed, or masked; an edit that raises fails the check."""
    edit = mask_channels if mask else remove_channels
    for group, channels in plan:
        try:
            edit(graph, group, channels)
        except Exception as exc:  # noqa: BLE001 - a wrong group can make any step of the edit raise
            raise _Failed(removal_failure(exc, mask=mask)) from None
    return graph


def removal_failure(exc: BaseException, *, mask: bool = False) -> str:
    """The reason given for a group whose removal (or masking, for the reference) raised `exc`."""
    return f"{'masking' if mask else 'removing'} its channels fails: {type(exc).__name__}: {_first_line(exc)}"


def removed_where_possible(graph: Graph, plan: Plan, unsound: set[int]) -> Graph:
    """A copy of `graph` with `plan` removed, except the groups whose removal raises (their ids join `unsound`).

    For the prune pass's ratio search: the net will leave such a group unpruned,
    so the cost of a trial must not count it, and its error must not stop the search.
    A failed removal leaves the copy half-edited, so the copy is started again without it.
    """
    while True:
        trial = graph.clone()
        for group, channels in plan:
            if group.id in unsound:
                continue
            try:
                remove_channels(trial, group, channels)
            except Exception:  # noqa: BLE001 - any failure of a removal means: not this group
                unsound.add(group.id)
                break
        else:
            return trial


def _compare(candidate: Graph, reference: Graph, got: list[Any], want: list[Any],
             inputs: tuple) -> None:
    """Removal equals masking, within TOLERANCE; outputs outside it get a float64 second look."""
    bad = [i for i, (a, b) in enumerate(zip(got, want)) if _gap(a, b, TOLERANCE) is not None]
    if not bad:
        return
    got64, want64 = _outputs(candidate, inputs, float64=True), _outputs(reference, inputs, float64=True)
    for i in bad:
        gap = _gap(got64[i], want64[i], TOLERANCE_FLOAT64)
        if gap is not None:
            raise _Failed(f"output {i} differs from the masked original: {gap}")


def _gap(a: Any, b: Any, tolerance: tuple[float, float]) -> str | None:
    """How `a` misses `b` (None when within tolerance); NaN and inf must sit at the same places."""
    rtol, atol = tolerance
    found = mismatch(a, b, rtol=rtol, atol=atol)
    return f"{found} than in the masked original" if found == "NaN or inf at other places" else found


def _expected_shapes(graph: Graph, inputs: tuple) -> list[tuple[int, ...] | None]:
    """The original's output shapes at the example inputs' sizes, from its types (None where not static)."""
    env = bindings_from_inputs(graph, inputs)
    shapes: list[tuple[int, ...] | None] = []
    for value in graph.outputs:
        try:
            shapes.append(tuple(D.evaluate(d, env) for d in value.shape))
        except Exception:  # noqa: BLE001 - a data-dependent size: the reference comparison covers it
            shapes.append(None)
    return shapes


def anchor_node(group: ChannelGroup) -> str:
    """The node a user finds the group at: the layer producing its channels (first user of its anchor weight)."""
    spaces = [s for s, _ in group.producers()] or group.spaces
    for space in spaces:
        value = space.value
        if value.producer is not None:
            return value.producer.name
        if value.users:
            return value.users[0].name
    return spaces[0].value.name if spaces else "?"


def _double(x: Any) -> Any:
    return x.double() if isinstance(x, torch.Tensor) and x.is_floating_point() else x


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
