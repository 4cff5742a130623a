"""Data-free recovery after pruning: move each removed channel's contribution onto the kept channels.

`prune{recover=data-free}` needs no calibration data. It rests on the assumption
of UDFC (Bai et al., ICCV 2023) and Neuron Merging (Kim et al., 2020): a removed
channel carries information that the kept channels of the same layer mostly
carry too. For a group written by one layer P (a conv or linear, optionally
followed by a BatchNorm) and read, after an elementwise activation f, by layers
C (conv, linear, matmul by a weight), each removed channel r is replaced by

    f(y_r) ~ sum_k c_rk f(y_k) + e_r

so every reader gets W_C[:, kept] += W_C[:, removed] @ c (the linear part) and
W_C[:, removed] @ e added to its output (the bias part: over a conv's kernel weighted
by tap coverage, into its bias, or for a reader without one followed by a BatchNorm,
subtracted from that norm's running mean, which is the same function; no
parameter is added, so a recipe replays onto the same structure).

The model, from weights alone. The pre-activations are Gaussian with the
covariance of P's flattened filters under independent, equal-variance input
features: after a BatchNorm, each y_c ~ N(beta_c, gamma_c^2) (its running
statistics are taken to describe the data) and channels correlate as the cosine
of their filters; after a LayerNorm/RMSNorm feeding P (directly or through a
pick of tokens, see `_norm_before`), y = F (gamma_ln * n) + F beta_ln + b with n
of unit variance. c is the best linear predictor of f(y_r)
from the f(y_k) under that model, to first order in the Hermite expansion
(Price's theorem: Cov(f(y_i), f(y_j)) ~ E f'(y_i) E f'(y_j) Cov(y_i, y_j)), with
each channel's exact variance Var f(y) on the diagonal plus a ridge of `damp`
times the mean diagonal. With no activation this is ridge least squares over
P's filters, c = F_r F_k^T (F_k F_k^T + ridge)^-1. e_r = E f(y_r) - sum_k c_rk
E f(y_k) is the mean the kept channels do not explain, computed in closed form
for ReLU and by Gauss-Hermite quadrature for the other activations. When the
plan also prunes P's own inputs, the kept channels are modelled as the pruned
graph computes them (their filters restricted to the kept inputs).

What is exact and what is approximate: with no activation and no normalisation,
a removed filter that is exactly a combination of kept filters is recovered
exactly (up to the ridge term), conv padding aside. Everything else is an
approximation: the input features are neither independent nor of equal
variance, a nonlinear f is linearised to first order, BatchNorm statistics are
trusted as the data's, and a constant moved into a conv's bias also reaches the
zero-padded border, where the original saw none (the kernel is weighted by how
often each tap falls inside the input, so the constant is right on average over
positions, not at each).

Groups without a single identifiable producer (residual streams written by
several layers, SwiGLU's gate and up projections, concatenations, attention
heads whose channels pass through softmax-weighted sums) or whose readers are
not layers contracting the channels are left uncompensated and named in the
report: no guessing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch

from graphopt.analysis.channels import ChannelGroup
from graphopt.ir.graph import Graph, Node, Value
from graphopt.ir.interpreter import torch_kernel

from .activations import Reader, readers

# Elementwise activations between the producer and its readers whose expectation under a Gaussian is
# computed (closed form or quadrature). Anything else between them stops the recovery of that group.
_ACTIVATIONS = frozenset({"relu", "gelu", "silu", "sigmoid", "tanh", "hardswish", "hardsigmoid", "hardtanh",
                          "leaky_relu", "elu", "softplus", "mish"})
_IDENTITY = frozenset({"identity", "dropout"})  # dropout is the identity at inference
_NORMS = frozenset({"layer_norm", "rms_norm"})
_QUADRATURE_POINTS = 64


@dataclass
class RecoveryReport:
    """What data-free recovery compensated: groups, the layers it rewrote, and what it left alone and why."""

    groups: int = 0  # groups compensated
    channels: int = 0  # removed channels compensated
    layers: list[str] = field(default_factory=list)  # reader nodes whose weights were updated
    skipped: list[str] = field(default_factory=list)  # "group N: why"
    bias_dropped: list[str] = field(default_factory=list)  # "node: why" (the linear part was still applied)
    explained: list[float] = field(default_factory=list)  # per group: R^2 of the fit under the model

    def __str__(self) -> str:
        text = (f"data-free recovery: {self.groups} groups compensated ({self.channels} removed channels, "
                f"{len(self.layers)} layers)")
        if self.explained:
            text += (f", {float(np.mean(self.explained)):.0%} of the removed channels' modelled variance explained "
                     "by the kept ones")
        if self.bias_dropped:
            text += f"; bias part dropped at {len(self.bias_dropped)}: {'; '.join(self.bias_dropped)}"
        if self.skipped:
            text += f"; skipped {len(self.skipped)}: {'; '.join(self.skipped)}"
        return text


class _Skip(Exception):
    """This group cannot be compensated soundly; the message says why."""


@dataclass
class _Path:
    """producer -> [batch_norm] -> [activation] -> readers, in the original graph."""

    producer: Node
    rows: np.ndarray  # channel of each producer output row
    norm: Node | None
    activation: Node | None
    readers: list[Reader]


def recover_data_free(original: Graph, pruned: Graph, plan: Sequence[tuple[ChannelGroup, np.ndarray]],
                      kept_outputs: dict[tuple[str, int], np.ndarray], *, damp: float = 1e-2) -> RecoveryReport:
    """Compensate, in `pruned` (in place), the readers of every group of `plan` (see the module docstring).

    `original` is the graph before removal; `plan` lists (group, removed channels);
    `kept_outputs[(weight, axis)]` gives the kept positions of a layer's output axis
    when its own outputs were pruned too (what `reconstruct` uses). Nothing but
    weights is read: no calibration data.
    """
    report = RecoveryReport()
    by_reader = {id(r.node): r for r in readers(original)}
    values = {v.name: v for v in original.all_values()}
    kept_inputs = {(space.value.name, space.axes[0]): np.flatnonzero(~np.isin(labels, channels))
                   for group, channels in plan for space, labels in group.weights() if len(space.axes) == 1}
    for group, channels in plan:
        removed = np.unique(np.asarray(channels, dtype=np.int64))
        try:
            path = _path(values, group, by_reader)
            coefficients, offsets, explained = _fit(path, removed, damp, kept_inputs)
        except _Skip as why:
            report.skipped.append(f"group {group.id}: {why}")
            continue
        try:  # every reader's update is computed before any is written: a group is compensated whole or not at all
            updates = [_update(pruned, reader, _columns(group, reader), path, removed, coefficients, offsets,
                               kept_outputs) for reader in path.readers]
        except _Skip as why:
            report.skipped.append(f"group {group.id}: {why}")
            continue
        for reader, update in zip(path.readers, updates):
            dropped = update()
            report.layers.append(reader.node.name)
            if dropped:
                report.bias_dropped.append(f"{reader.node.name}: {dropped}")
        report.groups += 1
        report.channels += removed.size
        report.explained.append(explained)
    return report


# ------------------------------------------------------------------ the path from producer to readers
def _path(values: dict[str, Value], group: ChannelGroup, by_reader: dict[int, Reader]) -> _Path:
    """The single layer writing the group's channels and the layers reading them (in the graph `values`
    name), or `_Skip`."""
    layers: dict[int, tuple[Node, np.ndarray]] = {}
    others: list[tuple[Value, Node | None]] = []  # producer tensors that are not a layer's weight
    for space, labels in group.producers():
        value = values.get(space.value.name)
        if value is None:
            raise _Skip(f"%{space.value.name} is not in the graph before pruning")
        users = value.users
        user = users[0] if len(users) == 1 else None
        if (user is not None and user.op in ("conv", "linear") and user.inputs[1] is value and space.axes == (0,)
                and user.attrs.get("groups", 1) == 1):
            layers[id(user)] = (user, labels)
        else:
            others.append((value, user))
    if len(layers) != 1:
        names = ", ".join(n.name for n, _ in layers.values()) or "none"
        raise _Skip(f"written by {len(layers)} layers ({names}): no single producer to fit the removed channels from")
    producer, rows = next(iter(layers.values()))
    if np.unique(rows).size != rows.size:
        raise _Skip(f"a channel spans {rows.size // np.unique(rows).size} rows of %{producer.name} "
                    "(heads or conv groups)")

    value, norm, activation = producer.outputs[0], None, None
    channel_axis = 1 if producer.op == "conv" else value.rank - 1
    nxt = _single_user(value)
    if nxt is not None and nxt.op == "batch_norm" and nxt.inputs[0] is value:
        if channel_axis != 1:  # a BatchNorm1d over a (batch, tokens, channels) linear output normalises tokens
            raise _Skip(f"batch_norm %{nxt.name} normalises axis 1, not the channels of %{producer.name}")
        norm, value = nxt, nxt.outputs[0]
        nxt = _single_user(value)
    if nxt is not None and (nxt.op in _ACTIVATIONS or nxt.op in _IDENTITY) and nxt.inputs[0] is value:
        activation, value = nxt, nxt.outputs[0]
    expected = {id(producer.inputs[2])} if len(producer.inputs) > 2 and producer.inputs[2] is not None else set()
    if norm is not None:
        expected |= {id(v) for v in norm.inputs[1:3] if v is not None}
    for tensor, user in others:
        if id(tensor) not in expected:
            where = f" (read by {user.op} %{user.name})" if user is not None else ""
            raise _Skip(f"%{tensor.name}{where} also writes these channels; only a layer, its bias and a "
                        "BatchNorm after it are modelled")

    if value.is_graph_output():
        raise _Skip(f"%{value.name} is a graph output")
    found = []
    for user in value.users:
        reader = by_reader.get(id(user))
        if reader is None or reader.activation is not value or reader.axis % value.rank != channel_axis:
            raise _Skip(f"%{value.name} is read by {user.op} %{user.name}, not by a layer contracting its channels")
        if len(reader.weight.users) > 1:
            raise _Skip(f"the weight of %{user.name} is shared with other layers")
        found.append(reader)
    if not found:
        raise _Skip(f"no layer reads %{value.name}")
    return _Path(producer, rows, norm, activation, found)


def _single_user(value: Value) -> Node | None:
    users = value.users
    return users[0] if len(users) == 1 and not value.is_graph_output() else None


def _columns(group: ChannelGroup, reader: Reader) -> np.ndarray:
    """The channel of each input position of the reader's weight."""
    for space, labels in group.weights():
        if space.value.name == reader.weight.name and space.axes == (reader.weight_axis,):
            return labels
    raise _Skip(f"%{reader.weight.name} reads the channels but is not in the group")  # analysis and readers disagree


