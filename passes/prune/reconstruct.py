"""Reconstruction after pruning: refit each layer that lost input channels, by least squares.

A layer that reads a pruned group sees fewer input channels; its kept weights
were trained for the full input, so its output drifts. Reconstruction fits new
weights W' (and bias b') so that the pruned layer, fed what the pruned network
above it actually produces, reproduces the original layer's output on the
calibration data:

    min ||X' W'^T + b' - Y||^2 + damp * ||W'||^2

X' is the pruned input (conv inputs unfolded into patches), Y the original
layer's output at the channels it keeps. The intercept is the bias
compensation: it absorbs the mean of the removed channels' contribution.
Layers are refitted in graph order with the two graphs run in lockstep, so each
fit sees the inputs its already-refitted predecessors produce and errors do not
compound. Only sufficient statistics (X^T X, X^T Y) are accumulated, so memory
does not grow with the calibration set.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from graphopt.errors import GraphoptError
from graphopt.ir import dims as D
from graphopt.ir.graph import Graph, Node
from graphopt.ir.interpreter import GraphInterpreter

from .activations import Reader, readers


@dataclass
class LayerFit:
    """One refitted layer: relative output error on the calibration data before and after the fit."""

    node: str
    error_before: float
    error_after: float
    refitted: str = "weights"  # "weights" (and bias), "bias" (too few rows for the weights) or "none"


@dataclass
class ReconstructionReport:
    layers: list[LayerFit] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # "node: why"

    def __str__(self) -> str:
        if not self.layers:
            return "reconstruct: no layer to refit" + (f" (skipped: {'; '.join(self.skipped)})" if self.skipped else "")
        before = float(np.mean([f.error_before for f in self.layers]))
        after = float(np.mean([f.error_after for f in self.layers]))
        modes = {m: sum(f.refitted == m for f in self.layers) for m in ("weights", "bias", "none")}
        text = (f"reconstruct: {len(self.layers)} layers ({modes['weights']} refitted, {modes['bias']} bias only, "
                f"{modes['none']} kept), mean relative output error {before:.3f} -> {after:.3f}")
        return text + (f"; skipped {len(self.skipped)}: {'; '.join(self.skipped)}" if self.skipped else "")


class _NormalEquations:
    """Running X^T X, X^T Y and Y^T Y of one layer's least-squares problem."""

    def __init__(self) -> None:
        self.xtx = self.xty = None
        self.yty = 0.0
        self.rows = 0

    def add(self, x: torch.Tensor, y: torch.Tensor) -> None:
        x, y = x.double(), y.double()
        xtx, xty = x.T @ x, x.T @ y
        self.xtx = xtx if self.xtx is None else self.xtx + xtx
        self.xty = xty if self.xty is None else self.xty + xty
        self.yty += float((y * y).sum())
        self.rows += x.shape[0]

    def solve_intercept(self, prior: torch.Tensor) -> torch.Tensor:
        """Keep the weights, refit only the intercept (last row): bias compensation.

        With an all-ones last column, the optimal intercept given weights W is
        mean(Y) - mean(X) W, read off the last row of X^T X and X^T Y.
        """
        solution = prior.clone()
        n = self.xtx[-1, -1]
        solution[-1] = (self.xty[-1] - self.xtx[-1, :-1] @ prior[:-1]) / n
        return solution

    def residual(self, w: torch.Tensor) -> float:
        """||Y - X w||^2 without the rows: Y^T Y - 2 tr(w^T X^T Y) + tr(w^T X^T X w)."""
        return max(self.yty - 2 * float((w * self.xty).sum()) + float((w * (self.xtx @ w)).sum()), 0.0)

    def solve(self, damp: float, prior: torch.Tensor, *, intercept: bool) -> torch.Tensor:
        """Ridge solution shrunk towards `prior` (the kept weights), not towards zero.

        Shrinking towards the weights we have keeps what training learned and
        moves only where the data says so. The intercept (last row, when there
        is one) is not shrunk: bias compensation should be exact.
        """
        a = self.xtx.clone()
        diag = torch.diagonal(a)
        penalty = torch.full_like(diag, damp * float(diag.mean()) + 1e-12)
        if intercept:
            penalty[-1] = 0.0
        diag += penalty
        b = self.xty + penalty[:, None] * prior
        factor, info = torch.linalg.cholesky_ex(a)
        if int(info) == 0:
            return torch.cholesky_solve(b, factor)
        return torch.linalg.lstsq(a, b).solution


# Below this many calibration rows per weight column a full refit overfits the calibration
# set (a classifier after global pooling sees one row per image); only the bias is refitted.
MIN_ROWS_PER_FEATURE = 4


def _rows(reader: Reader, x: torch.Tensor) -> torch.Tensor:
    """The layer's input as regression rows: one row per output position."""
    node = reader.node
    if node.op == "conv":
        weight = reader.weight.data
        kernel = tuple(weight.shape[2:])
        patches = F.unfold(x, kernel, dilation=tuple(node.attrs["dilation"]), padding=tuple(node.attrs["padding"]),
                           stride=tuple(node.attrs["stride"]))
        return patches.transpose(1, 2).reshape(-1, patches.shape[1])
    return x.reshape(-1, x.shape[-1])


