"""Recovery after dropping blocks, without fine-tuning: refit the nearest following affine pieces.

Dropping a block feeds its skip value where the block's output went, so every
layer downstream sees shifted statistics. On each forward path from the
dropped merge, the first affine piece is refitted by least squares so that it
reproduces, on calibration data, what it computed in the original model:

- a linear or (ungrouped 2-D) conv: weights and bias, with the prune pass's
  reconstruction (`passes/prune/reconstruct.py`: ridge shrunk towards the
  current weights, bias only when there are too few rows, kept only if the fit
  improves);
- a norm's affine (layer norm, batch norm: scale and shift per channel) or a
  per-channel scale (an RMSNorm's weight, a LayerScale): a 1-D least squares
  per channel on the normalised input; the walk goes on past it to the next
  linear or conv, which is refitted too (a norm cannot mix channels).

Paths go through residual adds, so in a pre-norm transformer every later norm
is a piece. The original and the dropped graph run in lockstep and pieces are
refitted in graph order, so each fit sees what the already-refitted pieces
above it produce.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F

from graphopt.ir.graph import Graph, Node, Value
from graphopt.ir.interpreter import GraphInterpreter

from ..prune.activations import Reader, readers
from ..prune.reconstruct import _refit, _why_not


@dataclass
class PieceFit:
    """One refitted piece: relative error of its output on the calibration data before and after."""

    node: str
    kind: str  # "linear"/"conv" (weights, bias or none, as reconstruction chose), "norm", "scale"
    error_before: float
    error_after: float
    refitted: str = ""


@dataclass
class RecoveryReport:
    fits: list[PieceFit] = field(default_factory=list)

    def __str__(self) -> str:
        if not self.fits:
            return "recover: no affine piece follows the dropped blocks"
        before = sum(f.error_before for f in self.fits) / len(self.fits)
        after = sum(f.error_after for f in self.fits) / len(self.fits)
        changed = sum(f.error_after < f.error_before for f in self.fits)
        return (f"recover: {len(self.fits)} affine pieces ({changed} refitted), mean relative output error "
                f"{before:.3f} -> {after:.3f}")


def recover(original: Graph, dropped: Graph, merges: Sequence[str], batches: Sequence[Sequence[torch.Tensor]],
            *, damp: float = 1e-2) -> RecoveryReport:
    """Refit, in `dropped` (in place), the first affine piece on each path from the dropped merges.

    `merges` names the dropped blocks' merge nodes in `original`; `dropped` is
    `original` with nodes erased only (same names, same order).
    """
    reader_of = {id(r.node): r for r in readers(dropped)}
    starts = [user for name in merges for out in original.node(name).outputs for user in out.users]
    starts = [dropped.node(n.name) for n in starts if _has_node(dropped, n.name)]
    pieces = {id(n): n for n in _nearest_pieces(starts, reader_of)}
    report = RecoveryReport()
    new_nodes = {n.name: n for n in dropped.nodes}
    old_run, new_run = GraphInterpreter(original, batches), GraphInterpreter(dropped, batches)
    for old in original.nodes:
        old_run.execute(old)
        new = new_nodes.get(old.name)
        if new is None:
            continue
        if id(new) in pieces:
            target = old_run.value(old.outputs[0])
            reader = reader_of.get(id(new))
            if reader is not None:
                fit = _refit(reader, new_run.value(reader.activation), target, None, damp)
                report.fits.append(PieceFit(new.name, new.op, fit.error_before, fit.error_after, fit.refitted))
            else:
                report.fits.append(_refit_affine(new, new_run, target, damp))
        new_run.execute(new)
    return report


def _has_node(graph: Graph, name: str) -> bool:
    return any(n.name == name for n in graph.nodes)


def _nearest_pieces(starts: list[Node], reader_of: dict[int, Reader]) -> list[Node]:
    """The first fittable node on every forward path from `starts`; after a norm's affine, the next layer too.

    A norm's per-channel affine can only rescale what it normalises; the linear
    or conv after it (a pre-norm layer's projections, a classifier head) can
    mix channels, so both are refitted, the layer on the refitted norm's output.
    """
    found, seen, work = [], set(), list(starts)
    while work:
        node = work.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if _fittable(node, reader_of):
            found.append(node)
            if id(node) in reader_of:
                continue
        work.extend(user for out in node.outputs for user in out.users)
    return found


def _fittable(node: Node, reader_of: dict[int, Reader]) -> bool:
    reader = reader_of.get(id(node))
    if reader is not None:
        return _why_not(reader) is None
    return _affine(node) is not None


def _exclusive(value: Value | None) -> bool:
    return value is not None and value.kind == "param" and len(value.users) == 1


def _affine(node: Node) -> tuple[Value, Value | None, int] | None:
    """(scale weight, shift weight or None, index of the normalised input) of a fittable norm affine or scale."""
    ins = node.inputs
    if node.op == "layer_norm" and len(ins) > 1 and _exclusive(ins[1]):
        bias = ins[2] if len(ins) > 2 and _exclusive(ins[2]) else None
        return ins[1], bias, 0
    if node.op == "batch_norm" and _exclusive(ins[1]) and ins[0].rank >= 2:
        bias = ins[2] if _exclusive(ins[2]) else None
        return ins[1], bias, 0
    if node.op == "mul" and len(ins) == 2:
        for i in (0, 1):
            weight, other = ins[i], ins[1 - i]
            if (_exclusive(weight) and weight.rank == 1 and other is not None and not other.is_weight
                    and other.rank >= 1 and other.shape[-1] == weight.shape[0] and other.shape == node.output.shape):
                return weight, None, 1 - i
    return None


def _normalised(node: Node, x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """The piece's input before its affine, and the channel axis."""
    if node.op == "layer_norm":
        return F.layer_norm(x, node.attrs["normalized_shape"], None, None, node.attrs["eps"]), -1
    if node.op == "batch_norm":
        mean, var = node.inputs[3].data, node.inputs[4].data
        shape = [1, -1] + [1] * (x.dim() - 2)
        return (x - mean.reshape(shape)) / torch.sqrt(var.reshape(shape) + node.attrs["eps"]), 1
    return x, -1


def _refit_affine(node: Node, run: GraphInterpreter, targets: list[torch.Tensor], damp: float) -> PieceFit:
    """Per-channel least squares for y = a * n + b (b only when the piece has a shift), shrunk towards a, b."""
    scale, shift, index = _affine(node)
    stats, count = None, 0
    for x, y in zip(run.value(node.inputs[index]), targets):
        n, axis = _normalised(node, x.double())
        n, y = _rows(n, axis, scale.data.numel()), _rows(y.double(), axis, scale.data.numel())
        batch = torch.stack([n.sum(0), y.sum(0), (n * n).sum(0), (n * y).sum(0), (y * y).sum(0)])
        stats = batch if stats is None else stats + batch
        count += n.shape[0]
    sn, sy, snn, sny, syy = stats
    a0 = scale.data.double().reshape(-1)
    b0 = shift.data.double().reshape(-1) if shift is not None else torch.zeros_like(a0)
    if shift is not None:
        var_n = snn - sn * sn / count
        lam = damp * float(var_n.mean()) + 1e-12
        a = (sny - sn * sy / count + lam * a0) / (var_n + lam)
        b = (sy - a * sn) / count
    else:
        lam = damp * float(snn.mean()) + 1e-12
        a, b = (sny + lam * a0) / (snn + lam), b0

    def error(a_: torch.Tensor, b_: torch.Tensor) -> float:
        sse = syy - 2 * a_ * sny - 2 * b_ * sy + a_ * a_ * snn + 2 * a_ * b_ * sn + count * b_ * b_
        return math.sqrt(max(float(sse.sum()), 0.0) / max(float(syy.sum()), 1e-30))

    before, after = error(a0, b0), error(a, b)
    kind = "norm" if node.op != "mul" else "scale"
    if after >= before:
        return PieceFit(node.name, kind, before, before, "none")
    scale.set_data(a.reshape(scale.shape).to(scale.data.dtype).contiguous())
    if shift is not None:
        shift.set_data(b.reshape(shift.shape).to(shift.data.dtype).contiguous())
    return PieceFit(node.name, kind, before, after, "affine")


def _rows(t: torch.Tensor, axis: int, channels: int) -> torch.Tensor:
    return t.movedim(axis, -1).reshape(-1, channels)