# ------------------------------------------------------------------ the fit
def _fit(path: _Path, removed: np.ndarray, damp: float,
         kept_inputs: dict[tuple[str, int], np.ndarray]) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(c, e, explained): f(y_r) ~ sum_k c[r, k] f(y_k) + e[r]; explained: the fraction of the removed
    channels' variance (under the model) the kept ones account for.

    Rows of c and e follow the removed channels in ascending order, columns of c the
    kept channels in ascending order. y_r is the removed channel as the original
    computed it; y_k the kept channel as the pruned graph computes it, which sees
    only the kept input channels when the plan also pruned the producer's inputs.
    """
    producer = path.producer
    weight = _f64(producer.inputs[1])
    inputs = kept_inputs.get((producer.inputs[1].name, 1))  # the producer's own inputs pruned by another group
    index = None if inputs is None else torch.as_tensor(inputs, dtype=torch.long)
    bias = _f64(producer.inputs[2]) if len(producer.inputs) > 2 and producer.inputs[2] is not None \
        else weight.new_zeros(weight.shape[0])
    # G: filters scaled so that, with independent unit-variance input features, y = G x + mean.
    full = weight.reshape(weight.shape[0], -1)
    kept = full if index is None else weight.index_select(1, index).reshape(weight.shape[0], -1)
    mean_full, mean_kept, known = bias, bias, False  # `known`: the model has a spread for each channel
    source = _norm_before(producer)
    if producer.op == "linear" and source is not None:
        affine = [_f64(v) if v is not None and v.data is not None else None for v in source.inputs[1:3]]
        gamma = affine[0] if affine and affine[0] is not None else full.new_ones(full.shape[1])
        beta = affine[1] if len(affine) > 1 and affine[1] is not None else torch.zeros_like(gamma)
        gamma_kept, beta_kept = (gamma, beta) if index is None else (gamma[index], beta[index])
        mean_full, mean_kept = bias + full @ beta, bias + kept @ beta_kept
        full, kept, known = full * gamma, kept * gamma_kept, True
    if path.norm is not None:
        gamma, beta, running_mean, running_var = (_f64(v) if v is not None and v.data is not None else None
                                                  for v in path.norm.inputs[1:5])
        if running_mean is None or running_var is None:
            raise _Skip(f"batch_norm %{path.norm.name} has no running statistics")
        gamma = torch.ones_like(running_mean) if gamma is None else gamma
        beta = torch.zeros_like(running_mean) if beta is None else beta
        # the running statistics are taken to describe the data: y_c ~ N(beta_c, gamma_c^2)
        scale = gamma / full.norm(dim=1).clamp_min(1e-30)
        full, kept, known = full * scale[:, None], kept * scale[:, None], True
        mean_full = mean_kept = beta

    # producer rows in channel order: removed rows (ascending channel) and kept rows (ascending channel)
    order = np.argsort(path.rows)
    is_removed = np.isin(path.rows[order], removed)
    rows_r, rows_k = order[is_removed], order[~is_removed]
    if rows_r.size != removed.size:
        raise _Skip(f"the plan removes channels %{producer.name} does not write")
    activation = path.activation if path.activation is not None and path.activation.op not in _IDENTITY else None
    if activation is not None and not known:
        raise _Skip(f"no statistics for the input of {activation.op} %{activation.name} (no BatchNorm after "
                    f"%{producer.name}, no LayerNorm before it): its mean cannot be estimated")

    # Independent input features: channels covary as their (kept-input) filters do.
    f_r, f_k = kept[rows_r], kept[rows_k]
    spread_r, spread_k = full[rows_r].norm(dim=1), f_k.norm(dim=1)
    if activation is None:
        (e_r, d_r, v_r), (e_k, d_k, v_k) = ((mean_full[rows_r], torch.ones_like(spread_r), spread_r ** 2),
                                            (mean_kept[rows_k], torch.ones_like(spread_k), spread_k ** 2))
    else:
        e_r, d_r, v_r = _moments(activation, mean_full[rows_r], spread_r)
        e_k, d_k, v_k = _moments(activation, mean_kept[rows_k], spread_k)
    # The activations' covariance to first order in the Hermite expansion (Price's theorem):
    # Cov(f(y_i), f(y_j)) ~ E f'(y_i) E f'(y_j) Cov(y_i, y_j) off the diagonal, the exact variance on it.
    # What the first order misses acts as uncorrelated noise per channel: it damps the fit like a ridge.
    linear_k = (f_k @ f_k.T) * d_k[:, None] * d_k[None, :]
    a = linear_k + torch.diag((v_k - torch.diagonal(linear_k)).clamp_min(0.0))
    a += (damp * float(torch.diagonal(a).mean()) + 1e-30) * torch.eye(a.shape[0], dtype=a.dtype)
    b = (f_k @ f_r.T) * d_k[:, None] * d_r[None, :]
    factor, info = torch.linalg.cholesky_ex(a)  # symmetric positive definite: half the cost of a general solve
    c = (torch.cholesky_solve(b, factor) if int(info) == 0 else torch.linalg.solve(a, b)).T  # (removed, kept)
    e = e_r - c @ e_k
    total = float(v_r.sum())
    residual = total - float((c * b.T).sum())  # the model's variance of f(y_r) the kept channels do not explain
    return c, e, max(0.0, 1.0 - residual / total) if total > 0 else 0.0


def _norm_before(producer: Node) -> Node | None:
    """The LayerNorm/RMSNorm whose output `producer` reads, directly or through picks of tokens, or None.

    A pick (select or slice) along an axis the norm does not normalise leaves each picked
    token's normalised features as they were, so the norm's model of the producer's input
    holds for them too: BERT's pooler reads token 0 of the last LayerNorm.
    """
    value, picked = producer.inputs[0], []  # each pick's axis, counted from the last
    while value.producer is not None and value.producer.op in ("select", "slice"):
        source = value.producer.inputs[0]
        picked.append(source.rank - value.producer.attrs["axis"] % source.rank)
        value = source
    norm = value.producer
    if norm is None or norm.op not in _NORMS:
        return None
    return norm if all(axis > len(norm.attrs["normalized_shape"]) for axis in picked) else None


def _moments(activation: Node, mean: torch.Tensor, std: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor,
                                                                              torch.Tensor]:
    """(E f(y), E f'(y), Var f(y)) per channel for y ~ N(mean, std^2).

    Closed forms for ReLU; Gauss-Hermite quadrature for the other activations, with
    E f'(y) = E[(y - mean) f(y)] / std^2 (Stein's lemma), so only f itself is evaluated.
    """
    std = std.clamp_min(1e-12)
    if activation.op == "relu":
        normal = torch.distributions.Normal(torch.zeros((), dtype=mean.dtype), torch.ones((), dtype=mean.dtype))
        z = mean / std
        cdf, pdf = normal.cdf(z), normal.log_prob(z).exp()
        first = mean * cdf + std * pdf
        second = (mean * mean + std * std) * cdf + mean * std * pdf
        return first, cdf, (second - first * first).clamp_min(0.0)
    nodes, weights = np.polynomial.hermite_e.hermegauss(_QUADRATURE_POINTS)
    z = torch.as_tensor(nodes, dtype=mean.dtype)[None, :]
    w = torch.as_tensor(weights / math.sqrt(2 * math.pi), dtype=mean.dtype)
    values = torch_kernel(activation)(mean[:, None] + std[:, None] * z, **activation.attrs)
    first = values @ w
    return first, (values * z) @ w / std, ((values * values) @ w - first * first).clamp_min(0.0)


# ------------------------------------------------------------------ writing the compensation
def _update(pruned: Graph, reader: Reader, columns: np.ndarray, path: _Path, removed: np.ndarray,
            c: torch.Tensor, e: torch.Tensor, kept_outputs: dict[tuple[str, int], np.ndarray]) -> Callable[[], str]:
    """The compensation of one reader, as a function that writes it into `pruned` and says why the
    bias part was dropped ("" when it was not). `reader` is on the original graph."""
    name, axis = reader.weight.name, reader.weight_axis
    full = _f64(reader.weight).movedim(axis, 0)  # (input channels, outputs[, kernel...])
    col_of = {int(ch): i for i, ch in enumerate(columns)}
    kept_channels = np.setdiff1d(np.unique(path.rows), removed)
    cols_r = torch.as_tensor([col_of[int(ch)] for ch in removed], dtype=torch.long)
    cols_k = torch.as_tensor([col_of[int(ch)] for ch in kept_channels], dtype=torch.long)
    moved = full[cols_r].reshape(cols_r.numel(), -1)
    delta = torch.zeros_like(full)
    delta[cols_k] = (c.T @ moved).reshape((cols_k.numel(), *full.shape[1:]))
    shift = (e @ moved).reshape(full.shape[1], -1) @ _tap_coverage(reader, full.shape[2:])  # per output

    out_axis = 1 if reader.node.op == "matmul" else 0  # of the weight as stored: matmul's is (in, out)
    delta = delta.movedim(0, axis)
    delta = torch.index_select(delta, axis, torch.as_tensor(np.flatnonzero(~np.isin(columns, removed))))
    target = pruned.value(name)
    if target.shape[out_axis] != delta.shape[out_axis]:
        kept_out = kept_outputs.get((name, out_axis))
        if kept_out is None:
            raise _Skip(f"the outputs of %{reader.node.name} were pruned but their kept positions are unknown")
        index = torch.as_tensor(kept_out, dtype=torch.long)
        delta, shift = torch.index_select(delta, out_axis, index), shift[index]

    def write() -> str:
        _add(target, delta)
        return _add_constant(pruned.node(reader.node.name), shift)

    return write


def _tap_coverage(reader: Reader, kernel: Sequence[int]) -> torch.Tensor:
    """Per kernel position (flattened), the fraction of output positions where it reads inside the input.

    A constant input channel reaches a conv's output only through the taps that fall
    inside the input: at a border, zero padding stands in for the rest. Weighting the
    kernel by this coverage gives the constant the output receives on average over
    positions (a bias cannot vary by position). 1 everywhere for linear layers, and
    where the spatial size is symbolic.
    """
    if reader.node.op != "conv" or not kernel:
        return torch.ones(1, dtype=torch.float64)
    sizes = reader.activation.shape[2:]
    attrs = reader.node.attrs
    per_axis = []
    for axis, k in enumerate(kernel):
        n = sizes[axis] if axis < len(sizes) else None
        try:
            stride, pad, dilation = (int(attrs[name][axis]) for name in ("stride", "padding", "dilation"))
        except (KeyError, TypeError, ValueError, IndexError):
            n = None  # "same"-style padding or missing attributes: assume no border
        if not isinstance(n, int):
            per_axis.append(torch.ones(k, dtype=torch.float64))
            continue
        starts = np.arange(0, n + 2 * pad - dilation * (k - 1), stride) - pad  # first input index of each output
        reads = starts[:, None] + dilation * np.arange(k)[None, :]
        per_axis.append(torch.as_tensor(((reads >= 0) & (reads < n)).mean(0), dtype=torch.float64))
    coverage = per_axis[0]
    for more in per_axis[1:]:
        coverage = (coverage[:, None] * more[None, :]).reshape(-1)
    return coverage


def _add_constant(node: Node, shift: torch.Tensor) -> str:
    """Add `shift` to the node's output channels without adding a parameter; why not, or ""."""
    bias = node.inputs[2] if node.op in ("conv", "linear") and len(node.inputs) > 2 else None
    if bias is not None and bias.is_weight:
        _add(bias, shift)
        return ""
    norm = _single_user(node.outputs[0])
    if norm is not None and norm.op == "batch_norm" and norm.inputs[0] is node.outputs[0] \
            and norm.inputs[3] is not None and norm.inputs[3].is_weight:
        running_mean = norm.inputs[3]  # BN(x + s) with mean m is BN(x) with mean m - s
        _add(running_mean, -shift)
        return ""
    return "no bias and no BatchNorm after it to take the constant"


def _f64(value: Value) -> torch.Tensor:
    """A weight's data as float64 on the CPU: the fits are small, and exact enough there whatever the model's dtype."""
    return value.data.detach().to("cpu", torch.float64)


def _add(value: Value, delta: torch.Tensor) -> None:
    value.set_data((_f64(value) + delta).to(value.data.device, value.data.dtype).contiguous())