def _targets(reader: Reader, y: torch.Tensor, kept: np.ndarray | None) -> torch.Tensor:
    axis = 1 if reader.node.op == "conv" else -1
    if kept is not None:
        y = torch.index_select(y, axis, torch.as_tensor(kept, dtype=torch.long, device=y.device))
    y = y.movedim(axis, -1)
    return y.reshape(-1, y.shape[-1])


def _why_not(reader: Reader) -> str | None:
    if reader.node.op == "conv" and reader.weight.rank != 4:
        return "only 2-D convolutions are refitted"
    if len(reader.weight.users) > 1:
        return "its weight is shared with other layers"
    return None


def _rows_moved(reader: Reader, before: Node) -> str | None:
    """Why `reader`'s outputs cannot be matched row for row with `before`'s (the same node, unpruned), or None.

    MLP-Mixer's token mixing is a linear over tokens whose rows are the pruned channels: its pruned
    output has fewer rows than the original's, which the fit would pair wrongly.
    """
    channel = 1 if reader.node.op == "conv" else -1
    new, old = list(reader.node.outputs[0].shape), list(before.outputs[0].shape)
    del new[channel], old[channel]
    if len(new) != len(old) or not all(D.dims_equal(a, b) for a, b in zip(new, old)):
        return "a pruned group runs along its rows (its outputs no longer match the original's row for row)"
    return None


def reconstruct(original: Graph, pruned: Graph, batches: Sequence[Sequence[torch.Tensor]],
                kept_outputs: dict[tuple[str, int], np.ndarray], *, damp: float = 1e-2) -> ReconstructionReport:
    """Refit, in `pruned` (in place), every layer whose input channels were pruned.

    `original` is the graph before pruning, node for node the same as `pruned`;
    `kept_outputs[(weight, axis)]` lists the kept positions of a layer's output
    axis when its own outputs were pruned too. `damp` is the ridge term relative to the mean
    diagonal of X^T X, which keeps the fit stable with few calibration samples.
    """
    report = ReconstructionReport()
    before_nodes = list(original.nodes)
    if [n.name for n in before_nodes] != [n.name for n in pruned.nodes]:
        raise GraphoptError("reconstruct: the pruned graph's nodes differ from the original's; "
                            "reconstruction must run right after channel removal")
    targets: dict[int, Reader] = {}
    originals = {n.name: n for n in before_nodes}
    for reader in readers(pruned):
        full = original.weights[reader.weight.name].shape[reader.weight_axis]
        if reader.weight.shape[reader.weight_axis] == full:
            continue  # no input channel removed: the layer's own fit is unchanged
        why = _why_not(reader) or _rows_moved(reader, originals[reader.node.name])
        if why:
            report.skipped.append(f"{reader.node.name}: {why}")
        else:
            targets[id(reader.node)] = reader

    new_run, old_run = GraphInterpreter(pruned, batches), GraphInterpreter(original, batches)
    for node, old_node in zip(pruned.nodes, before_nodes):
        old_run.execute(old_node)
        reader = targets.get(id(node))
        if reader is not None:
            report.layers.append(_refit(reader, new_run.value(reader.activation), old_run.value(old_node.outputs[0]),
                                        kept_outputs.get((reader.weight.name, 1 - reader.weight_axis)), damp))
        new_run.execute(node)
    return report


def _refit(reader: Reader, inputs: list[torch.Tensor], outputs: list[torch.Tensor], kept: np.ndarray | None,
           damp: float) -> LayerFit:
    node, weight = reader.node, reader.weight
    bias = node.inputs[2] if node.op in ("linear", "conv") and len(node.inputs) > 2 else None
    bias = bias if bias is not None and bias.is_weight else None
    equations = _NormalEquations()
    for x, y in zip(inputs, outputs):
        rows = _rows(reader, x)
        if bias is not None:
            rows = torch.cat([rows, rows.new_ones(rows.shape[0], 1)], dim=1)
        equations.add(rows, _targets(reader, y, kept))

    # the current weights, as a solution of the same problem, give the error before the fit
    current = weight.data.double()
    current = current if node.op == "matmul" else current.reshape(current.shape[0], -1).T
    if bias is not None:
        current = torch.cat([current, bias.data.double()[None, :]], dim=0)
    # too few rows per weight column: refitting the weights would overfit, refit the bias only
    mode = "weights" if equations.rows >= MIN_ROWS_PER_FEATURE * equations.xtx.shape[0] else "bias"
    if mode == "bias" and bias is None:
        mode = "none"
    solution = {"weights": lambda: equations.solve(damp, current, intercept=bias is not None),
                "bias": lambda: equations.solve_intercept(current), "none": lambda: current}[mode]()
    scale = max(equations.yty, 1e-30)
    before, after = (equations.residual(current) / scale) ** 0.5, (equations.residual(solution) / scale) ** 0.5
    if mode == "none" or after >= before:
        return LayerFit(node.name, before, before, "none")  # keep the weights we have

    if bias is not None:
        bias.set_data(solution[-1].to(bias.data.dtype).contiguous())
        solution = solution[:-1]
    new = solution if node.op == "matmul" else solution.T.reshape(weight.shape)
    weight.set_data(new.to(weight.data.dtype).contiguous())
    return LayerFit(node.name, before, after, mode)
